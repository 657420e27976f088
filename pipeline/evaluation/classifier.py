"""A small CNN classifier trained on the labelled training split: the in-domain feature extractor.

Its penultimate features and logits stand in for Inception-v3's pool and logits in FID (Heusel et al. 2017) and IS
(Salimans et al. 2016) on data far from ImageNet (8x8 digits). Saved as safetensors plus JSON, never a pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.nets.sampling import from_uint8
from pipeline.progress import Progress

WEIGHTS_FILE = "classifier.safetensors"
INFO_FILE = "classifier.json"
BATCH_SIZE = 64
LEARNING_RATE = 2e-3


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything needed to rebuild the network; saved in classifier.json."""

    channels: int
    image_size: int
    num_classes: int
    width: int = 8
    feature_dim: int = 128


class Classifier(nn.Module):
    """uint8 images (B, C or 3, S, S) -> (features (B, feature_dim), logits (B, num_classes)).

    Conv stride-2 blocks take S down to 4x4; one hidden layer gives the features. Grey-as-RGB input (R = G = B,
    as PNG readers return it) is folded back to one channel, and grey input is repeated for an RGB network, so the
    same samples score the same however they were stored.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        n_down = int(math.log2(cfg.image_size)) - 2
        ch, layers = cfg.width, [nn.Conv2d(cfg.channels, cfg.width, 3, 1, 1), nn.ReLU(True)]
        for _ in range(n_down):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.ReLU(True)]  # (B, 2ch, S/2, S/2)
            ch *= 2
        self.conv = nn.Sequential(*layers)
        self.hidden = nn.Linear(ch * 16, cfg.feature_dim)  # flatten (B, ch, 4, 4)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)
        # Set after training to the features' RMS on the training split: unit-scale features keep KID's cubic
        # kernel (x.y / d + 1)^3 in the range it has on Inception features, instead of values in the thousands.
        self.register_buffer("feature_scale", torch.ones(()))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg.channels
        if x.shape[1] == 3 and c == 1:
            x = x.float().mean(dim=1, keepdim=True)
        elif x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != c or x.shape[-1] != self.cfg.image_size:
            raise ValueError(f"classifier expects (B, {c}, {self.cfg.image_size}, {self.cfg.image_size}) images, "
                             f"got {tuple(x.shape)}")
        return from_uint8(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(self._prepare(x)).flatten(1)
        feat = F.relu(self.hidden(h))
        return feat / self.feature_scale, self.head(feat)


@torch.no_grad()
def accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    model.eval()
    hits = 0
    for i in range(0, len(images), batch):
        _, logits = model(torch.from_numpy(np.asarray(images[i : i + batch])))
        hits += int((logits.argmax(1) == torch.from_numpy(np.asarray(labels[i : i + batch]))).sum())
    return hits / max(1, len(images))


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, steps: int,
                     seed: int, progress: Progress | None = None) -> Classifier:
    """Adam on cross-entropy, `steps` batches of 64 drawn with replacement; deterministic for a given seed.
    `progress` gets every step's count (and prints the loss on its own schedule)."""
    cfg = ClassifierConfig(channels=images.shape[1], image_size=images.shape[-1], num_classes=num_classes)
    x_all, y_all = torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.asarray(labels))
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        torch.manual_seed(seed)
        model = Classifier(cfg)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        model.train()
        for step in range(steps):
            idx = torch.randint(len(x_all), (BATCH_SIZE,), generator=g)
            _, logits = model(x_all[idx])
            loss = F.cross_entropy(logits, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress.update(step + 1, loss=loss.detach())
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model(x_all[i : i + 500])[0] for i in range(0, len(x_all), 500)])
        model.feature_scale.fill_(feats.pow(2).mean().sqrt().clamp_min(1e-6))
    return model


def save_classifier(model: Classifier, out_dir: str | Path, info: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / INFO_FILE).write_text(json.dumps({"config": asdict(model.cfg), **info}, indent=2) + "\n")


def read_info(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / INFO_FILE
    return json.loads(path.read_text()) if path.exists() else None


def load_classifier(weights_path: str | Path) -> tuple[Classifier, dict]:
    """Rebuild from the JSON next to the weights; eval mode, CPU."""
    weights_path = Path(weights_path)
    info = read_info(weights_path.parent)
    if info is None or "config" not in info:
        raise FileNotFoundError(f"classifier config {weights_path.parent / INFO_FILE} not found")
    model = Classifier(ClassifierConfig(**info["config"]))
    model.load_state_dict(load_file(str(weights_path)))
    return model.eval().requires_grad_(False), info


def fit(prepared_dir: str | Path, out_dir: str | Path, steps: int, seed: int, skip: str | None = None) -> dict:
    """Train on the prepared train split, score on the held-out ref split, save; returns the stage's metrics.

    Unlabelled data gets no classifier, nor does data that evaluate scores with another extractor (`skip`, the
    reason: `resolve.classifier_unused`): classifier.json then says why, so the stage (and `dvc repro`) still
    succeeds and evaluate can explain it if eval.extractor asks for the classifier.
    """
    import time

    from pipeline.data import load_split, read_meta

    meta = read_meta(prepared_dir)
    out = Path(out_dir)
    if skip is None and not meta["labelled"]:
        skip = f"the {meta['source']} data is unlabelled"
    if skip is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / WEIGHTS_FILE).unlink(missing_ok=True)
        info = {"skipped": skip, "data_hash": meta["hash"], "labelled": bool(meta["labelled"])}
        (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return {"labelled": bool(meta["labelled"]), "skipped": skip}
    train, ref = load_split(prepared_dir, "train", mmap=False), load_split(prepared_dir, "ref", mmap=False)
    t0 = time.perf_counter()
    model = train_classifier(train.images, train.labels, len(meta["classes"]), steps, seed,
                             progress=Progress("classifier: step", steps))
    seconds = time.perf_counter() - t0
    metrics = {"labelled": True, "extractor": f"classifier-{meta['source']}",
               "ref_accuracy": round(accuracy(model, ref.images, ref.labels), 5),
               "train_accuracy": round(accuracy(model, train.images, train.labels), 5),
               "num_classes": len(meta["classes"]), "steps": steps, "seed": seed, "train_seconds": round(seconds, 1)}
    save_classifier(model, out, {"data_hash": meta["hash"], "classes": meta["classes"], **metrics})
    return metrics
