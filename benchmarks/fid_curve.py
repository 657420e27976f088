"""FID against training minutes for one recipe on one picture folder: the train stage runs to each step count in
turn, resuming from the last one's checkpoint (a resumed run equals an uninterrupted one), and the evaluate stage
scores each, as `benchmarks.side_by_side` scores its rows (NVIDIA's FID Inception, the same held-out pictures).

    python -m benchmarks.fid_curve --folder benchmarks/work/rgb/openmoji-flat --steps 1000 2500 5000 10000
    python -m benchmarks.fid_curve --folder DIR --recipe ch64 --set model.g_channels=64 --set model.d_channels=64

Writes `curve.json` and `curve.png` under `--out/NAME/curve-RECIPE/`, with the set's floor and reference (when
`side_by_side` has made them) and the issue's two targets (3x the floor, 0.4x the reference) drawn across.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchmarks import quality, side_by_side


def _mean_fid(rows: list[Path]) -> float | None:
    fids = [json.loads(p.read_text())["FID"] for p in rows]
    return sum(fids) / len(fids) if fids else None


def plot(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    minutes = [p["train_seconds"] / 60 for p in curve["points"]]
    ax.plot(minutes, [p["FID"] for p in curve["points"]], "o-", label=f"project ({curve['recipe']})")
    for p, m in zip(curve["points"], minutes, strict=True):
        ax.annotate(f"{p['steps']}", (m, p["FID"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for key, style, label in (("floor", "k:", "real-vs-real floor"),
                              ("reference", "r--", "reference DCGAN at the default's train time")):
        if curve.get(key):
            ax.axhline(curve[key], ls=style[1:], color=style[0], label=f"{label} ({curve[key]:.0f})")
    targets = [t for t in (3 * curve["floor"] if curve.get("floor") else None,
                           0.4 * curve["reference"] if curve.get("reference") else None) if t]
    if targets:
        ax.axhline(min(targets), color="g", ls="-.", lw=0.8, label=f"target ({min(targets):.0f})")
    ax.set_xlabel("training minutes (cumulative, this machine)")
    ax.set_ylabel(f"FID ({curve['samples']} samples)")
    ax.set_title(f"{curve['set']}: FID against training time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, required=True, help="an image folder (class subfolders, or flat)")
    p.add_argument("--name", help="the set's name (default: the folder's)")
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 2500, 5000, 10000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--recipe", default="default")
    p.add_argument("--train-pictures", type=int, default=0, metavar="N",
                   help="train on N of the training pictures (a seeded draw), scored against the same held-out ones")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/side_by_side"))
    args = p.parse_args(argv)
    import torch

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    name = args.name or args.folder.name
    work, set_out = Path("benchmarks/work/side_by_side") / name, args.out / name
    data = [*side_by_side.DATA, f"data.root={args.folder.resolve()}",
            *(o for o in args.overrides if o.startswith("data."))]
    quality.setup(work, args.params, data)
    if args.train_pictures:
        work = quality.train_subset(work, args.train_pictures)
    refs = json.loads((work / "prepared" / "meta.json").read_text())["count"]["ref"]
    overrides = [*data, *side_by_side.score_params(args.samples, refs, args.threads, args.overrides),
                 f"train.checkpoint_every_steps={min(args.steps)}"]
    out = set_out / f"curve-{args.recipe}"
    curve = {"set": name, "recipe": args.recipe, "overrides": args.overrides, "seed": args.seed,
             "samples": args.samples, "floor": _mean_fid(sorted(set_out.glob("floor/*/row.json"))),
             "reference": _mean_fid(sorted(set_out.glob("reference/*/row.json"))), "points": []}
    elapsed = 0.0
    for steps in sorted(args.steps):
        row = quality.run_one(work, out / f"steps-{steps}", args.params, [*overrides, f"train.steps={steps}"],
                              args.seed, checkpoints=out / "checkpoints")
        elapsed += row["train_seconds"]
        curve["points"].append({"steps": steps, "train_seconds": round(elapsed, 1), "FID": row["FID"],
                                "KID": row["KID"], "precision": row["precision"], "recall": row["recall"],
                                "img_per_s": row["img_per_s"]})
        print(f"fid_curve: {name} {args.recipe} {json.dumps(curve['points'][-1])}", file=sys.stderr, flush=True)
        (out / "curve.json").write_text(json.dumps(curve, indent=2) + "\n")
        plot(curve, out / "curve.png")


if __name__ == "__main__":
    main()
