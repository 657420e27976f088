"""train.init_from: fine-tuning from a trained generator (a file or a registered model)."""

from __future__ import annotations

import json

import pytest
from conftest import run_tiny, tiny_params
from safetensors.torch import load_file

from pipeline.config import ParamsError
from pipeline.training import warmstart


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.fixture(scope="module")
def source(prepared_dir, tmp_path_factory):
    """A trained tiny generator (and its D) in models/."""
    out = tmp_path_factory.mktemp("source")
    run_tiny(prepared_dir, out)
    return out / "models"


def test_g_and_d_start_from_the_source_weights(prepared_dir, source, tmp_path, monkeypatch):
    from conftest import fresh_accelerator

    from pipeline.data import load_split
    from pipeline.training.step import GANStep

    params = tiny_params(train={"init_from": str(source / "generator.safetensors")})
    warm = warmstart.resolve(params.train.init_from, params.tracking.uri)
    assert warm.discriminator == source / "discriminator.safetensors"
    import numpy as np
    import torch

    split = load_split(prepared_dir, "train")
    gan = GANStep(params, fresh_accelerator(params), torch.from_numpy(np.array(split.images)), channels=1,
                  labels=torch.from_numpy(split.labels), classes=10, warm=warm)
    state = {k: v.detach().cpu() for k, v in gan.G_plain.state_dict().items()}
    assert _same(state, load_file(source / "generator.safetensors"))
    assert _same({k: v.detach().cpu() for k, v in gan.ema.module.state_dict().items()}, state)  # EMA starts there too
    d_state = {k: v.detach().cpu() for k, v in gan.D_plain.state_dict().items()}
    assert _same(d_state, load_file(source / "discriminator.safetensors"))


def test_a_fine_tuned_run_trains_records_its_source_and_has_its_own_checkpoints(prepared_dir, source, tmp_path):
    from pipeline.training import checkpoint

    run_tiny(prepared_dir, tmp_path / "scratch")
    tuned = run_tiny(prepared_dir, tmp_path, tiny_params(train={"init_from": str(source / "generator.safetensors")}))
    assert tuned["steps"] == 12
    scratch_fp = checkpoint.fingerprints(tmp_path / "scratch" / "checkpoints")
    assert checkpoint.fingerprints(tmp_path / "checkpoints") != scratch_fp  # the source's weights are in it
    config = json.loads((tmp_path / "models" / "generator.json").read_text())
    assert config["params"]["train"]["init_from"] == str(source / "generator.safetensors")


def test_an_incompatible_architecture_is_refused_in_one_line(source):
    params = tiny_params(model={"g_channels": 16}, train={"init_from": str(source / "generator.safetensors")})
    warm = warmstart.resolve(params.train.init_from, params.tracking.uri)
    from pipeline.nets import net_config

    with pytest.raises(ParamsError, match=r"train.init_from=.*g_channels=8, this run builds g_channels=16") as e:
        warmstart.check_fits(params.train.init_from, warm, net_config(params, 1, 10))
    assert "\n" not in str(e.value)
    with pytest.raises(ParamsError, match=r"\.safetensors generator file or a registered model"):
        warmstart.resolve(str(source / "generator.json"), "sqlite:///x.db")
    with pytest.raises(ParamsError, match=r"is missing"):
        warmstart.resolve(str(source / "absent.safetensors"), "sqlite:///x.db")


def test_a_registered_model_is_fetched_from_its_run(source, tmp_path, monkeypatch):
    """models:/NAME@champion: export logs the generator's safetensors and json under export/ in the version's run."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(client.create_experiment("w"))
    for name in ("generator.safetensors", "generator.json"):
        client.log_artifact(run.info.run_id, str(source / name), "export")
    client.create_registered_model("tiny")
    mv = client.create_model_version("tiny", f"{run.info.artifact_uri}/export", run_id=run.info.run_id)
    client.set_registered_model_alias("tiny", "champion", mv.version)

    warm = warmstart.resolve("models:/tiny@champion", uri, cache=tmp_path / "dl")
    assert warm.source == f"tiny v{mv.version} (run {run.info.run_id})" and warm.discriminator is None
    assert _same(load_file(warm.weights), load_file(source / "generator.safetensors"))
    assert warmstart.resolve(f"models:/tiny/{mv.version}", uri, cache=tmp_path / "dl2").sha256 == warm.sha256
    with pytest.raises(ParamsError, match="not found in the registry"):
        warmstart.resolve("models:/tiny@nope", uri, cache=tmp_path / "dl3")
