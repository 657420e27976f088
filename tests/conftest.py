"""Shared fixtures: a small prepared digits set and an in-process tiny training run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import DataConfig, Params, parse_params
from pipeline.data import prepare
from pipeline.training.outputs import TrainPaths
from pipeline.training.stage import train

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# Small but real: 16 px digits, narrow nets, bf16 off so CPU results are exact fp32 arithmetic. One pinned thread:
# a thread count taken from the machine's free cores (cpu_threads 0) changes with whatever else trains there, and
# float sums with it, so two runs that must be bit-identical could differ.
TINY = {
    "data": {"image_size": 16},
    "model": {"z_dim": 16, "g_channels": 8, "d_channels": 8},
    "train": {"steps": 12, "batch_size": 32, "log_every_steps": 4, "sample_every_steps": 6,
              "checkpoint_every_steps": 6, "mixed_precision": "no", "cpu_threads": 1},
    "tracking": {"enabled": False},
}


def tiny_params(**sections: dict) -> Params:
    raw = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_params(raw)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core this process may use, at most 4 (the end-to-end tests start their own
    processes and threads, so more workers than cores only makes them fight)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(DataConfig(image_size=16), out)
    return out


def fresh_accelerator(params: Params):
    """A new Accelerator per run: Accelerate keeps process-wide state that a test must reset."""
    from accelerate.state import AcceleratorState

    from pipeline.training.build import make_accelerator

    AcceleratorState._reset_state(reset_partial_state=True)
    return make_accelerator(params)


def train_paths(prepared: Path, out: Path) -> TrainPaths:
    return TrainPaths(prepared=prepared, models=out / "models", metrics=out / "metrics" / "train.json",
                      plots=out / "plots", run_file=out / "run.json", checkpoints=out / "checkpoints")


def run_tiny(prepared: Path, out: Path, params: Params | None = None, **kw) -> dict:
    params = params or tiny_params()
    return train(params, train_paths(prepared, out), accelerator=fresh_accelerator(params), **kw)


def resumed_equals_uninterrupted(prepared: Path, out: Path, full: Params, half: Params) -> tuple[list, list]:
    """Train `full` in out/full; `half` (6 steps), then `full` resumed, in out/resumed. Asserts the resume happened
    and G and its EMA are bit-identical; returns train_loss.csv's header and both runs' rows, for curve checks."""
    import torch

    from pipeline.nets import weights

    run_tiny(prepared, out / "full", full)
    run_tiny(prepared, out / "resumed", half)
    assert run_tiny(prepared, out / "resumed", full)["resumed_from_step"] == 6
    for name in ("generator.safetensors", "generator_ema.safetensors"):
        a, b = (weights.load_weights(out / d / "models" / name) for d in ("full", "resumed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    curves = [(out / d / "plots" / "train_loss.csv").read_text().splitlines() for d in ("full", "resumed")]
    return curves[0][0].split(","), [[r.split(",") for r in c[1:]] for c in curves]


def varied_generator(seed: int = 0):
    """An untrained 16 px G whose samples differ from each other (DCGAN's 0.02 init gives near-identical ones)."""
    import torch

    from pipeline.nets import NetConfig
    from pipeline.nets.dcgan import Generator

    torch.manual_seed(seed)
    g = Generator(NetConfig(z_dim=16, image_size=16, channels=1, g_channels=8))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.normal_(0.0, 0.3)
    return g.eval()


@pytest.fixture(scope="module")
def one_thread():
    """Small convs on a shared 2-core machine: one thread is several times faster than two fighting for it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_repo(dest: Path) -> Path:
    """The repository's tracked and unignored files (what a fresh clone has), in a new git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    return dest


# `dvc repro` of the whole pipeline in about a minute on 2 cores.
TINY_PIPELINE = {
    "data": {"image_size": 16},
    "model": {"z_dim": 16, "g_channels": 8, "d_channels": 8},
    "train": {"steps": 30, "log_every_steps": 10, "sample_every_steps": 15, "checkpoint_every_steps": 15},
    "eval": {"num_samples": 300, "kid_subset_size": 50, "classifier_steps": 50},
}


def run_ok(cmd: list[str], cwd: Path, env: dict) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    """A fresh clone's files with TINY_PIPELINE params, committed in a new git repo: (root, env for its commands)."""
    return dvc_repo(tmp_path_factory.mktemp("clone"), TINY_PIPELINE)


def dvc_repo(dest: Path, overrides: dict[str, dict], threads: int = 2) -> tuple[Path, dict[str, str]]:
    """`copy_repo` with `overrides` merged into params.yaml and committed, and the environment to run its `dvc`
    commands in (this venv first on PATH, no analytics, `threads` OpenMP threads)."""
    root = copy_repo(dest)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": str(threads)}
    env.pop("PYTHONPATH", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root, env


def start_mlflow_server(store: Path, port: int, timeout: float = 120.0,
                        backend_store_uri: str | None = None, app_name: str | None = None,
                        env: dict[str, str] | None = None) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port` with its artifacts under `store` and its runs in
    `backend_store_uri` (default: a SQLite file under `store`), answering /health; stop it with
    os.killpg(proc.pid, ...). `app_name` (e.g. basic-auth) is passed as --app-name, `env` added to its
    environment (e.g. the auth app's MLFLOW_AUTH_CONFIG_PATH)."""
    import sys
    import time
    import urllib.request

    store.mkdir(parents=True, exist_ok=True)
    backend = backend_store_uri or f"sqlite:///{store}/db.sqlite"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", *(["--app-name", app_name] if app_name else [])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:  # e.g. no driver for the backend store: fail now, not at the deadline
            raise RuntimeError(f"mlflow server on {backend} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, 15)
    raise RuntimeError(f"mlflow server did not answer /health within {timeout:.0f} s")
