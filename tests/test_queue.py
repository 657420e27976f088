"""Queued DVC experiments run in temporary copies of the repository, two at a time: none may lose its MLflow run,
and the champion alias must end on the best of them whatever order they finish in."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import TINY_PIPELINE, dvc_repo, run_ok

pytestmark = pytest.mark.slow

SEEDS = {"q1": 1, "q2": 2, "q3": 3}


def test_three_queued_experiments_two_at_a_time(tmp_path):
    root, env = dvc_repo(tmp_path / "repo", {**TINY_PIPELINE, "export": {"onnx": False}})
    dvc = [sys.executable, "-m", "dvc"]
    for name, seed in SEEDS.items():
        run_ok([*dvc, "exp", "run", "--queue", "-n", name, "-S", f"train.seed={seed}"], root, env)
    run_ok([*dvc, "queue", "start", "-j", "2"], root, env)
    deadline, status = time.time() + 900, ""
    while time.time() < deadline:
        status = subprocess.run([*dvc, "queue", "status"], cwd=root, env=env, capture_output=True, text=True).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(3)
    run_ok([*dvc, "queue", "stop"], root, env)
    assert status.count("Success") == 3, status

    # Every run landed in the main repository's store (the relative sqlite:///mlflow.db), not in a thrown-away copy.
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("gan-pipeline")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == set(SEEDS), runs.keys()
    fids = {}
    for name, run in runs.items():
        assert run.info.status == "FINISHED", (name, run.info.status)
        assert run.data.params["train.seed"] == str(SEEDS[name])
        fid_keys = [k for k in run.data.metrics if k.endswith("frechet_inception_distance")]
        assert fid_keys, (name, sorted(run.data.metrics))
        fids[run.info.run_id] = run.data.metrics[fid_keys[0]]
        assert (root / "mlruns").exists()  # artifacts next to the store

    model = yaml_model_name(root)
    versions = client.search_model_versions(f"name = '{model}'")
    assert sorted(v.run_id for v in versions) == sorted(fids)
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.run_id == min(fids, key=fids.get), (fids, champion.run_id)


def yaml_model_name(root) -> str:
    from pipeline.config import load_params

    return load_params(root / "params.yaml").export.model_name  # `auto` resolved, as the export stage does


def test_export_is_never_restored_from_the_run_cache():
    """DVC's run-cache skips a stage with a persistent output (dvc.stage.cache._can_hash): a restored export/ would
    never have been registered."""
    from conftest import REPO
    from dvc.repo import Repo

    stages = {s.name: s for s in Repo(str(REPO)).index.stages}
    assert any(o.persist for o in stages["export"].outs)
    assert not any(o.persist for o in stages["train"].outs)  # train may be restored: its run is already complete
