"""The train stage's loop: build or resume a run, step it, and tick (divergence check, log, FID, grid,
checkpoint); then write the outputs. The step itself is `step.GANStep` (or `cuda_graph.GraphedStep`).

A run resumes from the newest checkpoint of its fingerprint (data, model and the train params that shape the
trajectory), and continues the MLflow run that checkpoint names, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import cores, hardware
from pipeline.config import Params
from pipeline.data import load_split, read_meta
from pipeline.errors import RESUME_HINT, DataError, DivergenceError, Interrupted
from pipeline.nets import weights
from pipeline.nets.sampling import grid_inputs, sample_grid
from pipeline.progress import Progress
from pipeline.tracking.tracker import Tracker
from pipeline.training import checkpoint, warmstart
from pipeline.training.build import fingerprint, make_accelerator, make_step, num_classes
from pipeline.training.outputs import (
    TRACKED_SECTIONS,
    FinishedRun,
    TrainPaths,
    progress_line,
    train_params,
    write_outputs,
)

__all__ = ["TrainPaths", "train"]


@cores.releasing
def train(params: Params, paths: TrainPaths, accelerator=None,
          evaluator: Callable[[nn.Module], float] | None = None) -> dict:
    """Run (or resume) training; write the generator, metrics and plots. Returns the final metrics.

    `evaluator(G_ema) -> FID`, when given, runs every train.fid_every_steps and keeps the best generator.
    """
    acc = accelerator or make_accelerator(params)
    main, world = acc.is_main_process, acc.num_processes
    meta = read_meta(paths.prepared)
    if meta["shape"][1] != params.data.image_size:
        raise DataError(f"the prepared data in {paths.prepared} is {meta['shape'][1]} px but data.image_size is "
                        f"{params.data.image_size}; run the prepare stage again (dvc repro prepare)")
    params = params.resolved()  # steps, lr_g, lr_d: auto -> the digits' or every other set's
    acc.print(hardware.describe(params, acc.device), flush=True)
    params = hardware.resolved(params, acc.device)  # mixed_precision, channels_last: auto -> what this device runs
    tc = params.train
    split = load_split(paths.prepared, "train")
    classes = num_classes(params, meta)
    warm = warmstart.resolve(tc.init_from, params.tracking.uri) if tc.init_from else None
    gan = make_step(params, acc, torch.from_numpy(np.array(split.images)), channels=meta["shape"][0],
                    labels=torch.from_numpy(split.labels), classes=classes, warm=warm)
    cfg, ema = gan.cfg, gan.ema

    # Resume, when a checkpoint of the same data/model/train params exists: checkpoints/<fingerprint>/latest.
    # Other fingerprints' checkpoints stay (switching experiments and back resumes), up to a bound.
    fp = fingerprint(params, meta, warm.sha256 if warm else None, acc.device)
    best_name = weights.GENERATOR_FILES["best"]  # in models/, and its copy in each checkpoint
    best_path = paths.models / best_name
    start, history, best_fid = 0, [], math.inf
    if main:
        checkpoint.open_root(paths.checkpoints, fp)  # migrates an old flat layout; marks fp as just used
    acc.wait_for_everyone()
    ckpt = checkpoint.latest_checkpoint(paths.checkpoints, fp)
    if ckpt is not None:
        state = checkpoint.load_checkpoint(acc, ckpt, ema)
        start, history, best_fid = state["step"], state["history"], state.get("best_fid", math.inf)
        if gan.ada is not None:
            gan.ada.load(state["ada"])
        gan.reg.load(state.get("regularisers", {}))  # LeCam's moving averages, APA's p
        if main and (ckpt / best_name).exists():  # DVC removed models/ before re-running the stage
            paths.models.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ckpt / best_name, best_path)
        acc.print(f"resuming from {ckpt} at step {start}")
    elif others := [f for f in checkpoint.fingerprints(paths.checkpoints) if f != fp]:
        acc.print(f"starting at step 0: no checkpoint of these data/model/train params in {paths.checkpoints / fp} "
                  f"(kept: those of {len(others)} other params)")
    acc.wait_for_everyone()

    # A resumed stage continues the MLflow run its checkpoint names, skipping the steps that run already holds.
    run_id, tb_run = (state.get("mlflow_run_id"), state.get("tensorboard_run")) if ckpt is not None else (None, None)
    tracker = Tracker(params.tracking, run_id=run_id, tensorboard_dir=paths.tensorboard,
                      tensorboard_run=tb_run, system_metrics=True) if main else Tracker(None)
    if main:
        if start and tracker.run_id == run_id:
            tracker.skip_logged_steps(start)
        tracker.log_params(train_params(params))  # evaluate and export log their own sections
        tracker.log_dict({k: v for k, v in params.to_dict().items() if k in TRACKED_SECTIONS}, "config/train.json")
        tracker.log_prepared_data(meta)
        tracker.set_tags({"data.hash": meta["hash"], "model.d_norm.resolved": cfg.d_norm,
                          "model.num_classes": cfg.num_classes, "world_size": world, "resumed_from_step": start})
        if warm is not None:
            tracker.set_tags({"train.init_from.source": warm.source, "train.init_from.sha256": warm.sha256})
        tracker.write_run_file(paths.run_file)

    grid_z = grid_inputs(cfg, tc.seed)
    t_start = t_tick = time.perf_counter()
    progress = Progress("step", tc.steps, start=start)
    n_tick = 0
    done = start
    try:
        for step in range(start, tc.steps):
            gan(step)
            n_tick += 1
            done = step + 1

            # Tick: divergence check, log, FID, grid, checkpoint.
            if not _is_tick(tc, done):
                continue
            bad_step = int(acc.gather(gan.first_bad.view(1)).max().item())
            if bad_step >= 0:
                tracker.set_tags({"diverged_at_step": bad_step})
                tracker.close("FAILED")
                raise DivergenceError(
                    f"training diverged: the loss became NaN or inf at step {bad_step}; "
                    f"the last good checkpoint is {_last_good(paths.checkpoints, fp)}. "
                    "Lower the learning rates, enable train.grad_clip_norm, or change train.loss."
                )
            threads = torch.get_num_threads()  # what this tick's steps ran on (rebalance may change it)
            cores.rebalance()  # trainings that started or ended on this machine since the last tick
            elapsed = time.perf_counter() - t_tick
            row = {"step": done, **gan.stats.pop_means(), "Speed/img_per_s": n_tick * tc.batch_size / max(elapsed, 1e-9)}
            if acc.device.type == "cpu":  # a speed's context: fewer threads or a busy machine, not the recipe
                row.update({"Speed/cpu_threads": threads, "Speed/load_avg": os.getloadavg()[0]})
            if evaluator is not None and tc.fid_every_steps and done % tc.fid_every_steps == 0:
                row["Eval/fid"] = fid = evaluator(ema.module)
                if main and fid < best_fid:
                    best_fid = fid
                    weights.save_generator(ema.module, best_path, None, cfg)
            history.append(row)
            if main:
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=done)
                print(progress_line(row, progress), flush=True)  # unbuffered under dvc
                if done % tc.sample_every_steps == 0 or done == tc.steps:
                    tracker.log_image(sample_grid(ema.module, *grid_z), "samples/ema", done)
            if done % tc.checkpoint_every_steps == 0 or done == tc.steps:
                loop_state = {"fingerprint": fp, "history": history, "best_fid": best_fid, "mlflow_run_id": tracker.run_id,
                              "tensorboard_run": tracker.tensorboard_run}
                if gan.ada is not None:
                    loop_state["ada"] = gan.ada.state()
                if reg_state := gan.reg.state():
                    loop_state["regularisers"] = reg_state
                checkpoint.save_checkpoint(acc, paths.checkpoints, fp, done, ema, loop_state,
                                           tc.keep_checkpoints, files={best_name: best_path})
            t_tick, n_tick = time.perf_counter(), 0
    except KeyboardInterrupt:  # Ctrl-C: one line that says where to resume from, not a traceback per process
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        tracker.close("KILLED")
        raise Interrupted(f"interrupted at step {done} of {tc.steps}; last checkpoint "
                          f"{_last_good(paths.checkpoints, fp)}; {RESUME_HINT}") from None

    wall = time.perf_counter() - t_start
    result = {}
    if main:
        result = write_outputs(params, paths, gan, tracker, FinishedRun(meta, history, wall, start, world))
    acc.wait_for_everyone()
    return result


def _last_good(root: Path, fp: str) -> str:
    """This run's newest complete checkpoint, for the messages that stop a run."""
    return str(checkpoint.latest_checkpoint(root, fp) or "none (none was written yet)")


def _is_tick(tc, done: int) -> bool:
    every = (tc.log_every_steps, tc.checkpoint_every_steps, tc.sample_every_steps, tc.fid_every_steps)
    return done == tc.steps or any(n and done % n == 0 for n in every)
