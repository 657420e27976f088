"""CPU throughput of NVIDIA's FID Inception (the extractor that scores RGB folders offline): its TorchScript file as
loaded (what the evaluate stage ran before) against the eager channels-last blocks the extractor now runs
(`pipeline.evaluation.nvidia_inception`), in one process, in alternating rounds, on the same input.

Inputs are random uint8 32 px pictures, resized to 299 px and scaled as the extractor does it (the resize is
timed with each variant). The figure per variant is its median round; the features of the two are compared on the
same batch.

    python -m benchmarks.inception_speed --batch 50 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.evaluation.extractors import NVIDIA_INSTALL, nvidia_inception_file
from pipeline.evaluation.nvidia_inception import graph_input, load_eager, load_torchscript


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=50, help="pictures per forward")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    path = nvidia_inception_file()
    if path is None:
        raise SystemExit(f"NVIDIA's FID Inception is not installed: {NVIDIA_INSTALL}")
    torch.set_num_threads(args.threads)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def run(net: torch.nn.Module, channels_last: bool) -> torch.Tensor:
        x = graph_input(images)
        return net(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    variants = {"torchscript as loaded": (load_torchscript(str(path)), False),
                "eager channels-last": (load_eager(str(path)), True)}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        features = {}
        for name, (net, cl) in variants.items():  # warm-up: TorchScript profiles its first runs
            for _ in range(2):
                features[name] = run(net, cl)
        for r in range(args.rounds):
            for name in list(variants)[::1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                run(*variants[name])
                rates[name].append(args.batch / (time.perf_counter() - t0))
    a, b = features.values()
    median = {name: sorted(v)[len(v) // 2] for name, v in rates.items()}
    base = median["torchscript as loaded"]
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.rounds} rounds")
    for name, rate in median.items():
        print(f"{name:<22} {rate:6.1f} img/s  {rate / base:5.2f}x")
    print(f"features: max |diff| {(a - b).abs().max().item():.2e}, relative {((a - b).norm() / a.norm()).item():.2e}")


if __name__ == "__main__":
    main()
