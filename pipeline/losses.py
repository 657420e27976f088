"""GAN losses as pure functions of discriminator scores, plus the WGAN-GP gradient penalty.

bce: non-saturating (Goodfellow et al., 2014); wgan: Arjovsky et al., 2017 (weight clipping);
wgan-gp: Gulrajani et al., 2017; hinge: Lim & Ye, 2017 / Miyato et al., 2018; lsgan: Mao et al., 2017.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator / critic loss from raw scores (B,) on real and generated images."""
    real, fake = real.float(), fake.float()
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind in ("wgan", "wgan-gp"):
        return fake.mean() - real.mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "lsgan":
        return 0.5 * ((real - 1.0).square().mean() + fake.square().mean())
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss from raw scores (B,) on generated images."""
    fake = fake.float()
    if kind == "bce":
        return F.softplus(-fake).mean()
    if kind in ("wgan", "wgan-gp", "hinge"):
        return -fake.mean()
    if kind == "lsgan":
        return 0.5 * (fake - 1.0).square().mean()
    raise ValueError(f"unknown loss {kind!r}")


def wasserstein_estimate(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[D(x)] - E[D(G(z))]: the critic's estimate of the Wasserstein-1 distance (up to its Lipschitz constant)."""
    return real.float().mean() - fake.float().mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """E[(||grad_x D(x_hat)||_2 - 1)^2] on random interpolates x_hat of real and fake images.

    Runs in float32 with autocast off, so the penalty's second-order gradient is exact under mixed precision.
    """
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    with torch.autocast(device_type=real.device.type, enabled=False):
        x_hat = torch.lerp(real.detach().float(), fake.detach().float(), alpha).requires_grad_(True)
        scores = critic(x_hat).float()
        (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1.0).square().mean()


def clip_weights(module: torch.nn.Module, bound: float) -> None:
    """WGAN weight clipping: every parameter into [-bound, bound]."""
    with torch.no_grad():
        for p in module.parameters():
            p.clamp_(-bound, bound)
