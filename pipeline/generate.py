"""Sample images from a registered, logged or exported generator: a PNG grid and/or one PNG per image.

Truncation (Brock et al., 2018, arXiv:1809.11096): latent entries with |z| > t are redrawn until inside [-t, t].
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from pipeline import cli, pyfunc_model


class SourceError(ValueError):
    """The generator source cannot be used: unknown kind, or a bad sampling option."""


def latents(n: int, z_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """(n, z_dim) float32 N(0, 1) latents from `seed`; with `truncation`, resampled into [-t, t].

    Resampling keeps the shape of a truncated normal; clamping would pile mass at exactly +-t.
    """
    if truncation is not None and truncation <= 0:
        raise SourceError(f"truncation must be > 0, got {truncation}")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, z_dim, generator=gen)
    if truncation is not None:
        for _ in range(1000):  # P(|z| > t) per draw is < 1 for any t > 0, so this ends fast
            outside = z.abs() > truncation
            if not outside.any():
                break
            z[outside] = torch.randn(int(outside.sum()), generator=gen)
        else:
            raise SourceError(f"truncation {truncation} is too small to sample from")
    return z


class Sampler:
    """latents (N, z_dim) float32 -> uint8 (N, H, W, C), whatever the source."""

    def __init__(self, source: str, tracking_uri: str | None = None):
        self.source = source
        if source.startswith(("models:/", "runs:/")) or (Path(source) / "MLmodel").exists():
            from pipeline import tracking

            model = tracking.load_pyfunc(source, tracking_uri)
            self.z_dim = int(model.metadata.get_input_schema().inputs[0].shape[-1])
            self._fn = model.predict
        elif source.endswith(".pt2"):
            module = pyfunc_model.load_pt2(source)
            self.z_dim = _pt2_z_dim(module)
            self._fn = lambda z: pyfunc_model.generate_images(module, z)
        elif source.endswith(".safetensors"):
            from pipeline.checkpoint import load_generator

            g, cfg = load_generator(source, Path(source).with_name("generator.json"))
            self.z_dim = cfg["net"]["z_dim"]
            self._fn = lambda z: pyfunc_model.generate_images(g, z)
        else:
            raise SourceError(f"unknown source {source!r}: give models:/NAME@ALIAS, runs:/RUN_ID/generator, "
                             "an MLflow model directory, a .pt2 file or a .safetensors file next to generator.json")

    def __call__(self, z: torch.Tensor) -> np.ndarray:
        return np.asarray(self._fn(z.numpy().astype(np.float32)))


def _pt2_z_dim(module: torch.nn.Module) -> int:
    """The latent width, read from the exported program's input placeholder."""
    node = next(n for n in module.graph.nodes if n.op == "placeholder")
    return int(node.meta["val"].shape[-1])


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
             singles: bool = False, tracking_uri: str | None = None) -> np.ndarray:
    """Write out/grid.png (and out/NNNNNN.png with `singles`); return the (n, H, W, C) uint8 images."""
    sampler = Sampler(source, tracking_uri)
    images = sampler(latents(n, sampler.z_dim, seed, truncation))
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
    p.add_argument("-n", "--num", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=None, help="resample latent entries with |z| > T")
    p.add_argument("--singles", action="store_true", help="also write one PNG per image")
    p.add_argument("--tracking-uri", default=None, help="for models:/ and runs:/ (default: MLFLOW_TRACKING_URI)")
    args = p.parse_args(argv)
    if args.num < 1:
        p.error("--num must be >= 1")
    images = generate(args.source, args.out, args.num, args.seed, args.truncation, args.singles, args.tracking_uri)
    print(f"wrote {len(images)} images of shape {images.shape[1:]} from {args.source} to {args.out}")


def cli_main() -> None:
    """Console script entry point (`gan-generate`)."""
    cli.register_user_error(SourceError, pyfunc_model.UnsafeArchiveError)
    cli.run(main)


if __name__ == "__main__":
    cli_main()
