"""`dvc repro` end to end, with tiny params, in a temporary copy of the repository (what a fresh clone holds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_repo

pytestmark = pytest.mark.slow

TINY_PIPELINE = {
    "data": {"image_size": 16},
    "model": {"z_dim": 16, "g_channels": 8, "d_channels": 8},
    "train": {"steps": 30, "log_every_steps": 10, "sample_every_steps": 15, "checkpoint_every_steps": 15},
    "eval": {"num_samples": 300, "kid_subset_size": 50, "classifier_steps": 50},
}


def _run(cmd, cwd, env):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    root = copy_repo(tmp_path_factory.mktemp("clone"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY_PIPELINE.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": "2"}
    env.pop("PYTHONPATH", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        _run(cmd, root, env)
    return root, env


def test_dvc_repro_runs_every_stage_then_is_a_no_op(repo):
    root, env = repo
    log = _run([sys.executable, "-m", "dvc", "repro"], root, env)
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

    again = _run([sys.executable, "-m", "dvc", "repro"], root, env)
    assert "Running stage" not in again and "up to date" in again


def test_dvc_exp_run_with_another_loss_shows_in_exp_show(repo):
    root, env = repo
    _run(["git", "add", "-A"], root, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], root, env)
    _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.loss=wgan-gp", "-n", "gp"], root, env)
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, env=env,
                           capture_output=True, text=True, check=True).stdout
    text = json.dumps(json.loads(shown))
    assert '"gp"' in text and "wgan-gp" in text and "frechet_inception_distance" in text
