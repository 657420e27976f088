"""The durable tracking spool: order, no blocking, replay after an outage, `gan-tracking sync`, and a real
`mlflow server` killed with `kill -9` mid-run and restarted on the same port and store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from conftest import REPO, free_port, start_mlflow_server

from pipeline.config import TrackingConfig
from pipeline.registry import client as model_registry
from pipeline.tracking import connect, store
from pipeline.tracking import spool as spooling
from pipeline.tracking import tracker as tracking


class FlakyClient:
    """Stands in for MlflowClient: refuses calls while `down`, records what it took, in order."""

    def __init__(self, delay: float = 0.0):
        self.down = threading.Event()
        self.delay = delay
        self.taken: list[tuple] = []

    def _take(self, *what):
        time.sleep(self.delay)
        if self.down.is_set():
            raise ConnectionError("server down")
        self.taken.append(what)

    def log_batch(self, run, metrics=(), params=(), tags=()):
        for m in metrics:
            self._take("metric", m.key, m.value, m.step)
        for p in params:
            self._take("param", p.key, p.value)
        for t in tags:
            self._take("tag", t.key, t.value)

    def set_terminated(self, run, status, end_time=None):
        self._take("status", status)


def _drain(sp, timeout=20):
    deadline = time.time() + timeout
    while sp.pending_steps() and time.time() < deadline:
        time.sleep(0.05)


def test_records_reach_the_server_in_order_after_an_outage(tmp_path):
    client = FlakyClient()
    sp = spooling.Spool(tmp_path, "run1", "fake://", client, warn=lambda m: None)
    sp.put("metrics", points=[["x", 0.0, 1, 0]])
    _drain(sp)
    client.down.set()
    for step in range(1, 40):
        sp.put("metrics", points=[["x", float(step), 1, step]])
    sp.put("tags", tags={"t": "v"})
    time.sleep(1.0)
    assert len(client.taken) == 1  # nothing got through while down, nothing was lost
    client.down.clear()
    assert sp.close(timeout=30)
    assert [w[2] for w in client.taken if w[0] == "metric"] == list(range(40))
    assert client.taken[-1] == ("tag", "t", "v")
    assert sp.counts["replayed_records"] == 40 and sp.counts["metric_points"] == 40
    assert not (tmp_path / "run1").exists()  # all sent: the spool is gone


def test_put_never_waits_on_a_slow_or_dead_server(tmp_path):
    client = FlakyClient(delay=2.0)  # every call hangs 2 s, as a dead server within its timeout does
    client.down.set()
    sp = spooling.Spool(tmp_path, "run1", "fake://", client, warn=lambda m: None)
    worst = 0.0
    for step in range(200):
        t0 = time.perf_counter()
        sp.put("metrics", points=[["x", float(step), 1, step], ["y", 1.0, 1, step]])
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.05, f"a put blocked for {worst * 1000:.1f} ms"
    assert not sp.close(timeout=0.5)
    assert sp.counts["pending_records"] == 200
    # Durable: every record is in the file, for the next process or gan-tracking sync.
    lines = (tmp_path / "run1" / "ops.jsonl").read_text().splitlines()
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, 201))


def test_a_killed_process_leaves_records_the_next_one_replays(tmp_path):
    client = FlakyClient()
    client.down.set()
    first = spooling.Spool(tmp_path, "run1", "fake://", client, warn=lambda m: None)
    for step in range(5):
        first.put("metrics", points=[["x", float(step), 1, step]])
    with first._cv:  # as a kill -9 would: the sender stops, the lock goes, the file stays (and a torn line)
        first._stop = True
        first._cv.notify_all()
    first._thread.join()
    os.close(first._lock_fd)
    with open(tmp_path / "run1" / "ops.jsonl", "ab") as f:
        f.write(b'{"seq": 6, "op": "metr')
    client.down.clear()
    second = spooling.Spool(tmp_path, "run1", "fake://", client, warn=lambda m: None)
    second.put("metrics", points=[["x", 5.0, 1, 5]])
    assert second.close(timeout=20)
    steps = [w[2] for w in client.taken if w[0] == "metric"]
    assert steps[-6:] == [0, 1, 2, 3, 4, 5] and second.counts["leftover_records"] == 5


def _sqlite_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, tracking.Tracker(TrackingConfig(uri=uri, experiment="spool", tensorboard=False))


@pytest.mark.slow  # subprocesses or Inception on the CPU: the full suite runs it
def test_gan_tracking_sync_uploads_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri, t = _sqlite_run(tmp_path)
    from mlflow.tracking import MlflowClient

    # The stage ended while the server was away: its records stay in the spool.
    t.spool._sender.client = FlakyClient()
    t.spool._sender.client.down.set()
    for step in range(1, 11):
        t.log_metrics({"Loss/D": step / 10, "Loss/G": 1.0}, step=step)
    t.set_tags({"k": "v"})
    t.spool.close(timeout=0.2)
    assert (tmp_path / ".tracking-spool" / t.run_id / "ops.jsonl").exists()

    out = subprocess.run([sys.executable, "-m", "pipeline.commands.tracking", "sync"], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert f"run {t.run_id}: uploaded" in out.stdout
    again = subprocess.run([sys.executable, "-m", "pipeline.commands.tracking", "sync"], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert again.returncode == 0 and "nothing to upload" in again.stdout
    client = MlflowClient(tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(t.run_id, "Loss/D")] == list(range(1, 11))
    assert len(client.get_metric_history(t.run_id, "Loss/G")) == 10
    assert client.get_run(t.run_id).data.tags["k"] == "v"


def test_relative_sqlite_resolves_against_the_main_repository(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    exp_copy = root / ".dvc" / "tmp" / "exps" / "tmpab12" / "sub"
    exp_copy.mkdir(parents=True)
    monkeypatch.chdir(exp_copy)
    assert store.repo_root() == root
    assert store.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{root}/mlflow.db"
    assert store.resolve_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert store.resolve_uri("http://host:5000") == "http://host:5000"


def test_a_half_initialised_store_is_rebuilt_not_reported_unreachable(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as c:  # what a kill during MLflow's migrations leaves: some tables, no runs
        c.execute("CREATE TABLE secrets (id INTEGER)")
        c.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    t = tracking.Tracker(TrackingConfig(uri=f"sqlite:///{db}", experiment="x", tensorboard=False))
    assert t.active and list(tmp_path.glob("mlflow.db.broken-*"))
    t.close()


def test_an_experiment_another_process_just_created_is_used_and_its_store_kept(tmp_path, monkeypatch):
    """`dvc queue start -j 2`: both experiments find no experiment, both create it; the second's create fails on the
    unique name. It must open its run in the first's experiment, not take the new store for a half-built one."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = tracking.Tracker(TrackingConfig(uri=uri, experiment="x", tensorboard=False))
    first.close()
    real = MlflowClient.get_experiment_by_name
    calls = []

    def not_yet(self, name):  # the second process looked before the first created it
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_yet)
    second = tracking.Tracker(TrackingConfig(uri=uri, experiment="x", tensorboard=False))
    assert second.active and second.experiment_id == first.experiment_id and len(calls) == 2
    second.close()
    assert not list(tmp_path.glob("mlflow.db.broken-*"))  # the complete store was not moved aside
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

    conflict = MlflowException("Experiment(name=x) already exists", error_code=RESOURCE_ALREADY_EXISTS)
    assert store.repair_store(uri, conflict) is False  # a conflict is no sign of a damaged store


def test_a_run_left_running_by_a_dead_process_is_marked_killed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrackingConfig(uri=uri, experiment="k", tensorboard=False)
    orphan = tracking.Tracker(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client.set_tag(orphan.run_id, connect.TAG_PID, dead.stdout.strip())  # its process is gone, never closed
    orphan.spool.close(timeout=5)
    later = tracking.Tracker(cfg)
    assert client.get_run(orphan.run_id).info.status == "KILLED"
    later.close()
    assert client.get_run(later.run_id).info.status == "FINISHED"


# A real server killed with kill -9 at 30 % of a run and restarted OUTAGE_SECONDS later on the same port and store.

OUTAGE_SECONDS = 15  # past the spool's longest back-off (8 s), so it retries several times before the server is back
SERVER_PARAMS = {
    "data": {"image_size": 16},
    "model": {"z_dim": 16, "g_channels": 8, "d_channels": 8},
    "train": {"steps": 900, "batch_size": 32, "log_every_steps": 10, "sample_every_steps": 150,
              "checkpoint_every_steps": 500, "mixed_precision": "no", "cpu_threads": 1},
    "eval": {"num_samples": 300, "kid_subset_size": 50},
}


def _stage(tmp_path, prepared, name, tracking_section):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in {**SERVER_PARAMS, "tracking": tracking_section}.items():
        params[section].update(values)
    out = tmp_path / name
    out.mkdir()
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.train", "--params", str(out / "params.yaml"), "--prepared", str(prepared)]
    for flag in ("models", "metrics", "plots", "run-file", "checkpoints"):
        cmd += [f"--{flag}", str(out / {"metrics": "train.json", "run-file": "run.json"}.get(flag, flag))]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return out, subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_server_killed_mid_run_loses_nothing(prepared_dir, tmp_path):
    from safetensors.torch import load_file

    store = tmp_path / "server"
    port = free_port()
    server = start_mlflow_server(store, port)
    url = f"http://127.0.0.1:{port}"
    base_dir, base = _stage(tmp_path, prepared_dir, "untracked", {"enabled": False})
    run_dir, run = _stage(tmp_path, prepared_dir, "tracked",
                          {"uri": url, "experiment": "outage", "timeout_seconds": 5, "max_retries": 0})
    steps, killed_at = SERVER_PARAMS["train"]["steps"], None
    for line in run.stdout:  # progress lines: "step N/T ..."
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= 0.3 * steps:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            killed_at = time.time()
            break
    assert killed_at is not None, run.stderr.read()[-3000:]
    restarter = threading.Timer(OUTAGE_SECONDS - (time.time() - killed_at), lambda: holder.append(start_mlflow_server(store, port)))
    holder: list = []
    restarter.start()
    rest, err = run.communicate(timeout=600)
    restarter.join()
    base_out, base_err = base.communicate(timeout=600)
    try:
        assert run.returncode == 0, err[-3000:]
        assert base.returncode == 0, base_err[-3000:]
        info = json.loads((run_dir / "train.json").read_text())["tracking"]
        if info.get("pending_records"):  # the stage ended before the server came back: sync uploads the rest
            assert "gan-tracking sync" in err
            sync = subprocess.run([sys.executable, "-m", "pipeline.commands.tracking", "sync", "--spool",
                                   str(run_dir / ".tracking-spool")], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
            assert sync.returncode == 0, sync.stderr
        else:
            assert info["replayed_records"] > 0
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=url)
        run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
        mlrun = client.get_run(run_id)
        assert mlrun.info.status == "FINISHED"
        csv_rows = (run_dir / "plots" / "train_loss.csv").read_text().splitlines()
        header, rows = csv_rows[0].split(","), [r.split(",") for r in csv_rows[1:]]
        for col, name in enumerate(header):
            if name == "step":
                continue
            key = name.replace("_", "/", 1)
            logged = [m.step for m in client.get_metric_history(run_id, key)]
            expected = [int(r[0]) for r in rows if r[col] not in ("", "nan")]  # nan: D outputs the loss lacks
            assert sorted(logged) == expected, key
        images = sorted(int(a.path.split("+step+")[1].split("+")[0]) for a in client.list_artifacts(run_id, "images")
                        if a.path.endswith(".png"))  # MLflow's time-stepped image names: key+step+N+timestamp+...
        assert images == list(range(150, steps + 1, 150))  # every grid, once
        assert {"data.hash", "world_size", "model.num_classes"} <= set(mlrun.data.tags)
        for f in ("generator.safetensors", "generator_ema.safetensors"):
            a, b = load_file(run_dir / "models" / f), load_file(base_dir / "models" / f)
            assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f
    finally:
        for p in holder:
            os.killpg(p.pid, signal.SIGTERM)


def test_sqlite_database_is_locked_is_retried_not_raised(tmp_path, monkeypatch):
    """Concurrent experiments share one SQLite store: a write lock held past SQLite's own 5 s busy timeout makes
    MLflow raise "database is locked"; the registry call waits it out instead of crashing."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store.prepare_store(uri)
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(6.5, holder.rollback)
    release.start()
    t0 = time.perf_counter()
    assert model_registry.list_versions(uri, "locked-model") == []
    assert time.perf_counter() - t0 > 6  # it really met the lock, and retried past it
    release.join()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert store.retry_locked(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        store.retry_locked(lambda: (_ for _ in ()).throw(ValueError("other")))
