"""Helpers for the export and registry tests: a tiny saved generator (unconditional or class-conditional), an
eval.json, an isolated MLflow store, a model server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from pipeline.config import Params, parse_params
from pipeline.nets import NetConfig, make_generator
from pipeline.nets.weights import save_generator

NET = NetConfig(z_dim=8, image_size=16, channels=1, g_channels=4)
CLASSES = ["zero", "one", "two"]
DATA_HASH = "d" * 16
EXTRACTOR = "classifier-test"


def conditional_net(arch: str = "dcgan") -> NetConfig:
    """NET made class-conditional (3 classes), for either arch."""
    return NetConfig(arch=arch, z_dim=NET.z_dim, image_size=16, channels=1, g_channels=4, num_classes=len(CLASSES))


def tiny_generator(seed: int = 0, net: NetConfig = NET) -> nn.Module:
    """A 16 px generator in eval mode whose BatchNorm statistics are not the defaults, so train/eval mix-ups show;
    when conditional, with wider weights and per-class BatchNorm gains and shifts far from their identity init, so
    that images differ visibly between labels."""
    torch.manual_seed(seed)
    g = make_generator(net)
    for name, m in g.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:  # the conditional ResNet's BatchNorm takes its scale and shift from the class
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(m, nn.Embedding) and name.endswith((".gain", ".bias")):
            m.weight.data.uniform_(0.5, 1.5) if name.endswith(".gain") else m.weight.data.uniform_(-0.5, 0.5)
        elif isinstance(m, nn.ConvTranspose2d) and net.num_classes:  # DCGAN's 0.02 init: images all near grey
            m.weight.data.normal_(0.0, 0.3)
    return g.eval()


def save_models(models: Path, seed: int = 0, net: NetConfig = NET) -> nn.Module:
    """What the train stage writes: generator(.json, .safetensors) and generator_ema.safetensors."""
    g = tiny_generator(seed, net)
    classes = CLASSES if net.num_classes else list(range(10))
    extra = {"data_hash": DATA_HASH, "classes": classes, "params": {"model": {"z_dim": net.z_dim}}}
    save_generator(g, models / "generator.safetensors", models / "generator.json", net, extra)
    save_generator(g, models / "generator_ema.safetensors", None, net)
    return g


def write_eval(path: Path, fid: float, extractor: str = EXTRACTOR, num_samples: int = 200,
               weights: str = "ema", data_hash: str = DATA_HASH) -> Path:
    """metrics/eval.json in the evaluate stage's format."""
    data = {extractor: {"frechet_inception_distance": fid, "inception_score_mean": 5.0, "inception_score_std": 0.1},
            "eval_info": {"extractor": extractor, "num_samples": num_samples, "weights": weights,
                          "data_hash": data_hash}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def params_for(root: Path, onnx: bool = False, model_name: str = "tiny-gan", tracking: bool = True,
               **export) -> Params:
    """Params whose MLflow store lives in `root` (never the repository's mlflow.db)."""
    return parse_params({"export": {"model_name": model_name, "onnx": onnx, **export},
                         "tracking": {"enabled": tracking, "uri": f"sqlite:///{root / 'mlflow.db'}",
                                      "experiment": "export-tests", "timeout_seconds": 5, "max_retries": 0,
                                      "tensorboard": False}})


def start_run(params: Params, root: Path, run_file: Path) -> str:
    """A pipeline run as train leaves it (finished, id in run.json), artifacts under `root`."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.tracker import Tracker

    client = MlflowClient(tracking_uri=params.tracking.uri)
    if client.get_experiment_by_name(params.tracking.experiment) is None:
        client.create_experiment(params.tracking.experiment, artifact_location=(root / "artifacts").as_uri())
    tracker = Tracker(params.tracking)
    tracker.write_run_file(run_file)
    tracker.close()
    return tracker.run_id


def fresh_env(tracking_uri: str) -> dict[str, str]:
    """This process's environment without Python or MLflow settings, pointed at `tracking_uri`."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    return {**keep, "MLFLOW_TRACKING_URI": tracking_uri}


@contextlib.contextmanager
def serving(model_uri: str, tracking_uri: str, cwd: Path, seconds: float = 180) -> Iterator[str]:
    """`mlflow models serve --env-manager local` on a free 127.0.0.1 port; yields its base URL, stops it after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    with open(cwd / "serve.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=fresh_env(tracking_uri), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_for(f"http://127.0.0.1:{port}/ping", proc, seconds)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def post_json(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    """POST `body` as JSON; (HTTP status, decoded JSON answer), error answers included."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _wait_for(url: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"mlflow models serve did not answer {url} within {seconds} s")
