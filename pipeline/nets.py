"""DCGAN generator and discriminator for 16-128 px (Radford et al., 2015, arXiv:1511.06434).

At 64 px with z_dim=100 and 64 channels these are exactly the pytorch/examples `dcgan` networks. The discriminator
adds optional Dropout, spectral norm (Miyato et al., 2018) and a choice of normalisation for gradient-penalty critics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild G and D; saved next to the weights as JSON."""

    arch: str = "dcgan"
    z_dim: int = 64
    image_size: int = 32
    channels: int = 1
    g_channels: int = 32
    d_channels: int = 32
    d_norm: str = "batch"
    dropout: float = 0.0
    spectral_norm: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def _n_doublings(image_size: int) -> int:
    n = int(math.log2(image_size)) - 2  # 4x4 -> image_size
    if image_size < 16 or 2 ** (n + 2) != image_size:
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return n


def dcgan_init(m: nn.Module) -> None:
    """The DCGAN paper's init: N(0, 0.02) convs, N(1, 0.02) norm scales."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (B, z_dim) -> image (B, C, S, S) in [-1, 1]."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        n = _n_doublings(cfg.image_size)
        ch = cfg.g_channels * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.z_dim, ch, 4, 1, 0, bias=False),  # (B, ch, 4, 4)
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.shape[0], -1, 1, 1))


def _norm(kind: str, ch: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm2d(ch)]
    if kind == "instance":
        return [nn.InstanceNorm2d(ch, affine=True)]
    if kind == "layer":
        return [nn.GroupNorm(1, ch)]
    if kind == "none":
        return []
    raise ValueError(f"unknown d_norm {kind!r}")


class Discriminator(nn.Module):
    """image (B, C, S, S) -> logit (B,). No sigmoid: the losses take raw scores."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        sn = nn.utils.parametrizations.spectral_norm if cfg.spectral_norm else (lambda m: m)
        drop = [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []
        n = _n_doublings(cfg.image_size)
        ch = cfg.d_channels
        layers: list[nn.Module] = [sn(nn.Conv2d(cfg.channels, ch, 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, True)]
        for _ in range(n - 1):
            layers += [sn(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False)), *_norm(cfg.d_norm, ch * 2),
                       nn.LeakyReLU(0.2, True), *drop]
            ch *= 2
        layers += [sn(nn.Conv2d(ch, 1, 4, 1, 0, bias=False))]  # (B, 1, 1, 1)
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


def build(cfg: NetConfig) -> tuple[Generator, Discriminator]:
    if cfg.arch != "dcgan":
        raise ValueError(f"unknown arch {cfg.arch!r}")
    return Generator(cfg), Discriminator(cfg)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """tanh output in [-1, 1] -> uint8 [0, 255], the quantisation every consumer uses."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def sample_grid(generator: nn.Module, z: torch.Tensor) -> np.ndarray:
    """(N, z_dim) latents -> one (H, W, 3) uint8 grid of G's samples (in eval mode), quantised as scored."""
    from torchvision.utils import make_grid

    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        imgs = to_uint8(generator(z.to(next(generator.parameters()).device))).cpu()
    generator.train(was_training)
    grid = make_grid(imgs, nrow=int(math.sqrt(len(imgs))), padding=2, pad_value=255)  # grey -> 3 channels
    return grid.permute(1, 2, 0).numpy()


def from_uint8(images: torch.Tensor, memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
    """uint8 [0, 255] -> float in [-1, 1]: one new tensor (in `memory_format`), the input is never modified."""
    return images.to(torch.float32, memory_format=memory_format, copy=True).div_(127.5).sub_(1.0)


def latents(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """(n, z_dim) N(0, 1) latents drawn on the CPU from `seed`: the same z on any device or process count."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))
