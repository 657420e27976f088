"""A user error is one line on every launch path (`dvc repro`, the stage module, pipeline.commands.launch with 2 processes),
Ctrl-C is one line with the step and the checkpoint to resume from, a full disk is one line, and the cross-stage
pre-flight stops the train stage before it trains."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, free_port, run_ok

from pipeline.commands import launch
from pipeline.commands import runner as cli
from pipeline.config import parse_params
from pipeline.training import checkpoint, preflight
from pipeline.training import stage as training_stage
from stages import train as train_stage

TWO_CPU_PROCESSES = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no"]  # with ACCELERATE_USE_CPU=true: world size 2 (tests/test_distributed.py)


# dvc repro, in a fresh clone's copy ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def staged(repo):
    """The clone after a real prepare + classifier run; the deps of train, evaluate and export that a failed stage
    removes (DVC deletes a stage's outputs before running it) are restored before each use."""
    root, env = repo
    run_ok([sys.executable, "-m", "dvc", "repro", "classifier"], root, env)
    shutil.copytree(root / "data/prepared", root.parent / "prepared-backup")
    return root, env, (root / "params.yaml").read_text()


def _repro_fails(staged, stage: str, changes: dict[str, dict]) -> tuple[list[str], str]:
    root, env, good = staged
    if not (root / "data/prepared/meta.json").exists():
        shutil.rmtree(root / "data/prepared", ignore_errors=True)
        shutil.copytree(root.parent / "prepared-backup", root / "data/prepared")
    for placeholder in ("models/generator.safetensors", "run.json", "metrics/eval.json"):  # never read: the
        (root / placeholder).parent.mkdir(parents=True, exist_ok=True)  # stage stops at its params
        (root / placeholder).write_text("{}\n")  # DVC warns about an empty JSON file
    params = yaml.safe_load(good)
    for section, values in changes.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = subprocess.run([sys.executable, "-m", "dvc", "repro", "-s", stage], cwd=root, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    finally:
        (root / "params.yaml").write_text(good)
    assert out.returncode != 0 and "Traceback" not in out.stdout, out.stdout
    cmd = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    return out.stdout.splitlines(), cmd


def _dvc_lines(stage: str, cmd: str, error: str) -> list[str]:
    """All that `dvc repro -s STAGE` prints when the stage's command fails: DVC's two lines before the command,
    the stage's one line, and DVC's one-line summary."""
    return [f"Running stage '{stage}':", f"> {cmd}", error,
            f"ERROR: failed to reproduce '{stage}': failed to run: {cmd}, exited with 1"]


BAD_VALUES = [
    ("train", "train", "n_critic", 0, "error: params.yaml: train.n_critic must be an integer >= 1, got 0"),
    ("train", "train", "steps", "many", "error: params.yaml: train.steps must be an integer or auto, got 'many'"),
    ("train", "train", "n_critc", 2, "error: params.yaml: unknown key train.n_critc"),
    ("evaluate", "eval", "weights", "newest", "error: params.yaml: eval.weights must be one of"),
    ("export", "export", "promote_metric", "vibes", "error: params.yaml: export.promote_metric must be one of"),
    ("prepare", "data", "image_size", 20, "error: params.yaml: data.image_size must be one of 16, 32, 64, 128, got 20"),
]


@pytest.mark.slow
@pytest.mark.parametrize("stage, section, key, value, error", BAD_VALUES,
                         ids=[f"{s}-{k}" for s, _, k, *_ in BAD_VALUES])
def test_dvc_repro_with_a_bad_value_prints_one_line(staged, stage, section, key, value, error):
    lines, cmd = _repro_fails(staged, stage, {section: {key: value}})
    assert len(lines) == 4 and lines[2].startswith(error), lines
    assert lines == _dvc_lines(stage, cmd, lines[2])


@pytest.mark.slow
def test_dvc_repro_train_stops_at_pre_flight_before_training(staged):
    """Export's registry, checked before training (each check: test_pre_flight_stops_the_train_stage_...)."""
    root = staged[0]
    lines, cmd = _repro_fails(staged, "train", {"tracking": {"uri": "sqlite:///no/such/dir/mlflow.db"}})
    # a relative store is the repository's: the message names the directory it resolved to
    error = f"error: tracking.uri=sqlite:///no/such/dir/mlflow.db: directory {root}/no/such/dir does not exist"
    assert lines == _dvc_lines("train", cmd, lines[2]) and lines[2].startswith(error), lines
    assert not (root / "checkpoints").exists() and not (root / "models").exists()


# The stage modules and the launcher, directly ------------------------------------------------------------------------

def _params_file(tmp_path: Path, **train) -> Path:
    """The repository's params.yaml with TINY's values (and these train values) in place."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        raw[section].update(values)
    raw["train"].update(train)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train_args(params: Path, prepared: Path, out: Path) -> list[str]:
    return ["--params", str(params), "--prepared", str(prepared), "--models", str(out / "models"), "--metrics",
            str(out / "train.json"), "--plots", str(out / "plots"), "--run-file", str(out / "run.json"),
            "--checkpoints", str(out / "checkpoints")]


def _errors(output: str) -> list[str]:
    """The lines of `output` other than the per-process startup note on CPU threads (pipeline.cores.use_cpu_cores)."""
    return [line for line in output.splitlines() if not re.match(r"cpu: \d+ threads of \d+ cores", line)]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_the_train_stage_module_with_a_bad_value_prints_one_line(prepared_dir, tmp_path):
    """Without the launcher (prepare and export run this way under dvc repro, above)."""
    args = _train_args(_params_file(tmp_path), prepared_dir, tmp_path)
    out = subprocess.run([sys.executable, "-m", "stages.train", *args, "--set", "train.n_critic=0"], cwd=REPO,
                         env=_env(), text=True, capture_output=True, timeout=120)
    assert out.returncode == 1 and out.stdout == "", out.stdout
    assert out.stderr.splitlines() == ["error: params.yaml: train.n_critic must be an integer >= 1, got 0"]


@pytest.mark.slow
def test_two_processes_report_a_stage_error_once(prepared_dir, tmp_path):
    """Both ranks fail the same way inside the stage (the prepared data is 16 px, the params ask for 32); only
    rank 0 reports it, and the launcher adds nothing."""
    cmd = [sys.executable, "-m", "pipeline.commands.launch", *TWO_CPU_PROCESSES, "--main_process_port", str(free_port()),
           "-m", "stages.train", *_train_args(_params_file(tmp_path), prepared_dir, tmp_path),
           "--set", "data.image_size=32"]
    out = subprocess.run(cmd, cwd=REPO, env=_env(ACCELERATE_USE_CPU="true"), text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=180)
    assert out.returncode == 1
    assert _errors(out.stdout) == [f"error: the prepared data in {prepared_dir} is 16 px but data.image_size "
                                       "is 32; run the prepare stage again (dvc repro prepare)"], out.stdout


@pytest.mark.slow
def test_ctrl_c_prints_one_line_naming_the_checkpoint_to_resume_from(prepared_dir, tmp_path):
    params = _params_file(tmp_path, steps=100_000, log_every_steps=5, checkpoint_every_steps=5,
                          sample_every_steps=1000)
    cmd = [sys.executable, "-m", "pipeline.commands.launch", "-m", "stages.train", *_train_args(params, prepared_dir, tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        progress = []
        for line in proc.stdout:
            progress.append(line)
            if line.startswith("step 10/"):  # printed before step 10's checkpoint: step 5's is complete
                break
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert progress and progress[-1].startswith("step 10/"), progress
    assert proc.returncode == 130 and "Traceback" not in err + rest
    lines = _errors(err)
    assert len(lines) == 1, err
    m = re.fullmatch(r"interrupted at step (\d+) of 100000; last checkpoint (\S+); run the same command again "
                     r"\(dvc repro or dvc exp run\) to resume", lines[0])
    assert m and int(m[1]) >= 10, lines[0]
    assert Path(m[2]).is_dir() and re.search(r"step-0*(5|10|15|20)$", m[2]), m[2]


# In-process: disk errors, other ranks, Ctrl-C outside the loop, the pre-flight checks ------------------------------

def _fails_with(main, capsys, code: int = 1) -> list[str]:
    with pytest.raises(SystemExit) as e:
        cli.run(main, [])
    assert e.value.code == code
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_line(capsys, monkeypatch, err):
    monkeypatch.setattr(cli, "_disk_note", None)

    def main(argv):
        raise OSError(err, os.strerror(err), "models/generator.safetensors")

    assert _fails_with(main, capsys) == [f"error: cannot write models/generator.safetensors: {os.strerror(err)}"]


def test_the_train_stage_names_the_last_checkpoint_on_a_disk_error(capsys, monkeypatch, prepared_dir, tmp_path):
    monkeypatch.setattr(cli, "_disk_note", None)
    ckpt = tmp_path / "checkpoints/abc/step-0000300"
    monkeypatch.setattr(checkpoint, "latest_checkpoint", lambda root: ckpt)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() to an open file raises it: no name

    monkeypatch.setattr(training_stage, "train", full_disk)  # the stage imports it once the params are read
    args = _train_args(_params_file(tmp_path), prepared_dir, tmp_path)
    assert _fails_with(lambda _: train_stage.main(args), capsys) == [
        f"error: cannot write: No space left on device; the last good checkpoint is {ckpt}"]


def test_other_os_errors_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_disk_note", None)

    def main(argv):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")

    with pytest.raises(FileNotFoundError):
        cli.run(main, [])


def test_another_rank_reports_only_an_error_rank_0_did_not(capsys, monkeypatch):
    """Rank 0 reports at once. Another rank waits PEER_GRACE_S first (rank 0, failing the same way, would report it
    and the launcher stop this rank meanwhile), then reports it as its own."""
    from pipeline.config import ParamsError

    def main(argv):
        raise ParamsError("params.yaml: train.n_critic must be an integer >= 1, got 0")

    waits = []
    monkeypatch.setattr(cli.time, "sleep", waits.append)
    monkeypatch.setenv("RANK", "0")
    assert _fails_with(main, capsys) == ["error: params.yaml: train.n_critic must be an integer >= 1, got 0"]
    assert waits == []
    monkeypatch.setenv("RANK", "1")
    assert _fails_with(main, capsys) == ["error: params.yaml: train.n_critic must be an integer >= 1, got 0 (rank 1)"]
    assert waits == [cli.PEER_GRACE_S]


@pytest.mark.parametrize("exitcodes, status", [
    ({0: 1, 1: -signal.SIGTERM}, 1),  # rank 0 failed; the launcher stopped rank 1
    ({0: -signal.SIGTERM, 1: 1}, 1),  # rank 1 failed first; the launcher stopped rank 0 (the CI failure: 143)
    ({0: 130, 1: 130}, 130),  # Ctrl-C
    ({0: -signal.SIGTERM, 1: -signal.SIGKILL}, 128 + signal.SIGKILL),  # rank 1 killed (out of memory)
    ({0: -signal.SIGTERM, 1: -signal.SIGTERM}, 128 + signal.SIGTERM),  # the workers were sent SIGTERM from outside
])
def test_the_launchers_status_is_the_rank_that_failed_on_its_own(exitcodes, status):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {rank: ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="")
                for rank, code in exitcodes.items()}
    assert launch.exit_status(ChildFailedError("stages.train", failures)) == status


def test_ctrl_c_outside_the_training_loop_is_one_line(capsys):
    def main(argv):
        raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)
    try:
        said = _fails_with(main, capsys, code=130)
        assert said == ["interrupted; run the same command again (dvc repro or dvc exp run) to resume"]
    finally:
        signal.signal(signal.SIGINT, handler)


def _classifier_dir(tmp_path: Path, prepared: Path, **info) -> Path:
    import json

    from pipeline.data import read_meta

    d = tmp_path / "classifier"
    d.mkdir()
    (d / "classifier.json").write_text(json.dumps({"data_hash": read_meta(prepared)["hash"], **info}))
    return d


@pytest.mark.parametrize("sets, classifier, message", [
    (["eval.num_samples=1000", "eval.kid_subset_size=400"], None,
     "the reference split has 359 images, fewer than eval.kid_subset_size=400 that KID draws per subset"),
    (["eval.extractor=inception-v3-compat", "eval.inception_weights=/no/such/pt_inception.pth"], None,
     "eval.inception_weights: file not found: /no/such/pt_inception.pth"),
    (["eval.extractor=classifier"], {"skipped": "the data has no labels"},
     "no in-domain classifier: the data has no labels; set eval.extractor: inception-v3-nvidia (or auto)"),
    ([], {}, "classifier weights not found"),  # auto on labelled grey digits: the classifier, but no weights
    (["tracking.enabled=true", "tracking.uri=s3://bucket/mlruns"], None,
     "tracking.uri=s3://bucket/mlruns: MLflow has no model registry for s3: URIs"),
    (["tracking.enabled=true", "tracking.uri=sqlite:////no/such/dir/mlflow.db"], None,
     "tracking.uri=sqlite:////no/such/dir/mlflow.db: directory /no/such/dir does not exist"),
])
def test_pre_flight_stops_the_train_stage_before_it_trains(capsys, monkeypatch, prepared_dir, tmp_path, sets,
                                                           classifier, message):
    monkeypatch.delenv(preflight.DONE_ENV, raising=False)
    args = _train_args(_params_file(tmp_path), prepared_dir, tmp_path / "out")
    if classifier is not None:
        args += ["--classifier", str(_classifier_dir(tmp_path, prepared_dir, **classifier))]
    for s in sets:
        args += ["--set", s]
    lines = _fails_with(lambda _: train_stage.main(args), capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()  # no checkpoint, no models/, nothing


def test_pre_flight_refuses_an_inception_that_cannot_load_offline(capsys, monkeypatch, prepared_dir, tmp_path):
    """Offline, torch-fidelity's Inception cannot fetch its weights: refused before training, in evaluate's words."""
    import socket

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.delenv(preflight.DONE_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    args = _train_args(_params_file(tmp_path), prepared_dir, tmp_path / "out")
    args += ["--set", "eval.extractor=inception-v3-compat", "--set", "eval.download_timeout_seconds=1"]
    lines = [ln for ln in _fails_with(lambda _: train_stage.main(args), capsys)
             if not ln.startswith("Downloading: ")]  # torch.hub's own note of the attempt
    assert len(lines) == 1 and "cannot fetch the inception-v3-compat weights" in lines[0], lines
    assert "eval.inception_weights" in lines[0] and "found before training" in lines[0]
    assert not (tmp_path / "out").exists()


def test_pre_flight_skips_the_data_checks_until_the_data_is_prepared(tmp_path):
    params = parse_params({"eval": {"num_samples": 10_000, "kid_subset_size": 5000}, "tracking": {"enabled": False}})
    preflight.check(params, tmp_path / "not-prepared-yet", tmp_path / "no-classifier")


def test_pre_flight_leaves_a_classifier_not_yet_trained_on_this_data_to_the_classifier_stage(prepared_dir, tmp_path):
    """dvc repro runs the classifier stage (again) before evaluate; SLURM training may run before it."""
    params = parse_params({"data": {"image_size": 16}, "tracking": {"enabled": False}})
    preflight.check(params, prepared_dir, tmp_path / "not-trained-yet")
    preflight.check(params, prepared_dir, _classifier_dir(tmp_path, prepared_dir, data_hash="older data"))
    preflight.check(params, prepared_dir, None)
