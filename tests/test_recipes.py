"""The evolved recipes: ResNet arch, rpgan + R1/R2, DiffAugment/ADA, class conditioning; their refusals, the
augmentation's identity and gradient flow, every loss with every arch, and exact resume with all of them on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import resumed_equals_uninterrupted, run_tiny, tiny_params

from pipeline.config import ARCHS, LOSSES, DataConfig, ParamsError, parse_params
from pipeline.config.schema import AUGMENT_TRANSFORMS
from pipeline.data import prepare
from pipeline.errors import DataError
from pipeline.nets import NetConfig, build, make_generator, weights
from pipeline.nets.sampling import grid_inputs, sample_grid
from pipeline.training import augment, losses

pytestmark = pytest.mark.usefixtures("one_thread")


# --- Augmentation -----------------------------------------------------------------------------------------------

def test_augment_at_p_zero_is_the_identity():
    x = torch.randn(16, 3, 16, 16)
    assert augment.augment(x, 0.0) is x
    assert torch.equal(augment.augment(x, torch.zeros(())), x)  # ADA's tensor p, at 0


def test_augment_at_p_one_changes_every_image_and_keeps_the_shape():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 16, 16) * 2 - 1
    y = augment.augment(x, 1.0)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert ((y - x).flatten(1).abs().amax(dim=1) > 0).all()


def test_translation_shifts_content_and_pads_with_zeros():
    torch.manual_seed(1)
    x = torch.ones(64, 1, 16, 16)
    y = augment._translate(x)
    zeros = (y == 0).flatten(1).sum(dim=1)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert (zeros > 0).any() and (zeros == 0).any()  # most images move, some (shift 0, 0) do not
    assert zeros.max() <= 16 * 16 - 14 * 14  # at most 2 px (1/8 of 16) in each direction


def test_cutout_blanks_a_square_of_half_the_side():
    torch.manual_seed(2)
    y = augment._cutout(torch.ones(8, 3, 16, 16))
    assert ((y == 0).all(dim=1).flatten(1).sum(dim=1) == 8 * 8).all()


def test_augment_policy_applies_only_the_named_transforms_in_a_fixed_order():
    x = torch.ones(16, 3, 16, 16)
    torch.manual_seed(4)
    cut = augment.augment(x, 1.0, ("cutout",))
    assert set(cut.unique().tolist()) == {0.0, 1.0}  # no colour change, no shift: only cut-out squares
    assert ((cut == 0).all(dim=1).flatten(1).sum(dim=1) == 8 * 8).all()
    torch.manual_seed(5)
    a = augment.augment(x, 1.0, ("cutout", "colour"))
    torch.manual_seed(5)
    assert torch.equal(a, augment.augment(x, 1.0, ("colour", "cutout")))
    torch.manual_seed(6)
    full = augment.augment(x, 1.0)
    torch.manual_seed(6)
    assert torch.equal(full, augment.augment(x, 1.0, ("colour", "translation", "cutout")))  # the default policy
    assert tuple(augment.TRANSFORMS) == AUGMENT_TRANSFORMS  # the params' choices name every transform


def test_flip_mirrors_and_zoom_scales_about_the_centre():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert augment._flip(x)[0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    img = torch.rand(4, 3, 16, 16)
    assert torch.allclose(augment._zoom(img, std=0.0), img, atol=1e-5)  # scale 1 is the identity
    square = torch.zeros(256, 1, 32, 32)
    square[..., 12:20, 12:20] = 1.0  # 8 x 8, centred
    torch.manual_seed(7)
    zoomed = augment._zoom(square)
    torch.manual_seed(7)
    scale = torch.exp2(0.2 * torch.randn(256))
    assert scale.min() < 0.8 and scale.max() > 1.25  # the draws span both ways
    torch.testing.assert_close(zoomed.flatten(1).sum(dim=1), 64 * scale**2, rtol=0.1, atol=0.0)
    torch.testing.assert_close(zoomed, augment._flip(zoomed), rtol=0.0, atol=1e-5)  # still centred: mirror-symmetric


def test_gradients_reach_the_generator_through_the_augmentation():
    torch.manual_seed(3)
    cfg = NetConfig(z_dim=8, image_size=16, channels=1, g_channels=4, d_channels=4, num_classes=3)
    for arch in ARCHS:
        G, D = build(NetConfig(**{**cfg.to_dict(), "arch": arch}))
        labels = torch.arange(6) % 3
        fake = augment.augment(G(torch.randn(6, 8), labels), 1.0, AUGMENT_TRANSFORMS)
        losses.g_loss("bce", D(fake, labels)).backward()
        grads = [p.grad for p in G.parameters()]
        assert all(g is not None for g in grads), arch
        assert sum(float(g.abs().sum()) for g in grads) > 0, arch


def test_ada_raises_p_while_d_overfits_and_lowers_it_otherwise():
    ada = augment.AdaptiveP(target=0.6, kimg=1.0, batch=100, interval=2, device=torch.device("cpu"))
    assert float(ada.p) == 0.0
    ada.observe(torch.ones(100))  # D sure of every real: r_t = 1 > 0.6
    assert float(ada.adjust()) == 1.0
    assert float(ada.p) == pytest.approx(0.2)  # batch * interval / (kimg * 1000)
    for _ in range(10):
        ada.observe(torch.ones(100))
        ada.adjust()
    assert float(ada.p) == 1.0  # clamped
    ada.observe(-torch.ones(100))
    ada.adjust()
    assert float(ada.p) == pytest.approx(0.8)
    state = ada.state()
    other = augment.AdaptiveP(0.6, 1.0, 100, 2, torch.device("cpu"))
    other.load(state)
    assert other.state() == state


# --- Losses -----------------------------------------------------------------------------------------------------

def test_rpgan_pairs_real_and_fake_scores():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    assert losses.d_loss("rpgan", real, fake).item() == pytest.approx(
        (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 2)
    assert losses.g_loss("rpgan", torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    # Shifting every score by a constant changes nothing: only the pairwise difference counts.
    assert losses.d_loss("rpgan", real + 5, fake + 5).item() == pytest.approx(losses.d_loss("rpgan", real, fake).item())


def test_zero_centred_penalty_of_a_linear_critic_is_its_squared_norm_in_fp32():
    w = torch.randn(1, 12)
    critic = lambda v: v.flatten(1) @ w.T  # noqa: E731
    x = torch.randn(5, 3, 2, 2)
    assert losses.zero_centred_penalty(critic, x).item() == pytest.approx(w.square().sum().item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = losses.zero_centred_penalty(critic, x.bfloat16())
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(w.square().sum().item(), rel=1e-5)


# --- Params: every wrong combination refused in one line ----------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    ({"model": {"d_norm": "batch"}, "train": {"r1_gamma": 1.0}},
     "model.d_norm=batch cannot be used with train.r1_gamma>0"),
    ({"model": {"d_norm": "batch"}, "train": {"loss": "rpgan", "r2_gamma": 0.5}},
     "model.d_norm=batch cannot be used with train.r2_gamma>0"),
    ({"model": {"spectral_norm": True}, "train": {"loss": "wgan"}},
     "model.spectral_norm=true cannot be used with train.loss=wgan"),
    ({"model": {"skip_excitation": True, "arch": "resnet"}},
     "model.skip_excitation=true needs model.arch=dcgan and data.image_size >= 32"),
    ({"model": {"skip_excitation": True}, "data": {"image_size": 16}},
     "model.skip_excitation=true needs model.arch=dcgan and data.image_size >= 32"),
    ({"train": {"augment": "flip"}}, "train.augment must be one of none, diffaug, ada"),
    ({"model": {"conditional": "yes"}}, "model.conditional must be one of auto, true, false"),
    ({"train": {"r1_gamma": -1}}, "train.r1_gamma must be a number >= 0"),
    ({"train": {"steps": None}}, "train.steps must be an integer or auto, got None"),  # `steps: ~` is not auto
    ({"eval": {"num_samples": None}}, "eval.num_samples must be an integer or auto, got None"),
    ({"train": {"augment_p": 1.5}}, "train.augment_p must be a number >= 0 <= 1"),
])
def test_wrong_combinations_are_refused_in_one_line(raw, message):
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_yaml_booleans_spell_model_conditional():
    assert parse_params({"model": {"conditional": True}}).model.conditional == "true"
    assert parse_params({"model": {"conditional": False}}).model.conditional == "false"


def test_d_norm_auto_under_penalties_and_for_resnet():
    assert parse_params({"train": {"r1_gamma": 1.0}}).resolved_d_norm() == "layer"
    assert parse_params({"train": {"loss": "rpgan"}}).resolved_d_norm() == "batch"
    assert parse_params({"model": {"arch": "resnet"}}).resolved_d_norm() == "none"


def test_conditional_true_on_unlabelled_data_is_refused(tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    from PIL import Image

    root.mkdir()
    for i in range(40):  # images at the top level: no class folders, so no labels
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
    prepared = tmp_path / "prepared"
    prepare(DataConfig(dataset="imagefolder", root=str(root), image_size=16, channels=3), prepared)
    with pytest.raises(DataError, match="model.conditional is true but the prepared data has no labels"):
        run_tiny(prepared, tmp_path / "run", tiny_params(model={"conditional": True}))
    metrics = run_tiny(prepared, tmp_path / "auto", tiny_params(train={"steps": 2}))  # auto: unconditional
    _, cfg = weights.load_generator(tmp_path / "auto/models/generator.safetensors",
                                       tmp_path / "auto/models/generator.json")
    assert metrics["steps"] == 2 and cfg["net"]["num_classes"] == 0


def test_cuda_graphs_refuse_what_they_cannot_capture(prepared_dir, tmp_path):
    with pytest.raises(ParamsError, match="train.augment=ada is not graphed yet"):
        run_tiny(prepared_dir, tmp_path, tiny_params(train={"cuda_graphs": True, "augment": "ada"},
                                                     model={"conditional": False}))


# --- Networks -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_resnet_shapes_and_ranges(size, channels):
    g, d = build(NetConfig(arch="resnet", image_size=size, channels=channels, z_dim=10, g_channels=4, d_channels=4,
                           spectral_norm=True, dropout=0.2))
    x = g(torch.randn(3, 10))
    assert x.shape == (3, channels, size, size) and x.min() >= -1 and x.max() <= 1
    assert d(x).shape == (3,)
    assert any("parametrizations" in name for name, _ in d.named_modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_conditional_networks_use_the_labels(arch):
    torch.manual_seed(0)
    g, d = build(NetConfig(arch=arch, image_size=16, channels=1, z_dim=8, g_channels=4, d_channels=4, num_classes=3))
    g.eval()
    for m in g.modules():  # a trained G's embeddings differ per class; the fresh init of CBN (1, 0) would not
        if isinstance(m, torch.nn.Embedding):
            m.weight.data.normal_(0.0, 1.0)
    z = torch.randn(4, 8)
    a, b = g(z, torch.zeros(4, dtype=torch.long)), g(z, torch.full((4,), 2))
    assert not torch.equal(a, b)
    x = torch.randn(4, 1, 16, 16)
    assert not torch.equal(d(x, torch.zeros(4, dtype=torch.long)), d(x, torch.full((4,), 2)))


def test_conditional_grid_has_one_row_per_class():
    cfg = NetConfig(image_size=16, channels=1, z_dim=8, g_channels=4, num_classes=3)
    z, labels, per_row = grid_inputs(cfg, seed=0)
    assert labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8 and per_row == 8
    grid = sample_grid(make_generator(cfg), z, labels, per_row)
    assert grid.shape == (3 * 18 + 2, 8 * 18 + 2, 3)


# --- Training: every loss with every arch; exact resume with every new part on ------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_with_every_arch(prepared_dir, tmp_path, arch, loss):
    params = tiny_params(model={"arch": arch}, train={"loss": loss, "steps": 2, "log_every_steps": 1,
                                                       "augment": "diffaug", "r1_gamma": 0.1})
    run_tiny(prepared_dir, tmp_path, params)
    header = (tmp_path / "plots" / "train_loss.csv").read_text().splitlines()[0].split(",")
    assert "Loss_r1" in header and "Loss_D" in header
    rows = [dict(zip(header, r.split(","), strict=True))
            for r in (tmp_path / "plots" / "train_loss.csv").read_text().splitlines()[1:]]
    unused = {"D_real_score", "D_fake_score"} if loss == "bce" else {"D_real_prob", "D_fake_prob"}  # nan by design
    assert all(math.isfinite(float(v)) for r in rows for k, v in r.items() if v and k not in unused)


def test_resume_is_exact_with_resnet_rpgan_r1_r2_ada_mode_seeking_ramp_and_labels(prepared_dir, tmp_path):
    extra = {"loss": "rpgan", "r1_gamma": 0.5, "r2_gamma": 0.5, "gp_every": 2, "augment": "ada", "ada_kimg": 0.05,
             "ada_interval_steps": 2, "ada_target": 0.1, "mode_seeking": 0.1, "cond_ramp_start_steps": 2,
             "cond_ramp_end_steps": 5, "augment_policy": list(AUGMENT_TRANSFORMS)}
    full = tiny_params(model={"arch": "resnet"}, train=extra)
    half = tiny_params(model={"arch": "resnet"}, train={**extra, "steps": 6})
    header, (rows_full, rows_resumed) = resumed_equals_uninterrupted(prepared_dir, tmp_path, full, half)
    p_col = header.index("Augment_p")
    assert [r[p_col] for r in rows_full] == [r[p_col] for r in rows_resumed]
    assert max(float(r[p_col]) for r in rows_full) > 0  # ADA moved p
    _, cfg = weights.load_generator(tmp_path / "full/models/generator.safetensors",
                                       tmp_path / "full/models/generator.json")
    assert cfg["net"]["num_classes"] == 10 and cfg["net"]["arch"] == "resnet"


# --- Against collapse by conditioning: mode seeking, transitional conditioning ----------------------------------

def test_mode_seeking_term_punishes_a_generator_that_ignores_z():
    z = torch.randn(8, 4)
    same = torch.zeros(8, 1, 4, 4)  # every sample identical whatever z
    moving = z[:, :1, None, None].expand(8, 1, 4, 4)  # output moves with z
    assert losses.mode_seeking(same, z).item() > 1e4
    assert losses.mode_seeking(moving, z).item() < 10


@pytest.mark.parametrize("g_conditioning", ["cbn", "concat"])
def test_condition_scale_zero_makes_g_and_d_ignore_the_class(g_conditioning):
    from pipeline.nets import set_condition_scale
    from pipeline.training.step import condition_scale

    assert [condition_scale(s, 10, 20) for s in (0, 10, 15, 20, 99)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    torch.manual_seed(0)
    g, d = build(NetConfig(image_size=16, channels=1, z_dim=8, g_channels=4, d_channels=4, num_classes=3,
                           g_conditioning=g_conditioning))
    for m in g.modules():
        if isinstance(m, torch.nn.Embedding):
            m.weight.data.normal_(0.0, 1.0)
    g.eval()
    z, x, a, b = torch.randn(4, 8), torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long), torch.full((4,), 2)
    assert not torch.equal(g(z, a), g(z, b))
    set_condition_scale(g, 0.0)
    set_condition_scale(d, 0.0)
    assert torch.equal(g(z, a), g(z, b)) and torch.equal(d(x, a), d(x, b))
    assert any(k.endswith("cond_scale") for k in g.state_dict())  # saved with the weights


def test_cond_ramp_must_end_within_the_run():
    with pytest.raises(ParamsError, match="train.cond_ramp_end_steps must be 0 or between"):
        parse_params({"train": {"steps": 100, "cond_ramp_end_steps": 200}})
    with pytest.raises(ParamsError, match="train.cond_ramp_end_steps must be 0 or between"):
        parse_params({"train": {"cond_ramp_start_steps": 50, "cond_ramp_end_steps": 10}})
