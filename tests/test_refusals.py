"""A refused param comes fast and says what to do: every stage entry point checks the params before it imports
torch, MLflow or Accelerate, and under `dvc exp run` the refusal adds how to undo the value DVC left in params.yaml."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from pipeline.commands import runner
from pipeline.errors import DataError, ParamsError, PreflightError

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


# Under dvc exp run -----------------------------------------------------------------------------------------------

@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """A git repository whose committed params.yaml is the project's; the workspace copy then holds what
    `dvc exp run -S data.image_size=48` writes, and the environment is what DVC gives a stage of an experiment."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    committed = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(committed)
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "params"], check=True)
    rev = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    size = yaml.safe_load(committed)["data"]["image_size"]
    (tmp_path / "params.yaml").write_text(committed.replace(f"image_size: {size}", "image_size: 48", 1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "pesky-wind")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", rev)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path, size


def _refusal(capsys, main) -> list[str]:
    with pytest.raises(SystemExit) as e:
        runner.run(main)
    assert e.value.code == 1
    return capsys.readouterr().err.strip().splitlines()


def test_a_refused_param_under_dvc_exp_run_says_how_to_restore_params_yaml(experiment, capsys):
    root, size = experiment
    lines = _refusal(capsys, lambda _: runner.params_from(runner.parser("").parse_args([])))
    assert len(lines) == 2 and lines[0].startswith("error: params.yaml: data.image_size must be one of")
    assert lines[1] == (f"note: dvc exp run left data.image_size=48 in params.yaml, and the next experiment starts "
                        f"from it: restore the committed values with `dvc exp run -S data.image_size={size}`, or "
                        f"`git checkout params.yaml`")
    assert "image_size: 48" in (root / "params.yaml").read_text()  # told, not changed behind the user's back


def test_the_note_names_the_changed_keys_a_pre_flight_refusal_is_about(experiment, capsys):
    def main(_):
        raise PreflightError("the reference split has 120 images: set eval.kid_subset_size to at most 120")

    lines = _refusal(capsys, main)  # the message names no changed key: every changed key is listed
    assert len(lines) == 2 and "left data.image_size=48 in params.yaml" in lines[1]


def test_no_note_outside_an_experiment_or_for_an_error_about_something_else(experiment, capsys, monkeypatch):
    def refuse(_):
        raise DataError("data.root: /nowhere is not a directory")

    assert _refusal(capsys, refuse) == ["error: data.root: /nowhere is not a directory"]  # not a changed key
    monkeypatch.delenv("DVC_EXP_NAME")  # dvc repro: the user edited params.yaml themselves

    def bad(_):
        raise ParamsError("params.yaml: data.image_size must be one of 16, 32, 64, 128, got 48")

    assert len(_refusal(capsys, bad)) == 1


def test_no_note_in_a_queued_experiments_copy(experiment, capsys):
    root, _ = experiment
    copy = root / ".dvc" / "tmp" / "exps" / "tmp123"
    copy.mkdir(parents=True)
    (copy / "params.yaml").write_text((root / "params.yaml").read_text())
    os.chdir(copy)  # the fixture's monkeypatch.chdir puts the working directory back

    def bad(_):
        raise ParamsError("params.yaml: data.image_size must be one of 16, 32, 64, 128, got 48")

    assert len(_refusal(capsys, bad)) == 1


def test_restore_values_are_written_as_dvc_reads_them():
    assert runner._yaml_value(None) == "null" and runner._yaml_value(True) == "true"
    assert runner._yaml_value(["colour", "cutout"]) == "[colour, cutout]" and runner._yaml_value(2e-4) == "0.0002"
