"""`auto` precision and memory format: the rule, with the hardware's answer faked, and where the resolved value is
recorded (MLflow params, generator.json, the checkpoint fingerprint, a resumed run)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fresh_accelerator, run_tiny, tiny_params

from pipeline import hardware
from pipeline.config import parse_params
from pipeline.training.build import fingerprint

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
AUTO = {"mixed_precision": "auto", "channels_last": "auto"}


@pytest.fixture
def cpu_flags(monkeypatch):
    """Fake /proc/cpuinfo's flags on an x86 machine with no emulation caps set."""
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)

    def fake(*flags: str) -> None:
        monkeypatch.setattr(hardware, "_cpu_flags", lambda: set(flags))

    return fake


@pytest.mark.parametrize(("flags", "precision", "channels_last"), [
    (("avx2", "avx512f", "avx512_bf16"), "bf16", True),  # Cooper Lake, Zen 4
    (("avx2", "avx512f", "amx_bf16", "amx_tile"), "bf16", True),  # Sapphire Rapids
    (("avx2", "avx512f"), "no", False),  # Skylake-X: AVX-512 without BF16
    (("avx2", "fma"), "no", False),  # Zen 2/3, Intel consumer parts
])
def test_cpu_auto_is_bf16_only_where_it_is_native(cpu_flags, flags, precision, channels_last):
    cpu_flags(*flags)
    assert hardware.choose(CPU).mixed_precision == precision
    p = hardware.resolved(parse_params({"train": AUTO}), CPU)
    assert (p.train.mixed_precision, p.train.channels_last) == (precision, channels_last)


def test_cpu_auto_follows_the_emulation_caps(cpu_flags, monkeypatch):
    """ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16 (how benchmarks.isa_speed emulates an older CPU) means float32."""
    cpu_flags("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.choose(CPU).mixed_precision == "no"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in hardware.choose(CPU).why
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert hardware.choose(CPU).mixed_precision == "bf16"


def test_arm_auto_needs_the_bf16_extension(monkeypatch):
    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(hardware.sys, "platform", "linux")
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: {"fp", "asimd", "sve", "bf16"})
    assert hardware.choose(CPU).mixed_precision == "bf16"
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: {"fp", "asimd"})
    assert hardware.choose(CPU).mixed_precision == "no"
    monkeypatch.setattr(hardware.sys, "platform", "darwin")  # no /proc/cpuinfo: macOS's sysctl answers
    for m1_or_m2, precision in ((False, "no"), (True, "bf16")):
        monkeypatch.setattr(hardware, "_macos_bf16", lambda answer=m1_or_m2: answer)
        assert hardware.choose(CPU).mixed_precision == precision


@pytest.mark.parametrize(("capability", "precision"), [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "no"),
                                                       ((6, 1), "no")])
def test_cuda_auto_is_bf16_from_compute_capability_8(monkeypatch, capability, precision):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    choice = hardware.choose(CUDA)
    assert choice.mixed_precision == precision and f"{capability[0]}.{capability[1]}" in choice.why
    p = hardware.resolved(parse_params({"train": AUTO}), CUDA)
    assert (p.train.mixed_precision, p.train.channels_last) == (precision, True)


def test_explicit_values_are_obeyed(cpu_flags):
    cpu_flags("avx2")
    p = hardware.resolved(parse_params({"train": {"mixed_precision": "bf16", "channels_last": True}}), CPU)
    assert (p.train.mixed_precision, p.train.channels_last) == ("bf16", True)


@pytest.mark.parametrize(("precision", "channels_last"), [("no", False), ("bf16", True)])
def test_auto_channels_last_follows_the_precision_asked_for(cpu_flags, precision, channels_last):
    """float32 asked for on a CPU with native bf16 keeps the default format, as float32 chosen by auto does."""
    cpu_flags("avx512_bf16", "amx_bf16")
    p = hardware.resolved(parse_params({"train": {"mixed_precision": precision}}), CPU)
    assert (p.train.mixed_precision, p.train.channels_last) == (precision, channels_last)


def test_explicit_bf16_on_a_cpu_without_it_warns_once_in_one_line(cpu_flags, capsys):
    cpu_flags("avx2", "fma")
    hardware.warn_slow_bf16.cache_clear()
    for _ in range(3):
        hardware.warn_slow_bf16("bf16", "cpu")
    hardware.warn_slow_bf16("no", "cpu")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "10x slower" in lines[0] and "auto would pick float32" in lines[0], lines
    cpu_flags("avx512_bf16")
    hardware.warn_slow_bf16.cache_clear()
    hardware.warn_slow_bf16("bf16", "cpu")
    assert capsys.readouterr().err == ""


def test_the_accelerator_runs_the_resolved_precision(cpu_flags):
    cpu_flags("avx2")
    assert fresh_accelerator(parse_params({"train": AUTO})).mixed_precision == "no"
    cpu_flags("avx512_bf16")
    assert fresh_accelerator(parse_params({"train": AUTO})).mixed_precision == "bf16"


def test_the_fingerprint_holds_the_resolved_value(cpu_flags):
    meta = {"hash": "h"}
    auto = parse_params({"train": AUTO})
    for flags, explicit in ((("avx2",), "no"), (("avx512_bf16",), "bf16")):
        cpu_flags(*flags)
        same = parse_params({"train": {"mixed_precision": explicit, "channels_last": explicit == "bf16"}})
        assert fingerprint(hardware.resolved(auto, CPU), meta) == fingerprint(same, meta)
    cpu_flags("avx2")
    on_avx2 = fingerprint(hardware.resolved(auto, CPU), meta)
    assert fingerprint(auto, meta) == on_avx2  # unresolved params are resolved for the CPU, as the stage would
    cpu_flags("avx512_bf16")
    assert fingerprint(hardware.resolved(auto, CPU), meta) != on_avx2  # another precision is another trajectory


def test_a_run_records_the_resolved_value_and_resumes_with_it(prepared_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    chosen = hardware.resolved(parse_params({"train": AUTO}), CPU).train
    tracked = {"enabled": True, "uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "auto"}
    run_tiny(prepared_dir, tmp_path, tiny_params(train={**AUTO, "steps": 6}, tracking=tracked))
    out = capsys.readouterr().out
    assert f"precision: {'bf16 autocast' if chosen.mixed_precision == 'bf16' else 'float32'}" in out
    recorded = json.loads((tmp_path / "models" / "generator.json").read_text())["params"]["train"]
    assert (recorded["mixed_precision"], recorded["channels_last"]) == (chosen.mixed_precision, chosen.channels_last)
    from mlflow import MlflowClient

    run_id = json.loads((tmp_path / "run.json").read_text())["run_id"]
    logged = MlflowClient(tracked["uri"]).get_run(run_id).data.params
    assert logged["train.mixed_precision"] == chosen.mixed_precision
    assert logged["train.channels_last"] == str(chosen.channels_last)
    metrics = run_tiny(prepared_dir, tmp_path, tiny_params(train={**AUTO, "steps": 12}, tracking=tracked))
    assert metrics["resumed_from_step"] == 6
