"""Two trainings on one CPU machine, as `dvc queue start -j 2` runs them: one after the other, together with the
pipeline's core sharing (`train.cpu_threads: 0`, pipeline.cores), and together with every process taking all cores
(the oversubscription that core sharing prevents). Each run is the real train stage (`python -m stages.train`) on
the prepared digits, tracking off; the figures are wall seconds for both, and each run's median img/s.

    python -m benchmarks.concurrent_cpu                  # default params, 600 steps each
    python -m benchmarks.concurrent_cpu --steps 300 --set model.g_channels=16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _params(out: Path, steps: int, threads: int, overrides: list[str]) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(steps=steps, cpu_threads=threads, checkpoint_every_steps=10**6, log_every_steps=50)
    raw["tracking"]["enabled"] = False
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        raw[section][name] = yaml.safe_load(value)
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start(prepared: Path, out: Path, params: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stages.train", "--params", str(params), "--prepared", str(prepared)]
    for flag in ("models", "plots", "checkpoints"):
        cmd += [f"--{flag}", str(out / flag)]
    cmd += ["--metrics", str(out / "train.json"), "--run-file", str(out / "run.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, out: Path) -> tuple[float, str]:
    log, _ = proc.communicate()
    if proc.returncode:
        sys.exit(f"a training failed:\n{log[-2000:]}")
    cpu = next((line for line in log.splitlines() if line.startswith("cpu:")), "cpu: ?")
    return json.loads((out / "train.json").read_text())["img_per_s"], cpu


def scenario(name: str, prepared: Path, work: Path, steps: int, threads: int, together: bool,
             overrides: list[str]) -> dict:
    outs = [work / f"{name}-{i}" for i in range(2)]
    for out in outs:
        out.mkdir(parents=True)
    params = [_params(out, steps, threads, overrides) for out in outs]
    t0 = time.perf_counter()
    if together:
        procs = [_start(prepared, out, p) for out, p in zip(outs, params, strict=True)]
        results = [_finish(proc, out) for proc, out in zip(procs, outs, strict=True)]
    else:
        results = [_finish(_start(prepared, out, p), out) for out, p in zip(outs, params, strict=True)]
    wall = time.perf_counter() - t0
    return {"scenario": name, "wall_s": round(wall, 1), "img_per_s": [round(r[0]) for r in results],
            "cpu": [r[1] for r in results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    from pipeline.config import DataConfig
    from pipeline.data import prepare

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = work / "prepared"
        prepare(DataConfig(), prepared)
        rows = [scenario("one after the other", prepared, work, args.steps, 0, False, args.overrides),
                scenario("together, cores shared", prepared, work, args.steps, 0, True, args.overrides),
                scenario(f"together, {cores} threads each", prepared, work, args.steps, cores, True,
                         args.overrides)]
    base = rows[0]["wall_s"]
    print(f"two trainings of {args.steps} steps on {cores} cores (wall for both; ratio against one after the other)")
    for r in rows:
        print(f"{r['scenario']:28} {r['wall_s']:7.1f} s  x{r['wall_s'] / base:4.2f}  img/s {r['img_per_s']}  "
              f"{' | '.join(r['cpu'])}")


if __name__ == "__main__":
    main()
