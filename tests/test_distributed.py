"""Real multi-process training on CPU (gloo): 2 processes on one machine, and 2 "machines" on loopback.

`accelerate launch --cpu --num_processes 2` silently runs ONE process, so these tests assert the world size.
The one-machine test goes through pipeline.commands.launch (the stages' launcher), the loopback one through accelerate's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, TINY, free_port
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _params(tmp_path, **train):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())  # a params file sets every section
    for section, values in TINY.items():
        raw[section].update(values)
    raw["train"].update(steps=6, log_every_steps=3, checkpoint_every_steps=3, **train)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _launch(machine_args, params, prepared, out, launcher="accelerate.commands.launch"):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", launcher, "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", *machine_args, str(REPO / "tests" / "dist_train.py"), str(params),
           str(prepared), str(out)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _check_ranks(out):
    import json

    sizes = [json.loads((out / f"rank{r}.json").read_text())["world_size"] for r in (0, 1)]
    assert sizes == [2, 2], "both ranks must see a world of 2 processes"
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    # Parameters (not BatchNorm running statistics, which each rank updates from its own batches).
    params = [k for k in r0 if "running_" not in k and "num_batches_tracked" not in k]
    assert len(params) > 10
    for k in params:
        assert torch.equal(r0[k], r1[k]), f"{k} differs across ranks"
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2


def _wait(procs, timeout=300):
    logs = []
    for p in procs:
        log, _ = p.communicate(timeout=timeout)
        logs.append(log)
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return logs


def test_two_processes_on_one_machine(prepared_dir, tmp_path):
    """wgan-gp with n_critic 2 exercises the penalty's double backward under DDP. Launched as dvc.yaml launches
    the stages, through pipeline.commands.launch (accelerate launch underneath)."""
    params = _params(tmp_path, loss="wgan-gp", n_critic=2)
    args = ["--num_processes", "2", "--num_machines", "1", "--main_process_port", str(free_port())]
    _wait([_launch(args, params, prepared_dir, tmp_path / "out", launcher="pipeline.commands.launch")])
    _check_ranks(tmp_path / "out")


def test_two_processes_with_lecam_and_apa(prepared_dir, tmp_path):
    """LeCam's averages (every D update) and APA's p (every interval) sum their statistics over the processes: each
    rank must make the same collectives, under gradient accumulation too, and the ranks' weights stay equal."""
    params = _params(tmp_path, loss="hinge", lecam_weight=0.3, apa=True, apa_kimg=0.05, ada_interval_steps=2,
                     grad_accum_steps=2)
    args = ["--num_processes", "2", "--num_machines", "1", "--main_process_port", str(free_port())]
    _wait([_launch(args, params, prepared_dir, tmp_path / "out", launcher="pipeline.commands.launch")])
    _check_ranks(tmp_path / "out")
    import json

    loop = json.loads(next((tmp_path / "out" / "checkpoints").glob("*/step-0000006/loop.json")).read_text())
    assert set(loop["regularisers"]) == {"lecam", "apa"} and loop["regularisers"]["lecam"]["updates"] == 6


def test_two_machines_on_loopback(prepared_dir, tmp_path):
    params = _params(tmp_path, grad_accum_steps=2)
    port = str(free_port())
    procs = [
        _launch(["--num_processes", "2", "--num_machines", "2", "--machine_rank", str(rank),
                 "--main_process_ip", "127.0.0.1", "--main_process_port", port], params, prepared_dir,
                tmp_path / "out")
        for rank in (0, 1)
    ]
    _wait(procs)
    _check_ranks(tmp_path / "out")
