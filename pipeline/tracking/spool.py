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

from pipeline import fsutil
from pipeline.errors import first_line
from pipeline.tracking import auth, replay

MAX_BYTES = 512 * 2**20
FSYNC_SECONDS = 1.0
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)


class Spool:
    """The spool of one live run: `put` from the training thread, sending on a daemon thread."""

    def __init__(self, root: Path, run_id: str, uri: str, client, warn: Callable[[str], None] | None = None):
        self.dir = Path(root) / run_id
        (self.dir / "blobs").mkdir(parents=True, exist_ok=True)
        self._lock_fd = fsutil.file_lock(self.dir / "lock", blocking=True)  # a sync of this run waits for us, and we for it
        self.uri, self.run_id = uri, run_id
        fsutil.atomic_write_text(self.dir / "meta.json", json.dumps({"run_id": run_id, "uri": uri}) + "\n", durable=False)
        self._sender = replay.Sender(client, run_id, self.dir)
        self._warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._sent = replay.read_sent(self.dir)
        leftover = replay.read_records(self.dir / "ops.jsonl", self._sent)  # a killed process's unsent records go first
        self._queue: deque[dict] = deque(leftover)
        self._seq = max([self._sent] + [r["seq"] for r in leftover])
        self._file = open(self.dir / "ops.jsonl", "ab")  # noqa: SIM115 - open for the spool's lifetime
        self._bytes = self._file.tell()
        self._cv = threading.Condition()
        self._closing = self._stop = False
        self._down_since: float | None = None
        self.refused: str | None = None  # the server's 401/403: sending stops, the records stay for a later sync
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
            while self._queue and self.refused is None and time.monotonic() < deadline:
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
            replay.remove(self.dir)
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
                batch = replay.take_batch(self._queue) if self._queue else None
            if sync:  # outside the lock: `put` never waits on the disk
                with contextlib.suppress(OSError, ValueError):  # ValueError: closed meanwhile
                    os.fsync(self._file.fileno())
                last_fsync = time.monotonic()
            if batch is None:
                continue
            try:
                self._sender.send(batch)
            except Exception as e:  # noqa: BLE001 - any failure: keep the record, retry after a pause
                if (refusal := auth.refusal(e, self.uri, f"the tracking records of run {self.run_id}",
                                            "EDIT on the run's experiment")) is not None:
                    with self._cv:  # no retry fixes a password or a permission: stop, keep every record
                        self.refused = refusal
                        self.counts["refused"] = refusal
                        self._warn(f"WARNING: {refusal}. Training goes on; the records stay in {self.dir}: once "
                                   "that is fixed, upload them with gan-tracking sync")
                        self._cv.notify_all()
                        while not self._stop:
                            self._cv.wait()
                    return
                if replay.rejected(e):
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
            replay.write_sent(self.dir, self._sent)
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
