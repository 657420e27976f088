"""CPU threads for the processes of a run and for trainings that share a machine (`dvc queue start -j 2`, a test
suite beside a run).

Oversubscribed cores collapse torch on the CPU: OpenMP threads spin waiting for each other (STACK-NOTES measured
17-360 img/s for four 2-thread trainings on 2 cores, against 650-1000 for one alone). So each training process
takes its share: it holds a claim file, locked for its lifetime, in a machine-wide directory, counts the live
claims, and takes cores // claims threads. `rebalance()`, called at each log tick, follows trainings that start
or end later. A pinned `train.cpu_threads` is never changed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from pathlib import Path

from pipeline import fsutil

CLAIMS_ENV = "GAN_PIPELINE_CPU_CLAIMS"  # the claims directory; default: one per machine, in the temporary directory
SETTLE_SECONDS = 0.3  # trainings that start together see each other's claims


class CoreShare:
    """This process's claim on the machine's cores."""

    def __init__(self, cores: int, claims: Path):
        self.cores, self.claims = cores, claims
        claims.mkdir(parents=True, exist_ok=True)
        self._path = claims / str(os.getpid())
        self._fd = fsutil.file_lock(self._path)  # held until this process ends, however it ends
        time.sleep(SETTLE_SECONDS)
        self.threads = 0

    def live(self) -> int:
        """Processes holding a claim now (this one included); stale claims of dead processes are removed."""
        n = 0
        for path in self.claims.iterdir():
            if path == self._path:
                n += 1
                continue
            with contextlib.suppress(OSError):
                fd = fsutil.file_lock(path, blocking=False)
                if fd is None:
                    n += 1  # its owner is alive
                else:
                    path.unlink(missing_ok=True)
                    os.close(fd)
        return n

    def release(self) -> None:
        self._path.unlink(missing_ok=True)
        os.close(self._fd)

    def share(self) -> tuple[int, int]:
        """(threads, trainings): this process's share of the cores, and how many trainings share them."""
        n = self.live()
        return max(1, self.cores // n), n


_share: CoreShare | None = None


def claim(cores: int) -> tuple[int, int]:
    """Claim this process's share of `cores`; returns (threads, trainings sharing the machine)."""
    global _share
    if _share is None:
        _share = CoreShare(cores, Path(os.environ.get(CLAIMS_ENV) or Path(tempfile.gettempdir()) /
                                       "gan-pipeline-cpu-claims"))
    threads, n = _share.share()
    _share.threads = threads
    return threads, n


def rebalance() -> None:
    """Follow the trainings that started or ended since the last call (no-op unless `claim` ran)."""
    import torch

    if _share is None:
        return
    threads, n = _share.share()
    if threads != _share.threads:
        _share.threads = threads
        torch.set_num_threads(threads)
        print(f"cpu: now {threads} threads of {_share.cores} cores ({n} training processes share this machine)",
              flush=True)


def release() -> None:
    """Give the claim back (a training that ends inside a longer-lived process: tests, notebooks)."""
    global _share
    if _share is not None:
        _share.release()
        _share = None


def releasing(fn):
    """Decorator: the claim taken while `fn` runs (through its Accelerator) is given back when it returns or fails."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release()

    return wrapper


def use_cpu_cores(acc, threads: int = 0) -> None:
    """On the CPU, give torch `threads` per process, or (0) this process's share of the machine's cores: the
    processes of one run and concurrent experiments split them (see `claim`), and each says what it took.
    (`accelerate launch` exports OMP_NUM_THREADS=1 on a machine without GPUs, which would leave cores idle.)"""
    import torch

    if acc.device.type != "cpu":
        return
    total = len(os.sched_getaffinity(0))
    if threads:
        how = "pinned by train.cpu_threads"
    else:
        threads, n = claim(total)
        how = f"{n} training process(es) share this machine"
    torch.set_num_threads(threads)
    acc.print(f"cpu: {threads} threads of {total} cores ({how})", flush=True)
