"""Latents, labels and pixels in and out of a generator: uint8 quantisation, fixed grid inputs, sample grids.

Latents are drawn on the CPU from a seed, so the same seed gives the same images on any device or process count.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pipeline.nets.common import NetConfig


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """tanh output in [-1, 1] -> uint8 [0, 255], the quantisation every consumer uses."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def sample_grid(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None, nrow: int = 0) -> np.ndarray:
    """(N, z_dim) latents [and labels] -> one (H, W, 3) uint8 grid of G's samples (in eval mode), quantised as
    scored; `nrow` images per row (0: a square)."""
    from torchvision.utils import make_grid

    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        imgs = to_uint8(generator(z.to(device), *([] if labels is None else [labels.to(device)]))).cpu()
    generator.train(was_training)
    grid = make_grid(imgs, nrow=nrow or int(math.sqrt(len(imgs))), padding=2, pad_value=255)  # grey -> 3 channels
    return grid.permute(1, 2, 0).numpy()


GRID_COLUMNS, GRID_MAX_ROWS = 8, 16


def grid_inputs(cfg: NetConfig, seed: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Fixed latents for a sample grid: `n` in a square, or, when conditional, one row of GRID_COLUMNS per class
    (the first GRID_MAX_ROWS classes). Returns (z, labels or None, images per row)."""
    if not cfg.num_classes:
        return latents(n, cfg.z_dim, seed), None, int(math.sqrt(n))
    rows = min(cfg.num_classes, GRID_MAX_ROWS)
    labels = torch.arange(rows).repeat_interleave(GRID_COLUMNS)
    return latents(len(labels), cfg.z_dim, seed), labels, GRID_COLUMNS


def balanced_labels(n: int, num_classes: int) -> torch.Tensor | None:
    """Labels 0, 1, ..., K-1, 0, 1, ... for n samples (uniform over classes, exactly balanced); None if unconditional."""
    return torch.arange(n) % num_classes if num_classes else None


def from_uint8(images: torch.Tensor, memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
    """uint8 [0, 255] -> float in [-1, 1]: one new tensor (in `memory_format`), the input is never modified."""
    return images.to(torch.float32, memory_format=memory_format, copy=True).div_(127.5).sub_(1.0)


def latents(n: int, z_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """(n, z_dim) float32 N(0, 1) latents drawn on the CPU from `seed`: the same z on any device or process count.
    With `truncation` t (Brock et al., 2018), entries with |z| > t are redrawn until inside [-t, t]: resampling keeps
    the shape of a truncated normal, where clamping would pile mass at exactly +-t. ValueError for t <= 0."""
    if truncation is not None and truncation <= 0:
        raise ValueError(f"truncation must be > 0, got {truncation}")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, z_dim, generator=gen)
    if truncation is not None:
        for _ in range(1000):  # P(|z| > t) per draw is < 1 for any t > 0, so this ends fast
            outside = z.abs() > truncation
            if not outside.any():
                break
            z[outside] = torch.randn(int(outside.sum()), generator=gen)
        else:
            raise ValueError(f"truncation {truncation} is too small to sample from")
    return z
