"""Loss functions on small tensors: known values, signs, and the gradient penalty's invariants."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.training import losses


def test_known_values_at_zero_scores():
    z = torch.zeros(8)
    assert losses.d_loss("bce", z, z).item() == pytest.approx(2 * math.log(2))
    assert losses.g_loss("bce", z).item() == pytest.approx(math.log(2))
    assert losses.d_loss("hinge", z, z).item() == pytest.approx(2.0)
    assert losses.d_loss("lsgan", z, z).item() == pytest.approx(0.5)
    assert losses.g_loss("lsgan", z).item() == pytest.approx(0.5)
    assert losses.d_loss("wgan", z, z).item() == 0.0


@pytest.mark.parametrize("kind", ["bce", "wgan", "wgan-gp", "hinge", "lsgan"])
def test_a_better_discriminator_has_lower_loss(kind):
    weak = losses.d_loss(kind, torch.zeros(4), torch.ones(4))  # scores fakes above reals
    strong = losses.d_loss(kind, torch.ones(4), torch.zeros(4))
    assert strong < weak
    # ...and the generator's loss falls as D scores its samples as more real.
    assert losses.g_loss(kind, torch.full((4,), 0.5)) < losses.g_loss(kind, torch.full((4,), -0.5))


def test_wasserstein_estimate():
    assert losses.wasserstein_estimate(torch.tensor([3.0, 1.0]), torch.tensor([0.5, -0.5])).item() == 2.0


def _linear_critic(w: torch.Tensor):
    return lambda x: (x.flatten(1) * w).sum(1)


def test_gradient_penalty_is_zero_for_unit_norm_linear_critic():
    torch.manual_seed(0)
    w = torch.randn(3 * 8 * 8)
    w = w / w.norm()
    real, fake = torch.randn(16, 3, 8, 8), torch.randn(16, 3, 8, 8)
    assert losses.gradient_penalty(_linear_critic(w), real, fake).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_measures_the_norm_gap():
    w = torch.randn(3 * 8 * 8)
    w = 3 * w / w.norm()  # ||grad|| = 3 everywhere -> (3 - 1)^2
    gp = losses.gradient_penalty(_linear_critic(w), torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8))
    assert gp.item() == pytest.approx(4.0, rel=1e-5)


def test_gradient_penalty_is_exact_under_bf16_autocast_and_differentiable():
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.LeakyReLU(0.2), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 6 * 6, 1))
    real, fake = torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)
    alpha = torch.rand(8, 1, 1, 1)
    ref = losses.gradient_penalty(critic, real, fake, alpha)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = losses.gradient_penalty(critic, real.bfloat16(), fake.bfloat16(), alpha)
    assert mixed.dtype == torch.float32
    # Inputs were rounded to bf16 (a relative error of ~4e-3); the penalty itself is computed in fp32.
    assert mixed.item() == pytest.approx(ref.item(), rel=2e-2)
    mixed.backward()
    # The penalty depends on the weights (not on the final bias), and its second-order gradient is finite.
    for p in (critic[0].weight, critic[3].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_clip_weights():
    m = torch.nn.Linear(4, 4)
    with torch.no_grad():
        m.weight.mul_(100)
    losses.clip_weights(m, 0.01)
    assert all(p.abs().max() <= 0.01 for p in m.parameters())


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss"):
        losses.d_loss("nope", torch.zeros(1), torch.zeros(1))
