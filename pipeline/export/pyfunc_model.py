"""The registered model's code (MLflow models-from-code): float32 latents (N, z_dim) [and, for a class-conditional
generator, the inference param `labels`] -> uint8 images (N, H, W, C).

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
DEFAULT_MAX_BATCH = 4096  # export.max_batch's default: the most latents one served request may hold


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


def as_latents(latents: np.ndarray | torch.Tensor, max_batch: int | None = None) -> torch.Tensor:
    """(N, z_dim) finite float32, 1 <= N <= `max_batch`, or ValueError naming the problem. The size is checked
    before any conversion, so an oversized request costs no copy."""
    shape = tuple(np.shape(latents))
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"latents must be a float32 array (N, z_dim) with N >= 1, got shape {shape}")
    if max_batch is not None and shape[0] > max_batch:
        raise ValueError(f"a request may hold at most {max_batch} latents (export.max_batch), got {shape[0]}; "
                         "split it into several requests")
    try:
        z = torch.as_tensor(np.asarray(latents, dtype=np.float32))
    except (TypeError, ValueError):
        raise ValueError(f"latents must be numbers, got {np.asarray(latents).dtype} values") from None
    if not torch.isfinite(z).all():
        bad = int((~torch.isfinite(z)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"latents must be finite, got NaN or inf in row {bad}")
    return z


def check_labels(labels, n: int, num_classes: int | None) -> np.ndarray:
    """`labels` as int64 (n,), or ValueError naming the first problem. `num_classes` None: the range is unknown,
    so only the count and the type are checked."""
    arr = np.asarray(labels)
    valid = f"labels must be N={n} ints" + (f" in [0, {num_classes})" if num_classes else "")
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{valid}, got " + (f"{len(arr)} labels" if arr.ndim == 1 else f"shape {arr.shape}"))
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{valid}, got {arr.dtype} values" + (f" such as {arr[0]!r}" if n else ""))
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes)) if num_classes else np.flatnonzero(arr < 0)
    if bad.size:
        raise ValueError(f"{valid}, got {arr[bad[0]]} at position {bad[0]}")
    return arr.astype(np.int64)


def labels_for(n: int, num_classes: int, labels=None, seed: int | None = None) -> np.ndarray | None:
    """The (n,) int64 labels for a batch: `labels`, checked, or, when none are given (None or empty), n labels drawn
    uniformly from `seed` (numpy's default_rng). None for an unconditional generator, which refuses labels."""
    given = labels is not None and np.size(labels) > 0
    if not num_classes:
        if given:
            raise ValueError(f"this generator is unconditional: it takes no labels, got {np.size(labels)}")
        return None
    if given:
        return check_labels(labels, n, num_classes)
    return np.random.default_rng(seed).integers(0, num_classes, size=n, dtype=np.int64)


def generate_images(module: torch.nn.Module, latents: np.ndarray | torch.Tensor,
                    labels: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """Run the generator on (N, z_dim) latents [and (N,) int64 class labels] in chunks; return uint8 (N, H, W, C)."""
    z = as_latents(latents)
    extra: list[torch.Tensor] = []
    if labels is not None:
        extra = [torch.as_tensor(np.asarray(labels, dtype=np.int64))]
        if tuple(extra[0].shape) != (z.shape[0],):
            raise ValueError(f"labels must have shape ({z.shape[0]},) to match the latents, got {tuple(extra[0].shape)}")
    with torch.no_grad():
        return np.concatenate([to_uint8_hwc(module(z[i : i + CHUNK], *(y[i : i + CHUNK] for y in extra)))
                               for i in range(0, z.shape[0], CHUNK)])


def read_num_classes(config_path: str | Path) -> int:
    """The class count in a generator.json (0: unconditional, also for files written before conditioning)."""
    return int(json.loads(Path(config_path).read_text())["net"].get("num_classes", 0))


if "mlflow" in sys.modules:  # MLflow is executing this file as the model's code (logging, loading, serving)
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class BadRequestError(MlflowException, ValueError):
        """Bad latents or labels: a ValueError in Python; under `mlflow models serve`, HTTP 400 whose `message`
        names the problem (the server answers any other exception with a generic message)."""

        def __init__(self, message: str):
            super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

        # The scoring server rewrites `message` as "Failed to predict data '<the whole input>'. Error: ..." before
        # it answers: the refusal keeps its first message, the one line that names the problem.
        @property
        def message(self) -> str:
            return self._message

        @message.setter
        def message(self, value: str) -> None:
            self.__dict__.setdefault("_message", value)

    class GeneratorModel(mlflow.pyfunc.PythonModel):
        """pyfunc: latents (N, z_dim) float32 -> images (N, H, W, C) uint8. Inference params (declared in the
        logged signature, so MLflow and `mlflow models serve` pass them through): `labels`, N ints in
        [0, num_classes), and `seed`, for the uniform labels drawn when a conditional model is given none."""

        def load_context(self, context) -> None:
            self.module = load_pt2(context.artifacts["generator"])
            self.num_classes = read_num_classes(context.artifacts["config"])
            # export.max_batch, logged as the model's config; a model logged before it existed gets the default.
            self.max_batch = int((getattr(context, "model_config", None) or {}).get("max_batch", DEFAULT_MAX_BATCH))

        # np.ndarray is a hint MLflow accepts without inferring a schema; the logged signature is the schema.
        def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
            params = params or {}
            try:
                z = as_latents(model_input, self.max_batch)
                labels = labels_for(len(z), self.num_classes, params.get("labels"), params.get("seed"))
                return generate_images(self.module, z, labels)
            except ValueError as e:
                raise BadRequestError(str(e)) from None

    mlflow.models.set_model(GeneratorModel())
