"""`dvc repro` end to end, with tiny params, in a temporary copy of the repository (what a fresh clone holds)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_ok

pytestmark = pytest.mark.slow


def test_dvc_repro_runs_every_stage_then_is_a_no_op(repo):
    root, env = repo
    log = run_ok([sys.executable, "-m", "dvc", "repro"], root, env)
    for stage in ("prepare", "train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in log, stage
    train = json.loads((root / "metrics" / "train.json").read_text())
    assert train["steps"] == 30 and train["world_size"] == 1
    evaluation = json.loads((root / "metrics" / "eval.json").read_text())
    extractor = evaluation["eval_info"]["extractor"]
    assert evaluation[extractor]["frechet_inception_distance"] > 0
    for path in ("models/generator_ema.safetensors", "plots/train/samples.png", "run.json"):
        assert (root / path).exists(), path
    run_id = json.loads((root / "run.json").read_text())["run_id"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    metrics = client.get_run(run_id).data.metrics
    assert "Loss/D" in metrics and any(k.startswith("eval/") for k in metrics)

    again = run_ok([sys.executable, "-m", "dvc", "repro"], root, env)
    assert "Running stage" not in again and "up to date" in again


def test_a_failed_stage_loses_no_result_dvc_checkout_brings_them_back(repo):
    """DVC removes a stage's outputs before running it; every output is cached, so a failed run loses nothing."""
    root, env = repo
    outputs = ("run.json", "metrics/train.json", "plots/train/train_loss.csv", "models/generator_ema.safetensors")
    before = {p: (root / p).read_bytes() for p in outputs}
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("n_critic: 1", "n_critic: 0"))
    failed = subprocess.run([sys.executable, "-m", "dvc", "repro", "train"], cwd=root, env=env, capture_output=True,
                            text=True)
    assert failed.returncode != 0 and "train.n_critic" in failed.stderr
    assert not any((root / p).exists() for p in outputs)  # DVC removed them before running the stage
    (root / "params.yaml").write_text(params)
    run_ok([sys.executable, "-m", "dvc", "checkout"], root, env)
    assert {p: (root / p).read_bytes() for p in outputs} == before
    assert "up to date" in run_ok([sys.executable, "-m", "dvc", "repro"], root, env)

