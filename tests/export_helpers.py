"""Helpers for the export and registry tests: a tiny saved generator, an eval.json, an isolated MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.checkpoint import save_generator
from pipeline.config import Params, parse_params
from pipeline.nets import Generator, NetConfig

NET = NetConfig(z_dim=8, image_size=16, channels=1, g_channels=4)
DATA_HASH = "d" * 16
EXTRACTOR = "classifier-test"


def tiny_generator(seed: int = 0) -> Generator:
    """A 16 px generator in eval mode whose BatchNorm statistics are not the defaults, so train/eval mix-ups show."""
    torch.manual_seed(seed)
    g = Generator(NET)
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return g.eval()


def save_models(models: Path, seed: int = 0) -> Generator:
    """What the train stage writes: generator(.json, .safetensors) and generator_ema.safetensors."""
    g = tiny_generator(seed)
    extra = {"data_hash": DATA_HASH, "classes": list(range(10)), "params": {"model": {"z_dim": NET.z_dim}}}
    save_generator(g, models / "generator.safetensors", models / "generator.json", NET, extra)
    save_generator(g, models / "generator_ema.safetensors", None, NET)
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

    from pipeline.tracking import Tracker

    client = MlflowClient(tracking_uri=params.tracking.uri)
    if client.get_experiment_by_name(params.tracking.experiment) is None:
        client.create_experiment(params.tracking.experiment, artifact_location=(root / "artifacts").as_uri())
    tracker = Tracker(params.tracking)
    tracker.write_run_file(run_file)
    tracker.close()
    return tracker.run_id
