"""The training loop: outputs, every loss, reproducibility, exact resume, divergence and crash safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, run_tiny, tiny_params, train_paths

from pipeline.errors import DivergenceError
from pipeline.nets.weights import load_generator, load_weights
from pipeline.training import checkpoint, losses


def _weights(out):
    return load_weights(out / "models" / "generator.safetensors"), load_weights(
        out / "models" / "generator_ema.safetensors")


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_outputs(prepared_dir, tmp_path):
    metrics = run_tiny(prepared_dir, tmp_path)
    g, cfg = load_generator(tmp_path / "models" / "generator_ema.safetensors", tmp_path / "models" / "generator.json")
    assert cfg["net"]["image_size"] == 16 and cfg["data_hash"] and cfg["params"]["train"]["steps"] == 12
    assert cfg["net"]["num_classes"] == 10  # digits are labelled: model.conditional auto is on
    assert g(torch.randn(2, 16), torch.tensor([3, 7])).shape == (2, 1, 16, 16)
    saved = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert saved == metrics and saved["steps"] == 12 and saved["img_per_s"] > 0 and saved["world_size"] == 1
    rows = (tmp_path / "plots" / "train_loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,Loss_D,Loss_G,D_real_prob,D_fake_prob,D_real_score,D_fake_score")
    assert [r.split(",")[0] for r in rows[1:]] == ["4", "6", "8", "12"]  # log every 4, grid/checkpoint every 6
    for png in ("samples.png", "train_loss.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] is None  # tracking off


@pytest.mark.parametrize("loss", ["bce", "wgan", "wgan-gp", "hinge", "lsgan"])
def test_every_loss_trains_and_reports_its_terms(prepared_dir, tmp_path, loss):
    params = tiny_params(train={"loss": loss, "steps": 4, "n_critic": 2, "grad_clip_norm": 1.0})
    run_tiny(prepared_dir, tmp_path, params)
    header = (tmp_path / "plots" / "train_loss.csv").read_text().splitlines()[0].split(",")
    assert "Grad_norm_D" in header and "Grad_norm_G" in header
    assert ("Loss_gradient_penalty" in header) == (loss == "wgan-gp")
    assert ("Loss_wasserstein_estimate" in header) == (loss in ("wgan", "wgan-gp"))
    if loss == "wgan":
        _, cfg = load_generator(tmp_path / "models" / "generator.safetensors", tmp_path / "models" / "generator.json")
        assert cfg["net"]["d_norm"] == "batch"


def test_same_seed_same_generator_other_seed_differs(prepared_dir, tmp_path):
    run_tiny(prepared_dir, tmp_path / "a")
    run_tiny(prepared_dir, tmp_path / "b")
    run_tiny(prepared_dir, tmp_path / "c", tiny_params(train={"seed": 1}))
    for x, y in zip(_weights(tmp_path / "a"), _weights(tmp_path / "b"), strict=True):
        _assert_same(x, y)
    assert not torch.equal(_weights(tmp_path / "a")[0]["main.0.weight"], _weights(tmp_path / "c")[0]["main.0.weight"])


def test_resumed_run_equals_uninterrupted(prepared_dir, tmp_path):
    """Stop after 6 of 12 steps (a checkpoint), run again with 12: the result equals one 12-step run."""
    extra = {"grad_accum_steps": 2}
    full = tiny_params(train=extra, model={"dropout": 0.2})
    run_tiny(prepared_dir, tmp_path / "full", full)
    half = tiny_params(train={**extra, "steps": 6}, model={"dropout": 0.2})
    run_tiny(prepared_dir, tmp_path / "resumed", half)
    assert checkpoint.latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step-0000006"
    metrics = run_tiny(prepared_dir, tmp_path / "resumed", full)
    assert metrics["resumed_from_step"] == 6
    for x, y in zip(_weights(tmp_path / "full"), _weights(tmp_path / "resumed"), strict=True):
        _assert_same(x, y)
    # The loss history carries over the interruption: same rows, same values (the speed column aside).
    curves = [(tmp_path / d / "plots" / "train_loss.csv").read_text().splitlines() for d in ("full", "resumed")]
    assert [r.split(",")[:7] for r in curves[0]] == [r.split(",")[:7] for r in curves[1]]


def test_checkpoint_of_other_params_is_not_resumed(prepared_dir, tmp_path):
    run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 6}))
    metrics = run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 6, "lr_g": 1e-3}))
    assert metrics["resumed_from_step"] == 0


def test_a_half_written_checkpoint_is_ignored(prepared_dir, tmp_path):
    run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 6}))
    ckpts = tmp_path / "checkpoints"
    torn = ckpts / "step-0000012.tmp"  # what a crash during save_state leaves behind
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    assert checkpoint.latest_checkpoint(ckpts).name == "step-0000006"
    assert run_tiny(prepared_dir, tmp_path)["resumed_from_step"] == 6


def test_divergence_stops_with_the_step_and_keeps_the_last_checkpoint(prepared_dir, tmp_path, monkeypatch):
    real_g_loss = losses.g_loss
    calls = {"n": 0}

    def exploding(kind, fake, real=None):
        calls["n"] += 1
        out = real_g_loss(kind, fake, real)
        return out * float("nan") if calls["n"] == 9 else out  # the 9th G step

    monkeypatch.setattr(losses, "g_loss", exploding)
    with pytest.raises(DivergenceError, match=r"NaN or inf at step 9; the last good checkpoint is .*step-0000006"):
        run_tiny(prepared_dir, tmp_path)
    assert checkpoint.latest_checkpoint(tmp_path / "checkpoints").name == "step-0000006"
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(prepared_dir, tmp_path):
    """SIGKILL the stage process after its first checkpoint; re-running it must give the uninterrupted weights."""
    params = tmp_path / "params.yaml"
    import yaml
    from conftest import TINY

    from pipeline.config import parse_params

    raw = {k: dict(v) for k, v in TINY.items()}
    raw["train"].update(steps=60, checkpoint_every_steps=5, log_every_steps=5, sample_every_steps=30)
    params.write_text(yaml.safe_dump(parse_params(raw).to_dict()))  # a params file names every section

    def cmd(out):
        p = train_paths(prepared_dir, out)
        return [sys.executable, "-m", "stages.train", "--params", str(params), "--prepared", str(p.prepared),
                "--models", str(p.models), "--metrics", str(p.metrics), "--plots", str(p.plots),
                "--run-file", str(p.run_file), "--checkpoints", str(p.checkpoints)]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd(tmp_path / "full"), cwd=REPO, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while checkpoint.latest_checkpoint(ckpts) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "models").exists(), "the run finished before it could be killed"
    out = subprocess.run(cmd(tmp_path / "killed"), cwd=REPO, env=env, check=True, capture_output=True, text=True)
    assert "resuming from" in out.stdout + out.stderr
    for x, y in zip(_weights(tmp_path / "full"), _weights(tmp_path / "killed"), strict=True):
        _assert_same(x, y)


def test_steps_and_lr_auto_train_the_data_s_values_and_record_them(prepared_dir, tmp_path, monkeypatch):
    from pipeline.config import schema

    monkeypatch.setattr(schema, "AUTO_STEPS", {"digits": 8, "pictures": 10})  # the digits: 8 here, 2500 for real
    metrics = run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": "auto", "lr_g": "auto", "lr_d": "auto"}))
    assert metrics["steps"] == 8
    _, cfg = load_generator(tmp_path / "models" / "generator_ema.safetensors", tmp_path / "models" / "generator.json")
    train = cfg["params"]["train"]  # the generator's params hold the resolved values
    assert (train["steps"], train["lr_g"], train["lr_d"]) == (8, 2e-4, 2e-4)


def test_schedule_only_changes_still_resume(prepared_dir, tmp_path):
    run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 6}))
    later = tiny_params(train={"steps": 8, "log_every_steps": 2, "checkpoint_every_steps": 4})
    assert run_tiny(prepared_dir, tmp_path, later)["resumed_from_step"] == 6


def test_prepared_data_of_another_size_is_refused(prepared_dir, tmp_path):
    from pipeline.errors import DataError

    params = tiny_params(data={"image_size": 32})
    with pytest.raises(DataError, match=r"is 16 px but data.image_size is 32; run the prepare stage again"):
        run_tiny(prepared_dir, tmp_path, params)


def test_cpu_threads_use_the_cores_that_accelerate_launch_leaves_out(monkeypatch, tmp_path):
    from conftest import fresh_accelerator

    from pipeline import cores

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what `accelerate launch` exports on a CPU machine
    monkeypatch.setenv(cores.CLAIMS_ENV, str(tmp_path / "claims"))  # no other training on this "machine"
    cores.release()
    before = torch.get_num_threads()
    try:
        fresh_accelerator(tiny_params(train={"cpu_threads": 0}))
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        fresh_accelerator(tiny_params(train={"cpu_threads": 1}))
        assert torch.get_num_threads() == 1
    finally:
        cores.release()
        torch.set_num_threads(before)


def test_concurrent_trainings_split_the_cores(tmp_path):
    """Each training process claims its share: two of them on this machine take half the cores each, and a
    claim left by a dead process does not count."""
    import textwrap

    from pipeline import cores

    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "999999999").write_text("")  # a stale claim: nobody holds its lock
    code = textwrap.dedent(f"""
        import os, sys, time
        os.environ[{cores.CLAIMS_ENV!r}] = {str(claims)!r}
        from pipeline import cores
        cores.claim(4)
        print("claimed", flush=True)
        sys.stdin.readline()  # both have claimed: what share does each see now (as rebalance() asks at a tick)?
        print(*cores._share.share(), flush=True)
        sys.stdin.read()  # hold the claim until the test closes stdin
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["claimed", "claimed"]
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        shares = {tuple(p.stdout.readline().split()) for p in procs}
    finally:
        for p in procs:
            p.communicate("")
    assert shares == {("2", "2")}, shares
    assert not (claims / "999999999").exists()


def test_best_fid_generator_survives_a_resume(prepared_dir, tmp_path):
    """train.fid_every_steps keeps the best generator; DVC deletes models/ before a re-run, the checkpoint keeps it."""
    fids = iter([5.0, 4.0, 9.0, 9.0])  # best at step 6, no improvement after the resume
    params = tiny_params(train={"steps": 6, "fid_every_steps": 3})
    run_tiny(prepared_dir, tmp_path, params, evaluator=lambda g: next(fids))
    best = tmp_path / "models" / "generator_best.safetensors"
    saved = best.read_bytes()
    shutil.rmtree(tmp_path / "models")
    metrics = run_tiny(prepared_dir, tmp_path, tiny_params(train={"steps": 12, "fid_every_steps": 3}),
                       evaluator=lambda g: next(fids))
    assert metrics["resumed_from_step"] == 6 and best.read_bytes() == saved
    rows = (tmp_path / "plots" / "train_loss.csv").read_text().splitlines()
    assert "Eval_fid" in rows[0]
