"""Differentiable augmentation of D's inputs: DiffAugment (Zhao et al., 2020, arXiv:2006.10738) and its adaptive
probability from ADA (Karras et al., 2020, arXiv:2006.06676).

DiffAugment's policy, the default: colour (brightness, saturation, contrast), translation (up to 1/8 of the side, zero
padded) and cutout (a square of half the side). Two of ADA's geometric transforms can be added for long runs, where
ADA's p saturates at 1 on these three: flip (a horizontal mirror) and zoom (isotropic scaling by 2^N(0, 0.2^2),
bilinear, reflection padded). They are applied to real and generated images alike, before every D call. Each
transform hits each image with probability p: everything is batched tensor arithmetic on the images' device, with
no per-image Python, and at p = 0 the input is returned unchanged. Gradients flow through every transform to G.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config.schema import AUGMENT_POLICY


def _where(hit: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(hit.view(-1, 1, 1, 1), changed, x)


def _colour(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    r = torch.rand(3, b, 1, 1, 1, device=x.device, dtype=x.dtype)
    x = x + (r[0] - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (r[1] * 2) + mean  # saturation (the identity on one channel)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (r[2] + 0.5) + mean  # contrast


def _translate(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sy, sx = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    dy = torch.randint(-sy, sy + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (b, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + sy).expand(b, h, w)  # into the padded image
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + sx).expand(b, h, w)
    padded = F.pad(x, (sx, sx, sy, sy))  # (B, C, H + 2sy, W + 2sx)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) gather -> NCHW


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    top = torch.randint(0, h - ch + 1, (b, 1, 1), device=x.device)
    left = torch.randint(0, w - cw + 1, (b, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _flip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(3)


def _zoom(x: torch.Tensor, std: float = 0.2) -> torch.Tensor:
    b = x.shape[0]
    inv = torch.exp2(-std * torch.randn(b, device=x.device))  # the grid reads the input at 1/scale
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = inv
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False).to(x.dtype)


# In the order they are applied: ADA's geometric ones (Karras et al., 2020) first, then DiffAugment's, in its order.
TRANSFORMS = {"flip": _flip, "zoom": _zoom, "colour": _colour, "translation": _translate, "cutout": _cutout}


def augment(x: torch.Tensor, p: float | torch.Tensor, policy: tuple[str, ...] = AUGMENT_POLICY) -> torch.Tensor:
    """x (B, C, H, W) -> the same shape, each transform of `policy` applied to each image with probability p (in
    TRANSFORMS' order, whatever the policy's)."""
    if isinstance(p, (int, float)) and p <= 0:
        return x
    p = torch.as_tensor(p, device=x.device)
    for name, transform in TRANSFORMS.items():
        if name in policy:
            hit = torch.rand(x.shape[0], device=x.device) < p  # (B,)
            x = _where(hit, transform(x), x)
    return x


class AdaptiveP:
    """ADA's controller: p rises while D is confident on reals (E[sign D(x)] above `target`) and falls otherwise,
    by at most batch * interval / (kimg * 1000) per adjustment. Lives on the device; no host sync."""

    def __init__(self, target: float, kimg: float, batch: int, interval: int, device: torch.device, p: float = 0.0):
        self.target = target
        self.step_size = batch * interval / (kimg * 1000.0)
        self.p = torch.full((), p, device=device)
        self.signs = torch.zeros((2,), device=device)  # (sum of sign D(x_real), count) since the last adjustment

    def observe(self, real_scores: torch.Tensor) -> None:
        s = real_scores.detach().float()
        self.signs += torch.stack([s.sign().sum(), torch.tensor(float(s.numel()), device=s.device)])

    def adjust(self, reduce=None) -> torch.Tensor:
        """Move p once from the signs observed so far (summed over processes by `reduce`); returns r_t."""
        signs = reduce(self.signs) if reduce is not None else self.signs
        r_t = signs[0] / signs[1].clamp(min=1.0)
        self.p.copy_((self.p + torch.sign(r_t - self.target) * self.step_size).clamp(0.0, 1.0))
        self.signs.zero_()
        return r_t

    def state(self) -> dict:
        return {"p": float(self.p), "signs": self.signs.tolist()}

    def load(self, state: dict) -> None:
        self.p.fill_(state["p"])
        self.signs.copy_(torch.tensor(state["signs"]))
