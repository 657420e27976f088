"""What the evaluate stage will embed and about how long that takes, said before it starts, then one progress line
with the ETA of the whole evaluation per mark. Embedding is most of evaluate's time, and on a CPU Inception takes
minutes to tens of minutes (more than training, on the small sets), so the user learns that up front.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.progress import Progress, duration

CALIBRATION_IMAGES = 32  # timed once, after a 2-image warm-up (first-call set-up is not per image)
PROGRESS_LINES = 20


def cached(prefix: str, items: Sequence[str], cache_root: str | None) -> bool:
    """Whether torch-fidelity's feature cache holds every item of `prefix` (its own lookup: all files or none)."""
    root = cache_root or os.path.join(torch.hub._get_torch_home(), "fidelity_cache")  # torch-fidelity's default
    return all(os.path.exists(os.path.join(root, f"{prefix}{item}.pt")) for item in items)


def seconds_per_image(fe: nn.Module, images: np.ndarray, rgb: bool, cuda: bool) -> float:
    """The extractor's time per image on up to CALIBRATION_IMAGES of `images` (uint8 N, C, H, W), on this machine as
    loaded now."""
    x = torch.as_tensor(np.array(images[:CALIBRATION_IMAGES]))
    x = x.expand(-1, 3, -1, -1) if rgb and x.shape[1] == 1 else x
    x = x.cuda() if cuda else x
    with torch.no_grad():
        fe(x[:2])
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fe(x)
        if cuda:
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / len(x)


def start(extractor: str, generated: int, reference: int, reference_cached: bool, world: int,
          per_image: float) -> Progress:
    """Print what will be embedded and the estimate; return the progress counter of process 0's share of it all."""
    per_image = max(per_image, 1e-9)
    share = (generated // world) + (0 if reference_cached else reference // world)  # process 0's (the smallest)
    sets = f"{generated} generated samples" + (
        f" (the {reference} reference images' features are cached)" if reference_cached
        else f" and {reference} reference images")
    procs = f" over {world} processes" if world > 1 else ""
    print(f"evaluate: {extractor} will embed {sets}{procs}: about {duration(share * per_image, digits=0)} "
          f"({_rate(1 / per_image)} images/s on a first {CALIBRATION_IMAGES})", flush=True)
    return Progress("evaluate: images embedded", share, lines=PROGRESS_LINES)


def _rate(per_second: float) -> str:
    return f"{per_second:.0f}" if per_second >= 10 else f"{per_second:.2g}"
