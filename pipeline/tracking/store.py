"""Where the MLflow store is, and keeping a local one healthy.

A relative `sqlite:///` store resolves against the main repository's root, also inside DVC's temporary experiment
copies (`.dvc/tmp/exps/...`), so a queued experiment's run is never thrown away with its copy. A new local store is
created atomically; one left half-initialised (by a kill during MLflow's table set-up, in older versions) is set
aside when it holds no runs. SQLite's "database is locked", met when concurrent experiments share a store, is retried
with bounded backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline import fsutil
from pipeline.config.parse import userinfo_problem, without_userinfo
from pipeline.errors import TrackingError, first_line

SPOOL_DIR = ".tracking-spool"  # under the main repository's root
SQLITE = "sqlite:///"
# MLflow logs "Creating initial MLflow database tables..." and "Updating database tables" at INFO here: not the user's
# to act on, so a new store is created with this logger at WARNING.
MLFLOW_DB_LOGGER = "mlflow.store.db.utils"


def repo_root(start: str | Path | None = None) -> Path:
    """The main repository's root: above DVC's temporary experiment copies (`<root>/.dvc/tmp/exps/...`), else the
    nearest ancestor holding `.dvc` or `.git`, else the working directory."""
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(1, len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return next((d for d in (here, *here.parents) if (d / ".dvc").is_dir() or (d / ".git").exists()), here)


def resolve_uri(uri: str) -> str:
    """A relative `sqlite:///` store resolves against the main repository's root; other URIs are unchanged. A URI
    with credentials in it (from a command line or MLFLOW_TRACKING_URI) is refused: see `config.userinfo_problem`."""
    if (problem := userinfo_problem(uri)) is not None:
        raise TrackingError(f"tracking URI {without_userinfo(uri)} {problem}")
    path = uri[len(SQLITE):] if uri.startswith(SQLITE) else None
    if path is None or path.startswith("/") or path == ":memory:":
        return uri
    return SQLITE + str(repo_root() / path)


def sqlite_file(uri: str) -> Path | None:
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) and uri[len(SQLITE):].startswith("/") else None


def spool_root() -> Path:
    return repo_root() / SPOOL_DIR


def locked(e: BaseException) -> bool:
    return "database is locked" in str(e)


def _conflict(e: BaseException) -> bool:
    return getattr(e, "error_code", None) == "RESOURCE_ALREADY_EXISTS" or "UNIQUE constraint failed" in str(e)


def retry_locked(fn: Callable[[], Any], seconds: float = 60.0) -> Any:
    """Call `fn`, retrying SQLite's "database is locked" (concurrent experiments share one store) with bounded
    backoff; any other error, or a lock held past `seconds`, is raised."""
    deadline, pause = time.monotonic() + seconds, 0.05
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - only the lock is retried
            if not locked(e) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(2.0, pause * 2)


def prepare_store(uri: str) -> None:
    """Create a new local SQLite store atomically: initialised under a temporary name, then linked into place, so
    a kill during MLflow's table set-up never leaves a half-initialised store behind."""
    path = sqlite_file(uri)
    if path is None or path.exists():
        return
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.init-*"):  # left by a creation that was killed
        pid = stale.name.split(".init-", 1)[1].split("-")[0]  # .mlflow.db.init-PID, or its -journal
        if not pid.isdigit() or not fsutil.alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.init-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    with _quiet(MLFLOW_DB_LOGGER):
        MlflowClient(tracking_uri=SQLITE + str(tmp)).search_experiments(max_results=1)  # runs the migrations
    forget_engine(SQLITE + str(tmp))
    with contextlib.suppress(FileExistsError):  # another process won the race: use its store
        os.link(tmp, path)
    tmp.unlink()


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """`logger_name` at WARNING for the block: its INFO lines are dropped, its warnings and errors still shown."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def forget_engine(uri: str) -> None:
    """Close MLflow's cached SQLAlchemy engine for `uri` (it keeps the old file open across a move)."""
    with contextlib.suppress(Exception):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore._engine_map.pop(uri).dispose()


def repair_store(uri: str, error: BaseException) -> bool:
    """After `error` on a local SQLite store: a store with no runs (one left half-initialised by a kill during its
    creation, in older versions) is moved aside and True returned, so it is created afresh; a damaged store with runs
    is named. A conflict (a concurrent experiment created the same thing first) or a lock is no sign of damage: the
    store another process is using is never moved."""
    path = sqlite_file(uri)
    if path is None or not path.exists() or locked(error) or _conflict(error):
        return False
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.Error:
        runs = 0
    if runs:
        raise TrackingError(f"the MLflow store {path} holds {runs} runs but cannot be opened ({type(error).__name__}: "
                            f"{first_line(error)}); it may be from another MLflow version or damaged. Back it up, "
                            f"then run: mlflow db upgrade {uri}")
    aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    forget_engine(uri)
    print(f"WARNING: the MLflow store {path} was left half-initialised (no runs in it; {first_line(error)}); "
          f"moved it to {aside.name} and created a new one", file=sys.stderr)
    return True


def existing_store(uri: str) -> str:
    """`uri` resolved, refusing a local SQLite store that does not exist: commands that only read (`gan-registry
    show`, `gan-generate`) must not leave an empty store behind, as opening one with MLflow would."""
    uri = resolve_uri(uri)
    path = sqlite_file(uri)
    if path is not None and not path.exists():
        raise TrackingError(f"no MLflow store at {path}: nothing was tracked or registered there; run the pipeline "
                            "first, or name the store with --tracking-uri or MLFLOW_TRACKING_URI")
    return uri
