"""prepare: every source on small files the tests make; the prepared format; deterministic batch sampling."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data import BatchSampler, content_hash, load_split, prepare, read_meta, resize_uint8
from pipeline.errors import DataError


def test_digits_prepare_writes_arrays_and_meta(tmp_path):
    meta = prepare(DataConfig(image_size=16), tmp_path)
    train, ref = load_split(tmp_path, "train"), load_split(tmp_path, "ref")
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (1, 16, 16)
    assert len(train.images) + len(ref.images) == 1797
    assert len(ref.images) == round(1797 * 0.2)
    assert meta == read_meta(tmp_path) and meta["labelled"] and meta["classes"] == [str(i) for i in range(10)]
    assert set(train.labels.tolist()) == set(range(10))
    assert train.images.max() > 200  # digits' 0..16 range is stretched to 0..255
    # Same params, same bytes: the hash is stable and train/ref never overlap.
    assert prepare(DataConfig(image_size=16), tmp_path / "again")["hash"] == meta["hash"]
    train_rows = {r.tobytes() for r in np.asarray(train.images)}
    assert meta["hash"] == content_hash(train.images, ref.images, train.labels, ref.labels)
    assert sum(r.tobytes() in train_rows for r in np.asarray(ref.images)) < 5  # digits has a few duplicates


def test_resize_crops_the_long_side():
    img = np.zeros((1, 3, 20, 40), np.uint8)
    img[:, :, :, 10:30] = 255  # a centred square; the crop keeps it
    out = resize_uint8(img, 16)
    assert out.shape == (1, 3, 16, 16) and out.mean() > 250


def _png(path, color, size=(24, 20), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _folder(root):
    _png(root / "cats" / "a.png", (255, 0, 0))
    _png(root / "cats" / "b.jpg", (250, 0, 0))
    _png(root / "dogs" / "c.png", (0, 0, 255))
    _png(root / "dogs" / "sub" / "d.png", (0, 0, 250))
    (root / "dogs" / "broken.png").write_bytes(b"not an image at all")
    good = root / "cats" / "a.png"
    (root / "cats" / "truncated.png").write_bytes(good.read_bytes()[:40])
    (root / "cats" / "notes.txt").write_text("ignored: not an image suffix")


def test_imagefolder_with_classes_skips_and_reports_corrupt_files(tmp_path, capsys):
    _folder(tmp_path / "imgs")
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path / "imgs"), image_size=16, ref_fraction=0.25)
    meta = prepare(cfg, tmp_path / "out")
    assert meta["classes"] == ["cats", "dogs"] and meta["corrupt_skipped"] == 2
    assert sorted(meta["corrupt_files"]) == ["cats/truncated.png", "dogs/broken.png"]
    assert "skipped 2 corrupt" in capsys.readouterr().err
    train, ref = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "ref")
    assert train.images.shape[1:] == (3, 16, 16) and len(train.images) + len(ref.images) == 4
    labels = np.concatenate([train.labels, ref.labels])
    images = np.concatenate([train.images, ref.images])
    reds = images[:, 0].mean(axis=(1, 2)) > 200
    assert (labels[reds] == 0).all() and (labels[~reds] == 1).all()


def test_imagefolder_fail_mode_names_the_file(tmp_path):
    _folder(tmp_path / "imgs")
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path / "imgs"), on_corrupt="fail")
    with pytest.raises(DataError, match=r"cannot read .*(broken|truncated)\.png"):
        prepare(cfg, tmp_path / "out")


def test_imagefolder_without_class_folders_is_unlabelled_grayscale(tmp_path):
    for i in range(4):
        _png(tmp_path / "flat" / f"{i}.png", (i * 60, i * 60, i * 60))
    meta = prepare(DataConfig(dataset="imagefolder", root=str(tmp_path / "flat"), channels=1, image_size=16),
                   tmp_path / "out")
    assert meta["classes"] == [] and not meta["labelled"] and meta["shape"] == [1, 16, 16]
    assert (load_split(tmp_path / "out", "train").labels == -1).all()


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        prepare(DataConfig(dataset="imagefolder", root=str(tmp_path / "missing")), tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        prepare(DataConfig(dataset="imagefolder", root=str(tmp_path / "empty")), tmp_path / "o")


def _idx(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_style_sets_from_local_idx_files(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    for prefix, n in (("train", 12), ("t10k", 5)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    meta = prepare(DataConfig(dataset=name, root=str(tmp_path), image_size=16), tmp_path / "out")
    assert meta["count"] == {"train": 12, "ref": 5} and meta["shape"] == [1, 16, 16]
    assert len(meta["classes"]) == 10


def test_cifar10_from_local_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # the real files' md5 sums
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [0, 1, 2]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    meta = prepare(DataConfig(dataset="cifar10", root=str(tmp_path), image_size=32), tmp_path / "out")
    assert meta["count"] == {"train": 15, "ref": 3} and meta["shape"] == [3, 32, 32]
    assert meta["classes"][:2] == ["c0", "c1"]


def test_absent_torchvision_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match=r"mnist: files not found under data.root=.*data.download: true"):
        prepare(DataConfig(dataset="mnist", root=str(tmp_path)), tmp_path / "out")


def test_read_meta_before_prepare(tmp_path):
    with pytest.raises(DataError, match="run the prepare stage first"):
        read_meta(tmp_path)


def test_batch_sampler_is_deterministic_and_splits_ranks():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    full = BatchSampler(images, 8, seed=3)
    r0, r1 = BatchSampler(images, 8, seed=3, rank=0, world=2), BatchSampler(images, 8, seed=3, rank=1, world=2)
    for i in (0, 5, 12, 13, 40):  # 12 batches per epoch: 12 and 13 are in the second epoch
        assert torch.equal(torch.cat([r0.batch(i), r1.batch(i)]), full.batch(i))
    epoch0 = torch.cat([full.batch(i) for i in range(12)]).flatten()
    assert len(set(epoch0.tolist())) == 96  # no repeats within an epoch
    assert not torch.equal(full.batch(0), full.batch(12))  # a new order each epoch
    assert torch.equal(BatchSampler(images, 8, seed=3).batch(13), full.batch(13))  # a function of the index alone
    with pytest.raises(ValueError, match="not divisible"):
        BatchSampler(images, 9, seed=0, world=2)


def test_meta_is_json(tmp_path):
    prepare(DataConfig(image_size=16), tmp_path)
    assert json.loads((tmp_path / "meta.json").read_text())["source"] == "digits"
