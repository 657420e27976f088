"""On a CUDA device: does `train.cuda_graphs` train exactly as the eager step does?

Runs GANStep eagerly and with CUDA graphs from the same seed, step for step, with deterministic cuDNN and TF32 off
(fp32, or bf16 autocast), and compares weights, EMA and reported statistics: a stale input buffer, a wrong RNG
replay or a lost statistic shows up as a difference.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pipeline.config import parse_params
from pipeline.training.build import make_accelerator, make_step

CASES = {
    "bce": [],
    "wgan-gp n_critic 3, gp_every 2": ["train.loss=wgan-gp", "train.n_critic=3", "train.gp_every=2"],
    "wgan, clip 1.0, no reuse": ["train.loss=wgan", "train.grad_clip_norm=1.0", "train.reuse_fake=false"],
}


def run(overrides: list[str], graphs: bool, steps: int, images: torch.Tensor) -> tuple[dict, list[dict]]:
    params = parse_params({}, overrides + [f"train.cuda_graphs={str(graphs).lower()}"])
    gan = make_step(params, make_accelerator(params), images, channels=images.shape[1])
    torch.backends.cudnn.benchmark = False  # GANStep turns it on; exactness needs fixed algorithms
    rows = []
    for s in range(steps):
        gan(s)
        rows.append(gan.stats.pop_means())
    state = {f"{n}.{k}": v.detach().float().clone() for n, m in (("G", gan.G_plain), ("D", gan.D_plain),
                                                                  ("EMA", gan.ema)) for k, v in m.state_dict().items()}
    return state, rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("graph_check: no CUDA device")
        return 2
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.mixed_precision != "no"
    images = torch.randint(0, 256, (1024, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    base = ["data.image_size=64", "model.z_dim=100", "model.g_channels=64", "model.d_channels=64",
            "model.dropout=0.0", "train.batch_size=64", f"train.mixed_precision={args.mixed_precision}"]
    worst = 0.0
    for name, extra in CASES.items():
        try:
            eager, rows_e = run(base + extra, False, args.steps, images)
            graph, rows_g = run(base + extra, True, args.steps, images)
        except Exception as e:  # noqa: BLE001 - a crash is a different finding from a mismatch
            print(f"{args.mixed_precision} {name}: CRASHED: {type(e).__name__}: {str(e).splitlines()[0][:500]}")
            return 3
        diff = max((eager[k] - graph[k]).abs().max().item() / max(eager[k].abs().max().item(), 1e-12) for k in eager)
        stat = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-6) for a, b in zip(rows_e, rows_g, strict=True) for k in a)
        same_keys = all(a.keys() == b.keys() for a, b in zip(rows_e, rows_g, strict=True))
        worst = max(worst, diff, stat)
        print(f"{args.mixed_precision} {name}: {args.steps} steps, max relative difference weights {diff:.2e}, "
              f"stats {stat:.2e}, same stat keys every step: {same_keys}", flush=True)
    limit = 1e-5  # eager on CUDA runs autocast without its weight cache too, so bf16 must match as well
    print(f"graph_check {args.mixed_precision}: {'PASS' if worst <= limit else 'FAIL'} (worst {worst:.2e}, "
          f"limit {limit:.0e})")
    return 0 if worst <= limit else 1


if __name__ == "__main__":
    sys.exit(main())
