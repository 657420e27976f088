"""Train-step throughput: the project's GANStep (the code the train stage runs) against the reference loops.

Same networks (the project's DCGAN; at 64 px with z_dim 100 and 64 channels, the pytorch/examples ones), image size,
batch, loss and device, in one process. Each round runs every variant in turn (the order rotates), warm-up excluded,
and the figure is the median round. Data are random uint8 images, resident in memory for every variant (on CUDA,
`--ref-data host` also times the reference with batches copied from host memory, as its DataLoader delivers them).
The project's train params are the config defaults (those of params.yaml) unless `--set` changes one.

    python -m benchmarks.bench_train                       # CPU: 32 px, batch 64
    python -m benchmarks.bench_train --device cuda --batch 1024 --ref-data both
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from benchmarks.reference import ReferenceLoop
from pipeline import hardware
from pipeline.config import Params, parse_params
from pipeline.nets import net_config
from pipeline.training.build import make_accelerator, make_step
from pipeline.training.cuda_graph import GraphedStep


@dataclass
class Variant:
    name: str
    step: object  # callable: one iteration
    end_round: object  # callable: what the loop does at a tick (the project's stats sync)
    per_step_images: int
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def project_params(args: argparse.Namespace, loss: str, **train) -> Params:
    """The project's params for this benchmark: the examples' networks (every model key pinned, so a changed default
    cannot change what is timed), the CLI's image size and batch."""
    overrides = [f"data.image_size={args.image_size}", f"model.z_dim={args.z_dim}", f"model.g_channels={args.width}",
                 f"model.d_channels={args.width}", "model.d_norm=auto", "model.dropout=0.0",
                 "model.spectral_norm=false", f"train.batch_size={args.batch}", f"train.loss={loss}",
                 f"train.mixed_precision={args.mixed_precision}", f"train.channels_last={args.channels_last}"]
    overrides += [f"train.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in train.items()]
    return parse_params({}, overrides + list(args.set))


def project_variant(name: str, params: Params, acc, images: torch.Tensor) -> Variant:
    gan = make_step(params, acc, images, channels=images.shape[1])
    counter = iter(range(10**9))
    return Variant(name, lambda: gan(next(counter)), gan.stats.pop_means, params.train.batch_size)


def reference_variant(name: str, params: Params, images: torch.Tensor, device: torch.device, **kw) -> Variant:
    data = images.float().div(127.5).sub(1.0)  # what the example's transforms.Normalize((0.5,) * 3, (0.5,) * 3) gives
    ref = ReferenceLoop(net_config(params, images.shape[1]), data, params.train.batch_size, device,
                        loss=params.train.loss, n_critic=params.train.n_critic, gp_weight=params.train.gp_weight, **kw)
    return Variant(name, ref, ref.end_round, params.train.batch_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(makers: list[tuple[str, object]], device: torch.device, rounds: int, steps: int,
            warmup: int) -> list[Variant]:
    """Build and warm up every variant, then time `rounds` rounds of `steps` iterations, alternating variants."""
    interleave = device.type == "cpu"
    alive = []
    for name, make in makers:
        try:
            v = make()
            for _ in range(warmup):
                v.step()
            v.end_round()
            sync(device)
            alive.append(v)
        except Exception as e:  # noqa: BLE001 - one broken variant must not hide the others' figures
            print(f"  {name}: FAILED before timing: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
    for r in range(rounds):
        order = alive[r % len(alive):] + alive[: r % len(alive)] if alive else []
        if interleave:  # CPU: variants alternate every step, so a neighbour's load burst hits all of them alike
            spent = dict.fromkeys(range(len(order)), 0.0)
            for _ in range(steps):
                for i, v in enumerate(order):
                    t0 = time.perf_counter()
                    v.step()
                    spent[i] += time.perf_counter() - t0
            for i, v in enumerate(order):
                t0 = time.perf_counter()
                v.end_round()
                v.rates.append(steps * v.per_step_images / (spent[i] + time.perf_counter() - t0))
            continue
        for v in order:  # GPU: a whole round per variant, so no host sync falls inside it
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                v.step()
            v.end_round()
            sync(device)
            v.rates.append(steps * v.per_step_images / (time.perf_counter() - t0))
    return alive


def profile(v: Variant, steps: int = 5) -> None:
    """Top device kernels and kernel launches per step of one variant (torch.profiler), to see where time goes."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    try:
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                v.step()
            v.end_round()
            torch.cuda.synchronize()
        events = prof.key_averages()
        kernels = sum(e.count for e in events if e.device_type == DeviceType.CUDA)
        print(f"profile of {v.name}: {kernels / steps:.0f} device kernels per step")
        print(events.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))
    except Exception as e:  # noqa: BLE001 - a diagnostic only
        print(f"profile of {v.name} failed: {type(e).__name__}: {e}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def report(title: str, variants: list[Variant]) -> list[dict]:
    """One line per variant: median img/s, the rounds' range, and the ratio to each reference of the run."""
    refs = [v for v in variants if v.name.startswith("reference")]
    print(title + ("  (ratios vs " + ", ".join(f"[{i + 1}]" for i in range(len(refs))) + ")" if refs else ""))
    rows = []
    for v in variants:
        ratios = [v.median / r.median for r in refs]
        spread = f"[{min(v.rates):,.0f}-{max(v.rates):,.0f}]"
        tag = f"[{refs.index(v) + 1}] " if v in refs else ""
        print(f"  {tag + v.name:<56} {v.median:>10,.0f} img/s {spread:>19}  " + "  ".join(f"{x:5.2f}x" for x in ratios))
        rows.append({"variant": v.name, "img_per_s": round(v.median, 1), "rounds": [round(x, 1) for x in v.rates],
                     "ratio_vs_reference": round(ratios[0], 3) if ratios else None,
                     "ratios_vs_references": {r.name: round(x, 3) for r, x in zip(refs, ratios, strict=True)}})
    return rows


def reference_makers(args: argparse.Namespace, loss: str, title: str, images: torch.Tensor, device: torch.device,
                     **kw) -> list[tuple[str, object]]:
    """The reference loop, with data resident on the device and/or batches copied from host memory."""
    modes = {"device": [False], "host": [True], "both": [False, True]}[args.ref_data] if device.type == "cuda" \
        else [False]
    makers = []
    for host in modes:
        name = f"reference: {title}" + (", host batches" if host else "")
        makers.append((name, lambda name=name, host=host: reference_variant(
            name, project_params(args, loss, **kw), images, device, host_batches=host)))
    return makers


def bench_bce(args: argparse.Namespace, tag: str, graphs: list[bool], acc, images: torch.Tensor,
              device: torch.device) -> list[dict]:
    """The examples' DCGAN loop against GANStep (eager, and with CUDA graphs where asked), bce loss."""
    makers = reference_makers(args, "bce", "examples dcgan loop (fp32)", images, device)
    for g in graphs:
        v = f"project GANStep ({tag}{', cuda_graphs' if g else ''})"
        makers.append((v, lambda v=v, g=g: project_variant(v, project_params(args, "bce", cuda_graphs=g), acc, images)))
    alive = measure(makers, device, args.rounds, args.steps, args.warmup)
    rows = report(f"bce, {args.steps} steps x {args.rounds} rounds:", alive)
    if args.profile and device.type == "cuda":
        for v in alive:
            profile(v)
    return rows


def bench_wgan_gp(args: argparse.Namespace, tag: str, graphs: list[bool], acc, images: torch.Tensor,
                  device: torch.device) -> list[dict]:
    """The WGAN-GP loop against GANStep with the penalty every D update and lazily every gp_every."""
    k = args.n_critic
    makers = reference_makers(args, "wgan-gp", f"WGAN-GP loop (fp32, n_critic {k})", images, device, n_critic=k)
    for g in graphs:
        for e in (1, args.gp_every):
            v = f"project GANStep ({tag}, gp_every {e}{', cuda_graphs' if g else ''})"
            makers.append((v, lambda v=v, g=g, e=e: project_variant(
                v, project_params(args, "wgan-gp", n_critic=k, gp_every=e, cuda_graphs=g), acc, images)))
    # With graphs, every penalty pattern (at most gp_every) is warmed up and captured before timing.
    warmup = max(1, args.warmup // 2, (GraphedStep.GRAPH_WARMUP_STEPS + 1) * args.gp_every if any(graphs) else 0)
    alive = measure(makers, device, args.rounds, args.gp_steps, warmup)
    rows = report(f"wgan-gp (n_critic {k}), {args.gp_steps} steps x {args.rounds} rounds:", alive)
    for g in graphs:
        pair = [v for v in alive if ("cuda_graphs" in v.name) == g and "gp_every" in v.name]
        if len(pair) == 2:
            saved = 1 - pair[0].median / pair[1].median
            print(f"  lazy penalty (gp_every {args.gp_every} vs 1{', cuda_graphs' if g else ''}): time per step "
                  f"{-saved:+.0%}, throughput {pair[1].median / pair[0].median:.2f}x")
            rows.append({"lazy_gp_time_saved": round(saved, 3), "cuda_graphs": g})
    return rows


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--image-size", type=int, default=None, help="default: 64 on cuda, 32 on cpu")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="iterations per round (default: 100 cuda, 10 cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations per variant (default: 15 cuda, 3 cpu)")
    p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                   help="the project's train.mixed_precision (default auto: what the train stage picks here)")
    p.add_argument("--channels-last", default="auto", choices=("auto", "true", "false"))
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const="false",
                   help="the same as --channels-last false")
    p.add_argument("--cuda-graphs", default="both", choices=("off", "on", "both"),
                   help="project variants with train.cuda_graphs (cuda only; default: with and without)")
    p.add_argument("--cases", default="bce,wgan-gp", help="comma-separated: bce, wgan-gp")
    p.add_argument("--ref-data", default="device", choices=("device", "host", "both"),
                   help="cuda: the reference's data resident on the device (default, conservative) or batches copied "
                        "from host memory each step as the example's DataLoader delivers them")
    p.add_argument("--n-critic", type=int, default=5, help="wgan-gp case")
    p.add_argument("--gp-every", type=int, default=4, help="wgan-gp case: the lazy interval compared with 1")
    p.add_argument("--gp-steps", type=int, default=None, help="wgan-gp iterations per round (default: steps / 5)")
    p.add_argument("--z-dim", type=int, default=100)
    p.add_argument("--width", type=int, default=64, help="g_channels = d_channels (ngf = ndf)")
    p.add_argument("--images", type=int, default=None, help="resident data set size (default: max(4096, 4 batches))")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="one more project param for every variant, e.g. train.reuse_fake=false (repeatable)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--profile", action="store_true", help="cuda, bce: then print each variant's top kernels")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not cuda:
        p.error("--device cuda: no CUDA device")
    args.image_size = args.image_size or (64 if device.type == "cuda" else 32)
    args.steps = args.steps or (100 if device.type == "cuda" else 10)
    args.gp_steps = args.gp_steps or max(1, args.steps // args.n_critic)
    args.warmup = args.warmup if args.warmup is not None else (15 if device.type == "cuda" else 3)
    graphs = {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graphs] if device.type == "cuda" \
        else [False]
    if device.type == "cpu" and cuda:
        import os

        os.environ["ACCELERATE_USE_CPU"] = "true"

    n = args.images or max(4096, 4 * args.batch)
    images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    acc = make_accelerator(project_params(args, "bce"))
    tc = hardware.resolved(project_params(args, "bce"), acc.device).train  # what auto picked on this device
    args.mixed_precision, args.channels_last = tc.mixed_precision, str(tc.channels_last).lower()
    head = (f"device: {device_name(device)} | torch {torch.__version__} | {args.image_size} px, batch {args.batch}, "
            f"z_dim {args.z_dim}, width {args.width} | project: {args.mixed_precision.replace('no', 'fp32')}"
            f"{', channels_last' if tc.channels_last else ''} | reference: fp32"
            + (f" (TF32 convs: {torch.backends.cudnn.allow_tf32})" if device.type == "cuda" else ""))
    print(head, flush=True)
    print(f"command: python -m benchmarks.bench_train {' '.join(argv if argv is not None else sys.argv[1:])}")
    results: dict = {"device": device_name(device), "torch": torch.__version__, "header": head,
                     "command": "python -m benchmarks.bench_train " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "cases": {}}
    tag = f"{args.mixed_precision.replace('no', 'fp32')}{'+CL' if tc.channels_last else ''}"
    cases = args.cases.split(",")
    if "bce" in cases:
        results["cases"]["bce"] = bench_bce(args, tag, graphs, acc, images, device)
    if "wgan-gp" in cases:
        results["cases"]["wgan-gp"] = bench_wgan_gp(args, tag, graphs, acc, images, device)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
