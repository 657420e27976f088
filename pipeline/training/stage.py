"""The GAN training loop on Hugging Face Accelerate: D steps, G step, penalties, EMA, ticks.

Follows the DCGAN recipe (Radford et al., 2015) with the WGAN / WGAN-GP critic schedule (Arjovsky et al., 2017;
Gulrajani et al., 2017), zero-centred R1/R2 (Mescheder et al., 2018; R3GAN, Huang et al., 2024), lazy regularisation
(Karras et al., 2020, stylegan2-ada), differentiable augmentation in front of D (DiffAugment / ADA, pipeline.augment),
class conditioning (projection D) and an EMA of G.
Every random draw of step s on rank r comes from a seed that is a function of (train.seed, s, r), so a resumed run
replays an uninterrupted one exactly.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import augment, checkpoint, cores, losses, warmstart
from pipeline.cli import Interrupted, use_cpu_cores
from pipeline.config import Params, ParamsError
from pipeline.data import BatchSampler, DataError, load_split, read_meta
from pipeline.nets import NetConfig, build, from_uint8, grid_inputs, sample_grid, set_condition_scale
from pipeline.progress import Progress
from pipeline.tracking import Tracker


class DivergenceError(RuntimeError):
    """A loss became NaN or inf."""


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


def net_config(params: Params, channels: int, num_classes: int = 0) -> NetConfig:
    m = params.model
    return NetConfig(arch=m.arch, z_dim=m.z_dim, image_size=params.data.image_size, channels=channels,
                     g_channels=m.g_channels, d_channels=m.d_channels, d_norm=params.resolved_d_norm(),
                     dropout=m.dropout, spectral_norm=m.spectral_norm, num_classes=num_classes,
                     g_conditioning=m.g_conditioning)


def num_classes(params: Params, meta: dict) -> int:
    """model.conditional resolved against the prepared data: the class count, or 0 for an unconditional GAN."""
    if params.model.conditional == "false":
        return 0
    if not meta.get("labelled"):
        if params.model.conditional == "true":
            raise DataError("model.conditional is true but the prepared data has no labels (an image folder needs "
                            "one subfolder per class); set model.conditional: auto or false")
        return 0
    return len(meta["classes"])


# Train params that change neither the weights nor the optimiser state: a checkpoint resumes across them.
SCHEDULE_ONLY = ("steps", "log_every_steps", "sample_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                 "fid_every_steps", "cuda_graphs")


def fingerprint(params: Params, data_hash: str, init_sha256: str | None = None) -> str:
    """What a checkpoint must match to be resumed: data, model, the train params that shape the trajectory, and the
    weights train.init_from started from (an alias that moved is another experiment)."""
    train = {k: v for k, v in params.to_dict()["train"].items() if k not in SCHEDULE_ONLY}
    blob = json.dumps({"data": data_hash, "model": params.to_dict()["model"], "train": train,
                       **({"init": init_sha256} if init_sha256 else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def condition_scale(step: int, start: int, end: int) -> float:
    """0 before `start`, 1 from `end` on, linear between."""
    return min(1.0, max(0.0, (step - start) / max(end - start, 1)))


def _cond(labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The extra network argument of a conditional model: (labels,), or () when unconditional."""
    return () if labels is None else (labels,)


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63)


class Stats:
    """Collects detached device tensors between ticks; one host sync per tick, none per step."""

    def __init__(self) -> None:
        self._v: dict[str, list[torch.Tensor]] = defaultdict(list)

    def report(self, name: str, value: torch.Tensor) -> None:
        self._v[name].append(value.detach().float().reshape(()))

    def pop_means(self) -> dict[str, float]:
        out = {k: torch.stack(v).mean().item() for k, v in self._v.items() if v}
        self._v.clear()
        return out


class _GraphStats:
    """Stands in for `Stats` while a CUDA graph is captured: keeps the graph's static output tensors by name."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.values: list[torch.Tensor] = []

    def report(self, name: str, value: torch.Tensor) -> None:
        self.names.append(name)
        self.values.append(value.detach().float().reshape(()))


class EMA(nn.Module):
    """Exponential moving average of G's parameters; buffers (BatchNorm statistics) are copied."""

    def __init__(self, model: nn.Module, halflife_steps: float):
        super().__init__()
        import copy

        self.module = copy.deepcopy(model).eval().requires_grad_(False).float()
        self.beta = 0.5 ** (1.0 / halflife_steps) if halflife_steps > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p, p = list(self.module.parameters()), [q.float() for q in model.parameters()]
        torch._foreach_lerp_(ema_p, p, 1.0 - self.beta)
        torch._foreach_copy_(list(self.module.buffers()), list(model.buffers()))  # one launch, not one per buffer


def _grad_norm(module: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


class GANStep:
    """Networks, optimisers, batch sampler and one training step; `train()` adds ticks around it.

    The benchmark times exactly this object, so its figures are the train stage's. With `train.cuda_graphs` on a
    CUDA device, each step runs as one captured CUDA graph per penalty pattern (static input buffers, capturable
    Adam, autocast without its weight cache); elsewhere the same code runs eagerly through the same buffers.
    """

    GRAPH_WARMUP_STEPS = 2  # eager steps (on a side stream) per graph before it is captured

    def __init__(self, params: Params, acc, images: torch.Tensor, channels: int, labels: torch.Tensor | None = None,
                 classes: int = 0, warm: warmstart.WarmStart | None = None):
        from accelerate.utils import AutocastKwargs

        tc = self.tc = params.train
        self.acc, self.device = acc, acc.device
        self.cfg = cfg = net_config(params, channels, classes)
        self.static = tc.cuda_graphs  # inputs through static buffers; captured as graphs on CUDA only
        self.capture = tc.cuda_graphs and self.device.type == "cuda"
        if tc.cuda_graphs:
            self._check_graphable(tc, acc.num_processes)
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        G, D = build(cfg)
        if warm is not None:  # fine-tuning: the EMA below starts from these weights too
            warmstart.check_fits(tc.init_from, warm, cfg)
            warmstart.load_into(warm, G, D)
        self.fmt = torch.channels_last if tc.channels_last else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once (as the DCGAN example)
        G, D = G.to(self.device, memory_format=self.fmt), D.to(self.device, memory_format=self.fmt)
        self.ema = EMA(G, tc.ema_halflife_steps)
        # Fused Adam: one kernel per step for all tensors, on CUDA and on the CPU; capturable inside CUDA graphs.
        fused = {"fused": True, "capturable": self.capture} if self.device.type in ("cuda", "cpu") else {}
        opt_g = torch.optim.Adam(G.parameters(), lr=tc.lr_g, betas=(tc.beta1, tc.beta2), **fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=tc.lr_d, betas=(tc.beta1, tc.beta2), **fused)
        self.G, self.D, self.opt_g, self.opt_d = acc.prepare(G, D, opt_g, opt_d)
        # Accelerate wraps each prepared forward in autocast; drop that wrapper. The step autocasts explicitly, and
        # the gradient penalty must run in float32 (under the wrapper it silently ran in bf16/fp16).
        self.G_plain = acc.unwrap_model(self.G, keep_fp32_wrapper=False)
        self.D_plain = acc.unwrap_model(self.D, keep_fp32_wrapper=False)
        # No autocast weight cache on CUDA: graphs need that, and eager then computes exactly what the graphs do
        # (a weight used twice gets its two gradients summed in fp32, not in bf16).
        self.autocast_kwargs = AutocastKwargs(cache_enabled=False) if self.device.type == "cuda" else None
        # The G step trains on the fakes of the last D update (as the DCGAN reference does): one G forward less.
        self.reuse_fake = tc.reuse_fake and tc.grad_accum_steps == 1
        # Data: the whole prepared split, resident on the device when it fits, drawn by index (global micro-batches).
        micro_batch = tc.batch_size // tc.grad_accum_steps
        self.sampler = BatchSampler(self._place(images, self.device), micro_batch, seed=tc.seed,
                                    rank=acc.process_index, world=acc.num_processes, device=self.device,
                                    labels=labels if classes else None)
        self.per_rank = micro_batch // acc.num_processes
        # Augmentation in front of D: a fixed p (diffaug), or ADA's adaptive p, starting at 0.
        self.ada = augment.AdaptiveP(tc.ada_target, tc.ada_kimg, tc.batch_size, tc.ada_interval_steps,
                                     self.device) if tc.augment == "ada" else None
        self.augment_p = {"none": 0.0, "diffaug": tc.augment_p, "ada": None}[tc.augment]
        self.penalised = bool(params.gradient_penalties())
        self.stats: Stats | _GraphStats = Stats()
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite step
        self._done = torch.zeros((), dtype=torch.long, device=self.device)  # step + 1 of the running step
        if self.static:
            self._real_labels = torch.zeros((tc.n_critic, self.per_rank), dtype=torch.long, device=self.device)
            self._real_u8 = torch.empty((tc.n_critic, self.per_rank, *images.shape[1:]), dtype=torch.uint8,
                                        device=self.device)
            self._graphs: dict[tuple[bool, ...], tuple] = {}
            self._warm: dict[tuple[bool, ...], int] = defaultdict(int)

    @staticmethod
    def _place(images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The split on the device when it takes at most half of the device's free memory; else it stays on the
        host and each batch is copied over."""
        if device.type == "cuda" and images.nbytes > torch.cuda.mem_get_info(device)[0] // 2:
            print(f"WARNING: the training split ({images.nbytes / 2**30:.1f} GiB) does not fit on {device}; it stays "
                  "in host memory and every batch is copied over", file=sys.stderr)
            return images
        return images.to(device)

    def _float(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float in [-1, 1], in the networks' memory format."""
        return from_uint8(images_u8, self.fmt)

    def _noise(self) -> torch.Tensor:
        return torch.randn(self.per_rank, self.cfg.z_dim, device=self.device)

    def _fake_labels(self) -> torch.Tensor | None:
        """Uniform class labels for a batch of fakes (None when unconditional)."""
        if not self.cfg.num_classes:
            return None
        if self.tc.mode_seeking > 0:  # paired halves for the mode-seeking term
            return torch.randint(self.cfg.num_classes, (self.per_rank // 2,), device=self.device).repeat(2)
        return torch.randint(self.cfg.num_classes, (self.per_rank,), device=self.device)

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return augment.augment(x, self.ada.p if self.ada is not None else self.augment_p)

    def _autocast(self):
        return self.acc.autocast(autocast_handler=self.autocast_kwargs)

    def __call__(self, step: int) -> None:
        """Generator update `step` (0-based) with its n_critic critic updates, then the EMA."""
        tc = self.tc
        torch.manual_seed(step_seed(tc.seed, step, self.acc.process_index))
        self._done.fill_(step + 1)
        if self.cfg.num_classes and tc.cond_ramp_end_steps:  # transitional conditioning: class terms ramp 0 -> 1
            scale = condition_scale(step, tc.cond_ramp_start_steps, tc.cond_ramp_end_steps)
            set_condition_scale(self.G_plain, scale)
            set_condition_scale(self.D_plain, scale)
        # Which of this step's D updates carry the lazy penalties (wgan-gp, R1, R2: every gp_every D updates).
        gp_at = tuple(self.penalised and (step * tc.n_critic + j) % tc.gp_every == 0 for j in range(tc.n_critic))
        if not self.static:
            self._iteration(gp_at, lambda j, m: self._real(step, j, m))
        else:
            for j in range(tc.n_critic):  # grad_accum_steps is 1 here
                self.sampler.batch(step * tc.n_critic + j, out=self._real_u8[j])
                if self.cfg.num_classes:
                    self._real_labels[j].copy_(self.sampler.batch_labels(step * tc.n_critic + j))
            self._static_step(gp_at)
        if self.ada is not None and (step + 1) % tc.ada_interval_steps == 0:
            reduce = (lambda t: self.acc.reduce(t, "sum")) if self.acc.num_processes > 1 else None
            self.stats.report("Augment/r_t", self.ada.adjust(reduce))

    def _real(self, step: int, j: int, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Micro-batch m of D update j of `step`: images in [-1, 1] and their labels (None when unconditional)."""
        index = (step * self.tc.n_critic + j) * self.tc.grad_accum_steps + m
        labels = self.sampler.batch_labels(index) if self.cfg.num_classes else None
        return self._float(self.sampler.batch(index)), labels

    def _static_real(self, j: int, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._float(self._real_u8[j]), self._real_labels[j] if self.cfg.num_classes else None

    def _static_step(self, gp_at: tuple[bool, ...]) -> None:
        """Eager warm-up steps, then capture once per penalty pattern, then replay; off CUDA, always eager."""
        if not self.capture:
            return self._iteration(gp_at, self._static_real)
        entry = self._graphs.get(gp_at)
        if entry is None and self._warm[gp_at] < self.GRAPH_WARMUP_STEPS:
            self._warm[gp_at] += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._iteration(gp_at, self._static_real)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        if entry is None:
            graph, stats, self.stats = torch.cuda.CUDAGraph(), self.stats, _GraphStats()
            try:
                with torch.cuda.graph(graph):
                    self._iteration(gp_at, self._static_real)
                entry = self._graphs[gp_at] = (graph, self.stats.names, self.stats.values)
            finally:
                self.stats = stats
        graph, names, values = entry
        graph.replay()  # capture recorded the work; this runs it
        snapshot = torch.stack(values)  # the next replay overwrites the graph's outputs
        for i, name in enumerate(names):
            self.stats.report(name, snapshot[i])

    def _iteration(self, gp_at: tuple[bool, ...],
                   real: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """One step's work; `real(j, m)` gives micro-batch m of D update j (images, labels or None)."""
        tc, acc, D, G, G_plain, D_plain, stats = (self.tc, self.acc, self.D, self.G, self.G_plain, self.D_plain,
                                                  self.stats)
        aug = self._aug
        # D step(s): n_critic updates, each over grad_accum_steps micro-batches.
        for j in range(tc.n_critic):
            keep = self.reuse_fake and j == tc.n_critic - 1  # the G step trains on these fakes
            for m in range(tc.grad_accum_steps):
                x, y_real = real(j, m)
                y_fake = self._fake_labels()
                with acc.accumulate(D):
                    with torch.set_grad_enabled(keep), self._autocast():
                        z = self._noise()
                        fake = (G if keep else G_plain)(z, *_cond(y_fake))
                    with self._autocast():
                        s_real, s_fake = D(aug(x), *_cond(y_real)), D(aug(fake.detach()), *_cond(y_fake))
                    loss_d = losses.d_loss(tc.loss, s_real, s_fake)
                    if self.ada is not None:
                        self.ada.observe(s_real)
                    # Penalties, lazily every gp_every D updates, weighted by gp_every (fp32, through the same
                    # augmentation as the D call they regularise).
                    if gp_at[j]:
                        loss_d = loss_d + tc.gp_every * self._penalties(x, y_real, fake, y_fake)
                    self._backward_step(loss_d, D, self.opt_d, "Grad/norm_D")
            if tc.loss == "wgan":
                losses.clip_weights(D_plain, tc.clip_value)
        stats.report("Loss/D", loss_d)
        # D's mean output, named for what it is: bce's logit as the probability D(x) it stands for, the other
        # losses' raw critic scores.
        out_real, out_fake = s_real.float(), s_fake.float()
        if tc.loss in PROBABILITY_LOSSES:
            out_real, out_fake = out_real.sigmoid(), out_fake.sigmoid()
        key_real, key_fake = d_output_keys(tc.loss)
        stats.report(key_real, out_real.mean())
        stats.report(key_fake, out_fake.mean())
        if tc.loss in ("wgan", "wgan-gp"):
            stats.report("Loss/wasserstein_estimate", losses.wasserstein_estimate(s_real, s_fake))
        if self.ada is not None:
            stats.report("Augment/p", self.ada.p)

        # G step: D is frozen and called unwrapped, so no gradient reaches it or its DDP hooks.
        D_plain.requires_grad_(False)
        for _ in range(tc.grad_accum_steps):
            with acc.accumulate(G):
                with self._autocast():
                    if not self.reuse_fake:
                        z = self._noise()
                    fake_g = fake if self.reuse_fake else G(z, *_cond(y_fake))
                    s_fake_g = D_plain(aug(fake_g), *_cond(y_fake))
                    s_real_g = D_plain(aug(x), *_cond(y_real)) if tc.loss in losses.NEEDS_REAL_IN_G else None
                    loss_g = losses.g_loss(tc.loss, s_fake_g, s_real_g)
                    if tc.mode_seeking > 0:  # the batch's halves share labels: pairs (z_i, z_i+B/2) of one class
                        ms = losses.mode_seeking(fake_g, z)
                        loss_g = loss_g + tc.mode_seeking * ms
                        stats.report("Loss/mode_seeking", ms)
                self._backward_step(loss_g, G, self.opt_g, "Grad/norm_G")
        D_plain.requires_grad_(True)
        stats.report("Loss/G", loss_g)
        bad = ~torch.isfinite(loss_d.detach() + loss_g.detach())
        self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), self._done, self.first_bad))

        # EMA.
        self.ema.update(G_plain)

    def _penalties(self, x: torch.Tensor, y_real: torch.Tensor | None, fake: torch.Tensor,
                   y_fake: torch.Tensor | None) -> torch.Tensor:
        """The weighted sum of this run's gradient penalties on D: wgan-gp, R1 (reals), R2 (fakes)."""
        tc, D, aug, total = self.tc, self.D_plain, self._aug, 0.0
        if tc.loss == "wgan-gp":
            gp = losses.gradient_penalty(lambda v: D(aug(v), *_cond(y_real)), x, fake)
            total = total + tc.gp_weight * gp
            self.stats.report("Loss/gradient_penalty", gp)
        for name, gamma, images, labels in (("r1", tc.r1_gamma, x, y_real), ("r2", tc.r2_gamma, fake, y_fake)):
            if gamma > 0:
                r = losses.zero_centred_penalty(lambda v, lab=labels: D(aug(v), *_cond(lab)), images)
                total = total + 0.5 * gamma * r
                self.stats.report(f"Loss/{name}", r)
        return total

    def _backward_step(self, loss: torch.Tensor, model: nn.Module, opt, norm_key: str) -> None:
        self.acc.backward(loss)
        if self.acc.sync_gradients:
            if self.tc.grad_clip_norm > 0:  # clipping returns the norm before clipping: no second pass
                norm = self.acc.clip_grad_norm_(model.parameters(), self.tc.grad_clip_norm)
            else:
                norm = _grad_norm(model)
            self.stats.report(norm_key, norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    @staticmethod
    def _check_graphable(tc, world: int) -> None:
        """train.cuda_graphs captures one process's whole step: no gradient all-reduce, accumulation or loss scaler;
        ADA's controller is not captured."""
        why = ("train.grad_accum_steps must be 1" if tc.grad_accum_steps != 1 else
               "train.mixed_precision fp16 needs a loss scaler that syncs with the host; use bf16 or no"
               if tc.mixed_precision == "fp16" else f"it needs a single process, got {world}" if world != 1 else
               "train.augment=ada is not graphed yet; use diffaug or none" if tc.augment == "ada" else "")
        if why:
            raise ParamsError(f"params.yaml: train.cuda_graphs=true cannot be used here: {why}")


def make_accelerator(params: Params):
    from accelerate import Accelerator

    tc = params.train
    acc = Accelerator(mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.grad_accum_steps)
    use_cpu_cores(acc, tc.cpu_threads)
    return acc


@cores.releasing
def train(params: Params, paths: TrainPaths, accelerator=None,
          evaluator: Callable[[nn.Module], float] | None = None) -> dict:
    """Run (or resume) training; write the generator, metrics and plots. Returns the final metrics.

    `evaluator(G_ema) -> FID`, when given, runs every train.fid_every_steps and keeps the best generator.
    """
    tc = params.train
    acc = accelerator or make_accelerator(params)
    main, world = acc.is_main_process, acc.num_processes
    meta = read_meta(paths.prepared)
    if meta["shape"][1] != params.data.image_size:
        raise DataError(f"the prepared data in {paths.prepared} is {meta['shape'][1]} px but data.image_size is "
                        f"{params.data.image_size}; run the prepare stage again (dvc repro prepare)")
    split = load_split(paths.prepared, "train")
    classes = num_classes(params, meta)
    warm = warmstart.resolve(tc.init_from, params.tracking.uri) if tc.init_from else None
    gan = GANStep(params, acc, torch.from_numpy(np.array(split.images)), channels=meta["shape"][0],
                  labels=torch.from_numpy(split.labels), classes=classes, warm=warm)
    cfg, ema = gan.cfg, gan.ema

    # Resume, when a checkpoint of the same data/model/train params exists: checkpoints/<fingerprint>/latest.
    # Other fingerprints' checkpoints stay (switching experiments and back resumes), up to a bound.
    fp = fingerprint(params, meta["hash"], warm.sha256 if warm else None)
    best_name = checkpoint.GENERATOR_FILES["best"]  # in models/, and its copy in each checkpoint
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
        tracker.log_params(_train_params(params))  # evaluate and export log their own sections
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
            cores.rebalance()  # trainings that started or ended on this machine since the last tick
            elapsed = time.perf_counter() - t_tick
            row = {"step": done, **gan.stats.pop_means(), "Speed/img_per_s": n_tick * tc.batch_size / max(elapsed, 1e-9)}
            if evaluator is not None and tc.fid_every_steps and done % tc.fid_every_steps == 0:
                row["Eval/fid"] = fid = evaluator(ema.module)
                if main and fid < best_fid:
                    best_fid = fid
                    checkpoint.save_generator(ema.module, best_path, None, cfg)
            history.append(row)
            if main:
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=done)
                print(_progress_line(row, progress), flush=True)  # unbuffered under dvc
                if done % tc.sample_every_steps == 0 or done == tc.steps:
                    tracker.log_image(sample_grid(ema.module, *grid_z), "samples/ema", done)
            if done % tc.checkpoint_every_steps == 0 or done == tc.steps:
                loop_state = {"fingerprint": fp, "history": history, "best_fid": best_fid, "mlflow_run_id": tracker.run_id,
                              "tensorboard_run": tracker.tensorboard_run}
                if gan.ada is not None:
                    loop_state["ada"] = gan.ada.state()
                checkpoint.save_checkpoint(acc, paths.checkpoints, fp, done, ema, loop_state,
                                           tc.keep_checkpoints, files={best_name: best_path})
            t_tick, n_tick = time.perf_counter(), 0
    except KeyboardInterrupt:  # Ctrl-C: one line that says where to resume from, not a traceback per process
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        tracker.close("KILLED")
        raise Interrupted(f"interrupted at step {done} of {tc.steps}; last checkpoint "
                          f"{_last_good(paths.checkpoints, fp)}; run dvc repro to resume") from None

    wall = time.perf_counter() - t_start
    result = {}
    if main:
        result = _write_outputs(params, paths, cfg, meta, gan, history, wall, start, world,
                                tracker)
    acc.wait_for_everyone()
    return result


TRACKED_SECTIONS = ("data", "model", "train", "tracking")  # the params train uses (data: through prepare)


def _train_params(params: Params) -> dict:
    return {k: v for k, v in params.flat().items() if k.split(".")[0] in TRACKED_SECTIONS}


def _last_good(root: Path, fp: str) -> str:
    """This run's newest complete checkpoint, for the messages that stop a run."""
    return str(checkpoint.latest_checkpoint(root, fp) or "none (none was written yet)")


def _is_tick(tc, done: int) -> bool:
    every = (tc.log_every_steps, tc.checkpoint_every_steps, tc.sample_every_steps, tc.fid_every_steps)
    return done == tc.steps or any(n and done % n == 0 for n in every)


# Losses whose D outputs the logit of a probability (D(x) = sigmoid(logit)); the others' D is an unbounded critic.
PROBABILITY_LOSSES = ("bce",)
D_OUTPUT_KEYS = ("D/real_prob", "D/fake_prob", "D/real_score", "D/fake_score")


def d_output_keys(loss: str) -> tuple[str, str]:
    """The stats names of D's mean output on reals and fakes under `loss`: probabilities or critic scores."""
    return D_OUTPUT_KEYS[:2] if loss in PROBABILITY_LOSSES else D_OUTPUT_KEYS[2:]


def _progress_line(row: dict, progress: Progress) -> str:
    """`step 300/2000 D=1.21 G=0.93 real_prob=0.61 fake_prob=0.38 img_per_s=512, 12.3 s elapsed, ETA 57 s`."""
    keys = ("Loss/D", "Loss/G", *D_OUTPUT_KEYS, "Augment/p", "Speed/img_per_s")
    return progress.line(row["step"], **{k.split("/")[-1]: row[k] for k in keys if k in row})


def _write_outputs(params, paths, cfg, meta, gan, history, wall, start, world, tracker) -> dict:
    paths.models.mkdir(parents=True, exist_ok=True)
    G, G_ema = gan.G_plain, gan.ema.module
    extra = {"data_hash": meta["hash"], "classes": meta["classes"], "params": params.to_dict()}
    files = checkpoint.GENERATOR_FILES
    checkpoint.save_generator(G, paths.models / files["last"], paths.models / checkpoint.GENERATOR_CONFIG, cfg, extra)
    checkpoint.save_generator(G_ema, paths.models / files["ema"], None, cfg)
    # D too, so that train.init_from pointed at this generator fine-tunes both networks.
    checkpoint.save_generator(gan.D_plain, paths.models / warmstart.DISCRIMINATOR_FILE, None, cfg)
    grid = sample_grid(G_ema, *grid_inputs(cfg, params.train.seed))
    paths.plots.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(grid).save(paths.plots / "samples.png")
    _write_curves(history, paths.plots)
    last = history[-1] if history else {}
    speeds = [r["Speed/img_per_s"] for r in history[1:]] or [r["Speed/img_per_s"] for r in history]
    metrics = {
        "steps": params.train.steps, "resumed_from_step": start, "world_size": world,
        "loss_d": last.get("Loss/D"), "loss_g": last.get("Loss/G"),
        **{k.replace("/", "_").lower(): last[k] for k in D_OUTPUT_KEYS if k in last},  # d_real_prob, ...
        "img_per_s": float(np.median(speeds)) if speeds else None,
        "wall_seconds": round(wall, 2),
    }
    tracker.log_artifact(paths.plots / "samples.png", "samples")
    tracker.log_artifact(paths.plots / "train_loss.png", "plots")
    tracker.log_artifact(paths.models / checkpoint.GENERATOR_CONFIG, "generator")
    tracker.log_hparams(_train_params(params), [k for k in last if k != "step"])
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
