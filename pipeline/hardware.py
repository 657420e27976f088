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
    """What `auto` resolves to on one device, and why (one line for the log)."""

    mixed_precision: str  # no | fp16 | bf16, as Accelerate spells it
    channels_last: bool
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


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively for torch (oneDNN's convolutions and matmuls), and the reason."""
    flags, machine = _cpu_flags(), platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        if "bf16" in flags or sys.platform == "darwin":  # Apple's M2 and later have it; M1 is rare under torch CPU
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
            return Choice("bf16", True, f"compute capability {major}.{minor}: native bf16")
        # Unmeasured here (no pre-Ampere GPU): fp16 needs a loss scaler that syncs with the host each step and a GAN
        # is fragile in it, so float32 is the safe default; train.mixed_precision: fp16 remains a choice.
        return Choice("no", True, f"compute capability {major}.{minor}: no native bf16")
    if device.type == "cpu":
        native, why = cpu_native_bf16()
        # channels_last pairs with bf16 (oneDNN's blocked bf16 kernels); in float32 it measured level with the
        # default format (BENCHMARKS.md), so fp32 keeps PyTorch's default format.
        return Choice("bf16", True, why) if native else Choice("no", False, why)
    return Choice("no", False, f"{device.type}: float32")


def resolved(params: Params, device) -> Params:
    """params with train.mixed_precision and train.channels_last `auto` resolved for `device`."""
    tc, choice = params.train, choose(device)
    changes = {}
    if tc.mixed_precision == AUTO:
        changes["mixed_precision"] = choice.mixed_precision
    if tc.channels_last == AUTO:
        changes["channels_last"] = choice.channels_last
    return dataclasses.replace(params, train=dataclasses.replace(tc, **changes)) if changes else params


def describe(params: Params, device) -> str:
    """One line for the start of a stage: the precision and memory format it runs, and why."""
    tc, choice = params.train, choose(device)
    tc_done = resolved(params, device).train
    precision = {"no": "float32", "fp16": "fp16 autocast", "bf16": "bf16 autocast"}[tc_done.mixed_precision]
    how = "auto" if tc.mixed_precision == AUTO else "train.mixed_precision"
    return (f"precision: {precision}{', channels_last' if tc_done.channels_last else ''} on {device.type} "
            f"({how}; {choice.why})")


@functools.cache
def warn_slow_bf16(requested: str, device_type: str) -> None:
    """One warning line, once per process, when bf16 is asked for explicitly on a CPU that only emulates it."""
    if requested != "bf16" or device_type != "cpu":
        return
    native, why = cpu_native_bf16()
    if not native:
        print(f"WARNING: train.mixed_precision is bf16, but this CPU only emulates it ({why}): bf16 autocast runs "
              "about 10x slower than float32 here; auto would pick float32 (no)", file=sys.stderr, flush=True)
