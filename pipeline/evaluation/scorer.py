"""IS (Salimans et al. 2016), FID (Heusel et al. 2017), KID (Bińkowski et al. 2018) and precision/recall
(Kynkäänniemi et al. 2019) through torch-fidelity, on the features of an `extractors` network: a real-feature cache
keyed by data hash and extractor version, and feature extraction split across processes and gathered. The
`evaluation` package is the only importer of torch-fidelity.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.defaults import DEFAULTS
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
from torch_fidelity.utils import cache_lookup_group_recompute_all_on_any_miss, get_featuresdict_from_dataset

from pipeline.config import METRICS, EvalConfig
from pipeline.config.schema import AUTO
from pipeline.data import load_split, read_meta
from pipeline.errors import MetricsError
from pipeline.evaluation import plan
from pipeline.evaluation.extractors import Extractor, build_feature_extractor
from pipeline.evaluation.resolve import resolve_extractor, resolved
from pipeline.nets.sampling import balanced_labels, latents, to_uint8

ISC_SPLITS, PRC_NEIGHBOURHOOD = DEFAULTS["isc_splits"], DEFAULTS["prc_neighborhood"]
Features = dict[str, torch.Tensor]  # layer name -> (N, D), as torch-fidelity passes them around


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
    if "kid" in metrics and k != AUTO and n < k:  # auto resolves to what both sets hold (resolve.kid_subset_size)
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
        # eval.num_samples (auto: by the extractor) and kid_subset_size (auto: by the data) resolved, so that every
        # reader of scorer.cfg sees the counts used
        self.cfg = cfg = resolved(cfg, extractor, len(ref_images))
        self.extractor, self.dist = extractor, dist
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
        # The counter of every image evaluate embeds: those embedded, and the generated share still to come
        self._bar, self._embedded, self._pending = None, 0, self.cfg.num_samples // self.world
        if progress and self.rank == 0:  # what evaluate will embed, an estimate, and one ETA for all of it
            ref_cached = plan.cached(self._cache_prefix(self.cache_name), self.fe.get_requested_features_list(), None)
            self._bar = plan.start(extractor.name, self.cfg.num_samples, len(ref_images), ref_cached, self.world,
                                   plan.seconds_per_image(self.fe, ref_images, extractor.rgb, cuda))
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
        return cache_lookup_group_recompute_all_on_any_miss(self._cache_prefix(name),
                                                            self.fe.get_requested_features_list(), compute, **self.kw)

    def _cache_prefix(self, name: str) -> str:
        return f"{name}-{self.fe.get_name()}-features-"  # torch-fidelity's own cache file naming

    @contextmanager
    def _progress(self, what: str, n: int) -> Iterator[None]:
        """Progress lines while the extractor embeds this process's n images (counted after each batch), on the one
        counter of the whole evaluation (`plan.start`: its ETA covers the sets still to come)."""
        bar = self._bar
        if bar is None:
            yield
            return
        share = f", process 0's share of {self.world}" if self.world > 1 else ""
        bar.label, bar.total = f"evaluate: images embedded ({what}{share})", self._embedded + n + self._pending

        def count(module: nn.Module, args: tuple, output: object) -> None:
            self._embedded += len(args[0])
            bar.update(self._embedded)

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
        self._pending = 0  # the generated set, counted as it comes
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
            out[str(name)] = frechet_distance(gen, ref)
        return out


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets (n_a, d) and (n_b, d), exactly as torch-fidelity defines it (means, and
    covariances with n - 1), computed without a d x d matrix square root. With X and Y the centred features,
    S_a = X'X / (n_a - 1) and S_b = Y'Y / (n_b - 1), the non-zero eigenvalues of S_a S_b are the squared singular
    values of M = X Y' / sqrt((n_a - 1)(n_b - 1)), so tr sqrt(S_a S_b) is the sum of M's singular values. M is
    n_a x n_b: for a class's 100 samples against its 50 reference pictures that is a 100 x 50 SVD in place of
    torch-fidelity's eigenvalues of a 2048 x 2048 product (some 5-15 s a class on 2 cores), and it is more accurate
    there, as S_a S_b is far from full rank. Each side needs at least 2 rows."""
    x, y = (f.double() for f in (a, b))
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    na, nb = len(x) - 1, len(y) - 1
    mean_term = (mx - my).square().sum()
    traces = xc.square().sum() / na + yc.square().sum() / nb
    tr_sqrt = torch.linalg.svdvals(xc @ yc.T).sum() / (na * nb) ** 0.5
    return float(mean_term + traces - 2 * tr_sqrt)


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
