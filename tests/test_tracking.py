"""MLflow tracking against SQLite and against a real `mlflow server`; bounded behaviour when it is down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import free_port, run_tiny, start_mlflow_server, tiny_params

from pipeline.config import TrackingConfig
from pipeline.errors import TrackingError
from pipeline.tracking.tracker import Tracker


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _check_run(uri, run_file):
    run_id = json.loads(run_file.read_text())["run_id"]
    client = _client(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.loss"] == "bce" and run.data.params["data.image_size"] == "16"
    for key in ("Loss/D", "Loss/G", "D/real_prob", "D/fake_prob", "Grad/norm_D", "Grad/norm_G", "Speed/img_per_s"):
        assert key in run.data.metrics, key
    history = client.get_metric_history(run_id, "Loss/D")
    assert [m.step for m in history] == [4, 6, 8, 12]
    assert run.data.tags["mlflow.source.git.commit"] and run.data.tags["data.hash"]
    paths = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for d in ("config", "samples", "images") for a in client.list_artifacts(run_id, d)}
    assert "config/train.json" in paths and "samples/samples.png" in paths
    assert any(p.startswith("images/samples~ema") for p in paths), paths
    return run


def test_sqlite_run_records_params_metrics_images_and_tags(prepared_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default artifact root is ./mlruns
    monkeypatch.setenv("DVC_EXP_NAME", "brave-moth")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_tiny(prepared_dir, tmp_path, tiny_params(tracking={"enabled": True, "uri": uri, "experiment": "t"}))
    run = _check_run(uri, tmp_path / "run.json")
    assert run.data.tags["dvc.exp_name"] == "brave-moth" and run.info.run_name == "brave-moth"


def test_later_stages_resume_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t", tensorboard=False)
    first = Tracker(cfg)
    first.write_run_file(tmp_path / "run.json")
    first.close()
    later = Tracker.resume(cfg, tmp_path / "run.json")
    later.log_metrics({"eval/x": 1.5}, step=0)
    later.close()
    assert later.run_id == first.run_id
    assert _client(cfg.uri).get_run(first.run_id).data.metrics["eval/x"] == 1.5
    assert Tracker.resume(cfg, tmp_path / "absent.json").run_id is None


def test_tensorboard_receives_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = Tracker(None, tensorboard_dir=str(tmp_path / "tb"))
    t.log_metrics({"Loss/D": 0.5}, step=3)
    t.log_image(np.zeros((8, 8, 3), np.uint8), "samples/ema", 3)
    t.close()
    acc = EventAccumulator(str(tmp_path / "tb" / t.tensorboard_run)).Reload()  # one subdirectory per run
    assert acc.Scalars("Loss/D")[0].value == 0.5 and acc.Tags()["images"] == ["samples/ema"]


def test_unreachable_server_fails_fast_before_training(tmp_path):
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}", max_retries=1, timeout_seconds=2)
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match=r"cannot reach MLflow at http://127\.0\.0\.1:\d+.*tracking.required"):
        Tracker(cfg)
    assert time.perf_counter() - t0 < 30


def test_unreachable_server_not_required_trains_untracked(prepared_dir, tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    params = tiny_params(tracking={"enabled": True, "uri": uri, "required": False, "max_retries": 0})
    run_tiny(prepared_dir, tmp_path, params)
    assert "NOT tracked" in capsys.readouterr().err
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] is None
    assert (tmp_path / "models" / "generator.safetensors").exists()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    proc = start_mlflow_server(tmp_path_factory.mktemp("server"), port := free_port())
    yield f"http://127.0.0.1:{port}", proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_real_server_run_then_server_goes_away(prepared_dir, tmp_path, mlflow_server, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the spool lives in the working directory's repository
    url, proc = mlflow_server
    run_tiny(prepared_dir, tmp_path, tiny_params(tracking={"enabled": True, "uri": url, "experiment": "srv"}))
    _check_run(url, tmp_path / "run.json")

    # The server dies mid-run: logging never waits on it, and the stage's end waits a bounded time, then names
    # the spool that keeps the records.
    tracker = Tracker(TrackingConfig(uri=url, experiment="srv", max_retries=1, timeout_seconds=2,
                                     tensorboard=False))
    tracker.log_metrics({"x": 1.0}, step=1)
    assert tracker.active
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    t0 = time.perf_counter()
    for step in range(2, 50):
        tracker.log_metrics({"x": float(step)}, step=step)
    assert time.perf_counter() - t0 < 0.5
    spool_dir = tracker.spool.dir
    t0 = time.perf_counter()
    tracker.close()
    assert time.perf_counter() - t0 < 15
    assert "gan-tracking sync" in capsys.readouterr().err
    assert tracker.counts["pending_records"] >= 48 and (spool_dir / "ops.jsonl").exists()


BLOCK_IMPORTS = """
import sys
for name in ('mlflow', 'torch_fidelity', 'dvc'):
    sys.modules[name] = None  # as if not installed: import fails, importlib.util.find_spec answers None
"""


@pytest.mark.slow  # a fresh Python process: the full suite runs it
def test_training_runs_without_mlflow_installed(prepared_dir, tmp_path):
    """GPU images may have torch and accelerate but no mlflow: tracking off must never import it."""
    code = BLOCK_IMPORTS + f"""
from conftest import run_tiny, tiny_params
from pathlib import Path
run_tiny(Path({str(prepared_dir)!r}), Path({str(tmp_path)!r}))
run_tiny(Path({str(prepared_dir)!r}), Path({str(tmp_path / 'b')!r}),
         tiny_params(tracking={{"enabled": True, "required": False}}))
assert not [m for m in sys.modules if m.split('.')[0] in ('mlflow', 'torch_fidelity', 'dvc') and sys.modules[m]]
"""
    tests_dir = os.path.dirname(__file__)
    out = subprocess.run([sys.executable, "-c", code], cwd=tests_dir, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, os.path.dirname(tests_dir)])})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mlflow is not installed" in out.stderr
    assert (tmp_path / "models" / "generator.safetensors").exists()


def test_a_resumed_run_continues_its_mlflow_run_and_logs_each_step_once(prepared_dir, tmp_path, monkeypatch):
    import shutil

    from pipeline.training import checkpoint

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracked = {"enabled": True, "uri": uri, "experiment": "resume"}
    run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 8}, tracking=tracked))
    first = json.loads((tmp_path / "run.json").read_text())["run_id"]
    # As if killed after logging step 8 but before its checkpoint landed: the last checkpoint is step 6's.
    last = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    shutil.rmtree(last)
    (last.parent / "latest").write_text("step-0000006\n")

    run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 12}, tracking=tracked))
    assert json.loads((tmp_path / "metrics" / "train.json").read_text())["resumed_from_step"] == 6
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == first
    client = _client(uri)
    for key in ("Loss/D", "Speed/img_per_s"):
        assert [m.step for m in client.get_metric_history(first, key)] == [4, 6, 8, 12], key
    run = client.get_run(first)
    assert run.info.status == "FINISHED" and run.data.params["train.steps"] == "8"
    assert run.data.tags["stage.train.train.steps"] == "12"  # a param cannot change
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_registry_calls_leave_no_process_wide_mlflow_uri_behind(tmp_path, monkeypatch):
    """MLflow's fluent API needs process-wide URIs; the pipeline puts them back, or a later MlflowClient (a notebook,
    the next test) would silently read another store's registry."""
    import mlflow

    from pipeline.registry import client as model_registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path}/other.db"
    with pytest.raises(TrackingError):
        model_registry.register_version(uri, "m", "runs:/0123/generator", {})  # fails after binding the URIs
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_a_new_local_store_is_created_without_mlflow_info_lines(tmp_path):
    """MLflow's "Creating initial MLflow database tables..." and "Updating database tables" are not the user's to act
    on: a fresh store is created quietly (its warnings and errors still come through)."""
    import logging

    import mlflow  # noqa: F401 - configures MLflow's loggers (INFO), as every stage does

    from pipeline.tracking import store

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("mlflow.store.db.utils")
    logger.addHandler(handler)
    try:
        store.prepare_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    finally:
        logger.removeHandler(handler)
    assert (tmp_path / "mlflow.db").is_file()
    assert not [r.getMessage() for r in records if r.levelno < logging.WARNING]
    assert logger.level == logging.NOTSET  # set back: only the table set-up is quiet
