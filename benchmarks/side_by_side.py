"""One folder of pictures, three rows scored alike: the project's train + evaluate stages, the pytorch/examples DCGAN
trained for the same wall time, and the real-vs-real floor (training pictures against the held-out ones).

Every row is scored by the same extractor (NVIDIA's FID Inception, offline), with the same sample count, against the
same held-out split, at the same size:

    python -m benchmarks.side_by_side --folder benchmarks/work/rgb/openmoji --name openmoji
    python -m benchmarks.side_by_side --folder benchmarks/work/rgb/openmoji-flat --name openmoji-flat --seeds 0 1 2
    python -m benchmarks.side_by_side --folder DIR --name openmoji --recipe hinge --set train.loss=hinge  # a variant
    python -m benchmarks.side_by_side --table benchmarks/results/side_by_side          # every row so far

A `--recipe` row trains the project with its `--set` overrides; the reference and the floor are made once per set
and seed (the reference at the default recipe's wall time).

The reference is `benchmarks/reference.py`'s faithful copy of dcgan/main.py with the example's own widths (nz 100,
ngf = ndf = 64), fp32, batch 64, unconditional, on the same threads. Its samples are scored the better of two ways:
in eval mode (as evaluate samples the project's G) and in train mode (as the example writes its sample grids).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks import quality

FID, KID = "frechet_inception_distance", "kernel_inception_distance_mean"


DATA = ["data.dataset=imagefolder", "data.channels=3", "data.image_size=32"]


def score_params(samples: int, refs: int, threads: int, overrides: list[str]) -> list[str]:
    """Scoring as in every row: NVIDIA's Inception, FID, KID (subsets no larger than either side) and precision and
    recall (k = 3 neighbours in the reference's own features: with a few hundred reference pictures they move by
    several hundredths between seeds, so compare them only between rows on the same reference)."""
    return ["eval.extractor=inception-v3-nvidia", "eval.metrics=[fid,kid,prc]", f"eval.num_samples={samples}",
            f"eval.kid_subset_size={min(1000, samples, refs)}", f"train.cpu_threads={threads}", *overrides]


def reference_row(work: Path, out: Path, params, seconds: float, seed: int) -> dict:
    """The examples' DCGAN for `seconds` of wall time on the prepared training split, then scored."""
    import numpy as np
    import torch

    from benchmarks.reference import ReferenceLoop
    from pipeline.data import load_split
    from pipeline.evaluation.scorer import make_scorer
    from pipeline.nets import NetConfig
    from pipeline.nets.sampling import from_uint8, latents, to_uint8

    data = from_uint8(torch.from_numpy(np.array(load_split(work / "prepared", "train").images)))
    cfg = NetConfig(z_dim=100, image_size=32, channels=data.shape[1], g_channels=64, d_channels=64, d_norm="batch")
    loop = ReferenceLoop(cfg, data, batch=64, device=torch.device("cpu"), loss="bce", seed=seed)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        loop()
        steps += 1
    wall = time.perf_counter() - t0
    scorer = make_scorer(params.eval, work / "prepared", None)
    n = params.eval.num_samples
    G = loop.G.float()
    G.cfg = cfg  # what the scorer reads: z_dim, num_classes
    scores = {"eval-mode": scorer.score(scorer.generator_features(G, n, params.eval.seed))}
    G.train()
    with torch.no_grad():  # train mode: batch statistics, 64 at a time, as the example draws its grids
        z = latents(n, cfg.z_dim, params.eval.seed)
        images = torch.cat([to_uint8(G(z[i : i + 64])) for i in range(0, n, 64)])
    scores["train-mode"] = scorer.score(scorer.image_features(images, "reference samples"))
    mode = min(scores, key=lambda m: scores[m][FID])
    from torchvision.utils import save_image

    out.mkdir(parents=True, exist_ok=True)
    save_image(images[:64].float() / 255, out / "samples.png", nrow=8, padding=2, pad_value=1.0)
    return {"seed": seed, "train_seconds": round(wall, 1), "img_per_s": round(steps * 64 / wall, 1),
            "FID": scores[mode][FID], "KID": scores[mode][KID], "sampled_in": mode,
            "other_mode_FID": scores["train-mode" if mode == "eval-mode" else "eval-mode"][FID]}


def floor_row(work: Path, params) -> dict:
    """Training pictures (as many as the generated sets) against the held-out ones: the best a generator can do."""
    import numpy as np

    from pipeline.data import load_split
    from pipeline.evaluation.scorer import make_scorer

    train = np.array(load_split(work / "prepared", "train").images)
    pick = np.random.default_rng(0).permutation(len(train))[: params.eval.num_samples]
    scorer = make_scorer(params.eval, work / "prepared", None)
    s = scorer.score(scorer.image_features(train[np.sort(pick)], "training pictures"))
    return {"seed": "-", "train_seconds": 0, "img_per_s": None, "FID": s[FID], "KID": s[KID],
            "precision": s.get("precision"), "recall": s.get("recall"), "n": len(pick)}


def _mean(values: list) -> str:
    """The mean of the rows that measured it (older rows scored FID and KID only), or -."""
    known = [x for x in values if x is not None]
    return f"{sum(known) / len(known):.3f}" if known else "-"


def table(root: Path) -> str:
    """Markdown: one line per set and row, mean over seeds, with ratios against the floor and the reference."""
    lines = ["| set | row | seeds | FID | KID | precision | recall | FID / floor | FID / reference | train s | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for set_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        kinds = ["project", *sorted(d.name for d in set_dir.glob("project-*")), "reference", "floor"]
        rows = {k: [json.loads(f.read_text()) for f in sorted(set_dir.glob(f"{k}/*/row.json"))] for k in kinds}
        mean = {k: sum(r["FID"] for r in v) / len(v) for k, v in rows.items() if v}
        for k, v in rows.items():
            if not v:
                continue
            fids = ", ".join(f"{r['FID']:.1f}" for r in v)
            ratio_floor = f"{mean[k] / mean['floor']:.2f}" if "floor" in mean else "-"
            ratio_ref = f"{mean[k] / mean['reference']:.2f}" if "reference" in mean else "-"
            speed = [r["img_per_s"] for r in v if r.get("img_per_s")]
            timing = (f"{sum(r['train_seconds'] for r in v) / len(v):.0f} | {sum(speed) / len(speed):.0f}" if speed
                      else "- | -")
            pr = [_mean([r.get(m) for r in v]) for m in ("precision", "recall")]
            lines.append(f"| {set_dir.name} | {k} | {len(v)} | {mean[k]:.1f} ({fids}) | "
                         f"{sum(r['KID'] for r in v) / len(v):.4f} | {pr[0]} | {pr[1]} | {ratio_floor} | {ratio_ref} | "
                         f"{timing} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, help="an image folder (class subfolders, or flat)")
    p.add_argument("--name", help="the set's name in the table (default: the folder's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--samples", type=int, default=2000, help="generated samples per row (and training pictures)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for both trainings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a param of the project's row (its recipe); the reference is the example as written")
    p.add_argument("--recipe", default="default", help="the project row's name (its --set overrides)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/side_by_side"))
    p.add_argument("--reference-only", action="store_true",
                   help="(re)train only the reference, for the wall time of the project row already there")
    p.add_argument("--train-pictures", type=int, default=0, metavar="N",
                   help="train on N of the training pictures (a seeded draw), scored against the same held-out ones")
    p.add_argument("--no-reference", action="store_true",
                   help="train no reference for these seeds (the set's reference rows so far are used)")
    p.add_argument("--table", type=Path, default=None, help="print the table of every set under this directory")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    import torch

    from pipeline.config import load_params

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    name = args.name or args.folder.name
    work, out = Path("benchmarks/work/side_by_side") / name, args.out / name
    data = [*DATA, f"data.root={args.folder.resolve()}", *(o for o in args.overrides if o.startswith("data."))]
    quality.setup(work, args.params, data)
    refs = json.loads((work / "prepared" / "meta.json").read_text())["count"]["ref"]
    overrides = [*data, *score_params(args.samples, refs, args.threads, args.overrides)]
    params = load_params(args.params, [*overrides, "tracking.enabled=false"])
    (out / "floor" / "-").mkdir(parents=True, exist_ok=True)
    if not (out / "floor" / "-" / "row.json").exists():
        (out / "floor" / "-" / "row.json").write_text(json.dumps(floor_row(work, params), indent=2) + "\n")
    if args.train_pictures:  # after the floor: that stays the whole training split against the held-out pictures
        work = quality.train_subset(work, args.train_pictures)
    project = "project" if args.recipe == "default" else f"project-{args.recipe}"
    if not args.reference_only:
        (out / project).mkdir(parents=True, exist_ok=True)
        (out / project / "recipe.json").write_text(json.dumps({"recipe": args.recipe, "overrides": args.overrides})
                                                   + "\n")
    for seed in args.seeds:
        if args.reference_only:  # the project row is there: retrain the reference for its wall time
            row = json.loads((out / project / f"seed-{seed}" / "row.json").read_text())
        else:
            row = quality.run_one(work, out / project / f"seed-{seed}", args.params, overrides, seed)
            print(f"side_by_side: {name} {project} {json.dumps(row)}", file=sys.stderr, flush=True)
        done = (out / "reference" / f"seed-{seed}" / "row.json").exists() and not args.reference_only
        if args.recipe != "default" or done or args.no_reference:
            continue
        ref = reference_row(work, out / "reference" / f"seed-{seed}", params, row["train_seconds"], seed)
        (out / "reference" / f"seed-{seed}" / "row.json").write_text(json.dumps(ref, indent=2) + "\n")
        print(f"side_by_side: {name} reference {json.dumps(ref)}", file=sys.stderr, flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()
