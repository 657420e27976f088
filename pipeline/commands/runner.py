"""The runner of every stage and `gan-*` command: params arguments, and the one place that decides how an error ends
the process (a `UserError` or a disk error: one line, status 1; Ctrl-C: one line, 130; anything else: a traceback).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from pipeline.config import Params, load_params
from pipeline.errors import RESUME_HINT, Interrupted, UserError

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
            fail(f"error: {e}", 1, report)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            fail(f"error: {disk_error_message(e)}", 1, report)
        raise
