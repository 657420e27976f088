"""Every call into MLflow's model registry: log the generator as a pyfunc, register versions, read them, move the
champion alias, load a model. The rule that decides promotion is pure and lives in `promotion`.
These functions take the tracking URI explicitly and raise TrackingError on failure: the export stage exists to
register, so a failure there must stop it rather than be logged and skipped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import TrackingConfig
from pipeline.errors import TrackingError, first_line
from pipeline.tracking import auth, store
from pipeline.tracking.tracker import Tracker

CHAMPION = "champion"
PREVIOUS_TAG = "previous_champion"  # on each champion: the version it replaced, so rollback can walk back


@contextlib.contextmanager
def _fluent(uri: str) -> Iterator[Any]:
    """MLflow's fluent API (start_run, register_model, pyfunc.load_model) bound to `uri` for the block. The
    process-wide URIs (and their environment variables) are put back afterwards: the pipeline leaves no global
    behind for the code that runs next in the process (a notebook, the next test)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before = tracking_utils._tracking_uri, registry_utils._registry_uri
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    uri = store.resolve_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    uri = store.resolve_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _registry_call(what: str, uri: str, fn: Callable[[Any], Any], needs: str, client: bool = True) -> Any:
    """`fn(client)` with a client of `uri` (`client=False`: `fn(None)`, for the fluent calls, which bind `uri`
    themselves; a local store must exist otherwise), SQLite's lock retried (opening the store reads it too). A 401 or
    403 becomes a TrackingError naming the permission `needs`; any other failure one saying what failed."""
    if client:
        store.existing_store(uri)
    try:
        return store.retry_locked(lambda: fn(_client(uri) if client else None))
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - any client failure: say what was being done
        refusal = auth.refusal(e, uri, what, needs)
        raise TrackingError(refusal or f"{what} failed: {type(e).__name__}: {first_line(e)}") from None


def _version_dict(mv, aliases: list[str]) -> dict:
    return {"version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags), "aliases": aliases}


def log_pyfunc_model(tracker: Tracker, code_path: str | Path, artifacts: dict[str, str], z_dim: int,
                     image_hwc: tuple[int, int, int], pip_requirements: list[str], name: str = "generator",
                     model_config: dict | None = None) -> str:
    """Log the generator as a models-from-code pyfunc into the tracker's run; return its model URI. `model_config`
    reaches the model's `load_context` (the served batch limit)."""
    if not tracker.active:
        raise TrackingError("cannot log the model: this stage has no MLflow run (tracking is off)")
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

    def log(_):
        with _fluent(tracker.uri) as mlflow, mlflow.start_run(run_id=tracker.run_id):
            return mlflow.pyfunc.log_model(name=name, python_model=str(code_path), artifacts=artifacts,
                                           signature=signature, input_example=example,
                                           pip_requirements=pip_requirements, model_config=model_config)

    return _registry_call(f"logging the pyfunc model into run {tracker.run_id}", tracker.uri, log,
                          "EDIT on this run's experiment", client=False).model_uri


def register_version(uri: str, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of `name` (created if needed); return the version number."""
    def register(_):
        with _fluent(uri) as mlflow:
            return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})

    return str(_registry_call(f"registering {model_uri} as {name}", uri, register,
                              f"EDIT on registered model {name!r}", client=False).version)


def model_version(uri: str, name: str, version: str | None = None, alias: str = CHAMPION) -> dict | None:
    """{version, run_id, tags, aliases} of one version, or of the one `alias` names when `version` is None; None if
    absent."""
    from mlflow.exceptions import MlflowException

    def read(client):
        try:
            return (client.get_model_version_by_alias(name, alias) if version is None
                    else client.get_model_version(name, str(version)))
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    mv = _registry_call(f"reading {name} from the registry at {uri}", uri, read, f"READ on registered model {name!r}")
    return None if mv is None else _version_dict(mv, list(mv.aliases))


def list_versions(uri: str, name: str) -> list[dict]:
    """Every version of `name`, oldest first, as `model_version` dicts."""
    def read(client):
        found = client.search_model_versions(f"name = '{name}'")
        # Search results leave `aliases` empty; the registered model holds the alias -> version map.
        return found, (client.get_registered_model(name).aliases if found else {})

    found, aliases = _registry_call(f"listing {name} at {uri}", uri, read, f"READ on registered model {name!r}")
    return sorted((_version_dict(mv, sorted(a for a, v in aliases.items() if str(v) == str(mv.version)))
                   for mv in found), key=lambda v: int(v["version"]))


def set_version_tags(uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    def tag(client):
        for k, v in tags.items():
            client.set_model_version_tag(name, str(version), k, str(v))

    _registry_call(f"tagging {name} v{version}", uri, tag, f"EDIT on registered model {name!r}")


def delete_version_tag(uri: str, name: str, version: str, key: str) -> None:
    _registry_call(f"untagging {name} v{version}", uri,
                   lambda client: client.delete_model_version_tag(name, str(version), key),
                   f"EDIT on registered model {name!r}")


def move_champion(uri: str, name: str, version: str, previous: str | None) -> None:
    """Point the champion alias at `version`, remembering the version it replaces (for rollback)."""
    def move(client):
        if previous is not None and previous != str(version):
            client.set_model_version_tag(name, str(version), PREVIOUS_TAG, previous)
        client.set_registered_model_alias(name, CHAMPION, str(version))

    def move_racing(client):
        # MLflow's SQL stores insert a new tag or alias after finding none, so two exports that set the same key at
        # once (racing for the alias) make the server refuse the second insert: a unique-key violation. The key
        # exists then, and setting it again is an update; a failure that recurs is raised.
        try:
            move(client)
        except Exception:  # noqa: BLE001 - which error a lost race raises depends on the store's database
            move(client)

    _registry_call(f"moving the {CHAMPION} alias of {name} to v{version}", uri, move_racing,
                   f"EDIT on registered model {name!r}")


def load_pyfunc(model_uri: str, tracking_uri: str | None = None):
    """An MLflow pyfunc model (models:/NAME@champion, runs:/ID/generator, or a local model directory). For a
    models:/ or runs:/ URI the store is `tracking_uri`, else MLFLOW_TRACKING_URI, else the pipeline's default
    (`mlflow.db` at the repository's root); a local store must exist."""
    import mlflow

    if model_uri.startswith(("models:/", "runs:/")):
        uri = store.existing_store(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or TrackingConfig().uri)
    else:
        uri = tracking_uri or mlflow.get_tracking_uri()

    def load(_):
        with _fluent(uri) as fluent:
            return fluent.pyfunc.load_model(model_uri)

    return _registry_call(f"loading {model_uri} from {uri}", uri, load, "READ on the model", client=False)
