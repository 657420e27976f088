"""params.yaml: the real file loads; every kind of bad value stops with one line naming key, rule and value."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.config import Params, ParamsError, load_params, parse_params

BASE = (REPO / "params.yaml").read_text()


def test_real_params_yaml_loads_with_public_keys():
    p = load_params(REPO / "params.yaml")
    assert p.data.dataset == "digits"
    assert p.train.loss in ("bce", "wgan", "wgan-gp", "hinge", "lsgan")
    assert p.tracking.uri == "sqlite:///mlflow.db"
    assert p.train.lr_g == p.train.lr_d == "auto" and (p.train.beta1, p.train.beta2) == (0.5, 0.999)
    for key in ("data.dataset", "data.image_size", "model.arch", "train.loss", "train.steps", "train.batch_size",
                "train.seed", "tracking.uri", "export.model_name"):
        assert key in p.flat()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"n_critic": 0}}, "params.yaml: train.n_critic must be an integer >= 1, got 0"),
        ({"train": {"n_critic": 1001}}, "params.yaml: train.n_critic must be an integer >= 1 <= 1000, got 1001"),
        ({"train": {"n_critic": 1.5}}, "params.yaml: train.n_critic must be an integer, got 1.5"),
        ({"train": {"steps": True}}, "params.yaml: train.steps must be an integer or auto, got True"),
        ({"train": {"lr_g": "fast"}}, "params.yaml: train.lr_g must be a number or auto, got 'fast'"),
        ({"train": {"lr_d": 0}}, "params.yaml: train.lr_d must be a number > 0, got 0.0"),
        ({"train": {"beta2": -0.5}}, "params.yaml: train.beta2 must be a number >= 0, got -0.5"),
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
        ({"eval": {"num_samples": "many"}}, "params.yaml: eval.num_samples must be an integer or auto, got 'many'"),
        ({"eval": {"num_samples": 1}}, "params.yaml: eval.num_samples must be an integer >= 2, got 1"),
        ({"eval": {"kid_subset_size": 1500}},
         "params.yaml: eval.kid_subset_size must be <= eval.num_samples (auto: 1000 or more), got 1500"),
        ({"eval": {"num_samples": 100, "kid_subset_size": 200}},
         "params.yaml: eval.kid_subset_size must be <= eval.num_samples (100), got 200"),
        ({"train": {"batch_size": 30, "grad_accum_steps": 4}},
         "params.yaml: train.batch_size must be divisible by train.grad_accum_steps (4), got 30"),
    ],
)
def test_bad_values_name_key_rule_and_value(raw, message):
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


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


def test_steps_and_learning_rates_auto_resolve_by_the_data_set():
    digits, folder = parse_params({}), parse_params({"data": {"dataset": "imagefolder", "channels": 1}})
    assert digits.train.steps == "auto"
    assert (digits.resolved().train.steps, folder.resolved().train.steps) == (2500, 4000)
    for dataset in ("mnist", "fashion-mnist", "cifar10", "imagefolder"):  # grey or RGB: every set but the digits
        train = parse_params({"data": {"dataset": dataset}}).resolved().train
        assert (train.steps, train.lr_g, train.lr_d) == (4000, 1.6e-3, 1.6e-3), dataset
    assert parse_params({"train": {"steps": 700}}).resolved().train.steps == 700  # a number is kept
    grey = digits.resolved().train
    assert (grey.lr_g, grey.lr_d) == (2e-4, 2e-4)
    assert parse_params({"data": {"dataset": "cifar10"}, "train": {"lr_g": 5e-4}}).resolved().train.lr_g == 5e-4
    with pytest.raises(ParamsError, match=r"cond_ramp_end_steps must be .* train.steps \(auto: 4000 or less\), got 5000"):
        parse_params({"train": {"cond_ramp_end_steps": 5000}})
    ramp = {"train": {"cond_ramp_end_steps": 3000}}  # within the pictures' 4,000 steps, past the digits' 2,500
    assert parse_params({**ramp, "data": {"dataset": "cifar10"}}).resolved().train.steps == 4000
    with pytest.raises(ParamsError, match=r"cond_ramp_end_steps must be at most train.steps \(auto: 2500 for "
                                          r"digits\), got 3000"):
        parse_params(ramp).resolved()


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def edited(key: str, value: str, text: str = BASE) -> str:
    """params.yaml's text with the line of `section.key` set to the YAML text `value`."""
    section, name = key.split(".")
    lines, current = text.splitlines(), None
    for i, line in enumerate(lines):
        if m := re.match(r"(\w+):\s*(#.*)?$", line):
            current = m[1]
        elif current == section and line.startswith(f"  {name}:"):
            lines[i] = f"  {name}: {value}"
            return "\n".join(lines) + "\n"
    raise KeyError(key)


def load_text(tmp_path: Path, text: str | bytes):
    path = tmp_path / "params.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_params(path)


def refused(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(ParamsError) as e:
        load_text(tmp_path, text)
    message = str(e.value)
    assert message.startswith("params.yaml: ") and len(message.splitlines()) == 1, message
    return message


def line_of(text: str, start: str, nth: int = 0) -> int:
    return [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start)][nth]


def test_a_nested_key_given_twice_is_refused_with_its_full_name_and_lines(tmp_path):
    text = BASE.replace("  seed: 0\n  lr_g:", "  seed: 0\n  seed: 3\n  lr_g:")
    first, second = line_of(text, "  seed: 0"), line_of(text, "  seed: 3")
    assert refused(tmp_path, text) == f"params.yaml: duplicate key train.seed (lines {first} and {second})"


def test_a_section_given_twice_is_refused(tmp_path):
    text = BASE + "train:\n  steps: 5\n"
    first, second = line_of(text, "train:"), line_of(text, "train:", 1)
    assert refused(tmp_path, text) == f"params.yaml: duplicate key train (lines {first} and {second})"


@pytest.mark.parametrize("text", ["", "\n\n  \n", "# only a comment\n\n# and another\n", "---\n"])
def test_an_empty_file_is_refused(tmp_path, text):
    assert refused(tmp_path, text).endswith("params.yaml is empty: it sets no sections")


def without_section(section: str, text: str = BASE) -> str:
    """The text minus the block `section:` and its indented lines."""
    kept, inside = [], False
    for line in text.splitlines():
        if line and not line.startswith(" "):
            inside = line.startswith(f"{section}:")
        if not inside:
            kept.append(line)
    return "\n".join(kept) + "\n"


@pytest.mark.parametrize("section", ["data", "model", "train", "eval", "export", "tracking"])
def test_a_file_missing_a_section_is_refused(tmp_path, section):
    text = without_section(section)
    assert f"\n{section}:" not in "\n" + text and len(text.splitlines()) > 30
    assert refused(tmp_path, text).startswith(f"params.yaml: section {section} is missing from ")


def test_overrides_and_code_keep_defaults_for_missing_sections():
    assert parse_params({"train": {"steps": 5}}, ["eval.seed=3"]).eval.seed == 3


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.steps", "1:30", "params.yaml: train.steps must be an integer or auto, got '1:30'"),  # YAML 1.1 read 90
        ("train.steps", "1_000", "params.yaml: train.steps must be an integer or auto, got '1_000'"),
        ("train.steps", "0b101", "params.yaml: train.steps must be an integer or auto, got '0b101'"),
        ("data.download", "yes", "params.yaml: data.download must be true or false, got 'yes'"),
        ("data.download", "on", "params.yaml: data.download must be true or false, got 'on'"),
        ("train.channels_last", "No", "params.yaml: train.channels_last must be true or false or auto, got 'No'"),
        ("train.lr_g", "1:30.5", "params.yaml: train.lr_g must be a number or auto, got '1:30.5'"),
        ("train.lr_g", ".nan", "params.yaml: train.lr_g must be a finite number, got nan"),
        ("train.lr_g", ".inf", "params.yaml: train.lr_g must be a finite number, got inf"),
        ("train.gp_weight", "-.Inf", "params.yaml: train.gp_weight must be a finite number, got -inf"),
        ("train.steps", ".NaN", "params.yaml: train.steps must be an integer or auto, got nan"),
        ("train.batch_size", "1" + "0" * 30,
         "params.yaml: train.batch_size must be an integer >= 1 <= 65536, got 1000000000000000000000000000000"),
        ("train.seed", "100000000000000",
         "params.yaml: train.seed must be an integer >= 0 <= 4294967295, got 100000000000000"),
        ("train.seed", "-1", "params.yaml: train.seed must be an integer >= 0, got -1"),
        ("train.lr_d", "1e400", "params.yaml: train.lr_d must be a finite number, got inf"),
        ("train.lr_d", "1" + "0" * 400, "params.yaml: train.lr_d is too large: an integer of 401 digits"),
        ("train.steps", "9" * 5000, "params.yaml: train.steps is too large: an integer of 5000 digits"),
        ("eval.metrics", "[fid, 1" + "0" * 200 + "]", "params.yaml: eval.metrics[1] is too large: an integer of 201 "),
        ("eval.metrics", "[fid, fid]", "params.yaml: eval.metrics lists 'fid' twice"),
        ("eval.metrics", "[isc, kid, prc, kid]", "params.yaml: eval.metrics lists 'kid' twice"),
    ],
)
def test_yaml_1_1_spellings_huge_numbers_and_repeats_are_refused(tmp_path, key, value, message):
    assert refused(tmp_path, edited(key, value)).startswith(message)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("model.conditional", "true", "true"), ("model.conditional", "false", "false"),
        ("model.conditional", "True", "true"), ("train.mixed_precision", "no", "no"),
        ("train.lr_g", "1e-4", 1e-4), ("train.lr_g", "1e-05", 1e-5), ("train.lr_g", "0.0001", 1e-4),
        ("train.lr_g", "2.0e-4", 2e-4), ("train.lr_g", ".5e-3", 5e-4), ("train.gp_weight", "5.", 5.0),
        ("train.steps", "017", 17), ("train.steps", "0o17", 15), ("train.steps", "0x1F", 31),
        ("train.steps", "+12", 12), ("data.root", "yes", "yes"), ("data.root", "2001-12-14", "2001-12-14"),
        ("export.model_name", "1:30", "1:30"), ("eval.inception_weights", "~", None),
        ("eval.inception_weights", "", None), ("data.download", "TRUE", True),
    ],
)
def test_values_are_read_as_yaml_1_2(tmp_path, key, value, expected):
    """YAML 1.2 core schema, as DVC's ruamel writes it: no base 60, no yes/on/off, `1e-4` is a float."""
    section, name = key.split(".")
    got = getattr(getattr(load_text(tmp_path, edited(key, value)), section), name)
    assert got == expected and type(got) is type(expected)


def test_a_file_written_by_dvc_exp_run_set_param_loads(tmp_path):
    apply_overrides = pytest.importorskip("dvc.utils.hydra").apply_overrides
    path = tmp_path / "params.yaml"
    path.write_text(BASE)
    apply_overrides(path, ["train.lr_g=1e-4", "train.lr_d=0.00001", "train.mixed_precision=no",
                           "model.conditional=true", "eval.metrics=[fid,kid]", "tracking.timeout_seconds=1e3"])
    p = load_params(path)
    assert (p.train.lr_g, p.train.lr_d, p.tracking.timeout_seconds) == (1e-4, 1e-5, 1000.0)
    assert (p.train.mixed_precision, p.model.conditional, p.eval.metrics) == ("no", "true", ("fid", "kid"))


def test_overrides_are_read_as_yaml_1_2_and_refuse_bad_yaml():
    p = parse_params({}, ["train.lr_g=1e-4", "train.mixed_precision=no", "model.conditional=false"])
    assert (p.train.lr_g, p.train.mixed_precision, p.model.conditional) == (1e-4, "no", "false")
    with pytest.raises(ParamsError, match=r"^params.yaml: train.steps must be an integer or auto, got '1:30'$"):
        parse_params({}, ["train.steps=1:30"])
    with pytest.raises(ParamsError, match=r"^params.yaml: override 'train.steps=\[1' is not valid YAML: "):
        parse_params({}, ["train.steps=[1"])


@pytest.mark.parametrize("bad, where", [(b"\xff", "byte 0xff"), (b"\xc3\x28", "byte 0xc3"), ("é".encode("latin-1"),
                                                                                      "byte 0xe9")])
def test_a_file_that_is_not_utf8_is_refused_with_where(tmp_path, bad, where):
    data = BASE.encode().replace(b"data/raw", b"data/r" + bad + b"w")
    offset, line = data.index(bad), line_of(BASE, "  root: data/raw")
    assert refused(tmp_path, data) == (f"params.yaml: {tmp_path / 'params.yaml'} is not UTF-8 text: "
                                       f"{where} at line {line} (byte offset {offset})")


@pytest.mark.parametrize(
    "text, message",
    [
        ("- data\n- train\n", "the top level must be a mapping of sections, got ['data', 'train']"),
        ("just words\n", "the top level must be a mapping of sections, got 'just words'"),
        (without_section("tracking") + "tracking: 3\n", "params.yaml: tracking must be a mapping of keys, got 3"),
        (without_section("tracking") + "tracking: off\n", "params.yaml: tracking must be a mapping of keys, got 'off'"),
        (BASE + "trakcing:\n  uri: x\n", "params.yaml: unknown section trakcing"),
        ("[" * 5000 + "]" * 5000, "is not valid YAML: nested too deeply"),
        ("data: [unclosed\n", "is not valid YAML: "),
        ("data:\n\troot: x\n", "is not valid YAML: "),
        ("a: \x00\n", "is not valid YAML: "),
        ("data: !!python/object:os.system x\n", "is not valid YAML: "),
        (without_section("data") + "data: &a [*a]\n", "params.yaml: data must be a mapping of keys, got [[[[[["),
        (BASE.replace("eval:\n", "eval: {\n", 1), "is not valid YAML: "),
        ("%YAML 2.0\n---\ndata: {}\n", "is not valid YAML: "),
        ("data:\n  root: !!int 0b11\n", "is not valid YAML: "),
        (BASE.replace("tracking:", "tracking:\n  <<: {uri: x}\n", 1), "params.yaml: unknown key tracking.<<"),
    ],
)
def test_any_file_content_gives_one_params_error_line(tmp_path, text, message):
    assert message in refused(tmp_path, text)


def test_a_null_section_in_a_file_is_refused(tmp_path):
    text = re.sub(r"(?ms)^tracking:\n.*\Z", "tracking:\n", BASE)
    assert refused(tmp_path, text).startswith("params.yaml: section tracking is empty")


def _int_fields() -> list[tuple[str, dict]]:
    out = []
    for section in dataclasses.fields(Params):
        cls = type(section.default_factory())
        hints = typing.get_type_hints(cls)
        out += [(f"{section.name}.{f.name}", dict(f.metadata)) for f in dataclasses.fields(cls)
                if int in (hints[f.name], *typing.get_args(hints[f.name]))]  # int | str: an integer, or "auto"
    return out


@pytest.mark.parametrize("key, meta", _int_fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_int_field_is_bounded_and_refuses_one_past_its_bound(key, meta):
    assert meta["choices"] or (meta["le"] is not None and meta["le"] < 2**63), key
    top = max(meta["choices"] or (meta["le"],))
    with pytest.raises(ParamsError, match=rf"^params.yaml: {re.escape(key)} must be "):
        parse_params({}, [f"{key}={top + 1}"])


def test_seed_upper_bounds_run_through_the_seeding_code():
    """Each seed's `le` is what the code that consumes it accepts: train.seed * 1_000_003 + epoch seeds the batch
    order (it overflowed torch's 64 bits from train.seed ~ 1.8e13), torch-fidelity seeds numpy's RandomState with
    eval.seed (< 2**32)."""
    import numpy as np
    import torch

    from pipeline.data import BatchSampler
    from pipeline.nets.sampling import latents
    from pipeline.training.step import step_seed

    le = {key: meta["le"] for key, meta in _int_fields()}
    last_step = le["train.steps"]
    last_epoch = last_step * le["train.n_critic"] * le["train.grad_accum_steps"]  # one batch per epoch at worst
    with torch.random.fork_rng():
        seed = le["train.seed"]
        torch.manual_seed(seed)
        torch.manual_seed(step_seed(seed, last_step, rank=1023))
        BatchSampler(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), 4, seed)._order(last_epoch)
        latents(2, 3, seed)
        np.random.RandomState(le["eval.seed"]), latents(2, 3, le["eval.seed"])
        torch.manual_seed(le["eval.classifier_seed"]), torch.Generator().manual_seed(le["eval.classifier_seed"])
        np.random.default_rng(le["data.split_seed"]).permutation(3)
