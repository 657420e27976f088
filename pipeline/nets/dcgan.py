"""The DCGAN G and D for 16-128 px (Radford et al., 2015, arXiv:1511.06434).

At 64 px with z_dim=100 and 64 channels, unconditional, these are exactly the pytorch/examples `dcgan` networks. The
discriminator adds optional Dropout, spectral norm (Miyato et al., 2018) and a choice of normalisation for
gradient-penalty critics. A conditional G takes a class embedding next to z, or conditional BatchNorm
(`model.g_conditioning`); a conditional D adds the projection head.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.nets.common import (
    ClassEmbedding,
    CondBatchNorm,
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


def dcgan_init(m: nn.Module) -> None:
    """The DCGAN paper's init: N(0, 0.02) convs, N(1, 0.02) norm scales."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(raw_weight(m), 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class SkipExcitation(nn.Module):
    """FastGAN's skip-layer excitation (Liu et al., 2021, arXiv:2101.04775): a feature map 4x smaller gates the
    channels of a larger one, a shortcut from G's coarse layout to its fine stages that costs almost nothing."""

    def __init__(self, low: int, high: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Conv2d(low, high, 4, 1, 0, bias=False),
                                  nn.LeakyReLU(0.1, True), nn.Conv2d(high, high, 1, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.gate(low)


class Generator(nn.Module):
    """z (B, z_dim) [, labels (B,)] -> image (B, C, S, S) in [-1, 1]. Conditional, "cbn": every BatchNorm takes its
    scale and shift from the class; "concat": a class embedding enters the first layer next to z. With
    skip_excitation, each stage's output from 16x16 up is gated by the stage's two doublings before it."""

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
        widths = [cfg.g_channels * 2 ** (n - 1 - k) for k in range(n)]  # stage k's output: 4 * 2**k px
        # keyed by stage: stage k >= 2 is gated by stage k - 2
        self.excite = nn.ModuleDict({str(k): SkipExcitation(widths[k - 2], widths[k])
                                     for k in range(2, n) if cfg.skip_excitation})
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = z.view(z.shape[0], -1, 1, 1)
        if self.cfg.num_classes:
            labels = require_labels(self.cfg, labels)
            if self.embed is not None:
                h = torch.cat([z, self.embed(labels)], dim=1).view(z.shape[0], -1, 1, 1)
        cbn = bool(self.cfg.num_classes) and self.embed is None
        if not cbn and not self.excite:
            return self.main(h)
        stages: list[torch.Tensor] = []  # each stage's output, for the excitation of the stage two doublings on
        for layer in self.main:
            h = layer(h, labels) if isinstance(layer, CondBatchNorm) else layer(h)
            if isinstance(layer, nn.ReLU):  # the end of a stage
                k = len(stages)
                if str(k) in self.excite:
                    h = self.excite[str(k)](stages[k - 2], h)
                stages.append(h)
        return h


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
        self.mbstd = MinibatchStd() if cfg.minibatch_std else nn.Identity()
        self.out = sn(nn.Conv2d(ch + cfg.minibatch_std, 1, 4, 1, 0, bias=False))  # (B, 1, 1, 1)
        self.apply(dcgan_init)
        self.project = ProjectionHead(cfg.num_classes, ch, sn) if cfg.num_classes else None

    def stages(self) -> list[nn.Module]:
        """The modules whose outputs are D's feature maps, one per halving of the size, the input side first."""
        return [m for m in self.main if isinstance(m, nn.LeakyReLU)]

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.main(x)
        score = self.out(self.mbstd(h)).flatten()
        return score if self.project is None else score + self.project(h.sum(dim=(2, 3)), labels)
