"""A refused param comes fast: every stage entry point checks the params before it imports torch, MLflow or
Accelerate."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

HEAVY = ("torch", "torchvision", "mlflow", "accelerate", "torch_fidelity")
# Runs `python -m MODULE ARGS...` in this process, then reports which heavy packages the refusal had imported.
_PROBE = f"""
import atexit, runpy, sys
atexit.register(lambda: print("heavy:", *sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr))
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _stage_command(stage: str) -> list[str]:
    """The stage's command from dvc.yaml, from `-m MODULE` on (the train and evaluate stages run under the launcher)."""
    cmd = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    return cmd[cmd.index("-m") + 1:]


@pytest.mark.parametrize("stage", ["prepare", "classifier", "train", "evaluate", "export"])
def test_a_bad_param_is_refused_before_the_heavy_imports(stage, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env["PYTHONPATH"] = str(REPO)
    args = [*_stage_command(stage), "--params", str(REPO / "params.yaml"), "--set", "data.image_size=48"]
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines[0].startswith("error: params.yaml: data.image_size must be one of 16, 32, 64, 128, got 48"), lines
    assert lines[-1] == "heavy:", f"{args[0]} imported {lines[-1]} before refusing a param"
    assert not any(tmp_path.iterdir())  # nothing written
