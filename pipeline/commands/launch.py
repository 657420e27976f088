"""`python -m pipeline.commands.launch [accelerate launch options] -m stages.X [stage args]`: Accelerate's own launcher
(`accelerate launch`, run in this process) with the stage's params checked, and for the train stage the cross-stage
pre-flight (pipeline.training.preflight) run, before any process starts. A failure is reported once, as the stage's one line:
no launcher traceback, and the stage's exit status (1 for a user error, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.commands import runner

TRAIN = "stages.train"
MODULE_FLAGS = ("-m", "--module")


def split_stage(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """`[launcher options] -m MODULE [stage args]` -> (launcher options, MODULE, stage args); without `-m MODULE`,
    (argv, None, [])."""
    for i, arg in enumerate(argv[:-1]):
        if arg in MODULE_FLAGS and not argv[i + 1].startswith("-"):
            return argv[:i], argv[i + 1], argv[i + 2:]
    return argv, None, []


def machine_rank(launcher_args: list[str]) -> int:
    """--machine_rank N (0 when not given): of several machines' launchers, only machine 0's reports an error."""
    for i, arg in enumerate(launcher_args):
        if arg.startswith("--machine_rank="):
            return int(arg.split("=", 1)[1])
        if arg == "--machine_rank" and i + 1 < len(launcher_args):
            return int(launcher_args[i + 1])
    return 0


def check_stage(stage: str, stage_args: list[str]) -> None:
    """Load the stage's params as the stage will (--params, --set), and run the train stage's pre-flight; raise the
    user error the stage would raise."""
    if "-h" in stage_args or "--help" in stage_args:
        return
    p = runner.add_params_args(argparse.ArgumentParser(add_help=False, allow_abbrev=False))
    p.add_argument("--prepared", type=Path)
    p.add_argument("--classifier", type=Path)
    args, _ = p.parse_known_args(stage_args)
    params = runner.params_from(args)
    if stage == TRAIN:
        from pipeline.training import preflight

        preflight.check(params, args.prepared, args.classifier)
        os.environ[preflight.DONE_ENV] = "1"  # the stage's processes need not check again


def _wait_for_stage(signum: int, frame) -> None:
    """Ctrl-C reached every process of the foreground group: the stage's processes stop on their own, report where,
    and exit 130, which the launcher then passes on. (A Python handler, unlike SIG_IGN, is not inherited by them.)"""


def exit_status(e: BaseException) -> int:
    """The failed stage's exit status from the launcher's exception (a signal N as 128 + N, as a shell does)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(e, subprocess.CalledProcessError):
        code = e.returncode
    elif isinstance(e, ChildFailedError):
        # The launcher SIGTERMs the ranks still running once one fails, and lists them as failed too: the status is
        # that of the rank that failed on its own, global rank 0's where it did.
        own = {rank: f.exitcode for rank, f in e.failures.items() if f.exitcode != -signal.SIGTERM} or {
            rank: f.exitcode for rank, f in e.failures.items()}
        code = own.get(0, own[min(own)])
    else:  # SignalException: the launcher itself was sent SIGTERM, SIGHUP or SIGQUIT
        code = -int(e.sigval)
    return 128 - code if code < 0 else code or 1


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    launcher_args, stage, stage_args = split_stage(argv)
    if stage is not None:
        runner.run(lambda _: check_stage(stage, stage_args), report=machine_rank(launcher_args) == 0)

    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(argv)
    if not (os.environ.get("LOGLEVEL") or args.debug):
        # The launcher's log notes would come on top of the stage's one line: accelerate's "values were not passed"
        # list, torch.distributed.elastic's "failed (exitcode: 1)" per worker. Its result is the exit status.
        # LOGLEVEL (torch's switch) or --debug keeps them.
        logging.disable(logging.CRITICAL)
    # Ctrl-C goes to the stage's processes only; torch.distributed.elastic would otherwise turn it into a SIGINT of
    # its own to each worker and a SignalException here.
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGHUP,SIGQUIT")
    signal.signal(signal.SIGINT, _wait_for_stage)
    try:
        launch_command(args)
    except (subprocess.CalledProcessError, ChildFailedError, SignalException) as e:
        sys.exit(exit_status(e))  # the stage printed its own line (or its traceback, for a bug)


if __name__ == "__main__":
    runner.run(main)
