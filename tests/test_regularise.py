"""The opt-in limited-data regularisers of D: LeCam's term and its moving averages, APA's pseudo reals and its p,
DynamicD's shrinking masks (a function of seed and step alone, so a fresh schedule at a step masks as the running
one), their params' refusals, nothing added (and no random draw) when off, and exact resume with LeCam and APA on."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import fresh_accelerator, resumed_equals_uninterrupted, tiny_params

from pipeline.config import ParamsError, parse_params
from pipeline.nets import NetConfig, build, weights
from pipeline.training import losses, regularise
from pipeline.training.build import make_step
from pipeline.training.cuda_graph import graph_blocker

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


# --- LeCam ------------------------------------------------------------------------------------------------------

def test_lecam_term_by_hand_in_fp32():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    alpha_real, alpha_fake = torch.tensor(0.5), torch.tensor(-0.5)
    # reals against alpha_F: (1.5^2 + 3.5^2) / 2 = 7.25; fakes against alpha_R: (1.5^2 + 0.5^2) / 2 = 1.25
    assert losses.lecam(real, fake, alpha_real, alpha_fake).item() == pytest.approx(8.5)
    mixed = losses.lecam(real.bfloat16(), fake.bfloat16(), alpha_real, alpha_fake)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(8.5)
    # Zero when every score sits at the other side's average.
    assert losses.lecam(torch.full((4,), -0.5), torch.full((4,), 0.5), alpha_real, alpha_fake).item() == 0.0


def test_lecam_averages_start_at_the_first_means_and_move_toward_new_ones():
    ema = regularise.LeCamEMA(0.99, CPU)
    assert ema.alpha.tolist() == [0.0, 0.0]
    ema.observe(torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0]))  # two micro-batches of one D update: pooled
    ema.observe(torch.tensor([2.0, 2.0]), torch.tensor([-1.0, -1.0]))
    ema.update()
    assert ema.alpha.tolist() == pytest.approx([2.0, -1.0])  # zero-debiased: the first update is the means
    previous = ema.alpha.clone()
    for t in range(2, 6):
        ema.observe(torch.zeros(3), torch.zeros(3))
        ema.update()
        alpha = ema.alpha
        assert (alpha.abs() < previous.abs()).all()  # toward the new means (0, 0)
        # the decay-weighted mean of (2, -1) once and (0, 0) t - 1 times
        assert alpha.tolist() == pytest.approx([2.0 * 0.99 ** (t - 1) * 0.01 / (1 - 0.99**t),
                                                -1.0 * 0.99 ** (t - 1) * 0.01 / (1 - 0.99**t)], rel=1e-5)
        previous = alpha.clone()
    other = regularise.LeCamEMA(0.99, CPU)
    other.load(ema.state())
    assert torch.equal(other.alpha, ema.alpha) and other.state() == ema.state()


def test_lecam_averages_pool_the_processes_sums():
    one, two = regularise.LeCamEMA(0.9, CPU), regularise.LeCamEMA(0.9, CPU)
    one.observe(torch.tensor([1.0]), torch.tensor([-1.0]))
    one.update()
    two.observe(torch.tensor([3.0]), torch.tensor([1.0]))  # this rank's means; the other rank saw (1, -1)
    two.update(reduce=lambda sums: sums + torch.tensor([1.0, -1.0, 1.0]))
    assert one.alpha.tolist() == pytest.approx([1.0, -1.0])
    assert two.alpha.tolist() == pytest.approx([2.0, 0.0])  # the mean over both ranks


# --- APA --------------------------------------------------------------------------------------------------------

def test_pseudo_reals_at_p_one_are_the_fakes_with_their_labels_and_at_p_zero_the_reals():
    x, fake = torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2, requires_grad=True)
    y_real, y_fake = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    out, labels = regularise.pseudo_reals(x, y_real, fake, y_fake, torch.tensor(1.0))
    assert torch.equal(out, fake.detach()) and torch.equal(labels, y_fake) and not out.requires_grad
    out, labels = regularise.pseudo_reals(x, y_real, fake, y_fake, 0.0)
    assert torch.equal(out, x) and torch.equal(labels, y_real)
    out, labels = regularise.pseudo_reals(x, None, fake, None, 0.5)  # unconditional; each image whole, one or other
    assert labels is None and set(out.flatten(1).mean(1).tolist()) <= {0.0, 1.0}


def test_apa_at_p_one_shows_d_this_updates_fakes_as_its_reals():
    images = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = tiny_params(train={"apa": True, "augment": "none"})
    gan = make_step(params, fresh_accelerator(params), images, channels=1)
    gan.reg.apa.p.fill_(1.0)
    seen = []
    gan.D_plain.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    gan(0)
    real_input, fake_input = seen[:2]  # D's calls of the D update: reals, then fakes
    assert torch.equal(real_input, fake_input)
    assert not torch.equal(real_input, gan._real(0, 0, 0)[0])  # the step's real batch was not shown


def test_apa_p_rises_while_d_overfits_and_falls_otherwise():
    reg = regularise.DRegularisers(parse_params({"train": {"apa": True, "apa_kimg": 1.0, "batch_size": 100,
                                                           "ada_interval_steps": 2}}).train, CPU)
    loss, reports = torch.tensor(1.0), {}
    report = reports.__setitem__
    assert reg.d_loss(loss, torch.ones(100), -torch.ones(100), report) is loss  # LeCam off: APA only observes
    reg.end_step(0, None, report)  # not yet the interval
    assert float(reg.apa.p) == 0.0 and "Augment/apa_r_t" not in reports
    reg.end_step(1, None, report)  # r_t = 1 > 0.6: up by batch * interval / (kimg * 1000)
    assert float(reports["Augment/apa_r_t"]) == 1.0 and float(reg.apa.p) == pytest.approx(0.2)
    assert float(reports["Augment/apa_p"]) == pytest.approx(0.2)
    reg.d_loss(loss, -torch.ones(100), torch.ones(100), report)
    reg.end_step(3, None, report)
    assert float(reg.apa.p) == pytest.approx(0.0)
    restored = regularise.DRegularisers(parse_params({"train": {"apa": True}}).train, CPU)
    restored.load(reg.state())
    assert restored.state() == reg.state()


# --- Off by default ---------------------------------------------------------------------------------------------

def test_off_by_default_they_add_nothing_and_draw_no_random_numbers():
    tc = tiny_params().train
    assert tc.lecam_weight == 0 and tc.apa is False
    reg = regularise.DRegularisers(tc, CPU)
    x, fake, y, s_real, s_fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2), torch.arange(4), *torch.randn(2, 4)
    loss, reports = torch.tensor(0.7), {}
    rng = torch.get_rng_state()
    x_d, y_d = reg.reals(x, y, fake, y)
    assert x_d is x and y_d is y
    assert reg.d_loss(loss, s_real, s_fake, reports.__setitem__) is loss
    reg.end_d_update(None)
    reg.end_step(3, None, reports.__setitem__)
    assert reports == {} and reg.state() == {}
    assert torch.equal(rng, torch.get_rng_state())  # the default step's random stream is untouched


def test_lecam_adds_its_weighted_term_to_d_loss():
    reg = regularise.DRegularisers(parse_params({"train": {"lecam_weight": 0.5}}).train, CPU)
    reports = {}
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    out = reg.d_loss(torch.tensor(1.0), real, fake, reports.__setitem__)  # alpha = (0, 0) before any update
    assert float(reports["Loss/lecam"]) == pytest.approx((1 + 9) / 2 + (1 + 0) / 2)
    assert out.item() == pytest.approx(1.0 + 0.5 * 5.5)
    reg.end_d_update(None)
    assert reg.lecam.alpha.tolist() == pytest.approx([2.0, -0.5])


# --- Params -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("train, message", [
    ({"lecam_weight": -0.1}, "train.lecam_weight must be a number >= 0"),
    ({"lecam_decay": 1.0}, "train.lecam_decay must be a number >= 0 <= 0.9999"),
    ({"apa": "maybe"}, "train.apa must be"),
    ({"apa_target": 0}, "train.apa_target must be a number > 0"),
    ({"apa_kimg": 0}, "train.apa_kimg must be a number > 0"),
    ({"apa": True, "loss": "wgan-gp"}, "train.apa=true needs train.loss bce or hinge, got wgan-gp"),
    ({"apa": True, "loss": "lsgan"}, "train.apa=true needs train.loss bce or hinge, got lsgan"),
    ({"d_width_end": 0}, "train.d_width_end must be a number > 0"),
    ({"d_width_end": 1.5}, "train.d_width_end must be a number > 0 <= 1"),
])
def test_bad_values_are_refused_in_one_line_naming_the_key(train, message):
    with pytest.raises(ParamsError) as e:
        parse_params({"train": train})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_every_loss_takes_lecam_and_cuda_graphs_refuse_both_in_one_line():
    for loss in ("bce", "wgan", "wgan-gp", "hinge", "lsgan", "rpgan"):
        parse_params({"train": {"loss": loss, "lecam_weight": 0.3}})
    assert graph_blocker(parse_params({"train": {"apa": True}}).train, 1) == \
        "train.apa=true is not graphed yet; set it to false"
    assert graph_blocker(parse_params({"train": {"lecam_weight": 0.3}}).train, 1) == \
        "train.lecam_weight>0 is not graphed yet; set it to 0"
    assert graph_blocker(parse_params({"train": {"d_width_end": 0.5}}).train, 1).startswith("train.d_width_end<1")


# --- DynamicD ---------------------------------------------------------------------------------------------------

def _stage_outputs(D, x: torch.Tensor) -> list[torch.Tensor]:
    """Each stage's output (after any mask) in one forward."""
    seen = []
    hooks = [s.register_forward_hook(lambda m, i, out: seen.append(out.detach().clone())) for s in D.stages()]
    D(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_dynamic_width_zeroes_a_shrinking_random_share_of_each_stage_but_the_last(arch):
    torch.manual_seed(0)
    D = build(NetConfig(image_size=32, channels=3, d_channels=8, arch=arch))[1].eval()
    resumed = copy.deepcopy(D)
    x = torch.randn(4, 3, 32, 32)
    whole = _stage_outputs(D, x)
    width = regularise.DynamicWidth(D, end=0.5, steps=11, seed=3)
    assert [width.start_step(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.75, 0.5])
    rng = torch.get_rng_state()
    masked = _stage_outputs(D, x)  # at step 10: half of each stage's channels
    assert torch.equal(torch.get_rng_state(), rng)  # the masks draw from their own generator
    for k, (a, b) in enumerate(zip(whole[:-1], masked[:-1], strict=True)):
        live = b.abs().sum(dim=(0, 2, 3)) > 0
        assert int(live.sum()) == a.shape[1] // 2, k
        if k == 0:  # the first stage sees the unmasked input: its kept channels are as before
            assert torch.equal(b[:, live], a[:, live])
    assert not torch.equal(whole[-1], masked[-1])  # the last stage is whole, fed by masked ones
    assert int((masked[-1].abs().sum(dim=(0, 2, 3)) > 0).sum()) == whole[-1].shape[1]
    # (seed, step) alone fix the subsets: a run resumed at step 10 (a fresh schedule) masks as this one did
    regularise.DynamicWidth(resumed, end=0.5, steps=11, seed=3).start_step(10)
    assert all(torch.equal(a, b) for a, b in zip(_stage_outputs(resumed, x), masked, strict=True))
    first = masked[0].abs().sum(dim=(0, 2, 3)) > 0
    width.start_step(9)
    assert not torch.equal(_stage_outputs(D, x)[0].abs().sum(dim=(0, 2, 3)) > 0, first)  # a new subset each step
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert D(x).dtype == torch.bfloat16  # the mask follows the features' dtype


def test_dynamic_width_is_off_by_default_and_reports_its_share_when_on():
    images = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    off = make_step(tiny_params(), fresh_accelerator(tiny_params()), images, channels=1)
    assert off.width is None and not any(s._forward_hooks for s in off.D_plain.stages())
    params = tiny_params(train={"d_width_end": 0.25, "steps": 4})
    gan = make_step(params, fresh_accelerator(params), images, channels=1)
    for step in range(4):
        gan(step)
    assert gan.stats.pop_means()["D/width"] == pytest.approx((1 + 0.75 + 0.5 + 0.25) / 4)


# --- Resume -----------------------------------------------------------------------------------------------------

def test_resume_is_exact_with_lecam_and_apa_accumulation_n_critic_and_labels(prepared_dir, tmp_path):
    extra = {"loss": "hinge", "lecam_weight": 0.3, "lecam_decay": 0.9, "apa": True, "apa_kimg": 0.05,
             "apa_target": 0.1, "ada_interval_steps": 2, "grad_accum_steps": 2, "n_critic": 2}
    full = tiny_params(train=extra)
    header, (rows_full, rows_resumed) = resumed_equals_uninterrupted(prepared_dir, tmp_path, full,
                                                                     tiny_params(train={**extra, "steps": 6}))
    for col in ("Augment_apa_p", "Loss_lecam"):
        i = header.index(col)
        assert [r[i] for r in rows_full] == [r[i] for r in rows_resumed], col
    assert max(float(r[header.index("Augment_apa_p")]) for r in rows_full) > 0  # APA moved p
    _, cfg = weights.load_generator(tmp_path / "full/models/generator.safetensors",
                                    tmp_path / "full/models/generator.json")
    assert cfg["net"]["num_classes"] == 10


def test_the_logged_ada_p_is_the_mean_over_the_tick_not_its_last_value():
    """Stats keeps the tensors it is given until the tick; ADA's p moves in place, so the step reports a copy."""
    images = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = tiny_params(train={"augment": "ada", "ada_kimg": 0.1, "ada_interval_steps": 1})
    gan = make_step(params, fresh_accelerator(params), images, channels=1)
    gan.ada.p.fill_(0.5)  # mid-range, so that p moves whichever way D's outputs push it
    seen = []
    for step in range(6):
        seen.append(float(gan.ada.p))  # the p this step's D calls use, reported by the step
        gan(step)
    assert len(set(seen)) > 1, seen  # p moved during the tick
    assert gan.stats.pop_means()["Augment/p"] == pytest.approx(sum(seen) / len(seen))
