"""Filesystem primitives for crash-safe outputs: fsync, atomic replace, rename-then-delete, flock, pid liveness.

Locks are `flock`s on an open descriptor, so the OS releases them when the holder dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

GONE = ".old"  # suffix of a directory renamed away for deletion; `.tmp` marks one still being written


def fsync(path: Path) -> None:
    """Flush a file or a directory (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(top: Path) -> None:
    """Every file under `top`, then every directory (bottom-up), so a power loss after a rename finds them whole."""
    for dirpath, _, names in os.walk(top, topdown=False):
        for name in names:
            fsync(Path(dirpath) / name)
        fsync(Path(dirpath))


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """Replace `path` by `text` in one rename: a reader sees the old file or the new one, never a torn one.
    `durable` also fsyncs the file and its directory, so the new content survives a power loss."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync(path.parent)


def discard(path: Path) -> None:
    """Delete a directory without ever leaving a partial one under its name: rename it away, then remove it."""
    if not path.exists():
        return
    gone = path if path.name.endswith((".tmp", GONE)) else path.with_name(path.name + GONE)
    if gone != path:
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def file_lock(path: Path, blocking: bool = True) -> int | None:
    """An exclusive flock on `path`, created if needed: its descriptor (close it to release), or None when another
    process holds it and `blocking` is false."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
