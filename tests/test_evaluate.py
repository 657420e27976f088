"""The classifier and evaluate stages end to end: eval.json format, MLflow logging, weights choice, one-line errors,
train-time FID, Inception from a local file, and distributed (2 CPU processes) == single-process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import varied_generator

from pipeline.config import DataConfig, TrackingConfig, parse_params
from pipeline.data import prepare
from pipeline.nets import NetConfig
from pipeline.nets.weights import save_generator
from pipeline.tracking.tracker import Tracker
from stages import classifier as classifier_stage
from stages import evaluate as evaluate_stage
from stages import train as train_stage

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "eval.num_samples=200", "--set", "eval.kid_subset_size=100", "--set", "tracking.enabled=false"]
INFO_KEYS = {"extractor", "num_samples", "weights", "data_hash"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """prepared/ (16 px digits), classifier/ (150 steps, via its stage), models/ (ema and last differ)."""
    root = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch_home"))
        (root / "params.yaml").write_text(yaml.safe_dump(parse_params({"data": {"image_size": 16}}).to_dict()))
        meta = prepare(DataConfig(image_size=16), root / "prepared")
        classifier_stage.main(["--params", str(root / "params.yaml"), "--prepared", str(root / "prepared"),
                               "--out", str(root / "classifier"), "--metrics", str(root / "metrics/classifier.json"),
                               "--set", "eval.classifier_steps=150"])
        cfg = NetConfig(z_dim=16, image_size=16, channels=1, g_channels=8)
        extra = {"data_hash": meta["hash"], "params": {"train": {"steps": 7}}}
        save_generator(varied_generator(0), root / "models/generator_ema.safetensors", None, cfg)
        save_generator(varied_generator(1), root / "models/generator.safetensors", root / "models/generator.json",
                       cfg, extra)
        yield {"root": root, "meta": meta}


def stage_args(root: Path, out: Path, models: Path | None = None, prepared: Path | None = None) -> list[str]:
    return ["--params", str(root / "params.yaml"), "--prepared", str(prepared or root / "prepared"), "--models",
            str(models or root / "models"), "--classifier", str(root / "classifier"), "--run-file",
            str(root / "run.json"), "--metrics", str(out / "eval.json"), "--plots", str(out / "plots")]


def run_stage(main, args: list[str]) -> None:
    """One stage, in-process, as its CLI runs it; Accelerate's process-wide state is reset first, as a new
    process would have it."""
    from accelerate.state import AcceleratorState

    from pipeline.commands import runner as cli

    AcceleratorState._reset_state(reset_partial_state=True)
    cli.run(main, args)


def test_classifier_stage_reports_held_out_accuracy(pipe):
    m = json.loads((pipe["root"] / "metrics/classifier.json").read_text())
    assert m["labelled"] and m["extractor"] == "classifier-digits" and m["steps"] == 150
    assert m["ref_accuracy"] > 0.9  # 8x8 digits are easy; 150 steps already separate them
    info = json.loads((pipe["root"] / "classifier/classifier.json").read_text())
    assert info["data_hash"] == pipe["meta"]["hash"] and info["ref_accuracy"] == m["ref_accuracy"]


def test_evaluate_writes_eval_json_and_grid_and_logs_them_to_the_run(pipe, tmp_path):
    root = pipe["root"]
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t", tensorboard=False)
    tracker = Tracker(tracking)
    tracker.write_run_file(root / "run.json")
    tracker.close()
    sets = ["--set", f"tracking.uri={tracking.uri}", "--set", "tracking.experiment=t"]
    run_stage(evaluate_stage.main, stage_args(root, root / "a") + FAST[:4] + sets)
    report = json.loads((root / "a/eval.json").read_text())
    assert set(report) == {"classifier-digits", "eval_info"}
    assert report["eval_info"] == {"extractor": "classifier-digits", "extractor_comparable": "in-domain only",
                                   "num_samples": 200, "weights": "ema", "data_hash": pipe["meta"]["hash"],
                                   "conditional": False, "kid_subset_size": 100}
    scores = report["classifier-digits"]
    assert set(scores) == {"inception_score_mean", "inception_score_std", "frechet_inception_distance",
                           "kernel_inception_distance_mean", "kernel_inception_distance_std", "precision", "recall",
                           "f_score"}
    assert all(math.isfinite(v) for v in scores.values()) and scores["frechet_inception_distance"] > 0
    from PIL import Image

    assert Image.open(root / "a/plots/samples.png").size == (8 * 18 + 2, 8 * 18 + 2)  # 64 samples of 16 px
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.uri)
    run = client.get_run(tracker.run_id)
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
    assert logged == pytest.approx({f"eval/classifier-digits/{k}": v for k, v in scores.items()})
    history = client.get_metric_history(tracker.run_id, "eval/classifier-digits/frechet_inception_distance")
    assert [m.step for m in history] == [7]  # the trained generator's step
    assert "samples.png" in {Path(a.path).name for a in client.list_artifacts(tracker.run_id, "eval")}
    assert run.info.status == "FINISHED"


def test_weights_choice_and_missing_generator_files_give_one_line_errors(pipe, capsys):
    root = pipe["root"]
    run_stage(evaluate_stage.main, stage_args(root, root / "ema") + FAST)
    run_stage(evaluate_stage.main, stage_args(root, root / "last") + FAST + ["--set", "eval.weights=last"])
    ema, last = (json.loads((root / d / "eval.json").read_text()) for d in ("ema", "last"))
    assert last["eval_info"]["weights"] == "last"
    fid = "frechet_inception_distance"
    assert ema["classifier-digits"][fid] != last["classifier-digits"][fid]
    capsys.readouterr()
    x = root / "x"
    cases = [
        (stage_args(root, x) + FAST + ["--set", "eval.weights=best"], "train.fid_every_steps > 0"),
        (stage_args(root, x, models=root / "no-models") + FAST, "run the train stage first"),
        (stage_args(root, x) + FAST + ["--set", "eval.kid_subset_size=400", "--set", "eval.num_samples=400"],
         "reference split has 359 images, fewer than eval.kid_subset_size=400"),
    ]
    for args, hint in cases:
        with pytest.raises(SystemExit) as e:
            run_stage(evaluate_stage.main, args)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 1 and len(err) == 1 and err[0].startswith("error: ") and hint in err[0], err
    assert not (root / "x/eval.json").exists()


def test_train_time_fid_keeps_a_best_generator_that_evaluate_can_score(pipe, tmp_path):
    root = pipe["root"]
    sets = ["--set", "train.steps=4", "--set", "train.batch_size=16", "--set", "train.fid_every_steps=2",
            "--set", "train.mixed_precision=no", "--set", "train.log_every_steps=2", "--set", "model.z_dim=16",
            "--set", "model.g_channels=8", "--set", "model.d_channels=8", "--set", "eval.train_fid_samples=100",
            "--set", "tracking.enabled=false"]
    args = ["--params", str(root / "params.yaml"), "--prepared", str(root / "prepared"), "--models",
            str(tmp_path / "models"), "--metrics", str(tmp_path / "train.json"), "--plots", str(tmp_path / "plots"),
            "--run-file", str(tmp_path / "run.json"), "--checkpoints", str(tmp_path / "ckpt")]
    run_stage(train_stage.main, args + ["--classifier", str(root / "classifier")] + sets)
    assert (tmp_path / "models/generator_best.safetensors").exists()
    header = (tmp_path / "plots/train_loss.csv").read_text().splitlines()
    fids = [row.split(",")[header[0].split(",").index("Eval_fid")] for row in header[1:]]
    assert len([f for f in fids if f]) == 2 and all(float(f) > 0 for f in fids if f)
    out = tmp_path / "eval"
    run_stage(evaluate_stage.main, stage_args(root, out, models=tmp_path / "models") + FAST +
              ["--set", "eval.weights=best"])
    assert json.loads((out / "eval.json").read_text())["eval_info"]["weights"] == "best"
    with pytest.raises(SystemExit):  # FID during training needs the classifier it scores with
        run_stage(train_stage.main, args + sets)


@pytest.mark.slow
def test_inception_from_a_local_weights_file_runs_end_to_end(pipe, tmp_path, monkeypatch):
    """WIRING ONLY: the weights are a randomly initialised state dict of the right shape, so the numbers mean
    nothing. It checks that eval.inception_weights reaches torch-fidelity, grey digits are fed as RGB, nothing is
    downloaded, and the results are filed under inception-v3-compat with a cache keyed by the file's hash."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(inc, "URL_INCEPTION_V3", "http://127.0.0.1:9/must-not-download.pth")
    with monkeypatch.context() as m:  # build the module without weights, to get a state dict of the right shape
        m.setattr(inc, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        state = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    torch.save(state, tmp_path / "random-inception.pth")  # ~95 MB
    root = pipe["root"]
    prepare(DataConfig(image_size=16, ref_fraction=0.02), tmp_path / "prepared")  # 36 reference images
    weights = tmp_path / "random-inception.pth"
    args = stage_args(root, root / "inc", models=tmp_path / "models", prepared=tmp_path / "prepared") + [
        "--set", "eval.extractor=inception-v3-compat", "--set", f"eval.inception_weights={weights}",
        "--set", "eval.num_samples=30", "--set", "eval.kid_subset_size=20", "--set", "eval.batch_size=15",
        "--set", "tracking.enabled=false"]
    meta = json.loads((tmp_path / "prepared/meta.json").read_text())
    cfg = NetConfig(z_dim=16, image_size=16, channels=1, g_channels=8)
    save_generator(varied_generator(0), tmp_path / "models/generator_ema.safetensors",
                   tmp_path / "models/generator.json", cfg, {"data_hash": meta["hash"]})
    run_stage(evaluate_stage.main, args)
    report = json.loads((root / "inc/eval.json").read_text())
    assert report["eval_info"]["extractor"] == "inception-v3-compat"
    assert {"frechet_inception_distance", "inception_score_mean", "precision"} <= set(report["inception-v3-compat"])
    cached = [p.name for p in (tmp_path / "torch_home/fidelity_cache").iterdir()]
    assert cached and all(meta["hash"] in n and "inception-v3-compat" in n for n in cached)
    assert not (tmp_path / "torch_home/hub/checkpoints").exists()


@pytest.mark.slow
def test_distributed_evaluation_equals_single_process(pipe, tmp_path):
    """2 CPU processes (gloo) split generation and feature extraction, for the generated and, with a cold cache,
    the reference side; the gathered result equals one process's within 1e-4 relative."""
    root = pipe["root"]
    args = stage_args(root, root / "dist") + ["--set", "eval.num_samples=301", "--set", "eval.kid_subset_size=100",
                                       "--set", "tracking.enabled=false"]
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "th2"), "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(29500 + os.getpid() % 1000), "-m", "stages.evaluate"]
    done = subprocess.run(launch + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2 generated and embedded samples [0, 150)" in done.stderr
    assert "rank 1 of 2 generated and embedded samples [150, 301)" in done.stderr  # really two ranks
    single_args = args[: args.index("--metrics") + 1] + [str(root / "single/eval.json")] + args[args.index("--plots"):]
    env1 = {**os.environ, "TORCH_HOME": str(tmp_path / "th1"), "OMP_NUM_THREADS": "1"}
    done1 = subprocess.run([sys.executable, "-m", "stages.evaluate"] + single_args, cwd=REPO, env=env1,
                           capture_output=True, text=True, timeout=300)
    assert done1.returncode == 0, done1.stderr[-3000:]
    assert "rank 0 of 1" in done1.stderr
    two, one = (json.loads((root / d / "eval.json").read_text()) for d in ("dist", "single"))
    assert two["eval_info"] == one["eval_info"]
    for k, v in one["classifier-digits"].items():
        assert two["classifier-digits"][k] == pytest.approx(v, rel=1e-4, abs=1e-9), k
    assert one["classifier-digits"]["inception_score_mean"] > 1.5  # varied samples: the order really matters
    ref_feats = [torch.load(next((tmp_path / t / "fidelity_cache").glob("*features-feat.pt"))) for t in ("th1", "th2")]
    assert torch.allclose(ref_feats[0], ref_feats[1], rtol=1e-5, atol=1e-5)  # the sharded cold cache too
    assert np.isfinite(ref_feats[1].numpy()).all()


def test_conditional_generator_gets_intra_fid_per_class_and_a_row_per_class(pipe, tmp_path):
    """Labels are balanced over the classes; intra-FID compares each class with its own reference images."""
    from PIL import Image

    from pipeline.nets import make_generator

    root = pipe["root"]
    cfg = NetConfig(z_dim=16, image_size=16, channels=1, g_channels=8, num_classes=10)
    torch.manual_seed(0)
    g = make_generator(cfg)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Embedding)):
                m.weight.normal_(0.0, 0.3)
    save_generator(g, tmp_path / "models/generator_ema.safetensors", tmp_path / "models/generator.json", cfg,
                   {"data_hash": pipe["meta"]["hash"]})
    run_stage(evaluate_stage.main, stage_args(root, tmp_path / "out", models=tmp_path / "models") + FAST)
    report = json.loads((tmp_path / "out/eval.json").read_text())
    intra = report["classifier-digits/intra_fid"]
    assert list(intra) == [str(k) for k in range(10)] and all(v > 0 and math.isfinite(v) for v in intra.values())
    scores = report["classifier-digits"]
    assert scores["intra_fid_mean"] == pytest.approx(sum(intra.values()) / 10)
    assert report["eval_info"]["conditional"] is True
    grid = np.asarray(Image.open(tmp_path / "out/plots/samples.png"))
    assert grid.shape[:2] == (10 * 18 + 2, 8 * 18 + 2)  # one row of 8 per class, 16 px + 2 px padding
