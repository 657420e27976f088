"""Regenerate docs/screenshots/*.png: MLflow's experiment, run, system-metrics, model-metrics, artifacts and
registered-model pages, and the offline `dvc plots show` page, of a real pipeline run.

What it does, in a temporary copy of the repository (what a fresh clone holds, committed in a new git repo):
`dvc exp run -n <name>` of the whole pipeline with tiny params (about a minute on 2 CPU cores), then
`mlflow server` on that copy's store at 127.0.0.1, then headless Chromium on each page. Nothing in the working
tree changes but docs/screenshots/.

Rerun (needs Chromium: `apt-get install chromium`, or CHROMIUM=/path/to/chrome):

    python scripts/screenshots.py                 # about 2-3 minutes
    python scripts/screenshots.py --keep DIR      # keep the pipeline copy in DIR (to look at its store after)

Then look at every PNG: MLflow's UI is a JS app, and a page that has not finished rendering comes out blank.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
EXP_NAME = "tidy-moth"  # the DVC experiment: the MLflow run and the TensorBoard directory are named after it
WINDOW = (1400, 1000)
# MLflow's UI opens its chat assistant by itself when the page's host is localhost or 127.0.0.1: Chromium reaches
# the server (listening on 127.0.0.1) under this name instead.
HOST = "mlflow-ui.test"
# The default model at 16 px, long enough for digits to show (about a minute of training on 2 CPU cores), small
# evaluation, and system metrics sampled often enough to draw.
PARAMS = {
    "data": {"image_size": 16},
    "train": {"steps": 1500, "log_every_steps": 50, "sample_every_steps": 300, "checkpoint_every_steps": 500},
    "eval": {"num_samples": 500, "kid_subset_size": 100, "classifier_steps": 200},
    "tracking": {"system_metrics_seconds": 5},
}


def copy_repo(dest: Path) -> Path:
    """The repository's tracked and unignored files in a new, committed git repo (as tests/conftest.py does)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file() and not f.startswith("docs/screenshots/"):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    import yaml

    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in PARAMS.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=screenshots", "-c", "user.email=screenshots@localhost"]
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "screenshots"]):
        subprocess.run(git + cmd, cwd=dest, check=True, capture_output=True)
    return dest


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    print("+", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on the copy's store; the runs' artifacts live next to it, in mlruns/ (file URIs)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--allowed-hosts", f"{HOST}:{port},127.0.0.1:{port}", "--cors-allowed-origins", f"http://{HOST}:{port}"],
        cwd=root, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, f"http://{HOST}:{port}"
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    sys.exit("mlflow server did not answer /health within 180 s")


def chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    sys.exit("no Chromium found: apt-get install chromium, or set CHROMIUM=/path/to/chrome")


def shoot(browser: str, url: str, png: Path, profile: Path, budget_ms: int = 20000) -> None:
    """One page, rendered for `budget_ms` of virtual time (MLflow's UI fetches and draws after load)."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--host-resolver-rules=MAP {HOST} 127.0.0.1", "--run-all-compositor-stages-before-draw",  # else charts stay blank
           f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--virtual-time-budget={budget_ms}",
           f"--screenshot={png}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if out.returncode or not png.exists():
        sys.exit(f"chromium failed on {url}:\n{out.stderr[-2000:]}")
    from PIL import Image

    image = Image.open(png).convert("RGB")  # commit-sized: an adaptive palette keeps text sharp
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    print(f"  {png.relative_to(REPO)}  {png.stat().st_size // 1024} KiB  <- {url}", flush=True)


def pages(root: Path, url: str, env: dict) -> dict[str, str]:
    """name -> URL of every page to shoot."""
    from mlflow.tracking import MlflowClient

    run_id = json.loads((root / "run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    exp_id = client.get_run(run_id).info.experiment_id
    model = json.loads((root / "export" / "registry.json").read_text())
    name, version = model["model_name"], model["version"]
    run_page = f"{url}/#/experiments/{exp_id}/runs/{run_id}"
    ml = "?workflowType=machine_learning"  # the sidebar's "Model training" side (it defaults to GenAI)
    plots = root / "dvc-plots"
    run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(plots)], root, env)
    return {
        "mlflow-experiment": f"{url}/#/experiments/{exp_id}/runs{ml}",
        "mlflow-run": f"{run_page}{ml}",
        "mlflow-run-model-metrics": f"{run_page}/model-metrics{ml}",
        "mlflow-run-system-metrics": f"{run_page}/system-metrics{ml}",
        "mlflow-run-artifacts": f"{run_page}/artifacts/samples/samples.png{ml}",
        "mlflow-registered-model": f"{url}/#/models/{name}{ml}",
        "mlflow-model-version": f"{url}/#/models/{name}/versions/{version}{ml}",
        "dvc-plots": (plots / "index.html").as_uri(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", type=Path, default=None, help="run the pipeline copy in this (empty) directory, kept")
    p.add_argument("--only", nargs="*", default=None, help="shoot only these pages (names as in docs/)")
    args = p.parse_args(argv)
    browser = chromium()
    work = Path(tempfile.mkdtemp(prefix="gan-screenshots-"))
    root = args.keep.resolve() if args.keep else work / "repo"
    root.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "DVC_NO_ANALYTICS": "1"}
    for key in ("MLFLOW_TRACKING_URI", "PYTHONPATH", "DVC_EXP_NAME"):
        env.pop(key, None)
    server = None
    try:
        if not (root / "run.json").exists():
            copy_repo(root)
            run([sys.executable, "-m", "dvc", "exp", "run", "-n", EXP_NAME], root, env)
        server, url = start_server(root, env)
        OUT.mkdir(parents=True, exist_ok=True)
        for name, page in pages(root, url, env).items():
            if args.only is None or name in args.only:  # metric charts draw one after another: more time
                shoot(browser, page, OUT / f"{name}.png", work / "chromium", 40000 if "metrics" in name else 20000)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
