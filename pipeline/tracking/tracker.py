"""All experiment tracking goes through one `Tracker`: MLflow (imported lazily) and TensorBoard.

Failure policy. At start, an unreachable server stops the stage within the bounded retries (`tracking.required:
true`) or turns tracking off with a warning. After that, every MLflow call of the run goes through a durable local
spool (pipeline.spool): the training thread never waits on the network; a server lost mid-run only delays records,
which are replayed in order when it answers; what is still unsent when the stage ends stays in the spool, named in
one line, for the next stage or `gan-tracking sync`.

Where the store is, and keeping a local one healthy, is pipeline.store's. A run left RUNNING by a killed process on
this host is marked KILLED when the next stage starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import spool as spooling
from pipeline import store, sysmetrics
from pipeline.config import TrackingConfig
from pipeline.store import TrackingError

TAG_HOST, TAG_PID = "pipeline.host", "pipeline.pid"  # who is writing the run (to find runs left RUNNING by a kill)
# MLflow 3's UI opens an experiment of this kind on its runs table, not on the GenAI overview (the tag its
# experiment page reads; other values: genai_development, finetuning, ...).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
STAGE_TAG = "stage.{stage}.{key}"  # the value a later run of `stage` used, where the run's param holds another


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


def _bound_http(cfg: TrackingConfig) -> None:
    """MLflow's HTTP client reads these on every request; its defaults retry for about 4 minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, cfg.timeout_seconds)))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """One run's tracking. Disabled parts are silent no-ops, so callers never branch on them.

    `run_id` continues an existing run (a later stage, or a resumed train stage); otherwise a new run is created.
    Either way the run is named after the DVC experiment (`DVC_EXP_NAME`) when there is one. `stage` names the
    stage that logs (see `log_params`); `system_metrics` samples the machine while the run is open (the train
    stage: `pipeline.sysmetrics`). TensorBoard gets one subdirectory per run under `tensorboard_dir`:
    `tensorboard_run` (a resumed train stage passes the one its checkpoint names), else the DVC experiment's name,
    else the MLflow run id, else a timestamp."""

    def __init__(self, cfg: TrackingConfig | None = None, run_id: str | None = None,
                 tensorboard_dir: str | Path | None = None, stage: str = "train", tensorboard_run: str | None = None,
                 system_metrics: bool = False):
        self.cfg = cfg
        self.stage = stage
        self.uri = store.resolve_uri(cfg.uri) if cfg is not None else None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.spool: spooling.Spool | None = None
        self.counts: dict[str, int] = {}  # the spool's record counts, once closed
        self._skip_through = -1  # metrics and images at steps <= this are already in the run (resumed train)
        self._params: dict[str, str] = {}  # params the run already holds (MLflow refuses to change one)
        self._tags: dict[str, str] = {}  # tags the run already holds
        self._system_step = 0  # the next step of the system metrics (continued on a resumed run)
        self._system: sysmetrics.SystemMetrics | None = None
        self._tb = None
        self.tensorboard_run: str | None = None
        if cfg is not None and cfg.enabled:
            self._connect(run_id)
        if system_metrics and self.spool is not None and cfg.system_metrics and sysmetrics.wanted():
            self._system = sysmetrics.SystemMetrics(self._put, cfg.system_metrics_seconds, self._system_step)
        if tensorboard_dir and (cfg is None or cfg.tensorboard):
            from torch.utils.tensorboard import SummaryWriter

            base = Path(tensorboard_dir)
            base = base if base.is_absolute() else store.repo_root() / base  # as the store: not lost with a DVC temp copy
            self.tensorboard_run = tensorboard_run or os.environ.get("DVC_EXP_NAME") or self.run_id or _new_dir(
                base, time.strftime("%Y%m%d-%H%M%S"))
            self._tb = SummaryWriter(str(base / self.tensorboard_run))

    # Connection.
    def _connect(self, run_id: str | None) -> None:
        _bound_http(self.cfg)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            return self._unavailable("mlflow is not installed (pip install mlflow)")
        for attempt in range(2):
            try:
                store.prepare_store(self.uri)
                client = MlflowClient(tracking_uri=self.uri)
                run = store.retry_locked(lambda c=client: self._open_run(c, run_id))
                break
            except TrackingError:
                raise
            except Exception as e:  # noqa: BLE001 - any client failure means the server is unusable
                if attempt == 0 and store.repair_store(self.uri, e):
                    continue
                return self._unavailable(f"cannot reach MLflow at {self.uri}: {type(e).__name__}: {store.first_line(e)}")
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        with contextlib.suppress(Exception):  # housekeeping: never a reason to fail the stage
            self._mark_killed_runs(client)
            for d in spooling.spool_dirs(store.spool_root(), self.uri):
                if d.name != self.run_id and (n := spooling.sync_dir(d, lambda u: MlflowClient(tracking_uri=u))):
                    print(f"replayed {n} tracking records that run {d.name} left in {d}", file=sys.stderr)
        self.spool = spooling.Spool(store.spool_root(), self.run_id, self.uri, client)

    def _open_run(self, client, run_id: str | None):
        from mlflow.exceptions import MlflowException

        here = {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
        exp_name = os.environ.get("DVC_EXP_NAME")
        if run_id is not None:
            try:
                run = client.get_run(run_id)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                print(f"WARNING: run {run_id} is not in {self.uri}; starting a new run", file=sys.stderr)
            else:
                self._params, self._tags = dict(run.data.params), dict(run.data.tags)
                steps = [m.step for m in getattr(run.data, "_metric_objs", []) if m.key.startswith(sysmetrics.SYSTEM_PREFIX)]
                self._system_step = max(steps, default=-1) + 1
                # A later stage re-run in another DVC experiment (train cached): the run takes that name.
                rename = exp_name if exp_name and exp_name != run.info.run_name else None
                client.update_run(run_id, status="RUNNING", name=rename)
                commit = git_commit() or "unknown"
                if commit != self._tags.get("mlflow.source.git.commit"):
                    here[STAGE_TAG.format(stage=self.stage, key="git.commit")] = commit
                for k, v in {**here, **({"dvc.exp_name": exp_name} if exp_name else {})}.items():
                    client.set_tag(run_id, k, v)
                self._experiment(client, run.info.experiment_id)
                return run
        exp_id = self._experiment(client)
        tags = {**source_tags(), **here}
        if exp_name:
            tags["dvc.exp_name"] = exp_name
        return client.create_run(exp_id, tags=tags, run_name=exp_name)

    def _experiment(self, client, exp_id: str | None = None) -> str:
        """The experiment's id (created if needed), tagged as a model-training experiment (EXPERIMENT_KIND)."""
        exp = client.get_experiment(exp_id) if exp_id else client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            local = store.sqlite_file(self.uri)  # artifacts next to a local store, not in the working directory
            return client.create_experiment(
                self.cfg.experiment, artifact_location=(local.parent / "mlruns").as_uri() if local else None,
                tags=EXPERIMENT_KIND)
        for k, v in EXPERIMENT_KIND.items():
            if exp.tags.get(k) != v:  # an experiment created before: the UI opens it on its runs too
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id

    def _mark_killed_runs(self, client) -> None:
        """Runs of this experiment left RUNNING by a process of this host that no longer exists -> KILLED."""
        host = socket.gethostname()
        for r in client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=500):
            pid = r.data.tags.get(TAG_PID, "")
            if (r.info.run_id != self.run_id and r.data.tags.get(TAG_HOST) == host and pid.isdigit()
                    and not store.alive(int(pid))):
                client.set_terminated(r.info.run_id, "KILLED")
                print(f"marked run {r.info.run_id} KILLED: its process {pid} ended without closing it",
                      file=sys.stderr)

    def _unavailable(self, why: str) -> None:
        if self.cfg.required:
            raise TrackingError(f"{why}. Start the server, fix tracking.uri, or set tracking.required: false "
                                "to train without MLflow.")
        print(f"WARNING: {why}; tracking.required is false, so this run is NOT tracked in MLflow.", file=sys.stderr)

    @property
    def active(self) -> bool:
        return self.spool is not None

    def skip_logged_steps(self, start: int) -> int:
        """A resumed train stage replays steps after `start` that the killed run already logged: skip them, so the
        run holds every step once. Returns the last step already in the run (or its spool)."""
        if self.spool is None:
            return start
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        keys = [k for k in store.retry_locked(lambda: client.get_run(self.run_id)).data.metrics
                if not k.startswith(sysmetrics.SYSTEM_PREFIX)]  # system metrics count their own steps
        steps = [m.step for k in keys for m in store.retry_locked(lambda k=k: client.get_metric_history(self.run_id, k))]
        steps += self.spool.pending_steps(skip_prefix=sysmetrics.SYSTEM_PREFIX)
        self._skip_through = max([start, *steps])
        return self._skip_through

    # Logging: into the spool; the spool's thread talks to MLflow.
    def _put(self, op: str, **fields: Any) -> None:
        if self.spool is not None:
            self.spool.put(op, **fields)

    def log_params(self, params: dict[str, Any]) -> None:
        """The params this stage used. Each stage logs only its own sections (train: data, model, train, tracking;
        evaluate: eval; export: export). A key the run holds with another value (MLflow refuses to change a param:
        a resumed train with a longer train.steps, an evaluate re-run with another eval.kid_subset_size) goes into
        the tag `stage.<stage>.<key>` instead; once such a tag exists it is rewritten on every run of the stage, so
        it always holds the value that stage last used."""
        new, changed = {}, {}
        for k, v in ((k, str(v)[:6000]) for k, v in params.items()):
            tag = STAGE_TAG.format(stage=self.stage, key=k)
            if k not in self._params:
                new[k] = v
            elif self._params[k] != v or tag in self._tags:
                changed[tag] = v
        if new:
            self._put("params", params=new)
            self._params.update(new)
        if changed:
            self.set_tags(changed)
            self._tags.update(changed)

    def log_section_params(self, params, section: str) -> None:
        """The stage's own section of `params` (evaluate: eval, export: export, resolved values), as params and as
        config/<stage>.json."""
        used = {k: v for k, v in params.flat().items() if k.startswith(f"{section}.")}
        self.log_params(used)
        self.log_dict(used, f"config/{self.stage}.json")

    def log_dataset(self, name: str, digest: str, source: dict[str, Any], schema: dict[str, Any] | None = None,
                    profile: dict[str, Any] | None = None, context: str = "training") -> None:
        """The run's input data set, as MLflow's dataset API records it (the run page's "Datasets"): `digest`
        identifies the content, `source` says where it came from ({"uri": ...}), `schema` is an MLflow schema
        dict, `profile` free-form counts. `context` is MLflow's `mlflow.data.context` input tag."""
        self._put("dataset", dataset={"name": name, "digest": digest, "source_type": "local",
                                      "source": json.dumps(source), "schema": json.dumps(schema) if schema else None,
                                      "profile": json.dumps(profile) if profile else None},
                  tags={"mlflow.data.context": context})

    def log_prepared_data(self, meta: dict, context: str = "training") -> None:
        """The prepared data (pipeline.data's meta.json) as the run's input: named after its source data set, its
        content hash as the digest, its tensors as an MLflow tensor schema, its counts and classes as the profile."""
        def tensor(dtype: str, shape: list[int]) -> str:
            return json.dumps([{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}}])

        schema = {"mlflow_tensorspec": {"features": tensor("uint8", [-1, *meta["shape"]]),
                                        "targets": tensor("int64", [-1])}}
        classes = [str(c) for c in meta.get("classes") or []]
        profile = {"train_images": meta["count"]["train"], "ref_images": meta["count"]["ref"],
                   "shape_chw": meta["shape"], "labelled": meta.get("labelled", False), "num_classes": len(classes),
                   "classes": classes[:50] + ([f"... ({len(classes) - 50} more)"] if len(classes) > 50 else [])}
        if "corrupt_skipped" in meta:
            profile["corrupt_skipped"] = meta["corrupt_skipped"]
        self.log_dataset(meta["source"], meta["hash"], {"uri": str(meta["root"])}, schema, profile, context)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step <= self._skip_through:
            return
        now = _now_ms()
        self._put("metrics", points=[[k, float(v), now, step] for k, v in metrics.items()])
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """image: (H, W, C) uint8."""
        if step <= self._skip_through:
            return
        if self.spool is not None:
            from PIL import Image

            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            self._put("image", blobs={"blob": png.getvalue()}, key=key, step=step, timestamp=_now_ms())
        if self._tb is not None:
            self._tb.add_image(key, image, step, dataformats="HWC")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put("artifact", blobs={"blob": Path(path)}, artifact_path=artifact_path)

    def log_dict(self, d: dict, artifact_file: str) -> None:
        self._put("dict", dict=d, artifact_file=artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put("tags", tags={k: str(v) for k, v in tags.items()})

    def log_hparams(self, hparams: dict[str, Any], metric_tags: list[str]) -> None:
        """TensorBoard's HParams view for this run: `hparams` and the final values of the scalars `metric_tags`
        (already logged through `log_metrics`), written into the run's own subdirectory. TensorBoard keeps the
        first hparams a run directory holds (as MLflow its first params): a train stage resumed after it finished,
        with a longer train.steps, shows the first values there; MLflow's `stage.train.*` tags say what changed."""
        if self._tb is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        plain = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        writer = self._tb._get_file_writer()
        for summary in hparams_summary(plain, dict.fromkeys(metric_tags, 0.0)):
            writer.add_summary(summary)
        self._tb.flush()

    def close(self, status: str = "FINISHED") -> None:
        """End the run with `status`. Waits a bounded time for the spool to drain; what is still unsent is kept
        and named in one line."""
        if self._system is not None:
            self._system.stop()  # its last sample goes into the spool before the status record
            self._system = None
        if self.spool is not None:
            self._put("status", status=status, end_time=_now_ms())
            timeout = self.cfg.timeout_seconds * (self.cfg.max_retries + 1)
            if not self.spool.close(timeout):
                print(f"WARNING: MLflow at {self.uri} did not take {self.spool.counts['pending_records']} tracking "
                      f"records of run {self.run_id} before the stage ended; they are kept in {self.spool.dir}. "
                      "Upload them with: gan-tracking sync", file=sys.stderr)
            self.counts = dict(self.spool.counts)
            self.spool = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # Hand-off between stages.
    def write_run_file(self, path: str | Path) -> None:
        """Write the run id for the later stages (a DVC output of train)."""
        info = {"run_id": self.run_id, "experiment_id": self.experiment_id,
                "tracking_uri": self.uri if self.run_id else None}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def resume(cls, cfg: TrackingConfig, run_file: str | Path, stage: str = "train") -> Tracker:
        """Continue the pipeline run that train started, as `stage`; untracked if train ran untracked."""
        info = json.loads(Path(run_file).read_text()) if Path(run_file).exists() else {}
        if not info.get("run_id") or not cfg.enabled:
            return cls(None, stage=stage)
        return cls(cfg, run_id=info["run_id"], stage=stage)


def _new_dir(base: Path, name: str) -> str:
    """`name`, or `name-2`, `name-3`, ... : the first that is not a directory under `base` yet."""
    n, candidate = 1, name
    while (base / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


# `gan-tracking sync`: upload spools left by stages that ended while the server was away.


def sync(spool: Path | None = None, uri: str | None = None) -> list[str]:
    """Replay every run spool under `spool` (default: the main repository's); one line per run."""
    from mlflow.tracking import MlflowClient

    root = Path(spool) if spool else store.spool_root()
    lines = []
    for d in spooling.spool_dirs(root):
        try:
            n = spooling.sync_dir(d, lambda u: MlflowClient(tracking_uri=store.resolve_uri(u)), uri)
        except Exception as e:  # noqa: BLE001 - the server is still away: say so, keep the spool
            raise TrackingError(f"run {d.name}: MLflow did not take its records ({type(e).__name__}: "
                                f"{store.first_line(e)}); they stay in {d}, run gan-tracking sync again later") from None
        lines.append(f"run {d.name}: a running stage holds this spool; it sends the records itself" if n is None
                     else f"run {d.name}: uploaded {n} records")
    return lines or [f"nothing to upload: no spool under {root}"]


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="gan-tracking", description="Tracking chores.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sync", help="upload the tracking records that stages kept while MLflow was away")
    s.add_argument("--spool", type=Path, default=None, help=f"spool directory (default: <repo>/{store.SPOOL_DIR})")
    s.add_argument("--uri", default=None, help="send to this tracking URI instead of the one each spool records")
    args = p.parse_args(argv)
    for line in sync(args.spool, args.uri):
        print(line)


def cli_main() -> None:
    """Console script entry point (`gan-tracking`)."""
    from pipeline import cli

    cli.run(main)


if __name__ == "__main__":
    cli_main()
