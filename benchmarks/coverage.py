"""Why a trained row covers little of its data: issue 26's diagnosis of low recall, on the models `side_by_side`
keeps (its rows' `models/`), scored as that script scores them (NVIDIA's FID Inception, the same held-out pictures).

For each row and seed it measures
- the EMA generator against the last weights: FID, precision and recall on the held-out pictures;
- the same samples against the training pictures: recall far above the held-out one would say G copies what D saw;
- D's over-fitting: its mean probability of "real" on training pictures, on held-out ones and on G's samples
  (clean, in training mode, in batches of 64 as in training). A wide train-minus-held-out gap is D memorising.

    python -m benchmarks.coverage --name openmoji-flat --rows project-auto project-dynd05 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from benchmarks import side_by_side

FID = side_by_side.FID


def d_probabilities(models: Path, cfg: dict, images: dict) -> dict[str, float]:
    """D's mean sigmoid output on each uint8 image set, in training mode (batch statistics), 64 at a time."""
    import torch

    from pipeline.nets import NetConfig, build
    from pipeline.nets.sampling import from_uint8
    from pipeline.nets.weights import load_weights

    D = build(NetConfig(**cfg))[1]
    D.load_state_dict(load_weights(models / "discriminator.safetensors"))
    D.train()
    out = {}
    with torch.no_grad():
        for name, x in images.items():
            x = torch.as_tensor(x)
            usable = len(x) // 64 * 64  # whole batches only: BatchNorm's statistics as in training
            probs = [torch.sigmoid(D(from_uint8(x[i:i + 64]))) for i in range(0, usable, 64)]
            out[name] = float(torch.cat(probs).mean())
    return out


def diagnose(row: Path, params, reals: dict, train_scorer, ref_scorer) -> dict:
    """One row's seed: `reals` holds the uint8 training and held-out pictures, loaded once for every row."""
    import torch

    from pipeline.nets.sampling import latents, to_uint8
    from pipeline.nets.weights import load_trained_generator

    n, seed = params.eval.num_samples, params.eval.seed
    result, generators = {}, {}
    for weights in ("ema", "last"):
        G, cfg = generators[weights] = load_trained_generator(row / "models", weights)
        feats = ref_scorer.generator_features(G, n, seed)
        held, seen = ref_scorer.score(feats), train_scorer.score(feats)
        result[weights] = {"FID": held[FID], "precision": held["precision"], "recall": held["recall"],
                           "train_precision": seen["precision"], "train_recall": seen["recall"]}
    last, cfg = generators["last"]
    with torch.no_grad():  # the last weights' samples: the fakes D saw at the end
        fakes = torch.cat([to_uint8(last(z)) for z in latents(1024, cfg["net"]["z_dim"], seed).split(256)])
    result["D"] = d_probabilities(row / "models", cfg["net"], {**reals, "samples": fakes})
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="the set's name under --out (and benchmarks/work/side_by_side)")
    p.add_argument("--rows", nargs="+", required=True, help="row directories, e.g. project-auto")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/side_by_side"))
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from pipeline.config import load_params
    from pipeline.data import load_split, read_meta
    from pipeline.evaluation.scorer import Scorer, make_scorer

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    work = Path("benchmarks/work/side_by_side") / args.name
    meta = read_meta(work / "prepared")
    data = [*side_by_side.DATA, f"data.root={meta['root']}"]
    overrides = side_by_side.score_params(args.samples, meta["count"]["ref"], args.threads, [])
    params = load_params(args.params, [*data, *overrides, "tracking.enabled=false"])
    ref_scorer = make_scorer(params.eval, work / "prepared", None, metrics=("fid", "prc"))
    reals = {"train": np.array(load_split(work / "prepared", "train").images),
             "held-out": np.array(load_split(work / "prepared", "ref").images)}
    train_scorer = Scorer(ref_scorer.cfg, ref_scorer.extractor, reals["train"], meta["hash"] + "-train", ("prc",))
    lines = ["| row | seed | weights | FID | precision | recall | recall on training pictures | "
             "D(train) | D(held-out) | D(samples) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.rows:
        for seed in args.seeds:
            row = args.out / args.name / name / f"seed-{seed}"
            result = diagnose(row, params, reals, train_scorer, ref_scorer)
            (row / "coverage.json").write_text(json.dumps(result, indent=2) + "\n")
            d = result["D"]
            for w in ("ema", "last"):
                r = result[w]
                lines.append(f"| {name} | {seed} | {w} | {r['FID']:.1f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                             f"{r['train_recall']:.3f} | {d['train']:.2f} | {d['held-out']:.2f} | {d['samples']:.2f} |")
                print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
