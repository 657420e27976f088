"""An offline RGB photo set for the beyond-digits checks: random square crops of scikit-learn's two sample photos
(china.jpg, flower.jpg), one class folder per photo, written as PNGs for `data.dataset: imagefolder`.

    python -m benchmarks.photo_crops --out data/raw/photos --per-class 150            # labelled (2 classes)
    python -m benchmarks.photo_crops --out data/raw/photos-flat --per-class 150 --flat  # unlabelled
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_crops(out: Path, per_class: int, flat: bool = False, seed: int = 0, min_side: int = 64,
                max_side: int = 160) -> int:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    rng = np.random.default_rng(seed)
    n = 0
    for name, photo in zip(data.filenames, data.images, strict=True):
        cls = Path(name).stem
        folder = out if flat else out / cls
        folder.mkdir(parents=True, exist_ok=True)
        h, w, _ = photo.shape
        for i in range(per_class):
            side = int(rng.integers(min_side, max_side + 1))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            Image.fromarray(photo[top : top + side, left : left + side]).save(folder / f"{cls}-{i:04d}.png")
            n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--flat", action="store_true", help="no class folders (an unlabelled set)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = write_crops(args.out, args.per_class, args.flat, args.seed)
    print(f"wrote {n} crops to {args.out}")


if __name__ == "__main__":
    main()
