"""The evaluate stage's work: score the trained generator with IS/FID/KID/PRC (`scorer`: Salimans et al.
2016; Heusel et al. 2017; Bińkowski et al. 2018; Kynkäänniemi et al. 2019), write metrics/eval.json, log the same
values to the pipeline's MLflow run, and save a sample grid of the scored samples.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pipeline import cores
from pipeline.config import Params
from pipeline.data import load_split, read_meta
from pipeline.errors import MetricsError
from pipeline.evaluation.scorer import make_scorer
from pipeline.nets.sampling import balanced_labels, grid_inputs, sample_grid
from pipeline.nets.weights import GENERATOR_FILES, load_trained_generator
from pipeline.tracking.tracker import Tracker


@dataclass(frozen=True)
class EvalPaths:
    """Every path the evaluate stage reads or writes; the stage spells them once, as dvc.yaml does."""

    prepared: Path
    models: Path
    classifier: Path
    run_file: Path
    metrics: Path
    plots: Path


def load_scored_generator(models: Path, weights: str, meta: dict) -> tuple[nn.Module, dict]:
    """eval.weights (ema | last | best) -> G in eval mode and its generator.json, checked against the data."""
    G, cfg = load_trained_generator(models, weights)
    path = models / GENERATOR_FILES[weights]
    trained_on = cfg.get("data_hash")
    if trained_on is not None and trained_on != meta["hash"]:
        raise MetricsError(f"{path} was trained on data {trained_on}, but the prepared data is {meta['hash']}: "
                           "rerun the train stage")
    if [G.cfg.channels, G.cfg.image_size, G.cfg.image_size] != list(meta["shape"]):
        raise MetricsError(f"{path} makes {G.cfg.channels}x{G.cfg.image_size}x{G.cfg.image_size} images, but the "
                           f"prepared data is {'x'.join(map(str, meta['shape']))}: rerun the train stage")
    return G, cfg


def save_grid(generator: nn.Module, seed: int, path: Path) -> np.ndarray:
    """G's samples for `nets.grid_inputs` (one row per class when conditional), quantised as scored, as one
    (H, W, 3) uint8 PNG."""
    from PIL import Image

    grid = sample_grid(generator, *grid_inputs(generator.cfg, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return grid


@cores.releasing
def evaluate(params: Params, paths: EvalPaths, dist: Any = None) -> dict:
    """Collective under `accelerate launch`: every process generates and embeds its share; the main process scores,
    writes metrics/eval.json and the grid, and logs to MLflow. Returns the eval.json content (empty elsewhere)."""
    from accelerate import Accelerator

    ec = params.eval
    if dist is None:  # reads `accelerate launch`'s settings (PartialState alone ignores ACCELERATE_USE_CPU, and two
        # CPU processes would each run the whole evaluation)
        dist = Accelerator()
        cores.use_cpu_cores(dist)
    meta = read_meta(paths.prepared)
    G, gcfg = load_scored_generator(paths.models, ec.weights, meta)  # fail before any feature work
    t0 = time.perf_counter()
    scorer = make_scorer(ec, paths.prepared, paths.classifier, dist=dist, progress=True)
    ec = scorer.cfg  # eval.num_samples and kid_subset_size resolved: what eval_info and the run's params record
    params = dataclasses.replace(params, eval=ec)
    G.to(dist.device)
    feats = scorer.generator_features(G, ec.num_samples, ec.seed)
    lo, hi = dist.process_index * ec.num_samples // dist.num_processes, \
        (dist.process_index + 1) * ec.num_samples // dist.num_processes
    print(f"evaluate: rank {dist.process_index} of {dist.num_processes} generated and embedded samples "
          f"[{lo}, {hi}) of {ec.num_samples}", file=sys.stderr, flush=True)
    report: dict = {}
    if dist.is_main_process:
        name = scorer.extractor.name
        results = scorer.score(feats)
        report = {name: results}
        if G.cfg.num_classes:  # intra-FID: each class's samples against that class's reference images
            intra = scorer.intra_fid(feats, balanced_labels(ec.num_samples, G.cfg.num_classes),
                                     load_split(paths.prepared, "ref").labels, meta["classes"])
            results["intra_fid_mean"] = float(np.mean(list(intra.values())))
            report[f"{name}/intra_fid"] = intra
        report["eval_info"] = {**scorer.info(), "num_samples": ec.num_samples, "weights": ec.weights,
                               "data_hash": meta["hash"], "conditional": bool(G.cfg.num_classes)}
        if "kid" in scorer.metrics:
            report["eval_info"]["kid_subset_size"] = ec.kid_subset_size
        paths.metrics.parent.mkdir(parents=True, exist_ok=True)
        paths.metrics.write_text(json.dumps(report, indent=2) + "\n")
        grid_path = paths.plots / "samples.png"
        save_grid(G, ec.seed, grid_path)
        wall = time.perf_counter() - t0
        print(f"evaluate: {name} on {ec.num_samples} samples ({ec.weights} weights), {dist.num_processes} "
              f"process(es), {wall:.1f} s: " + ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
        _log(params, paths, gcfg, report, grid_path, dist.num_processes, wall)
    dist.wait_for_everyone()
    return report


_METRIC_UNSAFE = re.compile(r"[^\w\-. ]")  # MLflow metric names: class names may hold anything


def _log(params: Params, paths: EvalPaths, gcfg: dict, report: dict, grid_path: Path, world: int,
         wall: float) -> None:
    """The same values into the pipeline's MLflow run, as eval/<extractor>/<torch-fidelity key>."""
    name = report["eval_info"]["extractor"]
    tracker = Tracker.resume(params.tracking, paths.run_file, stage="evaluate")
    step = int(gcfg.get("params", {}).get("train", {}).get("steps", 0))  # the trained generator's step
    try:
        tracker.log_section_params(params, "eval")  # a re-run with other values: stage.evaluate.<key> tags
        values = {f"eval/{name}/{k}": v for k, v in report[name].items()}
        values.update({f"eval/{name}/intra_fid/{_METRIC_UNSAFE.sub('_', k)}": v
                       for k, v in report.get(f"{name}/intra_fid", {}).items()})
        tracker.log_metrics(values, step=step)
        tracker.log_artifact(grid_path, "eval")
        tracker.log_dict(report, "eval/eval.json")
        tracker.set_tags({"eval.world_size": world, "eval.wall_seconds": round(wall, 1)})
    finally:
        tracker.close()
