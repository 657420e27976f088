"""Does torch.compile run the channels_last DCGAN networks (forward and backward, bf16 autocast), and does it pay?

STACK-NOTES recorded a failure in `convolution_backward` (a stride assertion) on torch 2.11; this probe records what
happens on the machine it runs on: the error's first lines, or eager and compiled times for one G+D iteration.
"""

from __future__ import annotations

import argparse
import time
import traceback

import torch

from pipeline.nets import NetConfig, build


def iteration(G, D, z: torch.Tensor, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        score = D(G(z))
    score.float().mean().backward()


def timed(G, D, z, device, n: int) -> float:
    for _ in range(3):
        iteration(G, D, z, device)
    torch.cuda.synchronize() if device.type == "cuda" else None
    t0 = time.perf_counter()
    for _ in range(n):
        iteration(G, D, z, device)
    torch.cuda.synchronize() if device.type == "cuda" else None
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = NetConfig(z_dim=100, image_size=args.image_size, channels=3, g_channels=args.width, d_channels=args.width)
    z = torch.randn(args.batch, cfg.z_dim, device=device)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}: "
          f"{args.image_size} px, batch {args.batch}", flush=True)
    for channels_last in (True, False):
        G, D = (m.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                for m in build(cfg))
        eager = timed(G, D, z, device, args.iters)
        t0 = time.perf_counter()
        try:
            cG, cD = torch.compile(G), torch.compile(D)
            iteration(cG, cD, z, device)
            compile_s = time.perf_counter() - t0
            compiled = timed(cG, cD, z, device, args.iters)
            print(f"channels_last={channels_last}: compile OK in {compile_s:.0f} s; G+D fwd+bwd eager {eager:.2f} ms, "
                  f"compiled {compiled:.2f} ms ({eager / compiled:.2f}x)", flush=True)
        except Exception as e:  # noqa: BLE001 - the finding is the error itself
            lines = traceback.format_exception_only(type(e), e)
            print(f"channels_last={channels_last}: compile FAILED after {time.perf_counter() - t0:.0f} s: "
                  + " | ".join("".join(lines).strip().splitlines()[:6])[:1500], flush=True)
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
