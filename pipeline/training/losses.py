"""GAN losses as pure functions of discriminator scores, plus the WGAN-GP gradient penalty.

bce: non-saturating (Goodfellow et al., 2014); wgan: Arjovsky et al., 2017 (weight clipping);
wgan-gp: Gulrajani et al., 2017; hinge: Lim & Ye, 2017 / Miyato et al., 2018; lsgan: Mao et al., 2017;
rpgan: the relativistic pairing loss (Jolicoeur-Martineau, 2018; Huang et al., 2024, R3GAN, arXiv:2501.05441) with
zero-centred R1/R2 penalties (Mescheder et al., 2018); the mode-seeking term of MSGAN (Mao et al., 2019); LeCam
regularisation (Tseng et al., 2021, arXiv:2104.03310).
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
    if kind == "rpgan":  # pairs: real i against fake i
        return F.softplus(fake - real).mean()
    raise ValueError(f"unknown loss {kind!r}")


# Losses whose G term also needs D's scores on a real batch.
NEEDS_REAL_IN_G = ("rpgan",)


def g_loss(kind: str, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """Generator loss from raw scores (B,) on generated images (and, for rpgan, on the paired real images)."""
    fake = fake.float()
    if kind == "rpgan":
        return F.softplus(real.float() - fake).mean()
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


def zero_centred_penalty(critic: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """E[||grad_x D(x)||^2]: R1 when x is real, R2 when x is generated (weight it with gamma / 2).

    Float32 with autocast off, as the gradient penalty; x is detached, so no gradient reaches G through it.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x).float().sum(), x, create_graph=True)
        return grad.flatten(1).square().sum(dim=1).mean()


def mode_seeking(fake: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mode-seeking term (Mao et al., 2019, MSGAN, arXiv:1903.05628): 1 / (|G(z1) - G(z2)| / |z1 - z2|), over the
    pairs (i, i + B/2) of the batch. Minimising it makes G's output move with z, against collapse to one sample per
    class."""
    half = fake.shape[0] // 2
    if half == 0:  # a batch of one has no pair
        return fake.new_zeros((), dtype=torch.float32)
    d_img = (fake[:half].float() - fake[half : 2 * half].float()).abs().flatten(1).mean(dim=1)
    d_z = (z[:half].float() - z[half : 2 * half].float()).abs().mean(dim=1)
    return (1.0 / (d_img / d_z + eps)).mean()


def lecam(real: torch.Tensor, fake: torch.Tensor, alpha_real: torch.Tensor, alpha_fake: torch.Tensor) -> torch.Tensor:
    """LeCam regulariser (Tseng et al., 2021, arXiv:2104.03310, eq. 3): E[(D(x) - alpha_F)^2] + E[(D(G(z)) - alpha_R)^2]
    on raw scores (B,), where alpha_R, alpha_F are moving averages of D's mean output on reals and fakes. It pulls
    each side's scores toward the other side's average, bounding how far D can separate them on few images. The
    authors' code clips it one-sided (relu(D(x) - alpha_F), relu(alpha_R - D(G(z)))); this is the paper's form."""
    return (real.float() - alpha_fake).square().mean() + (fake.float() - alpha_real).square().mean()


def clip_weights(module: torch.nn.Module, bound: float) -> None:
    """WGAN weight clipping: every parameter into [-bound, bound]."""
    with torch.no_grad():
        for p in module.parameters():
            p.clamp_(-bound, bound)
