"""Crash-safe training checkpoints (Accelerate `save_state` + EMA + loop state), one directory per fingerprint.

Layout: `<root>/<fingerprint>/step-NNNNNNN/`, with `<root>/<fingerprint>/latest` naming the newest complete one, so
switching between experiments (fingerprints of data/model/train params) and back resumes each. A checkpoint is
written to `step-N.tmp/`, fsynced, renamed to `step-N/`, and then `latest` is swapped atomically to name it: a crash
(or a full disk) mid-write never damages the last good checkpoint. Directories are deleted only after a rename out
of their name, so a kill mid-delete leaves no half checkpoint. At most MAX_FINGERPRINTS fingerprints are kept; the
least recently used goes first. Nothing here unpickles code: Accelerate loads with `weights_only=True`, and our own
state is safetensors plus JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from pipeline import fsutil
from pipeline.errors import WeightsError, first_line
from pipeline.nets.weights import load_weights
from pipeline.training.ema import EMA

MAX_FINGERPRINTS = 4  # fingerprint dirs kept under a checkpoints root, the one in use included
LAST_USED = "last-used"  # marker in each fingerprint dir: its mtime (set explicitly, in ns) is the last use
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_STEP = re.compile(r"step-\d{7}")


def _sweep(directory: Path) -> None:
    """Remove what an interrupted write or delete left in `directory` (`*.tmp`, `*.old`)."""
    for p in directory.glob("*"):
        if p.name.endswith((".tmp", fsutil.GONE)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.endswith((".tmp", fsutil.GONE)):
            p.unlink(missing_ok=True)


def _mark_used(home: Path) -> None:
    marker = home / LAST_USED
    marker.touch()
    now = time.time_ns()
    os.utime(marker, ns=(now, now))  # exact, unlike the coarse clock a plain touch stamps


def _last_used(home: Path) -> int:
    try:
        return (home / LAST_USED).stat().st_mtime_ns
    except OSError:
        return 0


def _fingerprint_dirs(root: Path) -> list[Path]:
    """The fingerprint dirs under `root`, most recently used first."""
    if not root.is_dir():
        return []
    homes = [p for p in root.iterdir() if p.is_dir() and _FINGERPRINT.fullmatch(p.name)]
    return sorted(homes, key=lambda p: (_last_used(p), p.name), reverse=True)


def fingerprints(root: str | Path) -> list[str]:
    """The fingerprints under `root` that have a checkpoint to resume, most recently used first."""
    return [h.name for h in _fingerprint_dirs(Path(root)) if latest_checkpoint(root, h.name) is not None]


def _steps(home: Path) -> list[Path]:
    """Complete checkpoints in `home`, oldest first."""
    return sorted(p for p in home.glob("step-*") if p.is_dir() and _STEP.fullmatch(p.name))


def _migrate_flat(root: Path) -> None:
    """Move an old flat layout (`<root>/step-N/`, `<root>/latest`) into `<root>/<fingerprint>/`. Idempotent, so a
    crash midway is finished by the next run; `<root>/latest` goes last. A step without a readable fingerprint
    is left where it is and ignored."""
    pointer = root / "latest"
    flat = [p for p in root.glob("step-*") if p.is_dir()]
    if not flat and not pointer.exists():
        return
    for p in flat:
        if not _STEP.fullmatch(p.name):  # step-N.tmp (torn) or step-N.old (half deleted)
            shutil.rmtree(p, ignore_errors=True)
            continue
        try:
            fp = json.loads((p / "loop.json").read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not (isinstance(fp, str) and _FINGERPRINT.fullmatch(fp)):
            continue
        (root / fp).mkdir(exist_ok=True)
        if (root / fp / p.name).exists():
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.replace(p, root / fp / p.name)
    for home in _fingerprint_dirs(root):
        steps = _steps(home)
        if steps and latest_checkpoint(root, home.name) is None:
            fsutil.atomic_write_text(home / "latest", steps[-1].name + "\n")
    fsutil.fsync(root)
    pointer.unlink(missing_ok=True)


def open_root(root: str | Path, fingerprint: str) -> None:
    """Main process, before a run looks for its checkpoint: migrate an old flat layout, clear what crashes left,
    and mark `fingerprint` as the most recently used, so `latest_checkpoint(root)` now means this run's."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _migrate_flat(root)
    _sweep(root)
    home = root / fingerprint
    home.mkdir(exist_ok=True)
    _sweep(home)
    _mark_used(home)


def _evict(root: Path, current: str) -> None:
    """Keep the MAX_FINGERPRINTS most recently used fingerprint dirs, `current` always among them. Dirs with no
    complete checkpoint (runs stopped before their first) hold nothing and go first."""
    others = [p for p in _fingerprint_dirs(root) if p.name != current]
    empty = [p for p in others if not _steps(p)]
    for home in empty + [p for p in others if p not in empty][MAX_FINGERPRINTS - 1:]:
        fsutil.discard(home)


def _as_os_error(e: Exception, path: Path) -> OSError | None:
    """The OSError behind a failed checkpoint write, with `path` as its file. safetensors reports it as
    "... (os error 28)"; torch.save's writer drops it ("unexpected pos ..."), so a probe write names the cause."""
    m = re.search(r"os error (\d+)", str(e))
    if m:
        n = int(m.group(1))
        return OSError(n, os.strerror(n), str(path))
    probe = path.parent / ".write-probe.tmp"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return OSError(err.errno, err.strerror, str(path))
    finally:
        probe.unlink(missing_ok=True)
    return None


def save_checkpoint(accelerator, root: str | Path, fingerprint: str, step: int, ema: EMA, loop_state: dict,
                    keep: int, files: dict[str, Path] | None = None) -> Path:
    """Collective: every process calls this. Writes `<root>/<fingerprint>/step-N/`, points `latest` at it, keeps the
    `keep` newest steps of this fingerprint and evicts fingerprints beyond MAX_FINGERPRINTS. `files` (name -> path)
    are copied in when they exist. A failed write (a full disk) removes its `.tmp` dir and raises the OSError; the
    previous checkpoint and `latest` stay as they were. Returns the final checkpoint directory."""
    root = Path(root)
    home = root / fingerprint
    final, tmp = home / f"step-{step:07d}", home / f"step-{step:07d}.tmp"
    main = accelerator.is_main_process
    try:
        if main:
            home.mkdir(parents=True, exist_ok=True)
            _sweep(home)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))  # models (safetensors), optimizers, RNG states per process
        accelerator.wait_for_everyone()
        if main:
            ema.save(tmp / "ema.safetensors")
            (tmp / "loop.json").write_text(json.dumps({"step": step, **loop_state}) + "\n")
            for name, src in (files or {}).items():
                if Path(src).exists():
                    shutil.copy2(src, tmp / name)
            fsutil.fsync_tree(tmp)
    except Exception as e:
        cause = e if isinstance(e, OSError) or not main else _as_os_error(e, tmp)
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if cause is None or cause is e:
            raise
        raise cause from e
    if main:
        fsutil.discard(final)  # a complete step-N that `latest` never named (a crash between rename and swap)
        os.replace(tmp, final)
        fsutil.fsync(home)
        fsutil.atomic_write_text(home / "latest", final.name + "\n")
        _mark_used(home)
        for old in _steps(home)[:-keep]:  # `final` sorts last, so it is always kept
            fsutil.discard(old)
        _evict(root, fingerprint)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(root: str | Path, fingerprint: str | None = None) -> Path | None:
    """The checkpoint a run of `fingerprint` resumes from, or None. Without a fingerprint: that of the most
    recently used one (the running one's, once it has called `open_root`), else an old flat layout's."""
    root = Path(root)
    if fingerprint is None:
        homes = _fingerprint_dirs(root)
        home = homes[0] if homes else root
    else:
        home = root / fingerprint
    try:
        name = (home / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    path = home / name
    return path if _STEP.fullmatch(name) and (path / "loop.json").exists() else None


def load_checkpoint(accelerator, path: str | Path, ema: EMA) -> dict:
    """Restore models, optimizers and RNG through Accelerate, and the EMA; return the loop state."""
    path = Path(path)
    accelerator.load_state(str(path))
    ema.load(path / "ema.safetensors")
    return json.loads((path / "loop.json").read_text())


def verify_checkpoint(path: str | Path) -> dict:
    """Read every file of a checkpoint without a model to load it into: safetensors, Accelerate's `weights_only`
    pickles, loop.json. Raises WeightsError naming the first unreadable file; returns the loop state."""
    from accelerate.utils import load

    path = Path(path)
    for pattern in ("loop.json", "ema.safetensors", "model*.safetensors", "optimizer*.bin"):
        if not any(path.glob(pattern)):
            raise WeightsError(f"checkpoint {path} has no {pattern}")
    f = path / "loop.json"
    try:
        state = json.loads(f.read_text())
        for f in sorted(path.iterdir()):
            if f.suffix in (".bin", ".pkl"):
                load(f)
    except (OSError, ValueError, RuntimeError, EOFError) as e:
        raise WeightsError(f"checkpoint file {f} is unreadable: {first_line(e)}") from None
    for f in sorted(path.glob("*.safetensors")):
        load_weights(f)
    if not isinstance(state, dict) or "step" not in state:
        raise WeightsError(f"checkpoint {path} has no step in loop.json")
    return state
