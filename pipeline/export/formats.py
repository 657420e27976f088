"""The exported generator files: safetensors + JSON, a self-contained torch.export `.pt2` and ONNX (inputs `z`, plus
`labels` when class-conditional, with one dynamic batch), each checked against the in-memory network.

Why torch.export (.pt2) and not TorchScript: torch.jit.trace/script are deprecated (FutureWarning on 2.14), while a
.pt2 gives bit-exact outputs, a symbolic batch dimension, and loads across versions (files from 2.14 load and run,
CUDA included, on 2.11, and back). Its catch: torch.export.load falls back to full unpickling for some members, so
every load in this project goes through `pyfunc_model.check_pt2` first.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ExportError
from pipeline.export import pyfunc_model
from pipeline.nets import NetConfig, weights
from pipeline.nets.sampling import balanced_labels

# torch.onnx's note when two inputs share one dynamic Dim (a conditional G's z and labels): nothing to act on.
ONNX_SHARED_AXIS_NOTE = r"# The axis name: \w+ will not be used, since it shares the same shape constraints"
ONNX_ATOL = 1e-4  # ONNX Runtime reorders float sums (~3e-7 seen); the torch formats must match bit for bit


def example_inputs(net: NetConfig, n: int = 2) -> tuple[torch.Tensor, ...]:
    """G's inputs for a batch of n: (z,), or (z, labels) when conditional (labels 0, 1, ..., K-1, 0, ...)."""
    z = torch.zeros(n, net.z_dim)
    return (z, balanced_labels(n, net.num_classes)) if net.num_classes else (z,)


def _dynamic_batch(net: NetConfig) -> tuple[dict[int, torch.export.Dim], ...]:
    batch = torch.export.Dim("batch", min=1)  # one Dim: z and labels must share the batch size
    return ({0: batch},) * len(example_inputs(net))


def export_pt2(generator: nn.Module, path: Path, net: NetConfig) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch: loads with `torch.export.load` alone, no project code.
    Called as program.module()(z) or, conditional, (z, labels)."""
    # Example batch 2: a batch-1 example would let export specialise the batch size to 1.
    program = torch.export.export(generator, example_inputs(net), dynamic_shapes=_dynamic_batch(net))
    torch.export.save(program, str(path))
    return program


def onnx_input_names(net: NetConfig) -> list[str]:
    return ["z", "labels"] if net.num_classes else ["z"]


def export_onnx(program: torch.export.ExportedProgram, path: Path, net: NetConfig) -> str | None:
    """ONNX from the exported program (inputs `z` [, `labels` int64], output `images`, dim `batch`); returns why it
    was skipped."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        return f"the ONNX exporter needs onnx and onnxscript ({e}); pip install '.[onnx]'"
    with warnings.catch_warnings():
        # z and labels share the one `batch` Dim on purpose; torch.onnx notes that it names that axis once.
        warnings.filterwarnings("ignore", message=ONNX_SHARED_AXIS_NOTE, category=UserWarning)
        torch.onnx.export(program, example_inputs(net), str(path), input_names=onnx_input_names(net),
                          output_names=["images"], dynamic_shapes=_dynamic_batch(net), external_data=False,
                          verbose=False)
    return None


def run_onnx(path: Path, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Run an exported ONNX file: ONNX Runtime where installed, else onnx's reference evaluator."""
    feed = {"z": z.numpy()} if labels is None else {"z": z.numpy(), "labels": labels.numpy().astype("int64")}
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, feed)[0])
    except ImportError:
        import onnx
        from onnx.reference import ReferenceEvaluator

        return torch.from_numpy(ReferenceEvaluator(onnx.load(str(path))).run(None, feed)[0])


def verify(generator: nn.Module, files: dict[str, Path], net: NetConfig, seed: int = 0) -> dict[str, float]:
    """Max |difference| from the in-memory G per exported format, on batches of 1 and 5 latents (with labels
    0, 1, ..., K-1, 0, ... when conditional)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = [(torch.randn(n, net.z_dim, generator=gen), *example_inputs(net, n)[1:]) for n in (1, 5)]
    reloaded, _ = weights.load_generator(files["safetensors"], files["config"])
    runners: dict[str, Callable[..., torch.Tensor]] = {"safetensors": reloaded,
                                                       "pt2": _load_pt2(files["pt2"])}
    if "onnx" in files:
        runners["onnx"] = lambda *args: run_onnx(files["onnx"], *args)
    errors = {}
    with torch.no_grad():
        for name, run in runners.items():
            errors[name] = max(float((run(*args) - generator(*args)).abs().max()) for args in inputs)
    for name, err in errors.items():
        if err > (ONNX_ATOL if name == "onnx" else 0.0):
            raise ExportError(f"exported {name} differs from the in-memory generator by {err:.3g}")
    return errors


def export_files(generator: nn.Module, config: dict, out: Path, onnx: bool) -> tuple[dict[str, Path], str | None]:
    """Write every format into `out`; return {format: path} and why ONNX was skipped (None if written)."""
    out.mkdir(parents=True, exist_ok=True)
    net = NetConfig.from_dict(config["net"])
    files = {"safetensors": out / "generator.safetensors", "config": out / "generator.json", "pt2": out / "generator.pt2"}
    extra = {k: v for k, v in config.items() if k != "net"}
    weights.save_generator(generator, files["safetensors"], files["config"], net, extra)
    program = export_pt2(generator, files["pt2"], net)
    onnx_path = out / "generator.onnx"
    onnx_path.unlink(missing_ok=True)  # never leave an ONNX file from an earlier export next to this one
    skipped = "export.onnx is false" if not onnx else export_onnx(program, onnx_path, net)
    if skipped is None:
        files["onnx"] = onnx_path
    return files, skipped


def _load_pt2(path: Path) -> nn.Module:
    """The exported .pt2, loaded the one safe way (`pyfunc_model.load_pt2`); a refusal is an ExportError."""
    try:
        return pyfunc_model.load_pt2(path)
    except pyfunc_model.UnsafeArchiveError as e:
        raise ExportError(str(e)) from None
