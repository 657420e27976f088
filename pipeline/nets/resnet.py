"""Residual G and D for 16-128 px in the style of SNGAN (Miyato et al., 2018, arXiv:1802.05957) and BigGAN (Brock et
al., 2018, arXiv:1809.11096): pre-activation up/down blocks with 1x1 shortcuts, conditional BatchNorm in G (common.g_norm), a
projection head in D (Miyato & Koyama, 2018), optional spectral norm and Dropout in D.

Widths follow the DCGAN arch's meaning of the config: G narrows from g_channels * 2^(n-1) to g_channels, D widens
from d_channels to d_channels * 2^(n-1), with n = log2(image_size) - 2 resolution steps between 4x4 and the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.nets.common import (
    MinibatchStd,
    NetConfig,
    ProjectionHead,
    g_norm,
    n_doublings,
    norm_layers,
    raw_weight,
    require_labels,
    spectral_norm_fn,
)


def _init(m: nn.Module) -> None:
    """SNGAN's init: Xavier-uniform, gain sqrt(2) inside residual branches, 1 for shortcuts and the ends."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        gain = math.sqrt(2) if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) else 1.0
        nn.init.xavier_uniform_(raw_weight(m), gain)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class GBlock(nn.Module):
    """x (B, cin, s, s) -> (B, cout, 2s, 2s): BN-ReLU-up-conv3-BN-ReLU-conv3, plus up-conv1 shortcut."""

    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.bn1, self.bn2 = g_norm(cin, num_classes), g_norm(cout, num_classes)
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        cond = () if labels is None else (labels,)
        h = F.interpolate(F.relu(self.bn1(x, *cond)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), *cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResNetGenerator(nn.Module):
    """z (B, z_dim) [, labels (B,)] -> image (B, C, S, S) in [-1, 1]."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        n = n_doublings(cfg.image_size)
        widths = [cfg.g_channels * 2 ** (n - 1 - i) for i in range(n)] + [cfg.g_channels]
        self.fc = nn.Linear(cfg.z_dim, 16 * widths[0])  # (B, w0 * 4 * 4)
        self.blocks = nn.ModuleList(GBlock(a, b, cfg.num_classes) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.bn = nn.BatchNorm2d(widths[-1])
        self.out = nn.Conv2d(widths[-1], cfg.channels, 3, 1, 1)
        self.apply(_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = require_labels(self.cfg, labels) if self.cfg.num_classes else None
        h = self.fc(z).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            h = block(h, labels)
        return torch.tanh(self.out(F.relu(self.bn(h))))


class DBlock(nn.Module):
    """x (B, cin, s, s) -> (B, cout, s/2, s/2): [act]-conv3-[norm]-act-conv3-avgpool, plus conv1-avgpool shortcut.
    The first block skips the leading activation, as SNGAN's optimized block does (it sees the raw image)."""

    def __init__(self, cin: int, cout: int, cfg: NetConfig, first: bool):
        super().__init__()
        sn = spectral_norm_fn(cfg.spectral_norm)
        self.first = first
        self.conv1, self.conv2 = sn(nn.Conv2d(cin, cout, 3, 1, 1)), sn(nn.Conv2d(cout, cout, 3, 1, 1))
        self.norm = nn.Sequential(*norm_layers(cfg.d_norm, cout))
        self.skip = sn(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.leaky_relu(x, 0.2)
        h = self.conv2(F.leaky_relu(self.norm(self.conv1(h)), 0.2))
        return F.avg_pool2d(h, 2) + self.skip(F.avg_pool2d(x, 2))


class ResNetDiscriminator(nn.Module):
    """image (B, C, S, S) [, labels (B,)] -> logit (B,): residual blocks down to 4x4, sum pooling, a linear score
    plus the projection term when conditional."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        sn = spectral_norm_fn(cfg.spectral_norm)
        n = n_doublings(cfg.image_size)
        widths = [cfg.channels] + [cfg.d_channels * 2**i for i in range(n)]
        self.blocks = nn.Sequential(*(DBlock(a, b, cfg, first=i == 0)
                                      for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))))
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.mbstd = MinibatchStd() if cfg.minibatch_std else nn.Identity()
        self.out = sn(nn.Linear(widths[-1] + cfg.minibatch_std, 1))
        self.apply(_init)
        self.project = ProjectionHead(cfg.num_classes, widths[-1], sn) if cfg.num_classes else None

    def stages(self) -> list[nn.Module]:
        """The modules whose outputs are D's feature maps, one per halving of the size, the input side first."""
        return list(self.blocks)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = F.leaky_relu(self.blocks(x), 0.2).sum(dim=(2, 3))  # (B, w): sum pooling over the 4x4 map
        h = self.drop(h)
        score = self.out(self.mbstd(h[:, :, None, None]).flatten(1)).flatten()  # the projection takes h alone
        return score if self.project is None else score + self.project(h, labels)
