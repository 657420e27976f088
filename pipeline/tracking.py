"""All experiment tracking goes through one `Tracker`: MLflow (imported lazily) and TensorBoard.

Failure policy for a remote server: at start, an unreachable server stops the stage within the bounded retries
(`tracking.required: true`) or turns tracking off with a warning. During a run, the first failed call (bounded by
`tracking.timeout_seconds` x `tracking.max_retries`) switches MLflow off for the rest of the run with one loud
warning, so a lost server costs seconds, never hours; metrics still land in metrics/*.json, plots/ and TensorBoard.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import TrackingConfig


class TrackingError(RuntimeError):
    """The tracking server cannot be used and tracking is required."""


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _bound_http(cfg: TrackingConfig) -> None:
    """MLflow's HTTP client reads these on every request; its defaults retry for about 4 minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, cfg.timeout_seconds)))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Tracker:
    """One run's tracking. Disabled parts are silent no-ops, so callers never branch on them."""

    def __init__(self, cfg: TrackingConfig | None = None, run_id: str | None = None, tensorboard_dir: str | None = None):
        self.cfg = cfg
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.lost_at: str | None = None  # what failed, once the server went away mid-run
        self._client = None
        self._tb = None
        if cfg is not None and cfg.enabled:
            self._connect(run_id)
        if tensorboard_dir and (cfg is None or cfg.tensorboard):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(tensorboard_dir)

    # Connection.
    def _connect(self, run_id: str | None) -> None:
        cfg = self.cfg
        _bound_http(cfg)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            return self._unavailable("mlflow is not installed (pip install mlflow)")
        try:
            client = MlflowClient(tracking_uri=cfg.uri)
            if run_id is None:
                exp = client.get_experiment_by_name(cfg.experiment)
                exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
                tags = {"mlflow.source.git.commit": git_commit() or "unknown"}
                if os.environ.get("DVC_EXP_NAME"):
                    tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
                run = client.create_run(exp_id, tags=tags, run_name=os.environ.get("DVC_EXP_NAME"))
            else:
                run = client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
        except Exception as e:  # noqa: BLE001 - any client failure means the server is unusable
            return self._unavailable(f"cannot reach MLflow at {cfg.uri}: {type(e).__name__}: {_first_line(e)}")
        self._client, self.run_id, self.experiment_id = client, run.info.run_id, run.info.experiment_id

    def _unavailable(self, why: str) -> None:
        if self.cfg.required:
            raise TrackingError(f"{why}. Start the server, fix tracking.uri, or set tracking.required: false "
                                "to train without MLflow.")
        print(f"WARNING: {why}; tracking.required is false, so this run is NOT tracked in MLflow.", file=sys.stderr)

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if self._client is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self.lost_at = what
            self._client = None
            print(f"WARNING: MLflow call {what} failed ({type(e).__name__}: {_first_line(e)}); MLflow logging is "
                  f"off for the rest of this run (run {self.run_id}). Training goes on; metrics are still written "
                  "to metrics/, plots/ and TensorBoard.", file=sys.stderr)
            return None

    @property
    def active(self) -> bool:
        return self._client is not None

    # Logging.
    def log_params(self, params: dict[str, Any]) -> None:
        if self._client is None:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("log_params", self._client_method("log_batch"), self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
            self._call("log_metrics", self._client.log_batch, self.run_id, metrics=batch)
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """image: (H, W, C) uint8."""
        self._call("log_image", self._client_method("log_image"), self.run_id, image, key=key, step=step)
        if self._tb is not None:
            self._tb.add_image(key, image, step, dataformats="HWC")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", self._client_method("log_artifact"), self.run_id, str(path), artifact_path)

    def log_dict(self, d: dict, artifact_file: str) -> None:
        self._call("log_dict", self._client_method("log_dict"), self.run_id, d, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call("set_tag", self._client_method("set_tag"), self.run_id, k, str(v))

    def _client_method(self, name: str):
        return getattr(self._client, name) if self._client is not None else None

    def close(self, status: str = "FINISHED") -> None:
        self._call("set_terminated", self._client_method("set_terminated"), self.run_id, status)
        if self._tb is not None:
            self._tb.close()

    # Hand-off between stages.
    def write_run_file(self, path: str | Path) -> None:
        """Write the run id for the later stages (a DVC output of train)."""
        info = {"run_id": self.run_id, "experiment_id": self.experiment_id,
                "tracking_uri": self.cfg.uri if self.cfg and self.run_id else None}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def resume(cls, cfg: TrackingConfig, run_file: str | Path) -> Tracker:
        """Continue the pipeline run that train started; untracked if train ran untracked."""
        info = json.loads(Path(run_file).read_text()) if Path(run_file).exists() else {}
        if not info.get("run_id") or not cfg.enabled:
            return cls(None)
        return cls(cfg, run_id=info["run_id"])


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


# Model registry.
# Every call into MLflow's model registry lives here; the rule that decides promotion is pure and lives in
# pipeline/registry.py. These functions take the tracking URI explicitly and raise TrackingError on failure:
# the export stage exists to register, so a failure there must stop it rather than be logged and skipped.

CHAMPION = "champion"
PREVIOUS_TAG = "previous_champion"  # on each champion: the version it replaced, so rollback can walk back


def _mlflow(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def _registry_call(what: str) -> Iterator[None]:
    try:
        yield
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - any client failure: say what was being done
        raise TrackingError(f"{what} failed: {type(e).__name__}: {_first_line(e)}") from e


def _version_dict(mv, aliases: list[str]) -> dict:
    return {"version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags), "aliases": aliases}


def log_pyfunc_model(tracker: Tracker, code_path: str | Path, artifacts: dict[str, str], z_dim: int,
                     image_hwc: tuple[int, int, int], pip_requirements: list[str], name: str = "generator") -> str:
    """Log the generator as a models-from-code pyfunc into the tracker's run; return its model URI."""
    if not tracker.active:
        raise TrackingError("cannot log the model: this stage has no MLflow run (tracking is off or was lost)")
    mlflow = _mlflow(tracker.cfg.uri)
    from mlflow.models.signature import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    # Unnamed tensor specs: the pyfunc receives a plain ndarray, and REST accepts {"inputs": [[...], ...]}.
    # Inference params reach predict only when declared (MLflow drops undeclared ones with a warning), so they are
    # declared for unconditional models too: there, the pyfunc refuses `labels` instead of silently ignoring them.
    # REST: {"inputs": [...], "params": {"labels": [3, 3, 7], "seed": 0}}.
    params = ParamSchema([ParamSpec("labels", DataType.long, [], shape=(-1,)),  # [] = draw labels uniformly
                          ParamSpec("seed", DataType.long, None)])  # for those draws; None = fresh entropy
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, z_dim))]),
                               outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_hwc))]), params=params)
    example = np.zeros((2, z_dim), np.float32)  # batch >= 2, see STACK-NOTES; the pt2 batch is dynamic anyway
    with _registry_call("logging the pyfunc model"), mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pyfunc.log_model(name=name, python_model=str(code_path), artifacts=artifacts,
                                       signature=signature, input_example=example, pip_requirements=pip_requirements)
    return info.model_uri


def register_version(uri: str, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of `name` (created if needed); return the version number."""
    mlflow = _mlflow(uri)
    with _registry_call(f"registering {model_uri} as {name}"):
        mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    return str(mv.version)


def model_version(uri: str, name: str, version: str | None = None) -> dict | None:
    """{version, run_id, tags, aliases} of one version, or of the champion when `version` is None; None if absent."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    with _registry_call(f"reading {name} from the registry at {uri}"):
        try:
            mv = (client.get_model_version_by_alias(name, CHAMPION) if version is None
                  else client.get_model_version(name, str(version)))
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
    return _version_dict(mv, list(mv.aliases))


def list_versions(uri: str, name: str) -> list[dict]:
    """Every version of `name`, oldest first, as `model_version` dicts."""
    client = _client(uri)
    with _registry_call(f"listing {name} at {uri}"):
        found = client.search_model_versions(f"name = '{name}'")
        # Search results leave `aliases` empty; the registered model holds the alias -> version map.
        aliases = client.get_registered_model(name).aliases if found else {}
    return sorted((_version_dict(mv, sorted(a for a, v in aliases.items() if str(v) == str(mv.version)))
                   for mv in found), key=lambda v: int(v["version"]))


def set_version_tags(uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    client = _client(uri)
    with _registry_call(f"tagging {name} v{version}"):
        for k, v in tags.items():
            client.set_model_version_tag(name, str(version), k, str(v))


def move_champion(uri: str, name: str, version: str, previous: str | None) -> None:
    """Point the champion alias at `version`, remembering the version it replaces (for rollback)."""
    client = _client(uri)
    with _registry_call(f"moving the {CHAMPION} alias of {name} to v{version}"):
        if previous is not None and previous != str(version):
            client.set_model_version_tag(name, str(version), PREVIOUS_TAG, previous)
        client.set_registered_model_alias(name, CHAMPION, str(version))


def load_pyfunc(model_uri: str, tracking_uri: str | None = None):
    """An MLflow pyfunc model (models:/NAME@champion, runs:/ID/generator, or a local model directory)."""
    import mlflow

    if tracking_uri:
        _mlflow(tracking_uri)
    with _registry_call(f"loading {model_uri} from {mlflow.get_tracking_uri()}"):
        return mlflow.pyfunc.load_model(model_uri)
