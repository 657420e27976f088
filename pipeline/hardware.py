"""`auto` precision and memory format, resolved from what the hardware reports (never from a timing, so the same
params on the same machine always give the same generator).

bf16 autocast pays only where bf16 runs natively: on x86 CPUs with AVX-512 BF16 or AMX, on ARM CPUs with the BF16
extension, and on CUDA GPUs from compute capability 8.0 (Ampere). Elsewhere oneDNN emulates it, and the step runs
about 10x slower than in float32 on AVX2-only CPUs (BENCHMARKS.md: CPU speed by instruction set).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import sys

from pipeline.config import Params
from pipeline.config.schema import AUTO

# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: with one of them set, oneDNN runs bf16 emulated
# even on a CPU that has the instructions (which is how benchmarks.isa_speed emulates an older CPU).
_ONEDNN_NO_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


@dataclasses.dataclass(frozen=True)
class Choice:
    """What train.mixed_precision `auto` resolves to on one device, and why (one line for the log)."""

    mixed_precision: str  # no | fp16 | bf16, as Accelerate spells it
    why: str


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (x86 `flags`, ARM `Features`); empty where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _macos_bf16() -> bool:
    """Whether macOS reports ARM's BF16 extension (Apple M2 and later; not M1)."""
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "1"


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively for torch (oneDNN's convolutions and matmuls), and the reason."""
    flags, machine = _cpu_flags(), platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        if "bf16" in flags or (sys.platform == "darwin" and _macos_bf16()):
            return True, "ARM with BF16 instructions"
        return False, "ARM without BF16 instructions"
    native = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16")) if flag in flags]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if native and cap in _ONEDNN_NO_BF16:
        return False, f"{' and '.join(native)} present, but ONEDNN_MAX_CPU_ISA={cap} holds oneDNN below it"
    if native and aten in ("default", "avx2"):
        return False, f"{' and '.join(native)} present, but ATEN_CPU_CAPABILITY={aten} holds ATen below it"
    if native:
        return True, f"native bf16 ({' and '.join(native)})"
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return False, f"no native bf16 ({vector} only)"


def choose(device) -> Choice:
    """The best precision and memory format for `device` (a torch.device), from what the hardware reports."""
    if device.type == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return Choice("bf16", f"compute capability {major}.{minor}: native bf16")
        # Unmeasured here (no pre-Ampere GPU): fp16 needs a loss scaler that syncs with the host each step and a GAN
        # is fragile in it, so float32 is the safe default; train.mixed_precision: fp16 remains a choice.
        return Choice("no", f"compute capability {major}.{minor}: no native bf16")
    if device.type == "cpu":
        native, why = cpu_native_bf16()
        return Choice("bf16" if native else "no", why)
    return Choice("no", f"{device.type}: float32")


def channels_last(device, precision: str) -> bool:
    """train.channels_last `auto`: on CUDA, and on the CPU with bf16 (oneDNN's blocked bf16 kernels). In float32 on
    the CPU it measured level with PyTorch's default format or slower (BENCHMARKS.md), so that keeps the default."""
    return device.type == "cuda" or (device.type == "cpu" and precision == "bf16")


def resolved(params: Params, device) -> Params:
    """params with train.mixed_precision and train.channels_last `auto` resolved for `device` (channels_last by
    the precision the run takes, asked for or resolved)."""
    tc = params.train
    precision = choose(device).mixed_precision if tc.mixed_precision == AUTO else tc.mixed_precision
    cl = channels_last(device, precision) if tc.channels_last == AUTO else tc.channels_last
    if (precision, cl) == (tc.mixed_precision, tc.channels_last):
        return params
    return dataclasses.replace(params, train=dataclasses.replace(tc, mixed_precision=precision, channels_last=cl))


def describe(params: Params, device) -> str:
    """One line for the start of a stage: the precision and memory format it runs, and why."""
    tc, why = params.train, choose(device).why
    tc_done = resolved(params, device).train
    precision = {"no": "float32", "fp16": "fp16 autocast", "bf16": "bf16 autocast"}[tc_done.mixed_precision]
    how = "auto" if tc.mixed_precision == AUTO else "train.mixed_precision"
    return (f"precision: {precision}{', channels_last' if tc_done.channels_last else ''} on {device.type} "
            f"({how}; {why})")


@functools.cache
def warn_slow_bf16(requested: str, device_type: str) -> None:
    """One warning line, once per process, when bf16 is asked for explicitly on a CPU that only emulates it."""
    if requested != "bf16" or device_type != "cpu":
        return
    native, why = cpu_native_bf16()
    if not native:
        print(f"WARNING: train.mixed_precision is bf16, but this CPU only emulates it ({why}): bf16 autocast runs "
              "about 10x slower than float32 here; auto would pick float32 (no)", file=sys.stderr, flush=True)
