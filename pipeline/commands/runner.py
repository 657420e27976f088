"""The runner of every stage and `gan-*` command: params arguments, and the one place that decides how an error ends
the process (a `UserError` or a disk error: one line, status 1; Ctrl-C: one line, 130; anything else: a traceback).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from pipeline.config import Params, load_params, yaml12
from pipeline.errors import RESUME_HINT, Interrupted, ParamsError, PreflightError, UserError

# Full disk or quota, a file-size limit, read-only filesystem, no permission: the user's to fix, so one line too. Other OSErrors keep
# their traceback.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES})
INTERRUPTED, INTERRUPTED_EXIT = f"interrupted; {RESUME_HINT}", 130  # 128 + SIGINT, as a shell reports it
# How long a rank other than 0 waits before reporting an error itself: rank 0, failing the same way, reports it and
# the launcher then stops the other ranks (it polls every 0.1 s), so one line comes out, not N.
PEER_GRACE_S = 3.0
_disk_note: Callable[[], str | None] | None = None


def on_disk_error(note: Callable[[], str | None]) -> None:
    """`note()` is appended to the one line of a disk error (e.g. where the last good checkpoint is)."""
    global _disk_note
    _disk_note = note


def add_params_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one param (repeatable)")
    return p


def parser(description: str) -> argparse.ArgumentParser:
    return add_params_args(argparse.ArgumentParser(description=description))


def params_from(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.overrides)


def disk_error_message(e: OSError) -> str:
    what = "cannot access" if e.errno == errno.EACCES else "cannot write"  # EACCES may come from a read
    line = f"{what} {e.filename}: {e.strerror}" if e.filename else f"{what}: {e.strerror}"
    note = _disk_note() if _disk_note is not None else None
    return f"{line}; {note}" if note else line


def reporting_rank() -> bool:
    """Whether this process reports errors at once: the only one, or global rank 0 of several."""
    return os.environ.get("RANK", "0") in ("", "0")


def fail(line: str, code: int = 1, report: bool = True) -> NoReturn:
    """Print `line` and exit with `code`. Another rank first waits PEER_GRACE_S: an error every rank meets is then
    reported by rank 0 alone (the launcher stops this process meanwhile), and one met by this rank alone still is."""
    if report and not reporting_rank():
        time.sleep(PEER_GRACE_S)
        line = f"{line} (rank {os.environ['RANK']})"
    if report:
        print(line, file=sys.stderr, flush=True)
    sys.exit(code)


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None, report: bool = True) -> None:
    """Call a stage's main; user errors exit 1 with their one-line message, Ctrl-C exits 130 with one line.
    `report=False` exits with the same status silently."""
    try:
        main(argv)
    except Interrupted as e:
        fail(str(e), INTERRUPTED_EXIT, report)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not turn the one line into a traceback
        fail(INTERRUPTED, INTERRUPTED_EXIT, report)
    except Exception as e:
        if isinstance(e, UserError):
            note = experiment_note(e)
            fail(f"error: {e}" + (f"\n{note}" if note else ""), 1, report)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            fail(f"error: {disk_error_message(e)}", 1, report)
        raise


def experiment_note(e: UserError, params_file: str | Path = "params.yaml") -> str | None:
    """Under `dvc exp run` in the workspace, the line that follows a refusal: DVC wrote the experiment's values (-S)
    into params.yaml and leaves them there after a failure, so the next experiment would start from them. Names the
    changed keys the message names (any changed key for a params or pre-flight refusal), with the baseline's values.
    None outside an experiment, in a queued or temporary one (its copy is thrown away), or when nothing changed."""
    if not os.environ.get("DVC_EXP_NAME") or ".dvc/tmp/exps" in Path.cwd().as_posix():
        return None
    changed = _changed_params(Path(params_file), os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD")
    if changed is None:
        return (f"note: dvc exp run leaves the refused values in {params_file}, and the next experiment starts from "
                f"them: restore it with `git checkout {params_file}` (this drops any edit of yours in it too)")
    named = {k: v for k, v in changed.items() if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", str(e))}
    if not named and isinstance(e, (ParamsError, PreflightError)):
        named = changed
    if not named:
        return None
    now = ", ".join(f"{k}={_yaml_value(new)}" for k, (_, new) in named.items())
    back = " ".join(f"-S {shlex.quote(f'{k}={_yaml_value(old)}')}" for k, (old, _) in named.items())
    return (f"note: dvc exp run left {now} in {params_file}, and the next experiment starts from it: restore the "
            f"committed values with `dvc exp run {back}`, or `git checkout {params_file}`")


_MISSING = object()


def _changed_params(path: Path, rev: str) -> dict[str, tuple[Any, Any]] | None:
    """{section.key: (value at git revision `rev`, value now)} for the keys that differ; None when either file
    cannot be read (no git, no such revision, not YAML)."""
    try:
        before = subprocess.run(["git", "show", f"{rev}:./{path.as_posix()}"], capture_output=True, text=True,
                                timeout=10, check=True).stdout
        old, new = yaml12.load(before, str(path)), yaml12.load(path.read_text(encoding="utf-8"), str(path))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    flat_old, flat_new = _flatten(old), _flatten(new)
    return {k: (flat_old.get(k), flat_new.get(k)) for k in sorted(flat_old.keys() | flat_new.keys(), key=str)
            if flat_old.get(k, _MISSING) != flat_new.get(k, _MISSING)}


def _flatten(raw: dict) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, keys in raw.items() if isinstance(keys, dict)
            for key, value in keys.items()}


def _yaml_value(value: Any) -> str:
    """A value as `dvc exp run -S` reads it back (YAML flow)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(_yaml_value, value)) + "]"
    return str(value)
