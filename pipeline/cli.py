"""Shared command-line plumbing for the stage entry points: params arguments and one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.config import Params, ParamsError, load_params

# Errors that are the user's to fix: printed as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ParamsError,)


def register_user_error(*errors: type[BaseException]) -> None:
    global USER_ERRORS
    USER_ERRORS = USER_ERRORS + errors


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one param (repeatable)")
    return p


def params_from(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.overrides)


def use_cpu_cores(acc, threads: int = 0) -> None:
    """On the CPU, give torch `threads` per process (0: the available cores / local processes). `accelerate launch`
    exports OMP_NUM_THREADS=1 on a machine without GPUs, which would leave all but one core idle."""
    import os

    import torch

    if acc.device.type == "cpu":
        local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // local_procs))


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call a stage's main; user errors exit 1 with their one-line message."""
    from pipeline.checkpoint import WeightsError
    from pipeline.data import DataError
    from pipeline.tracking import TrackingError

    try:
        main(argv)
    except (*USER_ERRORS, DataError, TrackingError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
