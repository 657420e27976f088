"""The networks: one module per arch (`dcgan`, `resnet`), the parts they share (`common`), latents and grids
(`sampling`) and weight files (`weights`). This module holds the arch table and builds G and D from a `NetConfig`.
"""

from __future__ import annotations

from torch import nn

from pipeline.config import ARCHS, Params
from pipeline.nets import dcgan, resnet
from pipeline.nets.common import NetConfig, set_condition_scale

__all__ = ["ARCH_TABLE", "NetConfig", "build", "make_generator", "net_config", "set_condition_scale"]

# model.arch -> (G class, D class); config.ARCHS names the same archs for the torch-free params parser.
ARCH_TABLE: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "dcgan": (dcgan.Generator, dcgan.Discriminator),
    "resnet": (resnet.ResNetGenerator, resnet.ResNetDiscriminator),
}
assert tuple(ARCH_TABLE) == ARCHS, "config.ARCHS and nets.ARCH_TABLE must name the same archs"


def _arch(cfg: NetConfig) -> tuple[type[nn.Module], type[nn.Module]]:
    if cfg.arch not in ARCH_TABLE:
        raise ValueError(f"unknown arch {cfg.arch!r} (known: {', '.join(ARCH_TABLE)})")
    return ARCH_TABLE[cfg.arch]


def make_generator(cfg: NetConfig) -> nn.Module:
    """G of `cfg.arch`: z (B, z_dim) [, labels (B,) int64] -> image (B, C, S, S) in [-1, 1]."""
    return _arch(cfg)[0](cfg)


def build(cfg: NetConfig) -> tuple[nn.Module, nn.Module]:
    g_cls, d_cls = _arch(cfg)
    return g_cls(cfg), d_cls(cfg)


def net_config(params: Params, channels: int, num_classes: int = 0) -> NetConfig:
    """The networks the params describe, for data of `channels` and `num_classes` classes (0: unconditional)."""
    m = params.model
    return NetConfig(arch=m.arch, z_dim=m.z_dim, image_size=params.data.image_size, channels=channels,
                     g_channels=m.g_channels, d_channels=m.d_channels, d_norm=params.resolved_d_norm(),
                     dropout=m.dropout, spectral_norm=m.spectral_norm, minibatch_std=m.minibatch_std,
                     skip_excitation=m.skip_excitation, num_classes=num_classes,
                     g_conditioning=m.g_conditioning)
