"""Shared fixtures: a small prepared digits set and an in-process tiny training run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pipeline.config import DataConfig, Params, parse_params
from pipeline.data import prepare
from pipeline.train import TrainPaths, train

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# Small but real: 16 px digits, narrow nets, bf16 off so CPU results are exact fp32 arithmetic.
TINY = {
    "data": {"image_size": 16},
    "model": {"z_dim": 16, "g_channels": 8, "d_channels": 8},
    "train": {"steps": 12, "batch_size": 32, "log_every_steps": 4, "sample_every_steps": 6,
              "checkpoint_every_steps": 6, "mixed_precision": "no"},
    "tracking": {"enabled": False},
}


def tiny_params(**sections: dict) -> Params:
    raw = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_params(raw)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(DataConfig(image_size=16), out)
    return out


def fresh_accelerator(params: Params):
    """A new Accelerator per run: Accelerate keeps process-wide state that a test must reset."""
    from accelerate.state import AcceleratorState

    from pipeline.train import make_accelerator

    AcceleratorState._reset_state(reset_partial_state=True)
    return make_accelerator(params)


def train_paths(prepared: Path, out: Path) -> TrainPaths:
    return TrainPaths(prepared=prepared, models=out / "models", metrics=out / "metrics" / "train.json",
                      plots=out / "plots", run_file=out / "run.json", checkpoints=out / "checkpoints")


def run_tiny(prepared: Path, out: Path, params: Params | None = None, **kw) -> dict:
    params = params or tiny_params()
    return train(params, train_paths(prepared, out), accelerator=fresh_accelerator(params), **kw)


def varied_generator(seed: int = 0):
    """An untrained 16 px G whose samples differ from each other (DCGAN's 0.02 init gives near-identical ones)."""
    import torch

    from pipeline.nets import Generator, NetConfig

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
