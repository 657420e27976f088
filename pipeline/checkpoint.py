"""Crash-safe training checkpoints (Accelerate `save_state` + EMA + loop state) and safetensors generator files.

A checkpoint is written to `step-N.tmp/`, renamed to `step-N/` only when complete, and then `latest` is swapped
atomically to name it, so a crash mid-write never damages the last good checkpoint. Nothing here unpickles code:
Accelerate loads with `weights_only=True`, and our own state is safetensors plus JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.nets import NetConfig, make_generator


class WeightsError(RuntimeError):
    """A weights file is missing, truncated, tampered with or does not fit its config."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(accelerator, root: str | Path, step: int, ema: nn.Module, loop_state: dict, keep: int,
                    files: dict[str, Path] | None = None) -> Path:
    """Collective: every process calls this. `files` (name -> path) are copied in when they exist.
    Returns the final checkpoint directory."""
    root = Path(root)
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # models (safetensors), optimizers, RNG states per process
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_file(_state(ema), str(tmp / "ema.safetensors"))
        (tmp / "loop.json").write_text(json.dumps({"step": step, **loop_state}) + "\n")
        for name, src in (files or {}).items():
            if Path(src).exists():
                shutil.copy2(src, tmp / name)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _atomic_write_text(root / "latest", final.name + "\n")
        done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[:-keep]:  # `final` sorts last, so it is always kept
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    root = Path(root)
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "loop.json").exists() else None


def load_checkpoint(accelerator, path: str | Path, ema: nn.Module) -> dict:
    """Restore models, optimizers and RNG through Accelerate, and the EMA; return the loop state."""
    path = Path(path)
    accelerator.load_state(str(path))
    ema.load_state_dict(load_weights(path / "ema.safetensors"))
    return json.loads((path / "loop.json").read_text())


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
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
    save_file(_state(generator), str(weights_path), metadata={"format": "pt"})
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
        raise WeightsError(f"{weights_path} does not fit the generator in {config_path}: {_first(e)}") from None
    return g.eval(), cfg


def _first(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300]
