"""The export stage: the trained generator (DCGAN, Radford et al., 2015, arXiv:1511.06434, or ResNet) as files that
need nothing of this repository (`formats`), checked against the in-memory network, then logged as an MLflow pyfunc
into the pipeline's run, registered, and promoted by the champion rule (`pipeline.registry`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pipeline.config import Params
from pipeline.errors import ExportError
from pipeline.export import pyfunc_model
from pipeline.export.formats import export_files, verify
from pipeline.nets import NetConfig, weights
from pipeline.registry import client as model_registry
from pipeline.registry import promotion
from pipeline.tracking.connect import git_commit
from pipeline.tracking.tracker import Tracker

# The oldest torch known to load a .pt2 written here (checked on torch 2.11 for files from 2.14).
MIN_TORCH = "2.11"
CLASSES_TAG_CHARS = 2000  # the class-names tag keeps the first names that fit, and says how many it left out


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


def version_tags(run_id: str, config: dict, summary: EvalSummary) -> dict[str, str]:
    tags = {promotion.TAG_RUN: run_id, promotion.TAG_COMMIT: git_commit() or "unknown",
            promotion.TAG_DATA: str(config.get("data_hash")), promotion.TAG_EXTRACTOR: summary.extractor,
            promotion.TAG_SAMPLES: str(summary.num_samples), promotion.TAG_WEIGHTS: summary.weights,
            promotion.TAG_EVAL_DATA: str(summary.data_hash)}
    tags.update({promotion.METRIC_TAG_PREFIX + k: repr(v) for k, v in summary.metrics.items()})
    num_classes = NetConfig.from_dict(config["net"]).num_classes
    tags[promotion.TAG_CONDITIONAL] = "true" if num_classes else "false"
    if num_classes:
        tags[promotion.TAG_NUM_CLASSES] = str(num_classes)
        tags[promotion.TAG_CLASSES] = classes_tag([str(c) for c in config.get("classes") or []])
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
    tracker = Tracker.resume(params.tracking, paths.run_file, stage="export")
    if not tracker.active:
        return {"registered": False, "reason": "no MLflow run (tracking disabled, or train ran untracked)"}
    status = "FAILED"
    try:
        tracker.log_section_params(params, "export")  # model_name resolved
        net = NetConfig.from_dict(config["net"])
        artifacts = {"generator": str(files["pt2"]), "config": str(files["config"])}
        model_uri = model_registry.log_pyfunc_model(
            tracker, pyfunc_model.__file__, artifacts, net.z_dim, (net.image_size, net.image_size, net.channels),
            pip_requirements(), model_config={"max_batch": params.export.max_batch})
        for name in ("safetensors", "config", "onnx"):  # safetensors + config: what train.init_from fetches
            if name in files:
                tracker.log_artifact(files[name], "export")
        uri, model_name = params.tracking.uri, params.export.model_name
        version = model_registry.register_version(uri, model_name, model_uri, version_tags(tracker.run_id, config, summary))
        decision = promotion.apply_rule(uri, model_name, version, params.export.promote_metric)
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
    generator, config = weights.load_trained_generator(paths.models, params.export.weights)
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
