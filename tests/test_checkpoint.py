"""Checkpoints per fingerprint: switching experiments and back resumes, a bounded LRU, the old flat layout."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from conftest import run_tiny, tiny_params
from safetensors import SafetensorError

from pipeline.data import read_meta
from pipeline.errors import DivergenceError
from pipeline.nets.weights import load_weights
from pipeline.training import checkpoint, losses
from pipeline.training import ema as ema_module
from pipeline.training.build import fingerprint

A = {"steps": 6}  # the tiny defaults: bce
B = {"steps": 6, "loss": "wgan-gp"}


def _fp(prepared, **train) -> str:
    return fingerprint(tiny_params(train=train), read_meta(prepared))


def _assert_same_generators(x, y):
    for name in ("generator.safetensors", "generator_ema.safetensors"):
        a, b = load_weights(x / "models" / name), load_weights(y / "models" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def _resumed_from(out) -> int:
    return json.loads((out / "metrics" / "train.json").read_text())["resumed_from_step"]


def test_a_then_b_then_a_resumes_a(prepared_dir, tmp_path, capsys):
    out, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    run_tiny(prepared_dir, out, tiny_params(train=A))
    run_tiny(prepared_dir, out, tiny_params(train=B))
    fa, fb = _fp(prepared_dir, **A), _fp(prepared_dir, **B)
    assert f"starting at step 0: no checkpoint of these data/model/train params in {ckpts / fb} (kept: those of 1 " \
           "other params)" in capsys.readouterr().out
    assert fa != fb
    assert checkpoint.latest_checkpoint(ckpts, fb) == ckpts / fb / "step-0000006"
    assert checkpoint.latest_checkpoint(ckpts, fa) == ckpts / fa / "step-0000006"  # B deleted nothing of A's
    run_tiny(prepared_dir, out, tiny_params(train={"steps": 12}))
    assert _resumed_from(out) == 6
    run_tiny(prepared_dir, tmp_path / "full", tiny_params(train={"steps": 12}))
    _assert_same_generators(out, tmp_path / "full")
    assert checkpoint.latest_checkpoint(ckpts, fa).name == "step-0000012"
    assert checkpoint.latest_checkpoint(ckpts, fb).name == "step-0000006"
    for home in (ckpts / fa, ckpts / fb):  # keep_checkpoints 2, nothing half-written
        assert sorted(p.name for p in home.iterdir()) <= ["last-used", "latest", "step-0000006", "step-0000012"]


def test_fingerprints_beyond_the_bound_evict_the_least_recently_used(prepared_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_FINGERPRINTS", 2)
    out, ckpts = tmp_path, tmp_path / "checkpoints"
    a, b, c = A, B, {"steps": 6, "lr_g": 1e-3}
    run_tiny(prepared_dir, out, tiny_params(train=a))
    run_tiny(prepared_dir, out, tiny_params(train=b))
    run_tiny(prepared_dir, out, tiny_params(train=a))  # resumes at its end: no new checkpoint, but A is used now
    assert _resumed_from(out) == 6
    run_tiny(prepared_dir, out, tiny_params(train=c))  # a third fingerprint: B, the least recently used, goes
    fa, fb, fc = (_fp(prepared_dir, **t) for t in (a, b, c))
    assert sorted(p.name for p in ckpts.iterdir()) == sorted([fa, fc])
    assert fb not in {fa, fc}
    run_tiny(prepared_dir, out, tiny_params(train=a))
    assert _resumed_from(out) == 6


def _flatten(ckpts, fp):
    """Rewrite the per-fingerprint layout as the flat one of earlier versions."""
    for step in (ckpts / fp).glob("step-*"):
        shutil.move(step, ckpts / step.name)
    (ckpts / "latest").write_text((ckpts / fp / "latest").read_text())
    shutil.rmtree(ckpts / fp)


def test_old_flat_layout_is_migrated_and_resumed(prepared_dir, tmp_path):
    ckpts = tmp_path / "checkpoints"
    run_tiny(prepared_dir, tmp_path, tiny_params(train=A))
    fa = _fp(prepared_dir, **A)
    _flatten(ckpts, fa)
    torn = ckpts / "step-0000012.tmp"  # what a crash during an old-layout write leaves behind
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    odd = ckpts / "step-0000003"  # a flat step whose fingerprint cannot be read: left alone, never resumed
    odd.mkdir()
    (odd / "loop.json").write_text("{not json")
    assert checkpoint.latest_checkpoint(ckpts).name == "step-0000006"  # the flat pointer still reads

    run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 12}))
    assert _resumed_from(tmp_path) == 6
    run_tiny(prepared_dir, tmp_path / "full", tiny_params(train={"steps": 12}))
    _assert_same_generators(tmp_path, tmp_path / "full")
    assert sorted(p.name for p in ckpts.iterdir()) == sorted([fa, "step-0000003"])
    assert checkpoint.latest_checkpoint(ckpts, fa).name == "step-0000012"


def test_flat_layout_of_other_params_is_kept_under_its_fingerprint(prepared_dir, tmp_path):
    ckpts = tmp_path / "checkpoints"
    run_tiny(prepared_dir, tmp_path, tiny_params(train=B))
    fb = _fp(prepared_dir, **B)
    _flatten(ckpts, fb)
    assert run_tiny(prepared_dir, tmp_path, tiny_params(train=A))["resumed_from_step"] == 0
    assert checkpoint.latest_checkpoint(ckpts, fb) == ckpts / fb / "step-0000006"
    assert not (ckpts / "latest").exists()


def test_torn_write_inside_a_fingerprint_dir_is_ignored_and_swept(prepared_dir, tmp_path):
    ckpts = tmp_path / "checkpoints"
    run_tiny(prepared_dir, tmp_path, tiny_params(train=A))
    home = ckpts / _fp(prepared_dir, **A)
    for name in ("step-0000012.tmp", "step-0000004.old"):  # a kill mid-write, a kill mid-delete
        (home / name).mkdir()
        (home / name / "model.safetensors").write_bytes(b"partial")
    (home / "latest.tmp").write_text("step-00")
    assert checkpoint.latest_checkpoint(ckpts, home.name).name == "step-0000006"
    assert run_tiny(prepared_dir, tmp_path)["resumed_from_step"] == 6
    assert sorted(p.name for p in home.iterdir()) == ["last-used", "latest", "step-0000006", "step-0000012"]
    for step in ("step-0000006", "step-0000012"):
        assert checkpoint.verify_checkpoint(home / step)["step"] == int(step[-7:])


def test_divergence_names_this_fingerprints_checkpoint_not_another_ones(prepared_dir, tmp_path, monkeypatch):
    run_tiny(prepared_dir, tmp_path, tiny_params(train=B))
    real_g_loss, calls = losses.g_loss, {"n": 0}

    def exploding(kind, fake, real=None):
        calls["n"] += 1
        out = real_g_loss(kind, fake, real)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(losses, "g_loss", exploding)
    with pytest.raises(DivergenceError, match=r"at step 3; the last good checkpoint is none \(none was written"):
        run_tiny(prepared_dir, tmp_path, tiny_params(train=A))
    monkeypatch.setattr(losses, "g_loss", real_g_loss)
    run_tiny(prepared_dir, tmp_path, tiny_params(train=A))  # A's first checkpoint; then every loss is NaN
    home = tmp_path / "checkpoints" / _fp(prepared_dir, **A)
    monkeypatch.setattr(losses, "g_loss", lambda kind, fake, real=None: real_g_loss(kind, fake, real) * float("nan"))
    with pytest.raises(DivergenceError, match=re.escape(f"the last good checkpoint is {home / 'step-0000006'}.")):
        run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 12}))


def test_failed_write_raises_and_keeps_the_last_good_checkpoint(prepared_dir, tmp_path, monkeypatch):
    """A checkpoint write that fails midway (here: safetensors reports a full disk) leaves no .tmp dir, raises the
    OSError, and leaves `latest` naming the previous complete checkpoint."""
    ckpts = tmp_path / "checkpoints"
    run_tiny(prepared_dir, tmp_path, tiny_params(train=A))
    home = ckpts / _fp(prepared_dir, **A)
    real_save = ema_module.save_file

    def full(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ema_module, "save_file", full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 12}))
    assert caught.value.errno == 28 and caught.value.filename == str(home / "step-0000012.tmp")
    assert sorted(p.name for p in home.iterdir()) == ["last-used", "latest", "step-0000006"]
    assert checkpoint.latest_checkpoint(ckpts, home.name) == home / "step-0000006"
    checkpoint.verify_checkpoint(home / "step-0000006")


def test_unreadable_checkpoint_files_are_reported(prepared_dir, tmp_path):
    run_tiny(prepared_dir, tmp_path, tiny_params(train=A))
    step = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    with open(step / "optimizer.bin", "r+b") as f:
        f.truncate(os.path.getsize(step / "optimizer.bin") // 2)
    with pytest.raises(checkpoint.WeightsError, match=r"checkpoint file .*/optimizer.bin is unreadable"):
        checkpoint.verify_checkpoint(step)
    (step / "ema.safetensors").unlink()
    with pytest.raises(checkpoint.WeightsError, match=r"has no ema.safetensors"):
        checkpoint.verify_checkpoint(step)
