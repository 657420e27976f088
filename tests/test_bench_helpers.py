"""The benchmark helpers that decide what a measured row means: a training subset keeps the held-out pictures."""

from __future__ import annotations

import shutil

import numpy as np

from benchmarks.quality import train_subset
from pipeline.data import content_hash, load_split, read_meta


def test_train_subset_keeps_the_held_out_split_and_draws_n_training_pictures(prepared_dir, tmp_path):
    work = tmp_path / "set"
    shutil.copytree(prepared_dir, work / "prepared")
    out = train_subset(work, 50, seed=1)
    assert out == tmp_path / "set-train50"
    full, sub = load_split(work / "prepared", "train"), load_split(out / "prepared", "train")
    assert len(sub.images) == 50
    rows = {a.tobytes() for a in np.asarray(full.images)}
    assert all(a.tobytes() in rows for a in np.asarray(sub.images))  # a draw from the training split
    held, ref = load_split(work / "prepared", "ref"), load_split(out / "prepared", "ref")
    assert np.array_equal(held.images, ref.images) and np.array_equal(held.labels, ref.labels)
    meta = read_meta(out / "prepared")
    assert meta["count"]["train"] == 50 and meta["count"]["ref"] == len(ref.images)
    assert meta["hash"] == content_hash(sub.images, ref.images, sub.labels, ref.labels) != read_meta(
        work / "prepared")["hash"]
    assert train_subset(work, 50, seed=1) == out and not (out / "prepared.tmp").exists()
