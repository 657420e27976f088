"""The sample-quality ablation behind QUALITY.md: train + evaluate one recipe on several seeds, report mean +- sd.

Each run is the train stage's and the evaluate stage's own code (pipeline.training.stage.train, pipeline.evaluation.stage.evaluate)
with `--set` overrides on top of params.yaml, on the prepared data and in-domain classifier of `--work` (made once).

    python -m benchmarks.quality --name cond+diffaug --seeds 0 1 2 --set train.augment=diffaug
    python -m benchmarks.quality --table benchmarks/results/quality    # the markdown table of every recipe run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

KEYS = {"FID": "frechet_inception_distance", "IS": "inception_score_mean", "KID": "kernel_inception_distance_mean",
        "precision": "precision", "recall": "recall", "intra-FID": "intra_fid_mean"}


def train_subset(work: Path, n: int, seed: int = 0) -> Path:
    """A work directory beside `work` whose prepared training split keeps `n` of its pictures (drawn with `seed`) and
    whose held-out split is the same: runs on fewer pictures, scored against the same reference."""
    import numpy as np

    from pipeline.data import content_hash, load_split, read_meta

    out = work.with_name(f"{work.name}-train{n}")
    if (out / "prepared" / "meta.json").exists():
        return out
    train, ref = (load_split(work / "prepared", s, mmap=False) for s in ("train", "ref"))
    if not 0 < n <= len(train.images):
        raise SystemExit(f"--train-pictures {n}: the training split has {len(train.images)} pictures")
    pick = np.sort(np.random.default_rng(seed).permutation(len(train.images))[:n])
    images, labels = train.images[pick], train.labels[pick]
    meta = read_meta(work / "prepared")
    meta["count"]["train"], meta["hash"] = n, content_hash(images, ref.images, labels, ref.labels)
    staged = out / "prepared.tmp"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for name, array in (("train", images), ("train_labels", labels), ("ref", ref.images), ("ref_labels", ref.labels)):
        np.save(staged / f"{name}.npy", array)
    (staged / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    staged.rename(out / "prepared")
    return out


def _fresh_state() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def setup(work: Path, params_file: str, overrides: list[str]) -> None:
    """prepare + classifier, once per data config."""
    from pipeline.config import load_params
    from pipeline.data import prepare
    from pipeline.evaluation.classifier import fit

    params = load_params(params_file, overrides)
    if not (work / "prepared" / "meta.json").exists():
        prepare(params.data, work / "prepared")
    if not (work / "classifier").exists():
        fit(work / "prepared", work / "classifier", params.eval.classifier_steps, params.eval.classifier_seed)


def run_one(work: Path, out: Path, params_file: str, overrides: list[str], seed: int,
            checkpoints: Path | None = None) -> dict:
    """Train and evaluate one seed into `out`: its row (FID, ..., train seconds). With `checkpoints`, training
    resumes from (and leaves) the checkpoints there; without, they are made under `out` and deleted."""
    from pipeline.config import load_params
    from pipeline.evaluation.stage import EvalPaths, evaluate
    from pipeline.training.outputs import TrainPaths
    from pipeline.training.stage import train

    params = load_params(params_file, [*overrides, f"train.seed={seed}", "tracking.enabled=false"])
    shutil.rmtree(out, ignore_errors=True)
    _fresh_state()
    t0 = time.perf_counter()
    tr = train(params, TrainPaths(prepared=work / "prepared", models=out / "models", metrics=out / "train.json",
                                  plots=out / "plots", run_file=out / "run.json",
                                  checkpoints=checkpoints or out / "checkpoints"))
    t_train = time.perf_counter() - t0
    _fresh_state()
    ev = evaluate(params, EvalPaths(prepared=work / "prepared", models=out / "models", classifier=work / "classifier",
                                    run_file=out / "run.json", metrics=out / "eval.json", plots=out / "plots-eval"))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    name = ev["eval_info"]["extractor"]
    row = {"seed": seed, "train_seconds": round(t_train, 1), "img_per_s": tr["img_per_s"],
           **{k: ev[name].get(v) for k, v in KEYS.items()}}
    (out / "row.json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3g} ± {sd:.2g}"


def table(root: Path) -> str:
    lines = ["| recipe | seeds | " + " | ".join(KEYS) + " | worst/best FID | train s | command |",
             "|---" * (len(KEYS) + 5) + "|"]
    for recipe in sorted(p for p in root.iterdir() if (p / "recipe.json").exists()):
        info = json.loads((recipe / "recipe.json").read_text())
        rows = [json.loads(p.read_text()) for p in sorted(recipe.glob("seed-*/row.json"))]
        if not rows:
            continue
        cols = [_fmt([r[k] for r in rows if r.get(k) is not None]) for k in KEYS]
        fids = [r["FID"] for r in rows]
        sets = " ".join(f"--set {o}" for o in info["overrides"])
        lines.append(f"| {info['name']} | {len(rows)} | " + " | ".join(cols) +
                     f" | {max(fids) / min(fids):.2f} | {_fmt([r['train_seconds'] for r in rows])} | "
                     f"`python -m benchmarks.quality --name {info['name']} --seeds "
                     f"{' '.join(str(r['seed']) for r in rows)} {sets}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", help="recipe name (a directory under --out)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/digits"), help="prepared data + classifier")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--table", type=Path, default=None, help="print the table of every recipe under this directory")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    data_sets = [o for o in args.overrides if o.startswith("data.")]
    setup(args.work, args.params, data_sets)
    recipe = args.out / args.name
    recipe.mkdir(parents=True, exist_ok=True)
    (recipe / "recipe.json").write_text(json.dumps({"name": args.name, "overrides": args.overrides}) + "\n")
    for seed in args.seeds:
        row = run_one(args.work, recipe / f"seed-{seed}", args.params, args.overrides, seed)
        print(f"quality: {args.name} " + json.dumps(row), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
