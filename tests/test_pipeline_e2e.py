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


def test_dvc_exp_run_with_another_loss_and_arch_shows_in_exp_show(repo):
    """The README's `-S train.loss=wgan-gp`, and issue 8's ResNet + relativistic pairing + ADA."""
    root, env = repo
    run_ok(["git", "add", "-A"], root, env)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], root, env)
    run_ok([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.loss=wgan-gp", "-n", "gp"], root, env)
    run_ok([sys.executable, "-m", "dvc", "exp", "run", "-S", "model.arch=resnet", "-S", "train.loss=rpgan", "-S",
            "train.augment=ada", "-n", "r3"], root, env)
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, env=env,
                                      capture_output=True, text=True, check=True).stdout)
    exps = {rev["name"]: rev["data"] for row in shown for exp in row.get("experiments") or [] for rev in exp["revs"]}
    assert {"gp", "r3"} <= set(exps), sorted(exps)
    train = {name: exps[name]["params"]["params.yaml"]["data"]["train"] for name in ("gp", "r3")}
    assert train["gp"]["loss"] == "wgan-gp"
    assert (train["r3"]["loss"], train["r3"]["augment"]) == ("rpgan", "ada")
    assert exps["r3"]["params"]["params.yaml"]["data"]["model"]["arch"] == "resnet"
    for name in ("gp", "r3"):
        evaluation = exps[name]["metrics"]["metrics/eval.json"]["data"]
        assert evaluation[evaluation["eval_info"]["extractor"]]["frechet_inception_distance"] > 0, name
