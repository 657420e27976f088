"""Refusals of an authenticated MLflow server (`mlflow server --app-name basic-auth`): who asked, and what for.

A 401 (no user, a wrong password, a deleted user) or a 403 (a permission the user lacks) is the user's to fix, so it
ends a stage in one line that names the user, the permission and the object, and is never retried. Credentials come
the way MLflow's client reads them (`config.CREDENTIALS_HELP`); this module reads only the user name, never the
password.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from pipeline.config.parse import CREDENTIALS_HELP, without_userinfo

CREDENTIALS_FILE = Path("~/.mlflow/credentials")


def username() -> str | None:
    """The MLflow user this process acts as, resolved as MLflow's client does: the env var, else the file."""
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return os.environ["MLFLOW_TRACKING_USERNAME"]
    parser = configparser.ConfigParser()
    try:
        parser.read(CREDENTIALS_FILE.expanduser())
    except configparser.Error:
        return None
    return parser.get("mlflow", "mlflow_tracking_username", fallback=None)


def refusal(e: BaseException, uri: str, what: str, needs: str) -> str | None:
    """One line for a 401 or 403 refusal of `what` (e.g. "moving the champion alias of dcgan-digits to v3"),
    naming the permission it `needs` (e.g. "EDIT on registered model dcgan-digits"); None for other failures."""
    code, server, who = getattr(e, "error_code", None), without_userinfo(uri), username()
    if code == "UNAUTHENTICATED":
        detail = f"user {who!r}: a wrong password, or a user that was deleted" if who else "no credentials were given"
        return f"MLflow at {server} refused {what}: 401 UNAUTHENTICATED ({detail}); {CREDENTIALS_HELP}"
    if code == "PERMISSION_DENIED":
        return (f"MLflow at {server} refused {what}: 403 PERMISSION_DENIED, user {who or 'anonymous'!r} lacks {needs}; "
                "an admin or a user with MANAGE on it grants that (docs/tracking.md)")
    return None
