"""Credentials and refusals of an authenticated server, without one: credentials never in a URI (refused in one
line that does not repeat the password), 401/403 worded as what to fix, a refusing server's records kept for
`gan-tracking sync`, the served model's request limits, and the champion settling through the registry."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED
from test_spool import FlakyClient

from pipeline.config import ParamsError, parse_params
from pipeline.errors import TrackingError
from pipeline.export.pyfunc_model import as_latents
from pipeline.tracking import auth, replay, store
from pipeline.tracking import spool as spooling

SECRET = "s3cret-Pa55word"


def test_a_password_in_tracking_uri_is_refused_without_repeating_it():
    with pytest.raises(ParamsError) as err:
        parse_params({"tracking": {"uri": f"http://editor:{SECRET}@mlflow.lan:5000"}})
    msg = str(err.value)
    assert "tracking.uri must not carry credentials" in msg and "MLFLOW_TRACKING_USERNAME" in msg
    assert "http://mlflow.lan:5000" in msg and SECRET not in msg and "editor" not in msg
    with pytest.raises(TrackingError) as err:  # a command line's --tracking-uri, or MLFLOW_TRACKING_URI
        store.resolve_uri(f"https://editor:{SECRET}@mlflow.lan/")
    assert SECRET not in str(err.value) and "~/.mlflow/credentials" in str(err.value)
    assert store.resolve_uri("http://mlflow.lan:5000") == "http://mlflow.lan:5000"


def test_gan_registry_with_a_password_in_the_uri_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.commands.registry", "--name", "m", "--tracking-uri",
                          f"http://u:{SECRET}@127.0.0.1:9", "show"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "must not carry credentials" in out.stderr and SECRET not in out.stderr


def test_refusals_name_the_user_the_permission_and_the_object(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    anonymous = MlflowException("You are not authenticated.", error_code=UNAUTHENTICATED)
    line = auth.refusal(anonymous, "http://h:5000", "opening this stage's run", "EDIT on experiment 'x'")
    assert line.startswith("MLflow at http://h:5000 refused opening this stage's run: 401 UNAUTHENTICATED")
    assert "no credentials were given" in line and "MLFLOW_TRACKING_PASSWORD" in line
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = reader\nmlflow_tracking_password = {SECRET}\n")
    assert auth.username() == "reader"
    denied = MlflowException("Permission denied", error_code=PERMISSION_DENIED)
    line = auth.refusal(denied, "http://h:5000", "moving the champion alias of m to v3", "EDIT on registered model 'm'")
    assert "403 PERMISSION_DENIED, user 'reader' lacks EDIT on registered model 'm'" in line and SECRET not in line
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "editor")  # the env var wins, as in MLflow's client
    assert "user 'editor': a wrong password" in auth.refusal(anonymous, "http://h", "x", "y")
    assert auth.refusal(ConnectionError("down"), "http://h", "x", "y") is None


class RefusingClient(FlakyClient):
    """A server that answers 403 to this user until `grant()`."""

    def __init__(self):
        super().__init__()
        self.allowed = False

    def _take(self, *what):
        if not self.allowed:
            raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)
        self.taken.append(what)


def test_a_refusing_server_keeps_the_records_for_a_later_sync(tmp_path):
    client, warnings = RefusingClient(), []
    sp = spooling.Spool(tmp_path, "run1", "http://h:5000", client, warn=warnings.append)
    for step in range(3):
        sp.put("metrics", points=[["loss", float(step), 1, step]])
    t0 = time.monotonic()
    assert sp.close(timeout=30) is False
    assert time.monotonic() - t0 < 5  # no waiting out the timeout, no retry loop
    assert "403 PERMISSION_DENIED" in sp.counts["refused"] and sp.counts["pending_records"] == 3
    assert sum("403 PERMISSION_DENIED" in w for w in warnings) == 1 and "gan-tracking sync" in warnings[0]
    assert client.taken == [] and sp.counts["rejected_records"] == 0  # nothing dropped
    with pytest.raises(MlflowException):  # a sync before the grant fails, and keeps them
        replay.sync_dir(tmp_path / "run1", lambda uri: client)
    client.allowed = True
    assert replay.sync_dir(tmp_path / "run1", lambda uri: client) == 3
    assert [w[2] for w in client.taken] == [0.0, 1.0, 2.0] and not (tmp_path / "run1").exists()


def test_served_latents_are_checked_before_any_work():
    z = np.zeros((3, 4), np.float32)
    assert as_latents(z, max_batch=3).shape == (3, 4)
    with pytest.raises(ValueError, match=r"at most 2 latents \(export.max_batch\), got 3"):
        as_latents(z, max_batch=2)
    z[2, 1] = np.inf
    with pytest.raises(ValueError, match="must be finite, got NaN or inf in row 2"):
        as_latents(z)
    with pytest.raises(ValueError, match="must be numbers"):
        as_latents([["a", "b"]])
    with pytest.raises(ValueError, match=r"\(N, z_dim\) with N >= 1, got shape \(0,\)"):
        as_latents([])
