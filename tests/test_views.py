"""What a person watches: `dvc plots show` (each plot once, drawn offline), progress lines with an ETA, and D's
logged outputs named for what they are."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_tiny, tiny_params, varied_generator

from pipeline.training.outputs import _write_curves

TEMPLATE = REPO / "vega_bundle" / "template.html"
BUNDLES = {"vega": "vega 5.", "vega-lite": "vega-lite 5.", "vega-embed": "vega-embed 6."}  # the banner of each
ETA = r", (\d+\.\d) s elapsed, ETA (\d+) s$"


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> tuple[Path, dict]:
    """The repo's dvc.yaml, DVC config and Vega bundle in a new git repo, with plot files as the stages write them;
    returns the root and the parsed `dvc plots show --json`."""
    from PIL import Image

    root = tmp_path_factory.mktemp("plots")
    for f in ("dvc.yaml", "params.yaml", ".dvc/config"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    if TEMPLATE.exists():
        shutil.copytree(TEMPLATE.parent, root / TEMPLATE.parent.name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for d in ("train", "eval"):
        (root / "plots" / d).mkdir(parents=True)
        Image.new("RGB", (18, 18)).save(root / "plots" / d / "samples.png")
    history = [{"step": s, "Loss/D": 1.0 + s / 100, "Loss/G": 2.0 - s / 100, "D/real_prob": 0.6, "D/fake_prob": 0.4,
                "Speed/img_per_s": 500.0} for s in (10, 20, 30)]
    _write_curves(history, root / "plots" / "train")  # the CSV and PNG as the train stage writes them
    dvc = [str(Path(sys.executable).parent / "dvc"), "plots", "show"]
    env = {"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin", "HOME": str(root)}
    shown = subprocess.run(dvc + ["--json"], cwd=root, env=env, capture_output=True, text=True, check=True)
    subprocess.run(dvc + ["-o", "page"], cwd=root, env=env, capture_output=True, text=True, check=True)
    return root, json.loads(shown.stdout)


def test_each_plot_is_declared_once(plots_repo):
    root, shown = plots_repo
    assert not shown.get("errors"), shown["errors"]  # every y column dvc.yaml names is in the CSV
    top = yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
    curves = {name for d in top if isinstance(d, dict) for name, props in d.items() if props and "y" in props}
    vega = {k for k, v in shown["data"].items() if v and v[0]["type"] == "vega"}
    assert vega == curves  # no second copy drawn from a stage's `plots:` directory
    images = re.findall(r'<img src="(static/[^"]+)"', (root / "page" / "index.html").read_text())
    assert len(images) == 3 and len(set(images)) == len(images), images


def test_plot_page_carries_its_own_vega(plots_repo):
    root, _ = plots_repo
    page = (root / "page" / "index.html").read_text()  # DVC picked the template up from .dvc/config
    for text in (TEMPLATE.read_text(encoding="utf8"), page):
        tags = re.sub(r"<script[^>]*>.*?</script>", "<script></script>", text, flags=re.S)  # markup outside scripts
        assert not re.search(r"https?://", tags), "the page would fetch something"
        assert not re.search(r"<script[^>]+src=", text)
        for banner in BUNDLES.values():
            assert f"/*! {banner}" in text, banner
    assert page.count("vegaEmbed(") >= 2  # the two curve plots
    for name in BUNDLES:
        assert "Redistribution and use in source and binary forms" in (TEMPLATE.parent / f"LICENSE.{name}").read_text()
    assert TEMPLATE.stat().st_size < 1_000_000


def test_progress_eta_counts_from_the_resumed_step():
    from pipeline.progress import Progress

    now = [0.0]
    p = Progress("step", 100, start=50, lines=5, clock=lambda: now[0])
    now[0] = 10.0
    assert p.line(60, D=1.23456) == "step 60/100 D=1.235, 10.0 s elapsed, ETA 40 s"  # 10 steps in 10 s, 40 left
    lines = []
    p.stream = type("Out", (), {"write": lambda _, s: lines.append(s), "flush": lambda _: None})()
    for done in range(51, 101):
        p.update(done)
    assert [ln.split()[1] for ln in lines if ln.strip()] == ["60/100,", "70/100,", "80/100,", "90/100,", "100/100,"]


def test_train_prints_one_line_per_tick_with_elapsed_and_eta(prepared_dir, tmp_path, capsys, one_thread):
    run_tiny(prepared_dir, tmp_path)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["4/12", "6/12", "8/12", "12/12"]  # the ticks of TINY
    assert all(re.search(ETA, ln) for ln in lines), lines
    assert re.search(ETA, lines[-1]).group(2) == "0"


@pytest.fixture(scope="module")
def classifier_run(prepared_dir, tmp_path_factory) -> tuple[Path, str]:
    """The classifier stage run for 30 steps: (its output directory, what it printed)."""
    import io
    from contextlib import redirect_stdout

    from stages import classifier as stage

    out, buf = tmp_path_factory.mktemp("classifier"), io.StringIO()
    with redirect_stdout(buf):
        stage.main(["--params", str(REPO / "params.yaml"), "--set", "eval.classifier_steps=30", "--prepared",
                    str(prepared_dir), "--out", str(out / "cls"), "--metrics", str(out / "classifier.json")])
    return out / "cls", buf.getvalue()


def test_classifier_stage_prints_progress(classifier_run):
    lines = [ln for ln in classifier_run[1].splitlines() if ln.startswith("classifier: step ")]
    assert [ln.split()[2] for ln in lines] == [f"{k}/30" for k in range(3, 31, 3)]  # about 10 lines a run
    assert all(re.search(r"loss=[\d.]+" + ETA, ln) for ln in lines), lines


def test_evaluate_prints_progress_while_it_embeds(classifier_run, prepared_dir, tmp_path, monkeypatch, capsys):
    from pipeline.config import parse_params
    from pipeline.data import load_split
    from pipeline.evaluation import scorer as metrics

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch-fidelity's feature cache
    cfg = parse_params({"eval": {"kid_subset_size": 50, "batch_size": 50}}).eval
    scorer = metrics.make_scorer(cfg, prepared_dir, classifier_run[0], progress=True)
    scorer.generator_features(varied_generator(), 200, seed=0)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("evaluate: classifier-digits will embed ") and " about " in out[0]
    total = len(load_split(prepared_dir, "ref").images) + 200  # one count for the reference and generated sets
    generated = [ln for ln in out if ln.startswith("evaluate: images embedded (generated samples) ")]
    assert generated and all(ln.split()[5].endswith(f"/{total},") for ln in generated), generated
    assert generated[-1].split()[5] == f"{total}/{total}," and all(re.search(ETA, ln) for ln in generated)
    assert any(ln.startswith("evaluate: images embedded (reference images) ") for ln in out)
    metrics.make_scorer(cfg, prepared_dir, classifier_run[0]).generator_features(varied_generator(), 200, seed=0)
    assert "evaluate:" not in capsys.readouterr().out  # train's FID evaluator stays quiet


PROB, SCORE = ("D_real_prob", "D_fake_prob"), ("D_real_score", "D_fake_score")


@pytest.mark.parametrize("loss, names, other", [("bce", PROB, SCORE), ("wgan", SCORE, PROB)])
def test_d_outputs_are_probabilities_under_bce_and_critic_scores_otherwise(prepared_dir, tmp_path, one_thread, loss,
                                                                           names, other):
    metrics = run_tiny(prepared_dir, tmp_path, tiny_params(train={"loss": loss, "steps": 4}))
    header, *rows = [r.split(",") for r in (tmp_path / "plots" / "train_loss.csv").read_text().splitlines()]
    cols = [dict(zip(header, r, strict=True)) for r in rows]
    values = [float(c[n]) for c in cols for n in names]
    assert all(math.isfinite(v) for v in values)
    assert all(c[n] == "nan" for c in cols for n in other)  # the plots skip nan, and the columns stay put
    if loss == "bce":
        assert all(0.0 < v < 1.0 for v in values)
    assert {n.lower() for n in names} <= metrics.keys() and not {n.lower() for n in other} & metrics.keys()
