"""The registered model's name when export.model_name is auto: <model.arch>-<data set>. A folder of the user's own
pictures (data.dataset=imagefolder) is named by its folder, or its .zip, so that two folders' models never share a
name, nor a champion: `dcgan-holiday-photos`, where the built-in sets keep `dcgan-digits`.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

_UNSAFE = re.compile(r"[^a-z0-9]+")  # the registry refuses / and :, and a name is part of models:/NAME@ALIAS URIs
MAX_SLUG = 64


def folder_slug(root: str) -> str:
    """data.root's last component (a .zip's without the suffix), as lower-case ASCII letters and digits joined by
    hyphens: `Holiday Photos (2023)` -> `holiday-photos-2023`. A name with no such character gets a short hash."""
    path = Path(root)
    name = path.stem if path.suffix.lower() == ".zip" else path.name
    name = name or Path(os.path.abspath(root)).name  # data.root: . names the folder it stands for
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _UNSAFE.sub("-", ascii_name.lower()).strip("-")[:MAX_SLUG].strip("-")
    return slug or f"folder-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def auto_model_name(arch: str, dataset: str, root: str) -> str:
    """export.model_name: auto -> `<arch>-<dataset>`, or `<arch>-<folder_slug(root)>` for an image folder."""
    return f"{arch}-{folder_slug(root) if dataset == 'imagefolder' else dataset}"
