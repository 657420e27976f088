"""A team's setup, real parts: `dvc repro` tracked to one `mlflow server` on PostgreSQL (checked through its REST
API), then the outputs shared through a DVC remote with a second clone that has nothing to re-run."""

from __future__ import annotations

import csv
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY_PIPELINE, dvc_repo, free_port, run_ok, start_mlflow_server

pytestmark = pytest.mark.slow

MODEL = "dcgan-digits"  # params.yaml's export.model_name
SHARED = ("models/generator_ema.safetensors", "metrics/eval.json", "export/generator.safetensors")


def _pg_bin() -> Path:
    """The newest Debian PostgreSQL's bin/ (initdb, pg_ctl, createdb); skips where it is absent, fails under CI."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("initdb")).resolve().parent
    message = "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
    if os.environ.get("CI"):  # as tests/test_extractors.py: CI installs it (.ci/run), so it must not skip
        pytest.fail(message + " (CI is set, so this test may not be skipped)")
    pytest.skip(message)


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run `cmd` as the `postgres` user the Debian package creates."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1 with a database `mlflow`: its SQLAlchemy URI."""
    bin_dir = _pg_bin()
    # Not under pytest's tmp_path: its parents are root-only (0700), and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="team-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres", group=pwd.getpwnam("postgres").pw_gid)
    data, port = base / "data", free_port()
    log = base / "postgres.log"
    t0 = time.perf_counter()
    try:
        subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                     "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
        started = subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                               "-t", "60", "-o", options, "start"]), capture_output=True, text=True)
        assert started.returncode == 0, f"pg_ctl start failed:\n{started.stderr}\n{log.read_text()[-2000:]}"
        subprocess.run(_as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                     "mlflow"]), check=True, capture_output=True)
        print(f"\npostgres: initdb + start + createdb in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        # The driver is explicit: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not psycopg2.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`mlflow server` on the PostgreSQL store, serving artifacts from a local folder: (URL, artifacts folder)."""
    store = tmp_path_factory.mktemp("mlflow-server")
    t0 = time.perf_counter()
    proc = start_mlflow_server(store, port := free_port(), backend_store_uri=postgres)
    print(f"\nmlflow server on postgres: /health after {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    try:
        yield f"http://127.0.0.1:{port}", store / "artifacts"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def team_repo(server, tmp_path_factory):
    """The whole pipeline reproduced once against the server, and committed: (root, env)."""
    url, _ = server
    overrides = {**TINY_PIPELINE, "export": {"onnx": False}, "tracking": {"uri": url}}
    root, env = dvc_repo(tmp_path_factory.mktemp("member-a"), overrides)
    t0 = time.perf_counter()
    log = run_ok([sys.executable, "-m", "dvc", "repro"], root, env)
    print(f"\ndvc repro against the server: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for stage in ("prepare", "classifier", "train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in log, stage
    return root, env


def _api(url: str, endpoint: str, **query: str) -> dict:
    """GET /api/2.0/mlflow/`endpoint` as JSON: only the server's REST API, no MLflow client."""
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}",
                                timeout=30) as r:
        return json.load(r)


def test_the_run_metrics_model_and_champion_are_on_the_team_server(team_repo, server):
    root, _ = team_repo
    url, artifacts = server
    run_id = json.loads((root / "run.json").read_text())["run_id"]

    run = _api(url, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:")  # artifacts go through the server
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.steps"] == "30" and params["tracking.uri"] == url

    # The server holds the same loss curve the stage wrote locally, point for point.
    with open(root / "plots" / "train" / "train_loss.csv") as f:
        local = [(int(r["step"]), float(r["Loss_D"])) for r in csv.DictReader(f)]
    history = _api(url, "metrics/get-history", run_id=run_id, metric_key="Loss/D")["metrics"]
    served = sorted((m["step"], m["value"]) for m in history)
    assert [s for s, _ in served] == [s for s, _ in local] and served[-1][0] == 30
    assert [v for _, v in served] == pytest.approx([v for _, v in local], rel=1e-6)

    evaluation = json.loads((root / "metrics" / "eval.json").read_text())
    extractor = evaluation["eval_info"]["extractor"]
    fid_key = f"eval/{extractor}/frechet_inception_distance"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics[fid_key] == pytest.approx(evaluation[extractor]["frechet_inception_distance"], rel=1e-6)
    assert metrics[fid_key] > 0

    # One registered version, from this run, holding the champion alias.
    record = json.loads((root / "export" / "registry.json").read_text())
    assert record["registered"] and record["promoted"] and record["model_name"] == MODEL
    versions = _api(url, "model-versions/search", filter=f"name='{MODEL}'")["model_versions"]
    assert [(v["version"], v["run_id"], v["status"]) for v in versions] == [(record["version"], run_id, "READY")]
    model = _api(url, "registered-models/get", name=MODEL)["registered_model"]
    assert {"alias": "champion", "version": record["version"]} in model["aliases"]
    champion = _api(url, "registered-models/alias", name=MODEL, alias="champion")["model_version"]
    assert (champion["version"], champion["run_id"]) == (record["version"], run_id)

    # The run's artifacts landed in the server's artifact store, listed through the same API.
    listed = {f["path"] for f in _api(url, "artifacts/list", run_id=run_id, path="export")["files"]}
    assert "export/generator.safetensors" in listed, listed
    assert list(artifacts.rglob("generator.safetensors")), f"nothing under {artifacts}"


def test_a_second_clone_pulls_the_outputs_from_the_dvc_remote_and_has_nothing_to_run(team_repo, tmp_path):
    root, env = team_repo
    remote = tmp_path / "remote"
    run_ok([sys.executable, "-m", "dvc", "remote", "add", "-d", "team", str(remote)], root, env)
    run_ok(["git", "add", "-A"], root, env)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "reproduced"], root, env)
    t0 = time.perf_counter()
    run_ok([sys.executable, "-m", "dvc", "push"], root, env)
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push wrote nothing to the remote"

    clone = tmp_path / "member-b"
    run_ok(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / SHARED[0]).exists()  # git alone does not carry the DVC outputs
    run_ok([sys.executable, "-m", "dvc", "pull"], clone, env)
    for path in SHARED:
        assert (clone / path).read_bytes() == (root / path).read_bytes(), path

    status = run_ok([sys.executable, "-m", "dvc", "status"], clone, env)
    assert "up to date" in status, status
    again = run_ok([sys.executable, "-m", "dvc", "repro"], clone, env)
    assert "Running stage" not in again and "up to date" in again, again
    print(f"\ndvc push, clone, pull, status, repro: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
