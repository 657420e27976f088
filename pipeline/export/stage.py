"""Export the trained generator (DCGAN, Radford et al., 2015, arXiv:1511.06434, or ResNet) for use without this
repository. Writes safetensors + JSON, a self-contained torch.export `.pt2` and ONNX (inputs `z`, plus `labels` when
class-conditional, with one dynamic batch), checks each against the in-memory network, then logs an MLflow pyfunc
into the pipeline's run and registers it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from pipeline import checkpoint, model_registry, pyfunc_model, registry, tracking
from pipeline.config import Params
from pipeline.nets import NetConfig

# The oldest torch known to load a .pt2 written here (checked on torch 2.11 for files from 2.14).
MIN_TORCH = "2.11"
ONNX_ATOL = 1e-4  # ONNX Runtime reorders float sums (~3e-7 seen); the torch formats must match bit for bit
CLASSES_TAG_CHARS = 2000  # the class-names tag keeps the first names that fit, and says how many it left out


class ExportError(RuntimeError):
    """The inputs of the export stage are missing or disagree, or an exported file does not reproduce G."""


@dataclass(frozen=True)
class EvalSummary:
    """What metrics/eval.json says, flattened for the registry tags."""

    extractor: str
    num_samples: int
    weights: str
    data_hash: str | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class ExportPaths:
    models: Path  # the train stage's models/ directory
    eval_json: Path  # metrics/eval.json from the evaluate stage
    run_file: Path  # run.json: the pipeline's MLflow run
    out: Path  # export/
    metrics: Path  # metrics/export.json


def read_eval(path: str | Path) -> EvalSummary:
    """Parse metrics/eval.json: {"<extractor>": {torch-fidelity keys}, "eval_info": {...}}."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} not found: run the evaluate stage first (promotion needs its FID)")
    try:
        data = json.loads(path.read_text())
        info = data["eval_info"]
        scores = data[info["extractor"]]
        return EvalSummary(extractor=str(info["extractor"]), num_samples=int(info["num_samples"]),
                           weights=str(info["weights"]), data_hash=info.get("data_hash"),
                           metrics={k: float(v) for k, v in scores.items() if isinstance(v, (int, float))})
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path} is not an evaluate-stage result ({type(e).__name__}: {e})") from None


# Why torch.export (.pt2) and not TorchScript: torch.jit.trace/script are deprecated (FutureWarning on 2.14), while a
# .pt2 gives bit-exact outputs, a symbolic batch dimension, and loads across versions (files from 2.14 load and run,
# CUDA included, on 2.11, and back). Its catch: torch.export.load falls back to full unpickling for some members,
# so every load in this project goes through pyfunc_model.check_pt2 first.
def example_inputs(net: NetConfig, n: int = 2) -> tuple[torch.Tensor, ...]:
    """G's inputs for a batch of n: (z,), or (z, labels) when conditional (labels 0, 1, ..., K-1, 0, ...)."""
    z = torch.zeros(n, net.z_dim)
    return (z, torch.arange(n) % net.num_classes) if net.num_classes else (z,)


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
    reloaded, _ = checkpoint.load_generator(files["safetensors"], files["config"])
    runners: dict[str, Callable[..., torch.Tensor]] = {"safetensors": reloaded,
                                                       "pt2": pyfunc_model.load_pt2(files["pt2"])}
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
    checkpoint.save_generator(generator, files["safetensors"], files["config"], net, extra)
    program = export_pt2(generator, files["pt2"], net)
    onnx_path = out / "generator.onnx"
    onnx_path.unlink(missing_ok=True)  # never leave an ONNX file from an earlier export next to this one
    skipped = "export.onnx is false" if not onnx else export_onnx(program, onnx_path, net)
    if skipped is None:
        files["onnx"] = onnx_path
    return files, skipped


def version_tags(run_id: str, config: dict, summary: EvalSummary) -> dict[str, str]:
    tags = {registry.TAG_RUN: run_id, registry.TAG_COMMIT: tracking.git_commit() or "unknown",
            registry.TAG_DATA: str(config.get("data_hash")), registry.TAG_EXTRACTOR: summary.extractor,
            registry.TAG_SAMPLES: str(summary.num_samples), registry.TAG_WEIGHTS: summary.weights,
            registry.TAG_EVAL_DATA: str(summary.data_hash)}
    tags.update({registry.METRIC_TAG_PREFIX + k: repr(v) for k, v in summary.metrics.items()})
    num_classes = NetConfig.from_dict(config["net"]).num_classes
    tags[registry.TAG_CONDITIONAL] = "true" if num_classes else "false"
    if num_classes:
        tags[registry.TAG_NUM_CLASSES] = str(num_classes)
        tags[registry.TAG_CLASSES] = classes_tag([str(c) for c in config.get("classes") or []])
    return tags


def classes_tag(names: list[str], limit: int = CLASSES_TAG_CHARS) -> str:
    """A JSON list of the class names (label k is names[k]); past `limit` characters, the first names that fit
    followed by one "... (M more)" entry."""
    text = json.dumps(names)
    if len(text) <= limit:
        return text
    kept, used = [], 2 + 30  # the brackets, and room for the "... (M more)" entry
    for name in names:
        used += len(json.dumps(name)) + 2  # the name and its ", "
        if used > limit:
            break
        kept.append(name)
    return json.dumps([*kept, f"... ({len(names) - len(kept)} more)"])


def pip_requirements() -> list[str]:
    """Explicit, so log_model skips its slow inference of requirements (STACK-NOTES)."""
    mlflow_mm = ".".join(metadata.version("mlflow").split(".")[:2])
    return [f"torch>={MIN_TORCH}", "numpy>=1.24", f"mlflow>={mlflow_mm}"]


def _check_inputs(params: Params, config: dict, summary: EvalSummary, eval_json: Path) -> None:
    if summary.weights != params.export.weights:
        raise ExportError(f"{eval_json} scored the {summary.weights!r} weights but export.weights is "
                          f"{params.export.weights!r}: the registry would tag one model with another's metrics; "
                          "make eval.weights and export.weights equal")
    if summary.data_hash and config.get("data_hash") and summary.data_hash != config["data_hash"]:
        raise ExportError(f"{eval_json} was computed on data {summary.data_hash} but the generator was trained "
                          f"on {config['data_hash']}: re-run evaluate")


def register(params: Params, paths: ExportPaths, files: dict[str, Path], config: dict,
             summary: EvalSummary) -> dict:
    """Log the pyfunc into the pipeline run, register it, apply the champion rule; the registry.json record."""
    tracker = tracking.Tracker.resume(params.tracking, paths.run_file, stage="export")
    if not tracker.active:
        return {"registered": False, "reason": "no MLflow run (tracking disabled, or train ran untracked)"}
    status = "FAILED"
    try:
        tracker.log_section_params(params, "export")  # model_name resolved
        net = NetConfig.from_dict(config["net"])
        artifacts = {"generator": str(files["pt2"]), "config": str(files["config"])}
        model_uri = model_registry.log_pyfunc_model(tracker, pyfunc_model.__file__, artifacts, net.z_dim,
                                              (net.image_size, net.image_size, net.channels), pip_requirements())
        for name in ("safetensors", "config", "onnx"):  # safetensors + config: what train.init_from fetches
            if name in files:
                tracker.log_artifact(files[name], "export")
        uri, model_name = params.tracking.uri, params.export.model_name
        version = model_registry.register_version(uri, model_name, model_uri, version_tags(tracker.run_id, config, summary))
        decision = registry.apply_rule(uri, model_name, version, params.export.promote_metric)
        champion = model_registry.model_version(uri, model_name)
        record = {"registered": True, "model_name": model_name, "version": version, "model_uri": model_uri,
                  "run_id": tracker.run_id, "promoted": decision.promote, "reason": decision.reason,
                  "champion_version": champion["version"] if champion else None}
        tracker.log_dict(record, "export/registry.json")
        status = "FINISHED"
        return record
    finally:
        tracker.close(status)


def run_export(params: Params, paths: ExportPaths) -> dict:
    """The export stage: files, verification, registration and promotion; prints timings and sizes."""
    t0 = time.perf_counter()
    summary = read_eval(paths.eval_json)
    generator, config = checkpoint.load_trained_generator(paths.models, params.export.weights)
    _check_inputs(params, config, summary, paths.eval_json)
    files, onnx_skipped = export_files(generator, config, paths.out, params.export.onnx)
    t_files = time.perf_counter()
    errors = verify(generator, files, NetConfig.from_dict(config["net"]))
    t_verify = time.perf_counter()
    record = register(params, paths, files, config, summary)
    t_end = time.perf_counter()
    record["onnx_skipped"] = onnx_skipped
    (paths.out / "registry.json").write_text(json.dumps(record, indent=2) + "\n")
    sizes = {p.name: p.stat().st_size for p in files.values()}
    timings = {"files": t_files - t0, "verify": t_verify - t_files, "register": t_end - t_verify, "total": t_end - t0}
    _report(record, sizes, errors, timings, onnx_skipped)
    result = {"wall_seconds": round(timings["total"], 2), "bytes": sizes, "max_abs_error": errors,
              "version": record.get("version"), "promoted": record.get("promoted", False)}
    paths.metrics.parent.mkdir(parents=True, exist_ok=True)
    paths.metrics.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _report(record: dict, sizes: dict, errors: dict, timings: dict, onnx_skipped: str | None) -> None:
    for name, size in sizes.items():
        print(f"export: {name:24} {size / 1024:10.1f} KiB")
    print("export: max |exported - in-memory| " + ", ".join(f"{k}={v:.2g}" for k, v in errors.items()))
    if onnx_skipped:
        print(f"export: ONNX skipped: {onnx_skipped}")
    if not record["registered"]:
        print(f"export: not registered: {record['reason']}")
    else:
        verdict = "is now the champion" if record["promoted"] else "registered, NOT promoted"
        print(f"export: {record['model_name']} v{record['version']} {verdict}: {record['reason']}")
    print("export: wall time " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
