"""Queued DVC experiments run in temporary copies of the repository, two at a time: none may lose its MLflow run,
the champion alias must end on the best of them whatever order they finish in, and `dvc exp show` lists each with
its params and metrics. The experiments are the README's `-S train.loss=wgan-gp`, issue 8's ResNet + relativistic
pairing + ADA, and another seed, all registered under one model name so that the champion is chosen among the three."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import TINY_PIPELINE, dvc_repo, run_ok

pytestmark = pytest.mark.slow

MODEL = "queued-gan"
QUEUED = {"seed1": {"train.seed": "1"}, "gp": {"train.loss": "wgan-gp"},
          "r3": {"model.arch": "resnet", "train.loss": "rpgan", "train.augment": "ada"}}


def test_three_queued_experiments_two_at_a_time(tmp_path):
    root, env = dvc_repo(tmp_path / "repo", {**TINY_PIPELINE, "export": {"onnx": False, "model_name": MODEL}})
    dvc = [sys.executable, "-m", "dvc"]
    for name, sets in QUEUED.items():
        run_ok([*dvc, "exp", "run", "--queue", "-n", name, *(a for k, v in sets.items() for a in ("-S", f"{k}={v}"))],
               root, env)
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
    assert set(runs) == set(QUEUED), runs.keys()
    fids = {}
    for name, run in runs.items():
        assert run.info.status == "FINISHED", (name, run.info.status)
        assert {k: run.data.params[k] for k in QUEUED[name]} == QUEUED[name], name
        fid_keys = [k for k in run.data.metrics if k.endswith("frechet_inception_distance")]
        assert fid_keys, (name, sorted(run.data.metrics))
        fids[run.info.run_id] = run.data.metrics[fid_keys[0]]
        assert (root / "mlruns").exists()  # artifacts next to the store

    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(v.run_id for v in versions) == sorted(fids)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == min(fids, key=fids.get), (fids, champion.run_id)

    shown = json.loads(subprocess.run([*dvc, "exp", "show", "--json"], cwd=root, env=env, capture_output=True,
                                      text=True, check=True).stdout)
    exps = {rev["name"]: rev["data"] for row in shown for exp in row.get("experiments") or [] for rev in exp["revs"]}
    assert set(QUEUED) <= set(exps), sorted(exps)
    for name, sets in QUEUED.items():
        params = exps[name]["params"]["params.yaml"]["data"]
        assert {k: str(params[k.split(".")[0]][k.split(".")[1]]) for k in sets} == sets, name
        evaluation = exps[name]["metrics"]["metrics/eval.json"]["data"]
        assert evaluation[evaluation["eval_info"]["extractor"]]["frechet_inception_distance"] > 0, name


def test_export_is_never_restored_from_the_run_cache():
    """DVC's run-cache skips a stage with a persistent output (dvc.stage.cache._can_hash): a restored export/ would
    never have been registered."""
    from conftest import REPO
    from dvc.repo import Repo

    stages = {s.name: s for s in Repo(str(REPO)).index.stages}
    assert any(o.persist for o in stages["export"].outs)
    assert not any(o.persist for o in stages["train"].outs)  # train may be restored: its run is already complete
