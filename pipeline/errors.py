"""Every user-facing error of the pipeline, and the helpers that word them.

A `UserError` is the user's to fix (a param, a file, a server): `pipeline.commands.runner` prints its message as one
line and exits 1, with no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """The base of every error whose one-line message tells the user what to change."""


class Interrupted(Exception):
    """Ctrl-C: the message says where the stage stopped and how to resume (exit status 130, not 1)."""


# How an interrupted stage resumes: the command that ran it, whichever it was (`dvc repro`, `dvc exp run -S ...`).
RESUME_HINT = "run the same command again (dvc repro or dvc exp run) to resume"


class ParamsError(UserError, ValueError):
    """A params.yaml problem, with a one-line message naming the key."""


class DataError(UserError, RuntimeError):
    """A data source is missing, empty or unreadable, or the prepared data does not fit the params."""


class WeightsError(UserError, RuntimeError):
    """A weights file is missing, truncated, tampered with or does not fit its config."""


class TrackingError(UserError, RuntimeError):
    """The tracking server cannot be used and tracking is required."""


class PreflightError(UserError, RuntimeError):
    """A later stage would fail on these params; the message says what to change."""


class DivergenceError(UserError, RuntimeError):
    """A loss became NaN or inf."""


class MetricsError(UserError, RuntimeError):
    """An evaluation input cannot give the requested metrics; the message says what to change."""


class RegistryError(UserError, RuntimeError):
    """A registry request that cannot be carried out (unknown version, nothing to roll back to)."""


class ExportError(UserError, RuntimeError):
    """The inputs of the export stage are missing or disagree, or an exported file does not reproduce G."""


class SourceError(UserError, ValueError):
    """A generator source cannot be used: unknown kind, an unsafe archive, or a bad sampling option."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most `limit` characters: for a one-line error that wraps it."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""
