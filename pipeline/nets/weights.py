"""Weight files: safetensors state dicts, and a generator's architecture (and provenance) as JSON beside them.

Nothing here unpickles code: a generator is rebuilt from `generator.json` and its safetensors weights loaded into it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import WeightsError, first_line
from pipeline.nets import NetConfig, make_generator


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read {path}: not a valid safetensors file, truncated or tampered ({e})") from None


def save_generator(generator: nn.Module, weights_path: str | Path, config_path: str | Path | None,
                   net_cfg: NetConfig, extra: dict | None = None) -> None:
    """Generator weights as safetensors; its architecture (and provenance) as JSON."""
    Path(weights_path).parent.mkdir(parents=True, exist_ok=True)
    save_file(cpu_state(generator), str(weights_path), metadata={"format": "pt"})
    if config_path is not None:
        cfg = {"net": net_cfg.to_dict(), **(extra or {})}
        Path(config_path).write_text(json.dumps(cfg, indent=2) + "\n")


# The train stage's generator files by role (eval.weights / export.weights), all described by one generator.json.
GENERATOR_FILES = {"ema": "generator_ema.safetensors", "last": "generator.safetensors",
                   "best": "generator_best.safetensors"}
GENERATOR_CONFIG = "generator.json"


def load_trained_generator(models: str | Path, weights: str) -> tuple[nn.Module, dict]:
    """The train stage's `weights` generator (ema | last | best) from `models`, in eval mode, with its config."""
    path = Path(models) / GENERATOR_FILES[weights]
    if not path.exists():
        hint = ("train writes it only when train.fid_every_steps > 0" if weights == "best"
                else "run the train stage first (dvc repro train)")
        raise WeightsError(f"weights={weights}: generator file {path} not found; {hint}")
    return load_generator(path, Path(models) / GENERATOR_CONFIG)


def load_generator(weights_path: str | Path, config_path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild G from its JSON config and load its safetensors weights, in eval mode on the CPU."""
    config_path = Path(config_path)
    if not config_path.exists():
        raise WeightsError(f"generator config not found: {config_path}; run the train stage first")
    cfg = json.loads(config_path.read_text())
    g = make_generator(NetConfig.from_dict(cfg["net"]))
    try:
        g.load_state_dict(load_weights(weights_path))
    except RuntimeError as e:
        raise WeightsError(f"{weights_path} does not fit the generator in {config_path}: {first_line(e)}") from None
    return g.eval(), cfg

