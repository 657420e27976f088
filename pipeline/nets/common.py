"""What every arch shares: the network config, D's normalisation choices, spectral norm, and the class-conditioning
parts: conditional BatchNorm and a class embedding for G, a projection head for D (Miyato & Koyama, 2018,
arXiv:1802.05637), each scaled by a transitional-conditioning factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

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
    minibatch_std: bool = False  # D: one more feature map, the spread of its features over groups of 4 images
    skip_excitation: bool = False  # DCGAN G: each feature map from 16x16 up is gated by the one 4x smaller
    num_classes: int = 0  # > 0: class-conditional G and projection D; G(z, labels), D(x, labels)
    g_conditioning: str = "concat"  # DCGAN G: "cbn" (conditional BatchNorm) or "concat" (embedding next to z)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def n_doublings(image_size: int) -> int:
    n = int(math.log2(image_size)) - 2  # 4x4 -> image_size
    if image_size < 16 or 2 ** (n + 2) != image_size:
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return n


def raw_weight(m: nn.Module) -> torch.Tensor:
    """The weight parameter to initialise: under spectral norm, the unnormalised original (`m.weight` is computed)."""
    return m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight


class ConditionScale(nn.Module):
    """A class term's strength in [0, 1], as a buffer: 1 is plain conditioning; the training loop ramps it up from 0
    for the transitional training of Shahbazi et al., 2022 (arXiv:2201.06578), against collapse on small data. It is
    saved with the weights, so an exported G carries the value it was trained to (1)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cond_scale", torch.ones(()))


def set_condition_scale(module: nn.Module, value: float) -> None:
    for m in module.modules():
        if isinstance(m, ConditionScale):
            m.cond_scale.fill_(value)


class CondBatchNorm(ConditionScale):
    """BatchNorm whose scale and shift come from the class (conditional BN, de Vries et al., 2017; BigGAN)."""

    def __init__(self, ch: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=False)
        self.gain, self.bias = nn.Embedding(num_classes, ch), nn.Embedding(num_classes, ch)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gain = 1.0 + self.cond_scale * (self.gain(labels) - 1.0)
        return self.bn(x) * gain[:, :, None, None] + (self.cond_scale * self.bias(labels))[:, :, None, None]


class ClassEmbedding(ConditionScale):
    """The class as a vector next to z (the concatenating G's input)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.cond_scale * self.embed(labels)


def g_norm(ch: int, num_classes: int) -> nn.Module:
    """G's normalisation: BatchNorm, or class-conditional BatchNorm when the model is conditional."""
    return CondBatchNorm(ch, num_classes) if num_classes else nn.BatchNorm2d(ch)


def norm_layers(kind: str, ch: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm2d(ch)]
    if kind == "instance":
        return [nn.InstanceNorm2d(ch, affine=True)]
    if kind == "layer":
        return [nn.GroupNorm(1, ch)]
    if kind == "none":
        return []
    raise ValueError(f"unknown d_norm {kind!r}")


def require_labels(cfg: NetConfig, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        raise ValueError(f"this {cfg.arch} network is class-conditional ({cfg.num_classes} classes): pass labels")
    return labels


class ProjectionHead(ConditionScale):
    """The projection discriminator's class term: <embed(y), phi(x)> added to D's unconditional score."""

    def __init__(self, num_classes: int, features: int, sn: Callable[[nn.Module], nn.Module]):
        super().__init__()
        self.embed = sn(nn.Embedding(num_classes, features))
        nn.init.normal_(raw_weight(self.embed), 0.0, 0.02)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("this discriminator is class-conditional: pass labels")
        return self.cond_scale * (self.embed(labels) * features).sum(dim=1)  # (B,)


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation (Karras et al., 2018, arXiv:1710.10196): appends one feature map,
    each image's group's feature spread (std over the group, averaged over channels and pixels), so D can see a
    batch that lacks variety. Groups of `group` images, or the largest divisor of the batch under it."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = next(k for k in range(min(self.group, b), 0, -1) if b % k == 0)
        spread = x.float().view(g, b // g, c, h, w).var(dim=0, unbiased=False).add(1e-8).sqrt().mean(dim=(1, 2, 3))
        return torch.cat([x, spread.to(x.dtype).repeat(g).view(b, 1, 1, 1).expand(b, 1, h, w)], dim=1)


def spectral_norm_fn(enabled: bool) -> Callable[[nn.Module], nn.Module]:
    return nn.utils.parametrizations.spectral_norm if enabled else (lambda m: m)
