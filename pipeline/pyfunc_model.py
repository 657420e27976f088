"""The registered model's code (MLflow models-from-code): float32 latents (N, z_dim) -> uint8 images (N, H, W, C).

Standalone: MLflow copies only this file, so it never imports `pipeline`. It runs the torch.export `generator.pt2`
and refuses archives whose loading would reach pickle.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

# Inside a .pt2 archive (after its root folder): the files that a plain-tensor ExportedProgram holds. Everything
# else (legacy `.pt` weight blobs, custom/opaque objects) would reach pickle through torch.export.load.
_PT2_ALLOWED = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt|extra/[\w.\-]+)"
)
CHUNK = 512  # latents per forward pass: bounds memory for large requests


class UnsafeArchiveError(ValueError):
    """A .pt2 file is not a plain-tensor torch.export archive, or is damaged."""


def check_pt2(path: str | Path) -> None:
    """Raise UnsafeArchiveError unless loading `path` with torch.export.load cannot reach pickle."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            bad = zf.testzip()
            if bad is not None:
                raise UnsafeArchiveError(f"{path}: member {bad} fails its CRC check (tampered or damaged)")
            for name in names:
                rel = name.split("/", 1)[1] if "/" in name else name
                if not _PT2_ALLOWED.fullmatch(rel):
                    raise UnsafeArchiveError(f"{path}: unexpected archive member {name!r}; refusing to load it, "
                                             "since torch.export.load may unpickle it")
                if rel.endswith("_config.json"):
                    _check_payload_config(path, name, json.loads(zf.read(name)))
                if rel == "data/sample_inputs/model.pt":
                    # torch.export.load tries weights_only=True and falls back to full unpickling on failure.
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True)
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, json.JSONDecodeError) as e:
        raise UnsafeArchiveError(f"{path}: not a readable .pt2 archive, truncated or damaged ({e})") from None
    except pickle.UnpicklingError as e:
        raise UnsafeArchiveError(f"{path}: sample inputs need full unpickling; refusing ({e})") from None


def _check_payload_config(path: Path, name: str, config: dict) -> None:
    for fqn, meta in config.get("config", {}).items():
        if meta.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+", str(meta.get("path_name"))):
            raise UnsafeArchiveError(f"{path}: {name} stores {fqn!r} as a pickle; refusing to load it")


def load_pt2(path: str | Path) -> torch.nn.Module:
    """The exported generator as a callable module: z (N, z_dim) float32 -> (N, C, H, W) in [-1, 1]."""
    check_pt2(path)
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - any deserialisation failure means the file is unusable
        raise UnsafeArchiveError(f"{path}: torch.export.load failed: {type(e).__name__}: {e}") from None
    return program.module()


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C).

    The same arithmetic as `pipeline.nets.to_uint8`, which this file may not import;
    tests/test_export.py asserts that the two agree bit for bit.
    """
    q = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return q.permute(0, 2, 3, 1).contiguous().numpy()


def generate_images(module: torch.nn.Module, latents: np.ndarray | torch.Tensor) -> np.ndarray:
    """Run the generator on (N, z_dim) latents in chunks; return uint8 (N, H, W, C)."""
    z = torch.as_tensor(np.asarray(latents, dtype=np.float32))
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"latents must be a float32 array (N, z_dim) with N >= 1, got shape {tuple(z.shape)}")
    with torch.no_grad():
        return np.concatenate([to_uint8_hwc(module(z[i : i + CHUNK])) for i in range(0, z.shape[0], CHUNK)])


if "mlflow" in sys.modules:  # MLflow is executing this file as the model's code (logging, loading, serving)
    import mlflow

    class GeneratorModel(mlflow.pyfunc.PythonModel):
        """pyfunc: latents (N, z_dim) float32 -> images (N, H, W, C) uint8."""

        def load_context(self, context) -> None:
            self.module = load_pt2(context.artifacts["generator"])

        # np.ndarray is a hint MLflow accepts without inferring a schema; the logged signature is the schema.
        def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
            return generate_images(self.module, model_input)

    mlflow.models.set_model(GeneratorModel())
