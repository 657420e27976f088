"""One GAN training step on Hugging Face Accelerate: n_critic D updates, the G update, penalties, the EMA.

Follows the DCGAN recipe (Radford et al., 2015) with the WGAN / WGAN-GP critic schedule (Arjovsky et al., 2017;
Gulrajani et al., 2017), zero-centred R1/R2 (Mescheder et al., 2018; R3GAN, Huang et al., 2024), lazy regularisation
(Karras et al., 2020, stylegan2-ada), differentiable augmentation in front of D (DiffAugment / ADA, `augment`),
class conditioning (projection D), MSGAN's mode-seeking term (Mao et al., 2019), the opt-in LeCam term and adaptive
pseudo augmentation (`regularise`) and an EMA of G.
Every random draw of step s on rank r comes from a seed that is a function of (train.seed, s, r), so a resumed run
replays an uninterrupted one exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pipeline import hardware
from pipeline.config import Params
from pipeline.data import BatchSampler
from pipeline.nets import build, net_config, set_condition_scale
from pipeline.nets.sampling import from_uint8
from pipeline.training import augment, losses, regularise, warmstart
from pipeline.training.ema import EMA
from pipeline.training.stats import Stats

# Losses whose D outputs the logit of a probability (D(x) = sigmoid(logit)); the others' D is an unbounded critic.
PROBABILITY_LOSSES = ("bce",)
D_OUTPUT_KEYS = ("D/real_prob", "D/fake_prob", "D/real_score", "D/fake_score")

Real = Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]  # (D update j, micro-batch m) -> (x, labels)


def d_output_keys(loss: str) -> tuple[str, str]:
    """The stats names of D's mean output on reals and fakes under `loss`: probabilities or critic scores."""
    return D_OUTPUT_KEYS[:2] if loss in PROBABILITY_LOSSES else D_OUTPUT_KEYS[2:]


def condition_scale(step: int, start: int, end: int) -> float:
    """0 before `start`, 1 from `end` on, linear between."""
    return min(1.0, max(0.0, (step - start) / max(end - start, 1)))


def _cond(labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The extra network argument of a conditional model: (labels,), or () when unconditional."""
    return () if labels is None else (labels,)


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63)


def _grad_norm(module: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


@dataclass
class DBatch:
    """One D micro-batch: its reals, fakes, labels and scores. The G step reuses the last one's."""

    x: torch.Tensor
    y_real: torch.Tensor | None
    z: torch.Tensor
    fake: torch.Tensor
    y_fake: torch.Tensor | None
    s_real: torch.Tensor
    s_fake: torch.Tensor
    loss_d: torch.Tensor


class GANStep:
    """Networks, optimisers, batch sampler and one training step; `train()` adds ticks around it.

    The benchmark times exactly this object, so its figures are the train stage's. `cuda_graph.GraphedStep`
    replays the same step as captured CUDA graphs.
    """

    capture = False  # whether steps are captured as CUDA graphs (cuda_graph.GraphedStep on CUDA)

    def __init__(self, params: Params, acc, images: torch.Tensor, channels: int, labels: torch.Tensor | None = None,
                 classes: int = 0, warm: warmstart.WarmStart | None = None):
        from accelerate.utils import AutocastKwargs

        # The train stage has resolved them already; a benchmark may not have.
        params = hardware.resolved(params.resolved(), acc.device)
        tc = self.tc = params.train
        self.acc, self.device = acc, acc.device
        self.cfg = cfg = net_config(params, channels, classes)
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
        self.reg = regularise.DRegularisers(tc, self.device)  # LeCam, APA: off by default
        self.width = (regularise.DynamicWidth(self.D_plain, tc.d_width_end, tc.steps, tc.seed)
                      if tc.d_width_end < 1 else None)  # DynamicD: off by default
        self._reduce = (lambda t: acc.reduce(t, "sum")) if acc.num_processes > 1 else None  # controllers' sums
        self.penalised = bool(params.gradient_penalties())
        self.stats = Stats()
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite step
        self._done = torch.zeros((), dtype=torch.long, device=self.device)  # step + 1 of the running step

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
        return augment.augment(x, self.ada.p if self.ada is not None else self.augment_p, self.tc.augment_policy)

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
        if self.width is not None:
            self.stats.report("D/width", torch.tensor(self.width.start_step(step)))
        # Which of this step's D updates carry the lazy penalties (wgan-gp, R1, R2: every gp_every D updates).
        gp_at = tuple(self.penalised and (step * tc.n_critic + j) % tc.gp_every == 0 for j in range(tc.n_critic))
        self._run(step, gp_at)
        if self.ada is not None and (step + 1) % tc.ada_interval_steps == 0:
            self.stats.report("Augment/r_t", self.ada.adjust(self._reduce))
        self.reg.end_step(step, self._reduce, self.stats.report)

    def _run(self, step: int, gp_at: tuple[bool, ...]) -> None:
        """This step's work, eagerly, on micro-batches drawn by index."""
        self._iteration(gp_at, lambda j, m: self._real(step, j, m))

    def _real(self, step: int, j: int, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Micro-batch m of D update j of `step`: images in [-1, 1] and their labels (None when unconditional)."""
        index = (step * self.tc.n_critic + j) * self.tc.grad_accum_steps + m
        labels = self.sampler.batch_labels(index) if self.cfg.num_classes else None
        return self._float(self.sampler.batch(index)), labels

    def _iteration(self, gp_at: tuple[bool, ...], real: Real) -> None:
        """One step's work; `real(j, m)` gives micro-batch m of D update j (images, labels or None)."""
        # D step(s).
        last = self._d_updates(gp_at, real)
        self._report_d(last)
        # G step.
        loss_g = self._g_update(last)
        bad = ~torch.isfinite(last.loss_d.detach() + loss_g.detach())
        self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), self._done, self.first_bad))
        # EMA.
        self.ema.update(self.G_plain)

    def _d_updates(self, gp_at: tuple[bool, ...], real: Real) -> DBatch:
        """n_critic D updates, each over grad_accum_steps micro-batches; returns the last micro-batch."""
        tc = self.tc
        for j in range(tc.n_critic):
            keep = self.reuse_fake and j == tc.n_critic - 1  # the G step trains on these fakes
            for m in range(tc.grad_accum_steps):
                last = self._d_micro_step(*real(j, m), keep=keep, penalise=gp_at[j])
            self.reg.end_d_update(self._reduce)
            if tc.loss == "wgan":
                losses.clip_weights(self.D_plain, tc.clip_value)
        return last

    def _d_micro_step(self, x: torch.Tensor, y_real: torch.Tensor | None, keep: bool, penalise: bool) -> DBatch:
        """D's loss on one micro-batch of reals and fresh fakes (kept in G's graph when `keep`), backward, step."""
        tc, aug = self.tc, self._aug
        y_fake = self._fake_labels()
        with self.acc.accumulate(self.D):
            with torch.set_grad_enabled(keep), self._autocast():
                z = self._noise()
                fake = (self.G if keep else self.G_plain)(z, *_cond(y_fake))
            x_d, y_d = self.reg.reals(x, y_real, fake, y_fake)  # APA: some of D's reals are these fakes
            with self._autocast():
                s_real, s_fake = self.D(aug(x_d), *_cond(y_d)), self.D(aug(fake.detach()), *_cond(y_fake))
            loss_d = self.reg.d_loss(losses.d_loss(tc.loss, s_real, s_fake), s_real, s_fake, self.stats.report)
            if self.ada is not None:
                self.ada.observe(s_real)
            # Penalties, lazily every gp_every D updates, weighted by gp_every (fp32, through the same augmentation
            # as the D call they regularise).
            if penalise:
                loss_d = loss_d + tc.gp_every * self._penalties(x_d, y_d, fake, y_fake)
            self._backward_step(loss_d, self.D, self.opt_d, "Grad/norm_D")
        return DBatch(x, y_real, z, fake, y_fake, s_real, s_fake, loss_d)

    def _report_d(self, last: DBatch) -> None:
        """D's loss, and its mean output named for what it is: bce's logit as the probability D(x) it stands for,
        the other losses' raw critic scores."""
        tc, stats = self.tc, self.stats
        stats.report("Loss/D", last.loss_d)
        out_real, out_fake = last.s_real.float(), last.s_fake.float()
        if tc.loss in PROBABILITY_LOSSES:
            out_real, out_fake = out_real.sigmoid(), out_fake.sigmoid()
        key_real, key_fake = d_output_keys(tc.loss)
        stats.report(key_real, out_real.mean())
        stats.report(key_fake, out_fake.mean())
        if tc.loss in ("wgan", "wgan-gp"):
            stats.report("Loss/wasserstein_estimate", losses.wasserstein_estimate(last.s_real, last.s_fake))
        if self.ada is not None:
            stats.report("Augment/p", self.ada.p.clone())  # a copy: adjust() moves p in place

    def _g_update(self, last: DBatch) -> torch.Tensor:
        """G's update against the last D micro-batch's labels (and fakes, under reuse_fake); returns G's loss. D is
        frozen and called unwrapped, so no gradient reaches it or its DDP hooks."""
        tc, aug, D_plain, y_fake, z = self.tc, self._aug, self.D_plain, last.y_fake, last.z
        D_plain.requires_grad_(False)
        for _ in range(tc.grad_accum_steps):
            with self.acc.accumulate(self.G):
                with self._autocast():
                    if not self.reuse_fake:
                        z = self._noise()
                    fake_g = last.fake if self.reuse_fake else self.G(z, *_cond(y_fake))
                    s_fake_g = D_plain(aug(fake_g), *_cond(y_fake))
                    s_real_g = D_plain(aug(last.x), *_cond(last.y_real)) if tc.loss in losses.NEEDS_REAL_IN_G else None
                    loss_g = losses.g_loss(tc.loss, s_fake_g, s_real_g)
                    if tc.mode_seeking > 0:  # the batch's halves share labels: pairs (z_i, z_i+B/2) of one class
                        ms = losses.mode_seeking(fake_g, z)
                        loss_g = loss_g + tc.mode_seeking * ms
                        self.stats.report("Loss/mode_seeking", ms)
                self._backward_step(loss_g, self.G, self.opt_g, "Grad/norm_G")
        D_plain.requires_grad_(True)
        self.stats.report("Loss/G", loss_g)
        return loss_g

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
