"""A durable local spool for one MLflow run's calls, replayed in order by a background thread.

Every call a `Tracker` makes for a run is appended to `<spool>/<run_id>/ops.jsonl` (one JSON record per line, with
images and artifacts copied next to it) and handed to a sender thread. The caller never waits on the network: a
record costs a JSON line and a buffered write. The thread sends records in order, coalescing metric points into
batches; when the server does not answer, it backs off and retries the same record, so nothing is skipped and the
order holds. `sent` names the last record the server took, so a later process (the next stage, a resumed run, or
`gan-tracking sync`) replays exactly the rest. Replaying a record twice adds nothing twice: MLflow's SQL store drops
a metric point it already has, params, tags and data set inputs are idempotent, artifacts land at fixed paths.

The ops file is flushed on every record (so a `kill -9` loses nothing that was logged) and fsync'd in batches (at most
`FSYNC_SECONDS` behind, for power loss). It holds only what is not yet sent: once the thread catches up the file is
truncated, and a spool over `MAX_BYTES` of unsent records drops new ones with one warning (counted).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.store import first_line

MAX_BYTES = 512 * 2**20
FSYNC_SECONDS = 1.0
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)
METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_lock(path: Path, blocking: bool):
    """An exclusive flock on `path` (released by the OS when the holder dies); None when busy and not blocking."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _read_records(ops: Path, after: int) -> list[dict]:
    """The records of an ops file with seq > `after`; a torn last line (killed mid-write) is ignored."""
    if not ops.exists():
        return []
    out = []
    for line in ops.read_bytes().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("seq", 0) > after:
            out.append(rec)
    return out


def _read_sent(directory: Path) -> int:
    try:
        return int((directory / "sent").read_text())
    except (OSError, ValueError):
        return 0


class Sender:
    """Turns spool records into MLflow client calls for one run."""

    def __init__(self, client, run_id: str, directory: Path):
        self.client, self.run_id, self.dir = client, run_id, directory

    def send(self, records: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        c, run = self.client, self.run_id
        op = records[0]["op"]
        if op == "metrics":
            points = [Metric(k, v, ts, step) for r in records for k, v, ts, step in r["points"]]
            c.log_batch(run, metrics=points)
        elif op == "params":
            items = [Param(k, v) for k, v in records[0]["params"].items()]
            for i in range(0, len(items), 100):
                c.log_batch(run, params=items[i : i + 100])
        elif op == "tags":
            c.log_batch(run, tags=[RunTag(k, v) for k, v in records[0]["tags"].items()])
        elif op == "image":
            from PIL import Image

            r = records[0]
            c.log_image(run, np.asarray(Image.open(self.dir / r["blob"])), key=r["key"], step=r["step"],
                        timestamp=r["timestamp"])
        elif op == "artifact":
            c.log_artifact(run, str(self.dir / records[0]["blob"]), records[0]["artifact_path"])
        elif op == "dict":
            c.log_dict(run, records[0]["dict"], records[0]["artifact_file"])
        elif op == "dataset":
            from mlflow.entities import Dataset, DatasetInput, InputTag

            r = records[0]
            c.log_inputs(run, datasets=[DatasetInput(Dataset(**r["dataset"]),
                                                     [InputTag(k, v) for k, v in r["tags"].items()])])
        elif op == "status":
            r = records[0]
            if r["status"] == "RUNNING":
                c.update_run(run, status="RUNNING")
            else:
                c.set_terminated(run, r["status"], end_time=r["end_time"])
        else:
            raise ValueError(f"unknown spool record {op!r}")


# MLflow error codes that no retry can fix (the request itself is wrong): the record is dropped, with a warning.
REJECTED = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
            "INVALID_STATE", "PERMISSION_DENIED")


def rejected(e: BaseException) -> bool:
    return getattr(e, "error_code", None) in REJECTED


def take_batch(queue: deque | list) -> list[dict]:
    """The records the next send covers: a run of metric records (up to the batch limit), else one record."""
    first = queue[0]
    if first["op"] != "metrics":
        return [first]
    batch, n = [], 0
    for rec in queue:
        if rec["op"] != "metrics" or (batch and n + len(rec["points"]) > METRICS_PER_BATCH):
            break
        batch.append(rec)
        n += len(rec["points"])
    return batch


class Spool:
    """The spool of one live run: `put` from the training thread, sending on a daemon thread."""

    def __init__(self, root: Path, run_id: str, uri: str, client, warn: Callable[[str], None] | None = None):
        self.dir = Path(root) / run_id
        (self.dir / "blobs").mkdir(parents=True, exist_ok=True)
        self._lock_fd = file_lock(self.dir / "lock", blocking=True)  # a sync of this run waits for us, and we for it
        self.uri, self.run_id = uri, run_id
        _write_atomic(self.dir / "meta.json", json.dumps({"run_id": run_id, "uri": uri}) + "\n")
        self._sender = Sender(client, run_id, self.dir)
        self._warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._sent = _read_sent(self.dir)
        leftover = _read_records(self.dir / "ops.jsonl", self._sent)  # a killed process's unsent records go first
        self._queue: deque[dict] = deque(leftover)
        self._seq = max([self._sent] + [r["seq"] for r in leftover])
        self._file = open(self.dir / "ops.jsonl", "ab")  # noqa: SIM115 - open for the spool's lifetime
        self._bytes = self._file.tell()
        self._cv = threading.Condition()
        self._closing = self._stop = False
        self._down_since: float | None = None
        self._dirty = False
        self.counts = {"records": 0, "metric_points": 0, "replayed_records": 0, "replayed_metric_points": 0,
                       "dropped_records": 0, "rejected_records": 0, "leftover_records": len(leftover)}
        self._thread = threading.Thread(target=self._run, name=f"mlflow-spool-{run_id[:8]}", daemon=True)
        self._thread.start()

    # Training thread.
    def put(self, op: str, blobs: dict[str, Path | bytes] | None = None, **fields: Any) -> None:
        """Append one record. `blobs` (field -> source file or PNG bytes) are copied into the spool first."""
        with self._cv:
            if self._closing:
                return
            if self._bytes > MAX_BYTES:
                if not self.counts["dropped_records"]:
                    self._warn(f"WARNING: the MLflow spool {self.dir} holds {MAX_BYTES >> 20} MiB not yet sent; "
                               "new tracking records are dropped until the server answers")
                self.counts["dropped_records"] += 1
                return
            self._seq += 1
            rec = {"seq": self._seq, "op": op, **fields}
            for name, src in (blobs or {}).items():
                rel = Path("blobs") / str(self._seq) / (Path(src).name if isinstance(src, Path) else f"{name}.png")
                (self.dir / rel).parent.mkdir(parents=True, exist_ok=True)
                if isinstance(src, Path):
                    shutil.copyfile(src, self.dir / rel)
                else:
                    (self.dir / rel).write_bytes(src)
                rec[name] = str(rel)
            line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
            self._file.write(line)
            self._file.flush()  # in the kernel: survives a kill of this process
            self._bytes += len(line)
            self._dirty = True
            self.counts["records"] += 1
            if op == "metrics":
                self.counts["metric_points"] += len(fields["points"])
            self._queue.append(rec)
            self._cv.notify()

    def close(self, timeout: float) -> bool:
        """Send what is queued, waiting at most `timeout` s; True when everything reached the server."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._closing = True
            self._cv.notify()
            while self._queue and time.monotonic() < deadline:
                self._cv.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            done = not self._queue
            self._stop = True  # a send still waiting on the network finishes, or fails, without us
            self._cv.notify_all()
        self._thread.join(timeout=0.5)
        with self._cv:
            self._fsync()
            self._file.close()
            self.counts["pending_records"] = len(self._queue)
        if done:
            _remove(self.dir)
        os.close(self._lock_fd)
        return done

    # Sender thread.
    def _fsync(self) -> None:
        if self._dirty and not self._file.closed:
            os.fsync(self._file.fileno())
            self._dirty = False

    def _run(self) -> None:
        attempt, last_fsync = 0, time.monotonic()
        while True:
            with self._cv:
                if not self._queue and not self._closing and not self._stop:
                    self._cv.wait(timeout=FSYNC_SECONDS)
                if self._stop or (self._closing and not self._queue):
                    return
                sync = self._dirty and time.monotonic() - last_fsync >= FSYNC_SECONDS
                self._dirty = self._dirty and not sync
                batch = take_batch(self._queue) if self._queue else None
            if sync:  # outside the lock: `put` never waits on the disk
                with contextlib.suppress(OSError, ValueError):  # ValueError: closed meanwhile
                    os.fsync(self._file.fileno())
                last_fsync = time.monotonic()
            if batch is None:
                continue
            try:
                self._sender.send(batch)
            except Exception as e:  # noqa: BLE001 - any failure: keep the record, retry after a pause
                if rejected(e):
                    self._warn(f"WARNING: MLflow refused a {batch[0]['op']} record of run {self.run_id} "
                               f"({first_line(e)}); it is dropped")
                    self._delivered(batch, refused=True)
                    continue
                with self._cv:
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        self._warn(f"WARNING: MLflow at {self.uri} did not take a record ({type(e).__name__}: "
                                   f"{first_line(e)}); training goes on, records wait in {self.dir} and are "
                                   "replayed in order when it answers")
                    pause = BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)]
                    attempt += 1
                    self._cv.wait(timeout=pause)
                continue
            attempt = 0
            self._delivered(batch)

    def _delivered(self, batch: list[dict], refused: bool = False) -> None:
        """Bookkeeping after the server took (or refused) `batch`."""
        with self._cv:
            if refused:
                self.counts["rejected_records"] += len(batch)
            for _ in batch:
                self._queue.popleft()
            self._sent = batch[-1]["seq"]
            if self._down_since is not None:
                self.counts["replayed_records"] += len(batch)
                self.counts["replayed_metric_points"] += sum(len(r.get("points", ())) for r in batch)
            for r in batch:
                if "blob" in r:
                    shutil.rmtree(self.dir / Path(r["blob"]).parent, ignore_errors=True)
            _write_atomic(self.dir / "sent", f"{self._sent}\n")
            if not self._queue:
                if self._down_since is not None:
                    self._warn(f"MLflow at {self.uri} answers again: replayed "
                               f"{self.counts['replayed_records']} records in order")
                    self._down_since = None
                if self._bytes > (1 << 20) and not self._file.closed:  # all sent: start the file afresh
                    self._file.truncate(0)
                    self._file.seek(0)
                    self._bytes = 0
            self._cv.notify_all()


    def pending_steps(self, skip_prefix: str | None = None) -> list[int]:
        """The steps of the metric points not yet sent (but those of keys starting with `skip_prefix`)."""
        with self._cv:
            return [p[3] for r in self._queue if r["op"] == "metrics" for p in r["points"]
                    if not (skip_prefix and p[0].startswith(skip_prefix))]


def _remove(directory: Path) -> None:
    """Delete a run's spool once everything in it was sent (its holder still has the lock)."""
    shutil.rmtree(directory / "blobs", ignore_errors=True)
    for name in ("ops.jsonl", "sent", "meta.json"):
        (directory / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (directory / "lock").unlink()
        directory.rmdir()


def sync_dir(directory: Path, client_factory: Callable[[str], Any], uri: str | None = None) -> int | None:
    """Upload the unsent records of one run's spool, in order; remove the spool when done.
    Returns the number of records sent, or None when a live process holds the spool."""
    fd = file_lock(directory / "lock", blocking=False)
    if fd is None:
        return None
    try:
        meta = json.loads((directory / "meta.json").read_text())
        sent = _read_sent(directory)
        queue = _read_records(directory / "ops.jsonl", sent)
        sender = Sender(client_factory(uri or meta["uri"]), meta["run_id"], directory)
        n = 0
        while queue:
            batch = take_batch(queue)
            try:
                sender.send(batch)
            except Exception as e:  # noqa: BLE001
                if not rejected(e):
                    raise
                print(f"WARNING: MLflow refused a {batch[0]['op']} record of run {meta['run_id']} ({first_line(e)}); "
                      "it is dropped", file=sys.stderr)
            del queue[: len(batch)]
            n += len(batch)
            _write_atomic(directory / "sent", f"{batch[-1]['seq']}\n")
        _remove(directory)
        return n
    finally:
        os.close(fd)


def spool_dirs(root: Path, uri: str | None = None) -> list[Path]:
    """Run spools under `root` (those recorded for `uri` when given)."""
    found = []
    for d in sorted(Path(root).glob("*/meta.json")):
        with contextlib.suppress(OSError, ValueError):
            if uri is None or json.loads(d.read_text()).get("uri") == uri:
                found.append(d.parent)
    return found
