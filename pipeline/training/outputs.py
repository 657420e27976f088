"""What the train stage leaves behind: the generator files (G, its EMA, D), the sample grid, the loss curves as CSV
(for `dvc plots`) and PNG (offline), metrics/train.json, and the one-line progress of each tick.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Params
from pipeline.nets import weights
from pipeline.nets.sampling import grid_inputs, sample_grid
from pipeline.progress import Progress
from pipeline.tracking.tracker import Tracker
from pipeline.training import warmstart
from pipeline.training.step import D_OUTPUT_KEYS, GANStep

TRACKED_SECTIONS = ("data", "model", "train", "tracking")  # the params train uses (data: through prepare)


@dataclass(frozen=True)
class TrainPaths:
    """Every path the train stage writes; the stage spells them once, as dvc.yaml does."""

    prepared: Path
    models: Path
    metrics: Path
    plots: Path
    run_file: Path
    checkpoints: Path
    tensorboard: Path | None = None


@dataclass(frozen=True)
class FinishedRun:
    """What the loop hands to the outputs: the prepared data's meta, one row per tick, and how the run went."""

    meta: dict
    history: list[dict]
    wall_seconds: float
    start: int  # the step it resumed from
    world: int  # processes


def train_params(params: Params) -> dict:
    """The params train used, as `section.key` -> value (evaluate and export log their own sections)."""
    return {k: v for k, v in params.flat().items() if k.split(".")[0] in TRACKED_SECTIONS}


def progress_line(row: dict, progress: Progress) -> str:
    """`step 300/2000 D=1.21 G=0.93 real_prob=0.61 fake_prob=0.38 img_per_s=512 cpu_threads=2 load_avg=2.1, 12.3 s
    elapsed, ETA 57 s`: on the CPU, the threads and the machine's load say why a speed differs between runs."""
    keys = ("Loss/D", "Loss/G", *D_OUTPUT_KEYS, "Augment/p", "Speed/img_per_s", "Speed/cpu_threads", "Speed/load_avg")
    return progress.line(row["step"], **{k.split("/")[-1]: row[k] for k in keys if k in row})


def write_outputs(params: Params, paths: TrainPaths, gan: GANStep, tracker: Tracker, run: FinishedRun) -> dict:
    """Main process, at the end: G, its EMA and D; the sample grid and curves; metrics/train.json. Closes the
    tracker (its counts go into the metrics). Returns the metrics."""
    paths.models.mkdir(parents=True, exist_ok=True)
    G, G_ema, cfg, meta, history = gan.G_plain, gan.ema.module, gan.cfg, run.meta, run.history
    extra = {"data_hash": meta["hash"], "classes": meta["classes"], "params": params.to_dict()}
    files = weights.GENERATOR_FILES
    weights.save_generator(G, paths.models / files["last"], paths.models / weights.GENERATOR_CONFIG, cfg, extra)
    weights.save_generator(G_ema, paths.models / files["ema"], None, cfg)
    # D too, so that train.init_from pointed at this generator fine-tunes both networks.
    weights.save_generator(gan.D_plain, paths.models / warmstart.DISCRIMINATOR_FILE, None, cfg)
    grid = sample_grid(G_ema, *grid_inputs(cfg, params.train.seed))
    paths.plots.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(grid).save(paths.plots / "samples.png")
    _write_curves(history, paths.plots)
    last = history[-1] if history else {}
    speeds = [r["Speed/img_per_s"] for r in history[1:]] or [r["Speed/img_per_s"] for r in history]
    metrics = {
        "steps": params.train.steps, "resumed_from_step": run.start, "world_size": run.world,
        "loss_d": last.get("Loss/D"), "loss_g": last.get("Loss/G"),
        **{k.replace("/", "_").lower(): last[k] for k in D_OUTPUT_KEYS if k in last},  # d_real_prob, ...
        "img_per_s": float(np.median(speeds)) if speeds else None,
        "wall_seconds": round(run.wall_seconds, 2),
    }
    tracker.log_artifact(paths.plots / "samples.png", "samples")
    tracker.log_artifact(paths.plots / "train_loss.png", "plots")
    tracker.log_artifact(paths.models / weights.GENERATOR_CONFIG, "generator")
    tracker.log_hparams(train_params(params), [k for k in last if k != "step"])
    tracker.close()  # drains the spool (bounded): its counts go into the metrics
    metrics["tracking"] = tracker.counts
    paths.metrics.parent.mkdir(parents=True, exist_ok=True)
    paths.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _write_curves(history: list[dict], plots: Path) -> None:
    """plots/train_loss.csv for `dvc plots`, and the same curves as a PNG that renders offline."""
    # Fixed leading columns whatever the loss (dvc.yaml's plots name them); D's outputs that the loss does not give
    # are nan, which the plots skip.
    keys = ["step", "Loss/D", "Loss/G", *D_OUTPUT_KEYS]
    extra = sorted({k for r in history for k in r} - set(keys))
    with open(plots / "train_loss.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k.replace("/", "_") for k in keys + extra])
        w.writeheader()
        for r in history:
            w.writerow({k.replace("/", "_"): r.get(k, "nan" if k in D_OUTPUT_KEYS else "") for k in keys + extra})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in history]
    for k in ("Loss/D", "Loss/G"):
        axes[0].plot(steps, [r.get(k, float("nan")) for r in history], label=k)
    shown = [k for k in D_OUTPUT_KEYS if any(k in r for r in history)]
    for k in shown:
        axes[1].plot(steps, [r.get(k, float("nan")) for r in history], label=k)
    d_title = "D(x), D(G(z)): probabilities" if any(k.endswith("_prob") for k in shown) else "D: critic scores"
    for ax, title in zip(axes, ("losses", d_title), strict=True):
        ax.set_xlabel("generator step")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "train_loss.png", dpi=100)
    plt.close(fig)
