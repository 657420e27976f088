"""Train-step speed by CPU instruction set: the default step (train params as params.yaml sets them, `auto`
precision included) against the reference DCGAN loop, under the native instruction set, AVX-512 without BF16, and
AVX2, each emulated in its own processes by capping oneDNN (`ONEDNN_MAX_CPU_ISA`: convolutions), ATen
(`ATEN_CPU_CAPABILITY`: elementwise kernels) and MKL (`MKL_ENABLE_INSTRUCTIONS`: matmuls).

For each it prints img/s, the ratio to the reference, the achieved GFLOP/s (the step's FLOPs from
`torch.utils.flop_counter`), and that as a share of two peaks for the threads used: the nominal one (FMA FLOPs per
cycle x the clock /proc/cpuinfo reports) and a large float32 matmul measured in the same process.

    python -m benchmarks.isa_speed                                   # the default against the reference
    python -m benchmarks.isa_speed --variant fp32=train.mixed_precision=no --variant bf16=train.mixed_precision=bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

# name -> (environment, float32 FLOPs per cycle and core: two FMA units of 8 (AVX2) or 16 (AVX-512) lanes)
ISAS = {
    "native": ({}, None),
    "avx512": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512",
                "MKL_ENABLE_INSTRUCTIONS": "AVX512"}, 64),
    "avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 32),
}


def clock_ghz() -> float:
    """The clock /proc/cpuinfo reports (a VM reports its nominal clock; turbo may run above it)."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else float("nan")
    except OSError:
        return float("nan")


def matmul_gflops(threads: int, n: int = 2048, seconds: float = 1.5) -> float:
    """The float32 GFLOP/s of an n x n matmul here: the practical peak of this instruction set and thread count."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - t0) / 1e9


def step_flops(step) -> float:
    """FLOPs of one call of `step` (convolutions and matmuls, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def worker(args: argparse.Namespace) -> dict:
    """In the emulated process: time one project step (the default, or the default with `--sets`) against the
    reference, and count both's FLOPs. One step per process: Accelerate's precision is process-wide."""
    from benchmarks import bench_train
    from pipeline import hardware
    from pipeline.training.build import make_accelerator

    native, why = hardware.cpu_native_bf16()
    bargs = argparse.Namespace(image_size=32, z_dim=args.z_dim, width=args.width, batch=args.batch,
                               mixed_precision="auto", channels_last="auto",
                               set=[f"train.cpu_threads={args.threads}", *filter(None, args.sets.split(","))])
    images = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = bench_train.project_params(bargs, "bce")
    acc = make_accelerator(params)
    tc = hardware.resolved(params, acc.device).train
    name = f"{args.name} ({tc.mixed_precision.replace('no', 'fp32')}{', channels_last' if tc.channels_last else ''})"
    makers = [("reference: examples dcgan loop (fp32)",
               lambda: bench_train.reference_variant("reference", params, images, acc.device)),
              (name, lambda: bench_train.project_variant(name, params, acc, images))]
    alive = bench_train.measure(makers, acc.device, args.rounds, args.steps, args.warmup)
    rows = bench_train.report(f"{args.isa}: {args.steps} steps x {args.rounds} rounds", alive)
    for v, row in zip(alive, rows, strict=True):
        row["gflop_per_step"] = step_flops(v.step) / 1e9
        row["gflop_per_s"] = row["gflop_per_step"] * v.median / v.per_step_images
    return {"isa": args.isa, "aten": torch.backends.cpu.get_cpu_capability(),
            "onednn_cap": os.environ.get("ONEDNN_MAX_CPU_ISA", "(none)"), "native_bf16": native, "why": why,
            "matmul_gflops": matmul_gflops(args.threads), "rows": rows}


def summary(results: list[dict], threads: int) -> None:
    """One block per instruction set; each project row beside the reference timed in its own process."""
    ghz = clock_ghz()
    native_flops = 64 if "avx512f" in open("/proc/cpuinfo").read() else 32
    print(f"\nsummary: {threads} threads, clock {ghz:.2f} GHz (reported); float32 peaks: nominal (FMA) and measured "
          "(matmul)")
    print(f"  {'variant':<44} {'img/s':>7} {'x ref':>6} {'GFLOP/s':>8} {'% nominal':>10} {'% matmul':>9}")
    header = None
    for r in results:
        nominal = (ISAS[r["isa"]][1] or native_flops) * ghz * threads
        if header != r["isa"]:
            header = r["isa"]
            print(f"{r['isa']}: ATen {r['aten']}, oneDNN cap {r['onednn_cap']}; bf16 native: {r['native_bf16']} "
                  f"({r['why']}); matmul {r['matmul_gflops']:.0f} GFLOP/s, nominal {nominal:.0f}")
        for row in r["rows"]:
            print(f"  {row['variant'][:44]:<44} {row['img_per_s']:>7.0f} {row['ratio_vs_reference']:>5.2f}x "
                  f"{row['gflop_per_s']:>8.1f} {row['gflop_per_s'] / nominal:>9.0%} "
                  f"{row['gflop_per_s'] / r['matmul_gflops']:>8.0%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--isas", default="native,avx512,avx2", help=f"comma-separated, of {', '.join(ISAS)}")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--z-dim", type=int, default=64, help="default: the params' model.z_dim")
    p.add_argument("--width", type=int, default=32, help="g_channels = d_channels; default: the params'")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=SECTION.KEY=VALUE[,...]",
                   help="one more project step to time against the reference, in its own process (repeatable)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--isa", default="native", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--name", default="default", help=argparse.SUPPRESS)
    p.add_argument("--sets", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = worker(args)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return 0
    results = []
    forwarded = list(argv if argv is not None else sys.argv[1:])
    configs = [("default", ""), *(v.partition("=")[::2] for v in args.variant)]
    for isa in args.isas.split(","):
        env = {**os.environ, **ISAS[isa][0]}
        print(f"== {isa}: {' '.join(f'{k}={v}' for k, v in ISAS[isa][0].items()) or '(no cap)'}", flush=True)
        for name, sets in configs:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run([sys.executable, "-m", "benchmarks.isa_speed", *forwarded, "--worker", "--isa", isa,
                                "--name", name, "--sets", sets, "--out", out.name], env=env, check=True)
                results.append(json.load(open(out.name)))
    summary(results, args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python -m benchmarks.isa_speed " + " ".join(forwarded), "results": results}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
