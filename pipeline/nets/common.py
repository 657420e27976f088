"""Network config, the arch registry, the DCGAN G and D for 16-128 px (Radford et al., 2015, arXiv:1511.06434), and
the class-conditioning parts every arch shares: a projection head for D (Miyato & Koyama, 2018, arXiv:1802.05637).

At 64 px with z_dim=100 and 64 channels, unconditional, these are exactly the pytorch/examples `dcgan` networks. The
discriminator adds optional Dropout, spectral norm (Miyato et al., 2018) and a choice of normalisation for
gradient-penalty critics. A conditional DCGAN G takes a class embedding next to z, or conditional BatchNorm
(`model.g_conditioning`). `pipeline.resnet` holds the residual arch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from pipeline.config import ARCHS


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


def dcgan_init(m: nn.Module) -> None:
    """The DCGAN paper's init: N(0, 0.02) convs, N(1, 0.02) norm scales."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(raw_weight(m), 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


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


class Generator(nn.Module):
    """z (B, z_dim) [, labels (B,)] -> image (B, C, S, S) in [-1, 1]. Conditional, "cbn": every BatchNorm takes its
    scale and shift from the class; "concat": a class embedding enters the first layer next to z."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        n = n_doublings(cfg.image_size)
        ch = cfg.g_channels * 2 ** (n - 1)
        concat = bool(cfg.num_classes) and cfg.g_conditioning == "concat"
        self.embed = ClassEmbedding(cfg.num_classes, cfg.z_dim) if concat else None
        k = 0 if concat else cfg.num_classes
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.z_dim * (2 if concat else 1), ch, 4, 1, 0, bias=False),  # (B, ch, 4, 4)
            g_norm(ch, k),
            nn.ReLU(True),
        ]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), g_norm(ch // 2, k), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.cfg.num_classes:
            return self.main(z.view(z.shape[0], -1, 1, 1))
        labels = require_labels(self.cfg, labels)
        if self.embed is not None:
            return self.main(torch.cat([z, self.embed(labels)], dim=1).view(z.shape[0], -1, 1, 1))
        h = z.view(z.shape[0], -1, 1, 1)
        for layer in self.main:
            h = layer(h, labels) if isinstance(layer, CondBatchNorm) else layer(h)
        return h


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


class Discriminator(nn.Module):
    """image (B, C, S, S) [, labels (B,)] -> logit (B,). No sigmoid: the losses take raw scores. Conditional: plus
    the projection term on the sum-pooled last features."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        sn = spectral_norm_fn(cfg.spectral_norm)
        drop = [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []
        n = n_doublings(cfg.image_size)
        ch = cfg.d_channels
        layers: list[nn.Module] = [sn(nn.Conv2d(cfg.channels, ch, 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, True)]
        for _ in range(n - 1):
            layers += [sn(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False)), *norm_layers(cfg.d_norm, ch * 2),
                       nn.LeakyReLU(0.2, True), *drop]
            ch *= 2
        self.main = nn.Sequential(*layers)  # (B, ch, 4, 4)
        self.out = sn(nn.Conv2d(ch, 1, 4, 1, 0, bias=False))  # (B, 1, 1, 1)
        self.apply(dcgan_init)
        self.project = ProjectionHead(cfg.num_classes, ch, sn) if cfg.num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.main(x)
        score = self.out(h).flatten()
        return score if self.project is None else score + self.project(h.sum(dim=(2, 3)), labels)


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


def spectral_norm_fn(enabled: bool) -> Callable[[nn.Module], nn.Module]:
    return nn.utils.parametrizations.spectral_norm if enabled else (lambda m: m)


def _arch(cfg: NetConfig) -> tuple[type[nn.Module], type[nn.Module]]:
    if cfg.arch == "dcgan":
        return Generator, Discriminator
    if cfg.arch == "resnet":
        from pipeline import resnet

        return resnet.ResNetGenerator, resnet.ResNetDiscriminator
    raise ValueError(f"unknown arch {cfg.arch!r} (known: {', '.join(ARCHS)})")


def make_generator(cfg: NetConfig) -> nn.Module:
    """G of `cfg.arch`: z (B, z_dim) [, labels (B,) int64] -> image (B, C, S, S) in [-1, 1]."""
    return _arch(cfg)[0](cfg)


def build(cfg: NetConfig) -> tuple[nn.Module, nn.Module]:
    g_cls, d_cls = _arch(cfg)
    return g_cls(cfg), d_cls(cfg)


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


def latents(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """(n, z_dim) N(0, 1) latents drawn on the CPU from `seed`: the same z on any device or process count."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))
