"""Reading a run's spool back and sending its records to MLflow: by the live spool's thread, by the next stage for
a spool a killed process left, and by `gan-tracking sync`.

Records go out in order; metric points are coalesced into batches (`take_batch`). A record MLflow refuses for good
(`REJECTED`) is dropped with a warning; any other failure, a 401 or 403 included, stops the replay, and the spool
keeps the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import fsutil
from pipeline.errors import first_line

METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


def read_records(ops: Path, after: int) -> list[dict]:
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


def read_sent(directory: Path) -> int:
    try:
        return int((directory / "sent").read_text())
    except (OSError, ValueError):
        return 0


def write_sent(directory: Path, seq: int) -> None:
    """Record that the server took every record up to `seq`."""
    fsutil.atomic_write_text(directory / "sent", f"{seq}\n", durable=False)


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
# A 401 or 403 is not among them: the records are fine, the user's password or permission is not (tracking.auth),
# so they stay in the spool for `gan-tracking sync` once that is fixed.
REJECTED = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
            "INVALID_STATE")


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


def remove(directory: Path) -> None:
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
    fd = fsutil.file_lock(directory / "lock", blocking=False)
    if fd is None:
        return None
    try:
        meta = json.loads((directory / "meta.json").read_text())
        sent = read_sent(directory)
        queue = read_records(directory / "ops.jsonl", sent)
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
            write_sent(directory, batch[-1]["seq"])
        remove(directory)
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
