"""Image sources -> one prepared uint8 array (N, C, H, W) per split, plus metadata.

Sources: scikit-learn's digits (offline, the default), torchvision's MNIST / Fashion-MNIST / CIFAR-10, and any folder
tree of images, or a .zip of one. Training reads only the prepared arrays, memory-mapped, and draws batches by tensor indexing.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import DataConfig
from pipeline.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class Split:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64, -1 when unlabelled


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """(N, C, h, w) uint8 -> (N, C, size, size) uint8: scale the short side to `size`, then centre-crop."""
    n, c, h, w = images.shape
    if h == w == size:
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    out = np.empty((n, c, size, size), np.uint8)
    for i in range(0, n, 1024):  # chunks keep peak memory flat for large sets
        x = torch.tensor(images[i : i + 1024], dtype=torch.float32)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=nh < h, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top : top + size, left : left + size]
        out[i : i + 1024] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def _ref_count(n: int, fraction: float) -> int:
    return max(1, round(n * fraction))


def _split(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[Split, Split]:
    order = np.random.default_rng(seed).permutation(len(images))
    n_ref = _ref_count(len(images), fraction)
    ref, train = order[:n_ref], order[n_ref:]
    return Split(images[train], labels[train]), Split(images[ref], labels[ref])


def load_digits_source(cfg: DataConfig) -> tuple[Split, Split, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    train, ref = _split(images, d.target.astype(np.int64), cfg.ref_fraction, cfg.split_seed)
    return train, ref, [str(c) for c in d.target_names]


_TV_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def load_torchvision_source(cfg: DataConfig) -> tuple[Split, Split, list[str]]:
    """The official train split trains; the official test split is the held-out reference."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TV_NAMES[cfg.dataset])
    splits, classes = [], []
    for train in (True, False):
        try:
            ds = cls(root=cfg.root, train=train, download=cfg.download)
        except RuntimeError as e:
            hint = "" if cfg.download else " Set data.download: true to fetch it, or place the files there."
            raise DataError(
                f"{cfg.dataset}: files not found under data.root={cfg.root!r} ({e}).{hint}"
            ) from None
        data = np.asarray(ds.data)
        images = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # -> (N, C, H, W)
        splits.append(Split(np.ascontiguousarray(images, dtype=np.uint8), np.asarray(ds.targets, np.int64)))
        classes = [str(c) for c in ds.classes]
    return splits[0], splits[1], classes


def _zip_members(zf: zipfile.ZipFile) -> dict[PurePosixPath, str]:
    """A zip's image members: {path as a folder would hold it: member name}. macOS's __MACOSX/ and ._ copies are
    left out, and a single top-level folder (a zipped folder) is stripped, repeatedly."""
    names = {}
    for info in zf.infolist():
        path = PurePosixPath(info.filename.lstrip("/"))
        if info.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES or path.parts[0] == "__MACOSX" \
                or path.name.startswith("._"):
            continue
        names[path] = info.filename
    while names and all(len(p.parts) > 1 for p in names) and len({p.parts[0] for p in names}) == 1:
        names = {PurePosixPath(*p.parts[1:]): name for p, name in names.items()}
    return names


@contextmanager
def _image_files(root_param: str) -> Iterator[tuple[list[PurePosixPath], Callable[[PurePosixPath], bytes],
                                                    Callable[[PurePosixPath], str]]]:
    """data.root, a folder or a .zip: (image paths relative to it, sorted as a folder's; read(path) -> bytes;
    shown(path) -> how a message names the file)."""
    root = Path(root_param)
    if root.is_dir():
        files = sorted(PurePosixPath(p.relative_to(root).as_posix()) for p in root.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        yield files, lambda rel: (root / rel).read_bytes(), str
        return
    if not root.is_file() or not zipfile.is_zipfile(root):
        what = "does not exist" if not root.exists() else "is a file" if root.suffix.lower() != ".zip" \
            else "is not a readable zip archive"
        raise DataError(f"imagefolder: data.root={root_param!r} is not a directory or a .zip of pictures ({what}); "
                        "point it at a folder of pictures (flat, or one subfolder per class) or a .zip of one")
    with zipfile.ZipFile(root) as zf:
        members = _zip_members(zf)
        yield sorted(members), lambda rel: zf.read(members[rel]), lambda rel: members[rel]


def _decode(data: bytes, mode: str, size: int) -> np.ndarray:
    """An image file's bytes -> (C, size, size) uint8; raises what PIL raises on a truncated or foreign file."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes fully: truncated files fail here, not later
        arr = np.asarray(im.convert(mode), np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return resize_uint8(arr[None], size)[0]


def load_imagefolder_source(cfg: DataConfig) -> tuple[Split, Split, list[str], dict]:
    """Any folder tree of images, or a .zip of one. Top-level subfolders are classes when every image sits in one."""
    from PIL import UnidentifiedImageError

    unreadable = (OSError, UnidentifiedImageError, ValueError, SyntaxError, zipfile.BadZipFile, zlib.error)
    with _image_files(cfg.root) as (files, read, shown):
        if not files:
            raise DataError(f"imagefolder: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {cfg.root!r}")
        labelled = all(len(p.parts) > 1 for p in files)
        classes = sorted({p.parts[0] for p in files}) if labelled else []
        mode = "L" if cfg.channels == 1 else "RGB"
        images, labels, corrupt = [], [], []
        for i, path in enumerate(files):
            try:
                images.append(_decode(read(path), mode, cfg.image_size))
            except unreadable as e:
                if cfg.on_corrupt == "fail":
                    raise DataError(f"imagefolder: cannot read {Path(cfg.root) / shown(path)} ({e}); set "
                                    "data.on_corrupt: skip to skip it") from None
                corrupt.append(shown(path))
                continue
            labels.append(classes.index(path.parts[0]) if labelled else -1)
            if (i + 1) % 1000 == 0:
                print(f"imagefolder: decoded {i + 1}/{len(files)}", file=sys.stderr)
    if corrupt:
        print(f"imagefolder: skipped {len(corrupt)} corrupt file(s): {', '.join(corrupt[:10])}", file=sys.stderr)
    if not images:  # one or more, and `check_size` names how many the params need
        raise DataError(f"imagefolder: none of the {len(files)} image files in {cfg.root!r} could be read")
    train, ref = _split(np.stack(images), np.asarray(labels, np.int64), cfg.ref_fraction, cfg.split_seed)
    return train, ref, classes, {"corrupt_skipped": len(corrupt), "corrupt_files": corrupt}


def min_pictures(fraction: float, min_train: int, min_ref: int) -> int:
    """The fewest pictures whose split (data.ref_fraction held out) leaves min_train to train on and min_ref held out.
    Both shares grow with the count, so the first count that fits is the least."""
    n = min_train + min_ref
    while n - _ref_count(n, fraction) < min_train or _ref_count(n, fraction) < min_ref:
        n += 1
    return n


def check_size(cfg: DataConfig, n_train: int, n_ref: int, min_train: int, min_ref: int) -> None:
    """DataError when the splits are too small for one training batch (min_train: train.batch_size) or for the
    metrics (min_ref: EvalConfig.min_reference_images), naming how many pictures the params need."""
    if n_train >= min_train and n_ref >= min_ref:
        return
    need = min_pictures(cfg.ref_fraction, min_train, min_ref)
    held = f"data.ref_fraction={cfg.ref_fraction:g}" if cfg.dataset in ("digits", "imagefolder") else "its test split"
    raise DataError(f"{cfg.dataset}: too few pictures in data.root={cfg.root!r}: {n_train + n_ref} readable, and "
                    f"these params need at least {need}: {min_train} to train on (one batch of train.batch_size) and "
                    f"{min_ref} held out ({held}) for eval.metrics; add pictures, or lower train.batch_size")


def content_hash(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def prepare(cfg: DataConfig, out_dir: str | Path, min_train: int = 1, min_ref: int = 1) -> dict:
    """Read the source once, resize, and write {train,ref}.npy, {train,ref}_labels.npy and meta.json. Splits smaller
    than min_train or min_ref are refused first (`check_size`)."""
    extra: dict = {}
    if cfg.dataset == "digits":
        train, ref, classes = load_digits_source(cfg)
    elif cfg.dataset in _TV_NAMES:
        train, ref, classes = load_torchvision_source(cfg)
    else:
        train, ref, classes, extra = load_imagefolder_source(cfg)
    check_size(cfg, len(train.images), len(ref.images), min_train, min_ref)
    train.images = resize_uint8(train.images, cfg.image_size)
    ref.images = resize_uint8(ref.images, cfg.image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("ref", ref)):
        np.save(out / f"{name}.npy", split.images)
        np.save(out / f"{name}_labels.npy", split.labels)
    meta = {
        "source": cfg.dataset,
        "root": cfg.root if cfg.dataset != "digits" else "sklearn.datasets.load_digits",
        "shape": list(train.images.shape[1:]),
        "count": {"train": len(train.images), "ref": len(ref.images)},
        "classes": classes,
        "labelled": bool((train.labels >= 0).all()) and bool(classes),
        "hash": content_hash(train.images, ref.images, train.labels, ref.labels),
        **extra,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"prepared data not found: {path}; run the prepare stage first (dvc repro prepare)")
    return json.loads(path.read_text())


def load_split(prepared_dir: str | Path, split: str, mmap: bool = True) -> Split:
    d = Path(prepared_dir)
    images = np.load(d / f"{split}.npy", mmap_mode="r" if mmap else None)
    return Split(images, np.load(d / f"{split}_labels.npy"))


class BatchSampler:
    """Deterministic batches from a resident uint8 tensor: the order is a function of (seed, index) alone.

    Epoch e is `randperm(N)` seeded by (seed, e); batch i of the global stream takes the next `global_batch`
    indices, and rank r takes its contiguous slice. Resuming at batch i needs no saved state.
    """

    def __init__(self, images: torch.Tensor, global_batch: int, seed: int, rank: int = 0, world: int = 1,
                 device: torch.device | str | None = None, labels: torch.Tensor | None = None):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
        if len(images) < global_batch:
            raise DataError(f"the training split has {len(images)} images, fewer than one batch ({global_batch})")
        self.images, self.global_batch, self.seed = images, global_batch, seed
        self.labels = labels.to(images.device) if labels is not None else None  # (N,) int64, drawn with the images
        self.per_rank, self.rank = global_batch // world, rank
        self.device = torch.device(device) if device is not None else images.device  # where batches are returned
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(len(self.images), generator=g)  # drawn on the CPU: the same order on any device
            if self.images.device.type == "cuda":
                perm = perm.pin_memory()  # copied without a host sync at the epoch boundary
            self._perm = perm.to(self.images.device, non_blocking=True)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, index: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Global batch `index` -> this rank's uint8 slice (B/world, C, H, W). Epochs drop their last partial batch.

        `out`, when given, receives the batch (a static buffer for CUDA graphs). Images kept in host memory (a set
        too large for the device) are gathered there and copied to `device`.
        """
        idx = self._indices(index)
        if out is not None and out.device == self.images.device:
            return torch.index_select(self.images, 0, idx, out=out)  # one gather, straight into the buffer
        batch = self.images[idx].to(self.device)
        return batch if out is None else out.copy_(batch)

    def batch_labels(self, index: int) -> torch.Tensor:
        """The labels (B/world,) of `batch(index)`'s images, on `device`."""
        if self.labels is None:
            raise ValueError("this sampler was built without labels")
        return self.labels[self._indices(index)].to(self.device)

    def _indices(self, index: int) -> torch.Tensor:
        per_epoch = len(self.images) // self.global_batch
        epoch, pos = divmod(index, per_epoch)
        start = pos * self.global_batch + self.rank * self.per_rank
        return self._order(epoch)[start : start + self.per_rank]
