"""A team's setup, real parts: `dvc repro` tracked to one `mlflow server --app-name basic-auth` on PostgreSQL
(checked through its REST API) as a member with EDIT, then the outputs shared through a DVC remote with a second
clone that has nothing to re-run. Who may do what: an anonymous client, a wrong password and a READ-only member are
refused in one line; no password is kept in anything the pipeline or the server writes; and two exporters on
different machines, racing for the champion alias, leave it on the better version."""

from __future__ import annotations

import base64
import csv
import json
import os
import pwd
import queue
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, TINY_PIPELINE, dvc_repo, free_port, run_ok, start_mlflow_server

pytestmark = pytest.mark.slow

MODEL = "dcgan-digits"  # params.yaml's export.model_name
SHARED = ("models/generator_ema.safetensors", "metrics/eval.json", "export/generator.safetensors")
USER_VAR, PASSWORD_VAR = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
MEMBERS = ("editor", "reader")  # besides the admin; each with a password generated per server


def _pg_bin() -> Path:
    """The newest Debian PostgreSQL's bin/ (initdb, pg_ctl, createdb); skips where it is absent, fails under CI."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("initdb")).resolve().parent
    message = "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
    if os.environ.get("CI"):  # as tests/test_extractors.py: CI installs it (.ci/run), so it must not skip
        pytest.fail(message + " (CI is set, so this test may not be skipped)")
    pytest.skip(message)


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run `cmd` as the `postgres` user the Debian package creates."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1 with the databases `mlflow` (runs, registry) and `mlflow_auth`
    (the auth app's users and permissions): the first one's SQLAlchemy URI."""
    bin_dir = _pg_bin()
    # Not under pytest's tmp_path: its parents are root-only (0700), and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="team-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres", group=pwd.getpwnam("postgres").pw_gid)
    data, port = base / "data", free_port()
    log = base / "postgres.log"
    t0 = time.perf_counter()
    try:
        subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                     "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
        started = subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                               "-t", "60", "-o", options, "start"]), capture_output=True, text=True)
        assert started.returncode == 0, f"pg_ctl start failed:\n{started.stderr}\n{log.read_text()[-2000:]}"
        for db in ("mlflow", "mlflow_auth"):
            subprocess.run(_as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                         "postgres", db]), check=True, capture_output=True)
        print(f"\npostgres: initdb + start + createdb in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        # The driver is explicit: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not psycopg2.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Team:
    """The authenticated server: its URL, its artifact folder, and the password generated for each user."""

    url: str
    artifacts: Path
    passwords: dict[str, str] = field(repr=False)  # admin, editor, reader; not in a failing test's report

    def env(self, base: dict[str, str], user: str | None, password: str | None = None) -> dict[str, str]:
        """`base` acting as `user` (its own password unless `password` is given), or anonymously (None), through
        the env vars MLflow's client reads first (an anonymous caller also needs a HOME without
        ~/.mlflow/credentials)."""
        env = {k: v for k, v in base.items() if k not in (USER_VAR, PASSWORD_VAR)}
        if user is not None:
            env |= {USER_VAR: user, PASSWORD_VAR: password or self.passwords[user]}
        return env


def _auth_ini(path: Path, database_uri: str, admin_password: str) -> Path:
    """The auth app's config: nobody may do anything unless granted (creators get MANAGE on what they create).
    The credential cache spares each request a PBKDF2 check (about 0.4 s on a busy 2-core machine)."""
    path.write_text("[mlflow]\n"
                    "default_permission = NO_PERMISSIONS\n"
                    f"database_uri = {database_uri}\n"
                    "admin_username = admin\n"
                    f"admin_password = {admin_password}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    "auth_cache_ttl_seconds = 600\n")
    return path


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`mlflow server --app-name basic-auth` on the PostgreSQL store (users and permissions in the cluster's second
    database), serving artifacts from a local folder, with the members `editor` and `reader`: a `Team`."""
    store = tmp_path_factory.mktemp("mlflow-server")
    passwords = {user: secrets.token_urlsafe(18) for user in ("admin", *MEMBERS)}
    ini = _auth_ini(store / "auth.ini", postgres.rpartition("/")[0] + "/mlflow_auth", passwords["admin"])
    t0 = time.perf_counter()
    proc = start_mlflow_server(store, port := free_port(), backend_store_uri=postgres, app_name="basic-auth",
                               env={"MLFLOW_AUTH_CONFIG_PATH": str(ini),
                                    "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})
    print(f"\nmlflow basic-auth server on postgres: /health after {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    try:
        team = Team(f"http://127.0.0.1:{port}", store / "artifacts", passwords)
        for user in MEMBERS:
            _admin(team, "POST", "users/create", {"username": user, "password": passwords[user]})
        yield team
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def team_repo(server, tmp_path_factory):
    """The whole pipeline reproduced once against the server as the member with EDIT, and committed: (root, env),
    `env` acting as that member."""
    overrides = {**TINY_PIPELINE, "export": {"onnx": False}, "tracking": {"uri": server.url}}
    root, env = dvc_repo(tmp_path_factory.mktemp("member-a"), overrides)
    env = server.env(env, "editor")
    t0 = time.perf_counter()
    log = run_ok([sys.executable, "-m", "dvc", "repro"], root, env)
    print(f"\ndvc repro against the server: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for stage in ("prepare", "classifier", "train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in log, stage
    return root, env


def _admin(team: Team, method: str, endpoint: str, body: dict | None = None, api: str = "2.0",
           **query: str) -> dict:
    """`endpoint` of the server's REST API (/api/`api`/mlflow/...) as the admin, as JSON: no MLflow client,
    and no credentials left in this process's environment."""
    token = base64.b64encode(f"admin:{team.passwords['admin']}".encode()).decode()
    request = urllib.request.Request(
        f"{team.url}/api/{api}/mlflow/{endpoint}?{urllib.parse.urlencode(query)}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{method} {endpoint} {body or query}: {e.code} {e.read()[:500]!r}") from None


def _api(team: Team, endpoint: str, **query: str) -> dict:
    """GET /api/2.0/mlflow/`endpoint` as JSON, read as the admin."""
    return _admin(team, "GET", endpoint, **query)


def _grant(team: Team, user: str, resource_type: str, resource_id: str, permission: str) -> None:
    _admin(team, "POST", "users/permissions/grant", {"username": user, "resource_type": resource_type,
                                                     "resource_id": resource_id, "permission": permission},
           api="3.0")


def _refused(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run `cmd`, which must end in exactly one line on stderr with status 1 and no traceback: that line."""
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stdout + out.stderr, (
        f"{' '.join(cmd)}: status {out.returncode}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-5000:]}")
    return lines[0]


def _export_stage(out: Path) -> list[str]:
    """The export stage on the pipeline's run (run.json), writing its files under `out` instead of the repo's."""
    return [sys.executable, "-m", "stages.export", "--models", "models", "--eval", "metrics/eval.json",
            "--run-file", "run.json", "--out", str(out / "export"), "--metrics", str(out / "export.json")]


def _gan_registry(team: Team, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.commands.registry", "--name", MODEL, "--tracking-uri", team.url, *args]


def test_the_run_metrics_model_and_champion_are_on_the_team_server(team_repo, server):
    root, _ = team_repo
    url, artifacts = server.url, server.artifacts
    run_id = json.loads((root / "run.json").read_text())["run_id"]

    run = _api(server, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:")  # artifacts go through the server
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.steps"] == "30" and params["tracking.uri"] == url

    # The server holds the same loss curve the stage wrote locally, point for point.
    with open(root / "plots" / "train" / "train_loss.csv") as f:
        local = [(int(r["step"]), float(r["Loss_D"])) for r in csv.DictReader(f)]
    history = _api(server, "metrics/get-history", run_id=run_id, metric_key="Loss/D")["metrics"]
    served = sorted((m["step"], m["value"]) for m in history)
    assert [s for s, _ in served] == [s for s, _ in local] and served[-1][0] == 30
    assert [v for _, v in served] == pytest.approx([v for _, v in local], rel=1e-6)

    evaluation = json.loads((root / "metrics" / "eval.json").read_text())
    extractor = evaluation["eval_info"]["extractor"]
    fid_key = f"eval/{extractor}/frechet_inception_distance"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics[fid_key] == pytest.approx(evaluation[extractor]["frechet_inception_distance"], rel=1e-6)
    assert metrics[fid_key] > 0

    # One registered version, from this run, holding the champion alias.
    record = json.loads((root / "export" / "registry.json").read_text())
    assert record["registered"] and record["promoted"] and record["model_name"] == MODEL
    versions = _api(server, "model-versions/search", filter=f"name='{MODEL}'")["model_versions"]
    assert [(v["version"], v["run_id"], v["status"]) for v in versions] == [(record["version"], run_id, "READY")]
    model = _api(server, "registered-models/get", name=MODEL)["registered_model"]
    assert {"alias": "champion", "version": record["version"]} in model["aliases"]
    champion = _api(server, "registered-models/alias", name=MODEL, alias="champion")["model_version"]
    assert (champion["version"], champion["run_id"]) == (record["version"], run_id)

    # The run's artifacts landed in the server's artifact store, listed through the same API.
    listed = {f["path"] for f in _api(server, "artifacts/list", run_id=run_id, path="export")["files"]}
    assert "export/generator.safetensors" in listed, listed
    assert list(artifacts.rglob("generator.safetensors")), f"nothing under {artifacts}"


def test_a_second_clone_pulls_the_outputs_from_the_dvc_remote_and_has_nothing_to_run(team_repo, tmp_path):
    root, env = team_repo
    remote = tmp_path / "remote"
    run_ok([sys.executable, "-m", "dvc", "remote", "add", "-d", "team", str(remote)], root, env)
    run_ok(["git", "add", "-A"], root, env)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "reproduced"], root, env)
    t0 = time.perf_counter()
    run_ok([sys.executable, "-m", "dvc", "push"], root, env)
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push wrote nothing to the remote"

    clone = tmp_path / "member-b"
    run_ok(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / SHARED[0]).exists()  # git alone does not carry the DVC outputs
    run_ok([sys.executable, "-m", "dvc", "pull"], clone, env)
    for path in SHARED:
        assert (clone / path).read_bytes() == (root / path).read_bytes(), path

    status = run_ok([sys.executable, "-m", "dvc", "status"], clone, env)
    assert "up to date" in status, status
    again = run_ok([sys.executable, "-m", "dvc", "repro"], clone, env)
    assert "Running stage" not in again and "up to date" in again, again
    print(f"\ndvc push, clone, pull, status, repro: {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def test_an_anonymous_client_and_a_wrong_password_are_refused_in_one_line(team_repo, server, tmp_path):
    root, env = team_repo
    # The export stage talks to the server first thing after writing its files (here under tmp_path).
    anonymous = {**server.env(env, None), "HOME": str(tmp_path)}  # no ~/.mlflow/credentials either
    line = _refused(_export_stage(tmp_path / "anonymous"), root, anonymous)
    assert "401 UNAUTHENTICATED (no credentials were given)" in line and server.url in line, line
    assert "MLFLOW_TRACKING_USERNAME" in line, line  # says how to give them

    wrong = secrets.token_urlsafe(18)
    line = _refused(_export_stage(tmp_path / "wrong"), root, server.env(env, "editor", wrong))
    assert "401 UNAUTHENTICATED (user 'editor': a wrong password, or a user that was deleted)" in line, line
    assert wrong not in line and server.passwords["editor"] not in line, line
    # The registry commands too, before they read anything.
    line = _refused(_gan_registry(server, "show"), root, server.env(env, "editor", wrong))
    assert "refused listing dcgan-digits" in line and "401 UNAUTHENTICATED (user 'editor'" in line, line
    assert not list(tmp_path.rglob("registry.json")), "a refused export recorded a registration"


def test_a_read_only_member_can_look_but_not_register_or_promote(team_repo, server, tmp_path):
    root, env = team_repo
    reader = server.env(env, "reader")
    record = json.loads((root / "export" / "registry.json").read_text())
    experiment_id = json.loads((root / "run.json").read_text())["experiment_id"]
    _grant(server, "reader", "experiment", experiment_id, "READ")
    _grant(server, "reader", "registered_model", MODEL, "READ")

    def versions() -> list[str]:
        return sorted(v["version"] for v in _api(server, "model-versions/search", filter=f"name='{MODEL}'")
                      ["model_versions"])

    def champion() -> str:
        return _api(server, "registered-models/alias", name=MODEL, alias="champion")["model_version"]["version"]

    # A second version, registered by the admin, that the reader tries to make the champion.
    first = _api(server, "model-versions/get", name=MODEL, version=record["version"])["model_version"]
    assert first["source"].startswith("models:/m-"), first  # a logged model's: the server wants its model_id
    same = {"source": first["source"], "run_id": first["run_id"], "model_id": first["source"][len("models:/"):]}
    second = _admin(server, "POST", "model-versions/create", {"name": MODEL, **same})["model_version"]["version"]
    try:
        shown = run_ok(_gan_registry(server, "show"), root, reader)
        rows = {row.split()[0]: row for row in shown.strip().splitlines()[1:]}
        assert set(rows) == {record["version"], second} and "champion" in rows[record["version"]], shown

        line = _refused(_gan_registry(server, "promote", second), root, reader)
        assert "refused moving the champion alias of dcgan-digits to v" + second in line, line
        assert "403 PERMISSION_DENIED, user 'reader' lacks EDIT on registered model 'dcgan-digits'" in line, line
        assert champion() == record["version"]

        before = versions()
        line = _refused(_export_stage(tmp_path / "reader"), root, reader)
        assert "403 PERMISSION_DENIED, user 'reader' lacks EDIT on experiment 'gan-pipeline'" in line, line
        assert versions() == before and champion() == record["version"]
        assert _api(server, "runs/get", run_id=record["run_id"])["run"]["info"]["status"] == "FINISHED"
    finally:
        _admin(server, "DELETE", "model-versions/delete", {"name": MODEL, "version": second})
    assert versions() == [record["version"]]


def _holding(secret: bytes, folder: Path) -> list[str]:
    """The files under `folder` whose bytes contain `secret`."""
    return [str(f) for f in folder.rglob("*") if f.is_file() and not f.is_symlink() and secret in f.read_bytes()]


def test_no_password_is_kept_by_the_pipeline_or_the_server(team_repo, server, postgres, tmp_path):
    root, env = team_repo
    password = server.passwords["editor"]
    secret = password.encode()
    # Every file of the member's repository (.dvc/cache and tmp, dvc.lock, run.json, metrics, plots, logs, models,
    # export, a spool if one was left), git's objects unpacked, and the server's artifacts.
    assert (root / ".dvc" / "cache").is_dir() and (root / "logs").is_dir()
    assert not (leaks := _holding(secret, root)), leaks
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=root, env=env,
                             capture_output=True, check=True).stdout
    assert objects and secret not in objects
    assert any(server.artifacts.rglob("*")) and not (leaks := _holding(secret, server.artifacts)), leaks
    # The tracking database (params, tags, inputs, registry), and the auth database, which keeps only a hash.
    port = urllib.parse.urlsplit(postgres).port
    for db in ("mlflow", "mlflow_auth"):
        dump = subprocess.run(_as_postgres([str(_pg_bin() / "pg_dump"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                            "postgres", db]), capture_output=True, check=True).stdout
        assert b"CREATE TABLE" in dump and b"editor" in dump, db  # the user's runs, or the user
        assert secret not in dump and secret.hex().encode() not in dump, db  # plain, or as bytea hex

    # A URI carrying the password is refused in one line that does not repeat it, from params or a command line.
    host = urllib.parse.urlsplit(server.url).netloc
    with_password = f"http://editor:{password}@{host}"
    anonymous = server.env(env, None)
    line = _refused([*_export_stage(tmp_path), "--set", f"tracking.uri={with_password}"], root, anonymous)
    assert "tracking.uri must not carry credentials" in line and server.url in line and password not in line, line
    line = _refused([sys.executable, "-m", "pipeline.commands.registry", "--name", MODEL, "--tracking-uri",
                     with_password, "show"], root, anonymous)
    assert "must not carry credentials" in line and server.url in line and password not in line, line


# Two exporters on different machines: each its own working directory and TMPDIR, no lock shared, only the registry.
RACE_WORKER = """
import sys, time
from pipeline.registry import promotion
url, name = sys.argv[1:3]
print("ready", flush=True)
for line in sys.stdin:
    version, delay = line.split()
    time.sleep(float(delay))
    try:
        decision = promotion.apply_rule(url, name, version)
    except Exception as e:
        print("error", type(e).__name__, str(e).replace("\\n", " "), flush=True)
    else:
        print("done", "promoted:" if decision.promote else "kept:", decision.reason, flush=True)
"""
RACE_SEED, RACE_ROUNDS = 20240611, 20


class _Machine:
    """A long-lived exporter process: send it `VERSION DELAY`, read its one-line answer."""

    def __init__(self, home: Path, env: dict[str, str], url: str, name: str):
        (home / "tmp").mkdir(parents=True)
        self.log = home / "stderr.log"
        with self.log.open("w") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-c", RACE_WORKER, url, name], cwd=home,
                                         env={**env, "TMPDIR": str(home / "tmp"), "PYTHONPATH": str(REPO)},
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                         bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x.strip()) for x in self.proc.stdout], daemon=True).start()

    def send(self, version: str, delay: float) -> None:
        self.proc.stdin.write(f"{version} {delay}\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 120.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return f"no answer in {timeout:.0f} s; stderr: {self.log.read_text()[-2000:]}"

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_two_machines_racing_leave_the_champion_on_the_better_version(server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    name, tags = "race-model", {"eval.extractor": "classifier", "eval.num_samples": "300", "eval.data_hash": "d0"}
    monkeypatch.setenv(USER_VAR, "editor")  # this process registers the versions, as the member with EDIT
    monkeypatch.setenv(PASSWORD_VAR, server.passwords["editor"])
    client = MlflowClient(server.url, server.url)
    run = client.create_run(client.create_experiment("race"))
    (tmp_path / "MLmodel").write_text("a stand-in: the rule reads only the version's tags\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "MLmodel"), "model")
    client.create_registered_model(name)

    def register(fid: float) -> str:
        return client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                           tags={**tags, "eval.frechet_inception_distance": repr(fid)}).version

    env = server.env(dict(os.environ), "editor")
    machines = [_Machine(tmp_path / f"machine-{m}", env, server.url, name) for m in "ab"]
    rng, rounds = random.Random(RACE_SEED), []
    t0 = time.perf_counter()
    try:
        assert [m.answer() for m in machines] == ["ready", "ready"]
        for r in range(RACE_ROUNDS):
            # Round r's FIDs lie in (990 - 10 r, 999 - 10 r): both below every earlier round's, so both beat the
            # champion when they read it, and both really race for the alias.
            fids = [999.0 - 10 * r - rng.uniform(0, 9) for _ in machines]
            versions = [str(register(fid)) for fid in fids]
            delays = [round(rng.uniform(0, 0.3), 3) for _ in machines]
            for machine, version, delay in zip(machines, versions, delays, strict=True):
                machine.send(version, delay)
            answers = [m.answer() for m in machines]
            held = _api(server, "registered-models/alias", name=name, alias="champion")["model_version"]["version"]
            best = versions[fids.index(min(fids))]
            rounds.append(f"round {r}: versions {versions}, fids {[f'{f:.3f}' for f in fids]}, delays {delays}, "
                          f"answers {answers}, champion v{held} (best v{best})")
            assert all(a.startswith("done") for a in answers) and held == best, "\n".join(rounds)
    finally:
        for machine in machines:
            machine.stop()
    # Both beat the champion they read; a loser that then met the winner's candidacy while settling says so.
    overlapped = sum("a concurrent export's" in line for line in rounds)
    print(f"\n{RACE_ROUNDS} races settled in {time.perf_counter() - t0:.1f} s, {overlapped} overlapping",
          file=sys.stderr)
