"""All experiment tracking goes through one `Tracker`: MLflow (imported lazily) and TensorBoard.

Failure policy. Opening the run (`connect`) stops the stage on an unreachable server within bounded retries, or turns
tracking off with a warning (`tracking.required`). After that, every MLflow call of the run goes through a durable
local spool (`spool`): the training thread never waits on the network; a server lost mid-run only delays records,
which are replayed in order when it answers; what is still unsent when the stage ends stays in the spool, named in
one line, for the next stage or `gan-tracking sync`. Where the store is, and keeping a local one healthy, is `store`'s.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import TrackingConfig
from pipeline.tracking import connect, store, sysmetrics
from pipeline.tracking import spool as spooling
from pipeline.tracking.connect import STAGE_TAG


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """One run's tracking. Disabled parts are silent no-ops, so callers never branch on them.

    `run_id` continues an existing run (a later stage, or a resumed train stage); otherwise a new run is created.
    Either way the run is named after the DVC experiment (`DVC_EXP_NAME`) when there is one. `stage` names the
    stage that logs (see `log_params`); `system_metrics` samples the machine while the run is open (the train
    stage: `sysmetrics`). TensorBoard gets one subdirectory per run under `tensorboard_dir`:
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
            opened = connect.open_run(cfg, self.uri, run_id, stage)
            if opened is not None:
                self.run_id, self.experiment_id = opened.run_id, opened.experiment_id
                self._params, self._tags, self._system_step = opened.params, opened.tags, opened.system_step
                self.spool = spooling.Spool(store.spool_root(), self.run_id, self.uri, opened.client)
        if system_metrics and self.spool is not None and cfg.system_metrics and sysmetrics.wanted():
            self._system = sysmetrics.SystemMetrics(self._put, cfg.system_metrics_seconds, self._system_step)
        if tensorboard_dir and (cfg is None or cfg.tensorboard):
            from torch.utils.tensorboard import SummaryWriter

            base = Path(tensorboard_dir)
            base = base if base.is_absolute() else store.repo_root() / base  # as the store: not lost with a DVC temp copy
            self.tensorboard_run = tensorboard_run or os.environ.get("DVC_EXP_NAME") or self.run_id or _new_dir(
                base, time.strftime("%Y%m%d-%H%M%S"))
            self._tb = SummaryWriter(str(base / self.tensorboard_run))

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
                why = self.spool.refused or f"MLflow at {self.uri} did not take them before the stage ended"
                print(f"WARNING: {self.spool.counts['pending_records']} tracking records of run {self.run_id} are "
                      f"kept in {self.spool.dir} ({why}). Upload them with: gan-tracking sync", file=sys.stderr)
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
