"""Opt-in limited-data regularisers of D: LeCam (Tseng et al., CVPR 2021, arXiv:2104.03310), adaptive pseudo
augmentation (APA; Jiang et al., NeurIPS 2021, arXiv:2111.06849) and DynamicD's shrinking width (Yang et al., NeurIPS
2022, arXiv:2209.09897). LeCam's and APA's state lives on the device (no host sync per step) and travels in the
checkpoint; DynamicD's masks follow from the seed and the step alone. A resumed run replays an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from pipeline.training import losses
from pipeline.training.augment import AdaptiveP

Reduce = Callable[[torch.Tensor], torch.Tensor] | None  # sums a tensor over processes; None on one process
Report = Callable[[str, torch.Tensor], None]


class LeCamEMA:
    """(alpha_R, alpha_F): moving averages of D's mean output on reals and fakes, one update per D update (its
    micro-batches and processes pooled), zero-debiased as in the authors' code: after t updates they are the
    decay-weighted means of the t observations, so the first update sets them to the observed means."""

    def __init__(self, decay: float, device: torch.device):
        self.decay = decay
        self.biased = torch.zeros(2, device=device)  # (real, fake), started at 0
        self.updates = torch.zeros((), dtype=torch.long, device=device)  # t
        self.sums = torch.zeros(3, device=device)  # (sum of mean D(x), sum of mean D(G(z)), micro-batches) pending

    @property
    def alpha(self) -> torch.Tensor:
        """(alpha_R, alpha_F); (0, 0) before the first update."""
        return self.biased / (1.0 - torch.pow(self.decay, self.updates.float())).clamp(min=1e-12)

    def observe(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        means = torch.stack([real.detach().float().mean(), fake.detach().float().mean()])
        self.sums += torch.cat([means, means.new_ones(1)])

    def update(self, reduce: Reduce = None) -> None:
        """Fold in the means observed since the last update (summed over processes by `reduce`)."""
        sums = reduce(self.sums) if reduce is not None else self.sums
        self.biased.lerp_(sums[:2] / sums[2].clamp(min=1.0), 1.0 - self.decay)
        self.updates += 1
        self.sums.zero_()

    def state(self) -> dict:
        return {"biased": self.biased.tolist(), "updates": int(self.updates), "sums": self.sums.tolist()}

    def load(self, state: dict) -> None:
        self.biased.copy_(torch.tensor(state["biased"]))
        self.updates.fill_(state["updates"])
        self.sums.copy_(torch.tensor(state["sums"]))


def pseudo_reals(x: torch.Tensor, y_real: torch.Tensor | None, fake: torch.Tensor, y_fake: torch.Tensor | None,
                 p: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """APA's real batch: image i (B, C, H, W) is replaced by fake i with probability p, and takes its label."""
    hit = torch.rand(x.shape[0], device=x.device) < p  # (B,)
    x = torch.where(hit.view(-1, 1, 1, 1), fake.detach().to(x.dtype), x)
    return x, (None if y_real is None else torch.where(hit, y_fake, y_real))


class DRegularisers:
    """The regularisers of D a run asked for (train.lecam_weight, train.apa). When both are off every method returns
    its input untouched and draws no random numbers, so the default trajectory is unchanged."""

    def __init__(self, tc, device: torch.device):
        self.weight, self.interval = tc.lecam_weight, tc.ada_interval_steps
        self.lecam = LeCamEMA(tc.lecam_decay, device) if tc.lecam_weight > 0 else None
        self.apa = AdaptiveP(tc.apa_target, tc.apa_kimg, tc.batch_size, tc.ada_interval_steps,
                             device) if tc.apa else None

    def reals(self, x: torch.Tensor, y_real: torch.Tensor | None, fake: torch.Tensor,
              y_fake: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What D sees as reals: under APA, some of this D update's (detached) fakes with their labels."""
        return (x, y_real) if self.apa is None else pseudo_reals(x, y_real, fake, y_fake, self.apa.p)

    def d_loss(self, loss_d: torch.Tensor, s_real: torch.Tensor, s_fake: torch.Tensor,
               report: Report) -> torch.Tensor:
        """loss_d plus lecam_weight times LeCam's term (loss_d itself when off); APA observes the real scores."""
        if self.apa is not None:
            self.apa.observe(s_real)
        if self.lecam is None:
            return loss_d
        alpha_real, alpha_fake = self.lecam.alpha
        term = losses.lecam(s_real, s_fake, alpha_real, alpha_fake)
        self.lecam.observe(s_real, s_fake)
        report("Loss/lecam", term)
        return loss_d + self.weight * term

    def end_d_update(self, reduce: Reduce) -> None:
        """After each D update (all its micro-batches): LeCam's moving averages."""
        if self.lecam is not None:
            self.lecam.update(reduce)

    def end_step(self, step: int, reduce: Reduce, report: Report) -> None:
        """After G step `step` (0-based): APA's p moves every ada_interval_steps, as ADA's."""
        if self.apa is None:
            return
        if (step + 1) % self.interval == 0:
            report("Augment/apa_r_t", self.apa.adjust(reduce))
        report("Augment/apa_p", self.apa.p.clone())  # a copy: adjust() moves p in place

    def state(self) -> dict:
        parts = {"lecam": self.lecam, "apa": self.apa}
        return {name: part.state() for name, part in parts.items() if part is not None}

    def load(self, state: dict) -> None:
        for name, part in (("lecam", self.lecam), ("apa", self.apa)):
            if part is not None:
                part.load(state[name])


class DynamicWidth:
    """DynamicD's scheme for limited data: the share of D's channels in use falls linearly from 1 at the first step
    to `end` at the last. Each step uses its own random subset of each stage's channels (the authors' random
    sub-network), drawn from (seed, step) alone, and zeroes the rest of that stage's output; the last stage, which
    feeds the score, keeps its full width (their `keepd`). No extra parameters and no extra compute."""

    def __init__(self, D: nn.Module, end: float, steps: int, seed: int):
        self.end, self.steps, self.seed = end, steps, seed
        self.share, self.step = 1.0, 0
        self.masks: dict[int, torch.Tensor] = {}  # stage -> (1, C, 1, 1) float mask of this step
        for i, stage in enumerate(D.stages()[:-1]):
            stage.register_forward_hook(partial(self._mask, i))

    def start_step(self, step: int) -> float:
        """Set the share for G step `step` (0-based) and return it."""
        self.step, self.masks = step, {}
        self.share = 1.0 - (1.0 - self.end) * step / max(self.steps - 1, 1)
        return self.share

    def _mask(self, i: int, module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor:
        if i not in self.masks:
            channels = out.shape[1]
            draw = torch.Generator().manual_seed((self.seed * 1_000_003 + self.step) * 64 + i)
            keep = torch.randperm(channels, generator=draw)[: max(1, round(self.share * channels))]
            self.masks[i] = torch.zeros(channels).index_fill_(0, keep, 1.0).view(1, -1, 1, 1).to(out.device)
        return out * self.masks[i].to(out.dtype)
