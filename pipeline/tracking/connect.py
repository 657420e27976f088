"""Opening a pipeline stage's MLflow run: a new run, or the one an earlier stage (or a killed train) left.

At start, an unreachable server stops the stage within bounded retries (`tracking.required: true`) or turns tracking
off with a warning. A new run carries MLflow's standard source tags; a continued one gets this stage's host, pid and
commit. Housekeeping on the way: runs left RUNNING by a killed process of this host are marked KILLED, and spools
other runs left behind are replayed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import fsutil
from pipeline.config import TrackingConfig
from pipeline.errors import TrackingError, first_line
from pipeline.tracking import auth, replay, store, sysmetrics

TAG_HOST, TAG_PID = "pipeline.host", "pipeline.pid"  # who is writing the run (to find runs left RUNNING by a kill)
# MLflow 3's UI opens an experiment of this kind on its runs table, not on the GenAI overview (the tag its
# experiment page reads; other values: genai_development, finetuning, ...).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
STAGE_TAG = "stage.{stage}.{key}"  # the value a later run of `stage` used, where the run's param holds another


@dataclass
class OpenRun:
    """A run ready for logging, with what it already holds (MLflow refuses to change a param)."""

    run_id: str
    experiment_id: str
    client: Any  # MlflowClient
    params: dict[str, str]
    tags: dict[str, str]
    system_step: int  # the next step of the system metrics (continued on a resumed run)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def git_commit() -> str | None:
    return _git("rev-parse", "HEAD")


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags, as its own run context sets them: the entry point (`mlflow.source.name`,
    relative to the repository), `LOCAL`, and the git commit, branch and remote where git knows them. The run page
    shows them as "Source" and the commit."""
    main = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    root = store.repo_root()
    name = str(main.relative_to(root)) if main and main.is_relative_to(root) else (main.name if main else "")
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    tags = {"mlflow.source.name": name or "unknown", "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": git_commit() or "unknown",
            "mlflow.source.git.branch": branch if branch != "HEAD" else None,  # HEAD: detached, no branch
            "mlflow.source.git.repoURL": _git("config", "--get", "remote.origin.url")}
    return {k: v for k, v in tags.items() if v}


def bound_http(cfg: TrackingConfig) -> None:
    """MLflow's HTTP client reads these on every request; its defaults retry for about 4 minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, cfg.timeout_seconds)))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def open_run(cfg: TrackingConfig, uri: str, run_id: str | None, stage: str) -> OpenRun | None:
    """Continue `run_id`, or create a run; None when the server cannot be used and tracking is not required (a
    warning says so). Raises TrackingError when it is required."""
    bound_http(cfg)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        return _unavailable(cfg, "mlflow is not installed (pip install mlflow)")
    for attempt in range(2):
        try:
            store.prepare_store(uri)
            client = MlflowClient(tracking_uri=uri)
            opened = store.retry_locked(lambda c=client: _open(c, cfg, uri, run_id, stage))
            break
        except TrackingError:
            raise
        except Exception as e:  # noqa: BLE001 - any client failure means the server is unusable
            refusal = auth.refusal(e, uri, f"opening this stage's run in experiment {cfg.experiment!r}",
                                   f"EDIT on experiment {cfg.experiment!r}")
            if refusal is not None:  # a password or a permission: no server restart fixes it
                return _unavailable(cfg, refusal, "")
            if attempt == 0 and store.repair_store(uri, e):
                continue
            return _unavailable(cfg, f"cannot reach MLflow at {uri}: {type(e).__name__}: {first_line(e)}")
    with contextlib.suppress(Exception):  # housekeeping: never a reason to fail the stage
        _mark_killed_runs(client, opened.experiment_id, opened.run_id)
        for d in replay.spool_dirs(store.spool_root(), uri):
            if d.name != opened.run_id and (n := replay.sync_dir(d, lambda u: MlflowClient(tracking_uri=u))):
                print(f"replayed {n} tracking records that run {d.name} left in {d}", file=sys.stderr)
    return opened


def _open(client, cfg: TrackingConfig, uri: str, run_id: str | None, stage: str) -> OpenRun:
    from mlflow.exceptions import MlflowException

    here = {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
    exp_name = os.environ.get("DVC_EXP_NAME")
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            print(f"WARNING: run {run_id} is not in {uri}; starting a new run", file=sys.stderr)
        else:
            params, tags = dict(run.data.params), dict(run.data.tags)
            steps = [m.step for m in getattr(run.data, "_metric_objs", []) if m.key.startswith(sysmetrics.SYSTEM_PREFIX)]
            # A later stage re-run in another DVC experiment (train cached): the run takes that name.
            rename = exp_name if exp_name and exp_name != run.info.run_name else None
            client.update_run(run_id, status="RUNNING", name=rename)
            commit = git_commit() or "unknown"
            if commit != tags.get("mlflow.source.git.commit"):
                here[STAGE_TAG.format(stage=stage, key="git.commit")] = commit
            for k, v in {**here, **({"dvc.exp_name": exp_name} if exp_name else {})}.items():
                client.set_tag(run_id, k, v)
            _experiment(client, cfg, uri, run.info.experiment_id)
            return OpenRun(run.info.run_id, run.info.experiment_id, client, params, tags, max(steps, default=-1) + 1)
    exp_id = _experiment(client, cfg, uri)
    tags = {**source_tags(), **here}
    if exp_name:
        tags["dvc.exp_name"] = exp_name
    run = client.create_run(exp_id, tags=tags, run_name=exp_name)
    return OpenRun(run.info.run_id, run.info.experiment_id, client, {}, {}, 0)


def _experiment(client, cfg: TrackingConfig, uri: str, exp_id: str | None = None) -> str:
    """The experiment's id (created if needed), tagged as a model-training experiment (EXPERIMENT_KIND)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment(exp_id) if exp_id else client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        local = store.sqlite_file(uri)  # artifacts next to a local store, not in the working directory
        try:
            return client.create_experiment(
                cfg.experiment, artifact_location=(local.parent / "mlruns").as_uri() if local else None,
                tags=EXPERIMENT_KIND)
        except MlflowException as e:  # a concurrent experiment (dvc queue -j 2) created it first: use that one
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(cfg.experiment)
    for k, v in EXPERIMENT_KIND.items():
        if exp.tags.get(k) != v:  # an experiment created before: the UI opens it on its runs too
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def _mark_killed_runs(client, experiment_id: str, run_id: str) -> None:
    """Runs of this experiment left RUNNING by a process of this host that no longer exists -> KILLED."""
    host = socket.gethostname()
    for r in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=500):
        pid = r.data.tags.get(TAG_PID, "")
        if (r.info.run_id != run_id and r.data.tags.get(TAG_HOST) == host and pid.isdigit()
                and not fsutil.alive(int(pid))):
            client.set_terminated(r.info.run_id, "KILLED")
            print(f"marked run {r.info.run_id} KILLED: its process {pid} ended without closing it", file=sys.stderr)


def _unavailable(cfg: TrackingConfig, why: str, fix: str = "Start the server, fix tracking.uri, or ") -> None:
    if cfg.required:
        raise TrackingError(f"{why}. {fix}{'set' if fix else 'Or set'} tracking.required: false to train without "
                            "MLflow.")
    print(f"WARNING: {why}; tracking.required is false, so this run is NOT tracked in MLflow.", file=sys.stderr)
