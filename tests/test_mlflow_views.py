"""What MLflow's and TensorBoard's own views show of a pipeline run: experiment kind, dataset input, source tags,
system metrics, per-stage params, run names, the registered model's default name, read-only commands, and one
TensorBoard run per pipeline run with its hparams."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, fresh_accelerator, tiny_params, train_paths

from pipeline.config import TrackingConfig, load_params, parse_params
from pipeline.tracking.tracker import Tracker
from pipeline.training.stage import train


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _train(prepared, out, params):
    paths = dataclasses.replace(train_paths(prepared, out), tensorboard=out / "tb")
    return train(params, paths, accelerator=fresh_accelerator(params))


@pytest.fixture(scope="module")
def tracked(prepared_dir, tmp_path_factory):
    """One tiny tracked train stage inside `dvc exp run` (DVC_EXP_NAME set), system metrics every 0.5 s."""
    out = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{out}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out)
        mp.setenv("DVC_EXP_NAME", "tiny-moth")
        mp.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
        mp.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
        _train(prepared_dir, out, tiny_params(tracking={"enabled": True, "uri": uri, "experiment": "views",
                                                        "system_metrics_seconds": 0.5}))
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    return out, uri, run_id


def test_experiment_opens_on_its_runs(tmp_path, monkeypatch):
    """MLflow 3's UI reads `mlflow.experimentKind`: without it, a new experiment opens on the GenAI overview."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    Tracker(TrackingConfig(uri=uri, experiment="fresh", tensorboard=False)).close()
    old = _client(uri).create_experiment("older")  # made before the pipeline tagged its experiments
    Tracker(TrackingConfig(uri=uri, experiment="older", tensorboard=False)).close()
    for name in ("fresh", "older"):
        assert _client(uri).get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"
    assert _client(uri).get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_source_tags_follow_mlflow_names(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "x"],
                ["remote", "add", "origin", "https://github.com/example/gan.git"]):
        subprocess.run(git + cmd, cwd=repo, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t = Tracker(TrackingConfig(uri=uri, experiment="src", tensorboard=False))
    t.close()
    tags = _client(uri).get_run(t.run_id).data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.source.git.branch"] == "main"
    assert tags["mlflow.source.git.repoURL"] == "https://github.com/example/gan.git"


def test_system_metrics_switches(tmp_path, monkeypatch):
    """On for the train stage unless tracking.system_metrics is false or MLflow's own switch says false."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def system_keys(cfg):
        t = Tracker(cfg, system_metrics=True)
        t.close()
        return [k for k in _client(uri).get_run(t.run_id).data.metrics if k.startswith("system/")]

    assert "system/cpu_utilization_percentage" in system_keys(TrackingConfig(uri=uri, tensorboard=False))
    assert system_keys(TrackingConfig(uri=uri, tensorboard=False, system_metrics=False)) == []
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    assert system_keys(TrackingConfig(uri=uri, tensorboard=False)) == []


def test_model_name_defaults_to_arch_and_data_set():
    assert parse_params({}).export.model_name == "dcgan-digits"
    assert parse_params({"model": {"arch": "resnet"}, "data": {"dataset": "cifar10"}}).export.model_name == \
        "resnet-cifar10"
    assert parse_params({"model": {"arch": "resnet"}, "export": {"model_name": "mine"}}).export.model_name == "mine"
    assert load_params(REPO / "params.yaml").export.model_name == "dcgan-digits"


def _cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.slow  # subprocesses or Inception on the CPU: the full suite runs it
def test_read_only_commands_never_create_a_store(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.commands.generate", "models:/tiny@champion", "--out", "o"],
                         cwd=tmp_path, env=_cli_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "no MLflow store at" in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    missing = tmp_path / "elsewhere" / "none.db"
    out = subprocess.run([sys.executable, "-m", "pipeline.commands.registry", "--name", "tiny", "--tracking-uri",
                          f"sqlite:///{missing}", "show"],
                         cwd=tmp_path, env=_cli_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and f"no MLflow store at {missing}" in out.stderr, out.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a read-only command left files behind"


@pytest.mark.slow
def test_train_run_shows_dataset_source_and_system_metrics(tracked, prepared_dir):
    from pipeline.data import read_meta

    out, uri, run_id = tracked
    client = _client(uri)
    run = client.get_run(run_id)
    meta = read_meta(prepared_dir)
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("digits", meta["hash"])
    assert json.loads(inp.dataset.source)["uri"] == meta["root"]
    assert json.loads(inp.dataset.profile)["train_images"] == meta["count"]["train"]
    features = json.loads(json.loads(inp.dataset.schema)["mlflow_tensorspec"]["features"])
    assert features[0]["tensor-spec"]["shape"] == [-1, *meta["shape"]]
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training"}
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and "mlflow.source.git.commit" in run.data.tags
    steps = [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
    assert steps and steps == list(range(len(steps))), steps  # how many depends on the run's length
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run_id, "Loss/D")] == [4, 6, 8, 12]  # not shifted by them
    assert not [k for k in run.data.params if k.startswith(("eval.", "export."))]  # train logs its own sections


def _evaluate_log(out, kid_subset_size):
    """The evaluate stage's logging, as after a fresh evaluate on a cached train."""
    from PIL import Image

    from pipeline.evaluation.stage import EvalPaths, _log

    uri = f"sqlite:///{out}/mlflow.db"
    params = tiny_params(tracking={"enabled": True, "uri": uri, "experiment": "views"},
                         eval={"kid_subset_size": kid_subset_size})
    grid = out / "eval-grid.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(grid)
    paths = EvalPaths(prepared=out, models=out / "models", classifier=out, run_file=out / "run.json",
                      metrics=out / "eval.json", plots=out)
    report = {"eval_info": {"extractor": "x"}, "x": {"frechet_inception_distance": 1.0}}
    _log(params, paths, {"params": {"train": {"steps": 12}}}, report, grid, 1, 1.0)


@pytest.mark.slow
def test_evaluate_reruns_record_their_params_and_take_the_experiment_name(tracked, monkeypatch):
    out, uri, run_id = tracked
    monkeypatch.chdir(out)
    client = _client(uri)

    def used(key):  # what the evaluate stage last used: its stage tag where the param holds another value
        data = client.get_run(run_id).data
        return data.tags.get(f"stage.evaluate.{key}", data.params.get(key))

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    _evaluate_log(out, 50)
    assert used("eval.kid_subset_size") == "50"
    assert client.get_run(run_id).info.run_name == "tiny-moth"
    monkeypatch.setenv("DVC_EXP_NAME", "other-exp")  # `dvc exp run -S eval.kid_subset_size=30`, train cached
    _evaluate_log(out, 30)
    run = client.get_run(run_id)
    assert used("eval.kid_subset_size") == "30" and run.data.params["eval.kid_subset_size"] == "50"
    assert run.info.run_name == "other-exp" and run.data.tags["dvc.exp_name"] == "other-exp"
    _evaluate_log(out, 50)  # back to the first value: the tag follows, it never keeps 30
    assert used("eval.kid_subset_size") == "50"
    config = client.download_artifacts(run_id, "config/evaluate.json", str(out))
    assert json.loads(Path(config).read_text())["eval.kid_subset_size"] == 50


def _hparams(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir)).Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return acc, {k: v.string_value or v.number_value or v.bool_value for k, v in info.hparams.items()}


@pytest.mark.slow
def test_tensorboard_one_directory_per_run_with_hparams(tracked):
    out, _, _ = tracked
    assert [p.name for p in (out / "tb").iterdir()] == ["tiny-moth"]
    acc, hparams = _hparams(out / "tb" / "tiny-moth")
    assert hparams["train.steps"] == 12 and hparams["train.loss"] == "bce"
    assert [e.step for e in acc.Scalars("Loss/D")] == [4, 6, 8, 12]
    experiment = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    assert b"Loss/D" in experiment  # the final metrics the HParams table shows


@pytest.mark.slow
def test_resumed_train_appends_to_its_tensorboard_run(prepared_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    _train(prepared_dir, tmp_path, tiny_params(train={"steps": 6}))
    _train(prepared_dir, tmp_path, tiny_params(train={"steps": 12}))  # resumes from step 6's checkpoint
    (run,) = (tmp_path / "tb").iterdir()
    acc, hparams = _hparams(run)
    assert [e.step for e in acc.Scalars("Loss/D")] == [4, 6, 8, 12]
    # TensorBoard keeps a run's first hparams, as MLflow its first params: the first stage finished with 6.
    assert hparams["train.steps"] == 6


def test_system_metrics_sample_on_their_own_thread_until_stopped():
    """Samples every `seconds`, steps 0, 1, ...; the last one is taken at stop, which never waits long."""
    import time

    from pipeline.tracking.sysmetrics import SYSTEM_PREFIX, SystemMetrics

    records = []
    sampler = SystemMetrics(lambda op, points: records.append(points), seconds=0.1)
    time.sleep(0.6)
    t0 = time.perf_counter()
    sampler.stop()
    assert time.perf_counter() - t0 < 5
    steps = [points[0][3] for points in records]
    assert len(steps) >= 3 and steps == list(range(len(steps))), steps
    keys = {k for points in records for k, *_ in points}
    assert f"{SYSTEM_PREFIX}cpu_utilization_percentage" in keys and f"{SYSTEM_PREFIX}system_memory_usage_megabytes" in keys
