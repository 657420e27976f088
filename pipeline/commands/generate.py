"""Sample images from a registered, logged or exported generator: a PNG grid and/or one PNG per image; for a
class-conditional generator, of the classes asked for (`--label K`, `--labels 0,1,...`) or of uniformly drawn ones.

Truncation (Brock et al., 2018, arXiv:1809.11096): latent entries with |z| > t are redrawn until inside [-t, t].
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from pipeline.commands import runner
from pipeline.errors import SourceError
from pipeline.export import pyfunc_model
from pipeline.nets.sampling import latents


class Sampler:
    """latents (N, z_dim) float32 [, labels (N,) int64] -> uint8 (N, H, W, C), whatever the source.

    num_classes: 0 for an unconditional generator; None for a conditional .pt2 whose class count is unknown."""

    def __init__(self, source: str, tracking_uri: str | None = None):
        self.source = source
        self.num_classes: int | None = 0
        if source.startswith(("models:/", "runs:/")) or (Path(source) / "MLmodel").exists():
            from pipeline.registry import client

            model = client.load_pyfunc(source, tracking_uri)
            self.z_dim = int(model.metadata.get_input_schema().inputs[0].shape[-1])
            self.num_classes = int(getattr(model.unwrap_python_model(), "num_classes", 0))  # 0: logged before labels
            self._fn = lambda z, y: model.predict(z, params=None if y is None else {"labels": y.tolist()})
        elif source.endswith(".pt2"):
            try:
                module = pyfunc_model.load_pt2(source)
            except pyfunc_model.UnsafeArchiveError as e:
                raise SourceError(str(e)) from None
            self.z_dim, self.num_classes = _pt2_inputs(module, Path(source))
            self._fn = lambda z, y: pyfunc_model.generate_images(module, z, y)
        elif source.endswith(".safetensors"):
            from pipeline.nets.weights import load_generator

            g, cfg = load_generator(source, Path(source).with_name("generator.json"))
            self.z_dim, self.num_classes = cfg["net"]["z_dim"], int(cfg["net"].get("num_classes", 0))
            self._fn = lambda z, y: pyfunc_model.generate_images(g, z, y)
        else:
            raise SourceError(f"unknown source {source!r}: give models:/NAME@ALIAS, runs:/RUN_ID/generator, "
                             "an MLflow model directory, a .pt2 file or a .safetensors file next to generator.json")

    def labels(self, n: int, labels: list[int] | None, seed: int) -> np.ndarray | None:
        """The (n,) labels to sample: `labels`, checked against the class count, or, for a conditional generator
        given none, n labels drawn uniformly from `seed` (as the pyfunc draws them); None when unconditional."""
        if self.num_classes == 0 and labels:
            raise SourceError(f"{self.source} is an unconditional generator: --label/--labels do not apply")
        if self.num_classes is None and not labels:
            raise SourceError(f"{self.source} is class-conditional, but its class count is unknown (no "
                              "generator.json next to it): give --label or --labels")
        try:
            if self.num_classes is None:  # trust the user's labels: only their count and type can be checked
                return pyfunc_model.check_labels(labels, n, None)
            return pyfunc_model.labels_for(n, self.num_classes, labels, seed)
        except ValueError as e:
            raise SourceError(str(e)) from None

    def __call__(self, z: torch.Tensor, labels: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(self._fn(z.numpy().astype(np.float32), labels))


def _pt2_inputs(module: torch.nn.Module, path: Path) -> tuple[int, int | None]:
    """(z_dim, num_classes) of an exported generator: the latent width from its `z` placeholder; a second
    placeholder means conditional, its class count the rows of the embeddings that the labels index (else the
    generator.json next to the file, else None)."""
    inputs = [n for n in module.graph.nodes if n.op == "placeholder"]
    z_dim = int(inputs[0].meta["val"].shape[-1])
    if len(inputs) < 2:
        return z_dim, 0
    rows = [int(user.args[0].meta["val"].shape[0]) for user in inputs[1].users
            if user.op == "call_function" and "embedding" in str(user.target) and "val" in user.args[0].meta]
    if rows:
        return z_dim, min(rows)
    config = path.with_name("generator.json")  # export writes it next to generator.pt2
    return z_dim, (pyfunc_model.read_num_classes(config) if config.exists() else 0) or None


def grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) uint8 -> one image of ceil(sqrt(N)) columns on a white background (torchvision's make_grid)."""
    from torchvision.utils import make_grid

    cols = math.ceil(math.sqrt(len(images)))
    g = make_grid(torch.from_numpy(images).permute(0, 3, 1, 2), nrow=cols, padding=pad, pad_value=255)
    return g.permute(1, 2, 0)[..., : images.shape[-1]].numpy()  # make_grid repeats grey to 3 channels


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def generate(source: str, out: str | Path, n: int, seed: int = 0, truncation: float | None = None,
             singles: bool = False, tracking_uri: str | None = None, labels: list[int] | None = None) -> np.ndarray:
    """Write out/grid.png (and out/NNNNNN.png with `singles`); return the (n, H, W, C) uint8 images. `labels`: n class
    labels for a conditional generator (none: drawn uniformly from `seed`)."""
    sampler = Sampler(source, tracking_uri)
    y = sampler.labels(n, labels, seed)
    try:
        z = latents(n, sampler.z_dim, seed, truncation)
    except ValueError as e:  # a truncation that cannot be sampled from
        raise SourceError(str(e)) from None
    images = sampler(z, y)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_png(grid(images), out / "grid.png")
    if singles:
        for i, img in enumerate(images):
            save_png(img, out / f"{i:06d}.png")
    return images


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="models:/NAME@champion, runs:/RUN_ID/generator, an MLflow model dir, "
                                  "export/generator.pt2 or export/generator.safetensors")
    p.add_argument("--out", required=True, type=Path, help="output directory (grid.png, NNNNNN.png)")
    p.add_argument("-n", "--num", type=int, default=None, help="number of images (default: 64, or one per --labels)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--label", type=int, default=None, help="conditional generator: all images of class K")
    which.add_argument("--labels", type=_int_list, default=None, metavar="K,K,...",
                       help="conditional generator: one class per image (default: drawn uniformly from --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=None, help="resample latent entries with |z| > T")
    p.add_argument("--singles", action="store_true", help="also write one PNG per image")
    p.add_argument("--tracking-uri", default=None, help="for models:/ and runs:/ (default: MLFLOW_TRACKING_URI)")
    args = p.parse_args(argv)
    n = args.num if args.num is not None else len(args.labels) if args.labels else 64
    if n < 1:
        p.error("--num must be >= 1")
    labels = [args.label] * n if args.label is not None else args.labels
    images = generate(args.source, args.out, n, args.seed, args.truncation, args.singles, args.tracking_uri, labels)
    print(f"wrote {len(images)} images of shape {images.shape[1:]} from {args.source} to {args.out}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints such as 0,1,2, got {text!r}") from None


def cli_main() -> None:
    """Console script entry point (`gan-generate`)."""
    runner.run(main)


if __name__ == "__main__":
    cli_main()
