"""The speed paths of the train step keep its behaviour: static buffers (CUDA graphs' code, run eagerly off CUDA),
reuse of the D step's fakes, the lazy penalty's weight, the float32 penalty under bf16, and resume."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import fresh_accelerator, run_tiny, tiny_params

from pipeline.config import ParamsError
from pipeline.data import BatchSampler
from pipeline.training import checkpoint, losses
from pipeline.training.build import make_step
from pipeline.training.step import GANStep

IMAGES = torch.randint(0, 256, (96, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _step(steps: int = 0, **train) -> GANStep:
    params = tiny_params(train=train)
    gan = make_step(params, fresh_accelerator(params), IMAGES, channels=1)
    for s in range(steps):
        gan(s)
    return gan


def _state(gan: GANStep) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.clone() for name, m in (("G", gan.G_plain), ("D", gan.D_plain), ("EMA", gan.ema))
            for k, v in m.state_dict().items()}


@pytest.mark.parametrize("train", [{}, {"loss": "wgan-gp", "n_critic": 3, "gp_every": 2},
                                   {"loss": "wgan", "grad_clip_norm": 1.0, "reuse_fake": False}])
def test_cuda_graphs_code_path_gives_the_same_weights_and_stats_on_cpu(train):
    eager, graphs = _step(4, **train), _step(4, cuda_graphs=True, **train)
    a, b = _state(eager), _state(graphs)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert eager.stats.pop_means() == graphs.stats.pop_means()


def test_cuda_graphs_refuses_what_it_cannot_capture():
    with pytest.raises(ParamsError, match="train.cuda_graphs.*grad_accum_steps must be 1"):
        _step(cuda_graphs=True, grad_accum_steps=2)
    with pytest.raises(ParamsError, match="train.cuda_graphs.*fp16"):
        _step(cuda_graphs=True, mixed_precision="fp16")


def test_g_step_reuses_the_d_steps_fakes():
    """One G forward per step with reuse (the DCGAN recipe), two without; both train."""
    counts = {}
    for reuse in (True, False):
        gan = _step(reuse_fake=reuse)
        n = [0]
        gan.G_plain.register_forward_hook(lambda *_, n=n: n.__setitem__(0, n[0] + 1))
        before = _state(gan)
        gan(0)
        counts[reuse] = n[0]
        assert not torch.equal(before["G.main.0.weight"], _state(gan)["G.main.0.weight"])
    assert counts == {True: 1, False: 2}


def test_lazy_penalty_runs_every_k_updates_weighted_by_k():
    """wgan-gp's D loss is E[D(fake)] - E[D(real)] (= -W) plus gp_weight * k * gp on every k-th D update."""
    gan = _step(loss="wgan-gp", gp_every=3)
    for step in range(6):
        gan(step)
        row = gan.stats.pop_means()
        assert ("Loss/gradient_penalty" in row) == (step % 3 == 0)
        penalty = 10.0 * 3 * row.get("Loss/gradient_penalty", 0.0)
        assert row["Loss/D"] == pytest.approx(-row["Loss/wasserstein_estimate"] + penalty, rel=1e-5, abs=1e-6)


def test_penalty_is_float32_under_bf16_mixed_precision():
    """Accelerate wraps prepared forwards in autocast; the step strips that, so the penalty's critic runs in fp32."""
    gan = _step(loss="wgan-gp", mixed_precision="bf16")
    fp32_critic = copy.deepcopy(gan.D_plain)
    g = torch.Generator().manual_seed(1)
    real, fake, alpha = (torch.randn(8, 1, 16, 16, generator=g), torch.randn(8, 1, 16, 16, generator=g),
                         torch.rand(8, 1, 1, 1, generator=g))
    torch.manual_seed(3)  # the same dropout masks, if D has dropout
    with gan.acc.autocast():
        mixed = losses.gradient_penalty(gan.D_plain, real, fake, alpha)
    torch.manual_seed(3)
    exact = losses.gradient_penalty(fp32_critic, real, fake, alpha)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(exact.item(), rel=1e-6)
    assert gan.D_plain(real).dtype == torch.float32  # outside autocast, no wrapper turns it back on


def test_batch_into_a_static_buffer_equals_the_batch():
    sampler = BatchSampler(IMAGES, 16, seed=2)
    buf = torch.empty((16, 1, 16, 16), dtype=torch.uint8)
    for i in (0, 5, 6, 13):  # 6 batches per epoch: 6 and 13 are in later epochs
        assert torch.equal(sampler.batch(i, out=buf), sampler.batch(i)) and torch.equal(buf, sampler.batch(i))


def test_resume_equals_uninterrupted_on_the_graphs_code_path(prepared_dir, tmp_path):
    extra = {"cuda_graphs": True, "loss": "wgan-gp", "n_critic": 2, "gp_every": 3}
    run_tiny(prepared_dir, tmp_path / "full", tiny_params(train=extra))
    run_tiny(prepared_dir, tmp_path / "resumed", tiny_params(train={**extra, "steps": 6}))
    assert run_tiny(prepared_dir, tmp_path / "resumed", tiny_params(train=extra))["resumed_from_step"] == 6
    for name in ("generator.safetensors", "generator_ema.safetensors"):
        a = checkpoint.load_weights(tmp_path / "full" / "models" / name)
        b = checkpoint.load_weights(tmp_path / "resumed" / "models" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
