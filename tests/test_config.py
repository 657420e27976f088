"""params.yaml: the real file loads; every kind of bad value stops with one line naming key, rule and value."""

from __future__ import annotations

import pytest
from conftest import REPO

from pipeline.config import ParamsError, load_params, parse_params


def test_real_params_yaml_loads_with_public_keys():
    p = load_params(REPO / "params.yaml")
    assert p.data.dataset == "digits"
    assert p.train.loss in ("bce", "wgan", "wgan-gp", "hinge", "lsgan")
    assert p.tracking.uri == "sqlite:///mlflow.db"
    assert p.train.lr_g == pytest.approx(2e-4) and (p.train.beta1, p.train.beta2) == (0.5, 0.999)
    for key in ("data.dataset", "data.image_size", "model.arch", "train.loss", "train.steps", "train.batch_size",
                "train.seed", "tracking.uri", "export.model_name"):
        assert key in p.flat()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"n_critic": 0}}, "params.yaml: train.n_critic must be an integer >= 1, got 0"),
        ({"train": {"n_critic": 1.5}}, "params.yaml: train.n_critic must be an integer, got 1.5"),
        ({"train": {"steps": True}}, "params.yaml: train.steps must be an integer, got True"),
        ({"train": {"lr_g": "fast"}}, "params.yaml: train.lr_g must be a number, got 'fast'"),
        ({"train": {"lr_d": 0}}, "params.yaml: train.lr_d must be a number > 0, got 0.0"),
        ({"train": {"beta2": 1.5}}, "params.yaml: train.beta2 must be a number >= 0 <= 1, got 1.5"),
        ({"train": {"loss": "wgan_gp"}},
         "params.yaml: train.loss must be one of bce, wgan, wgan-gp, hinge, lsgan, rpgan, got 'wgan_gp'"),
        ({"train": {"lernrate": 1}}, "params.yaml: unknown key train.lernrate"),
        ({"trian": {"steps": 1}}, "params.yaml: unknown section trian"),
        ({"data": {"image_size": 48}}, "params.yaml: data.image_size must be one of 16, 32, 64, 128, got 48"),
        ({"data": {"dataset": "imagenet"}}, "params.yaml: data.dataset must be one of digits"),
        ({"eval": {"metrics": ["fid", "lpips"]}}, "params.yaml: eval.metrics must be one of isc, fid, kid, prc"),
        ({"train": "fast"}, "params.yaml: train must be a mapping of keys, got 'fast'"),
        ({"train": {"loss": "wgan-gp"}, "model": {"d_norm": "batch"}},
         "params.yaml: model.d_norm=batch cannot be used with train.loss=wgan-gp"),
        ({"train": {"batch_size": 30, "grad_accum_steps": 4}},
         "params.yaml: train.batch_size must be divisible by train.grad_accum_steps (4), got 30"),
    ],
)
def test_bad_values_name_key_rule_and_value(raw, message):
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_yaml_spellings_are_normalised():
    # PyYAML (YAML 1.1) reads `1e-4` as a string and a bare `no` as false; dvc exp run -S writes both.
    p = parse_params({"train": {"lr_g": "1e-4", "mixed_precision": False}})
    assert p.train.lr_g == pytest.approx(1e-4) and p.train.mixed_precision == "no"


def test_overrides_apply_and_are_validated():
    p = parse_params({}, ["train.steps=7", "train.loss=hinge"])
    assert (p.train.steps, p.train.loss) == (7, "hinge")
    with pytest.raises(ParamsError, match="train.steps must be an integer >= 1, got -3"):
        parse_params({}, ["train.steps=-3"])
    with pytest.raises(ParamsError, match="override must look like section.key=value"):
        parse_params({}, ["steps"])


def test_d_norm_auto_resolves_per_loss():
    assert parse_params({"train": {"loss": "wgan-gp"}}).resolved_d_norm() == "layer"
    assert parse_params({"train": {"loss": "bce"}}).resolved_d_norm() == "batch"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
