"""benchmarks.rgb_sets on tiny fake npm tarballs laid out like the real packages: nothing is downloaded."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import rgb_sets

SKIN = "1F3FB"


def rgba_picture(color: tuple[int, int, int], size: int = 8, fmt: str = "PNG") -> bytes:
    """Opaque `color`, except pixel (0, 0): fully transparent (with a non-white colour under it)."""
    img = Image.new("RGBA", (size, size), (*color, 255))
    img.putpixel((0, 0), (10, 200, 30, 0))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def make_tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def noto_tarball(tmp_path: Path) -> Path:
    """emoji-datasource-google: package/emoji.json + package/img/google/64/<image>.png (+ sheets, ignored)."""
    rows, files = [], {}
    for cat, codes in (
        ("Smileys & Emotion", ["1f600", "1f603", "1f604"]),
        ("Animals & Nature", ["1f431", "1f436"]),
        ("Component", ["1f3fb"]),
    ):
        for code in codes:
            row = {
                "name": f"E {code}",
                "unified": code.upper(),
                "image": f"{code}.png",
                "category": cat,
                "has_img_google": True,
            }
            files[f"package/img/google/64/{code}.png"] = rgba_picture((200, 40, 40))
            rows.append(row)
    # a skin-tonable emoji: its base is kept, its variation (own picture) left out by the default policy
    rows.append(
        {
            "name": "WAVING HAND",
            "unified": "1F44B",
            "image": "1f44b.png",
            "category": "People & Body",
            "has_img_google": True,
            "skin_variations": {
                SKIN: {
                    "unified": f"1F44B-{SKIN}",
                    "image": f"1f44b-{SKIN.lower()}.png",
                    "has_img_google": True,
                }
            },
        }
    )
    files["package/img/google/64/1f44b.png"] = rgba_picture((240, 200, 60))
    files[f"package/img/google/64/1f44b-{SKIN.lower()}.png"] = rgba_picture((150, 100, 60))
    files["package/img/google/sheets/64.png"] = rgba_picture((0, 0, 0), size=32)
    files["package/emoji.json"] = json.dumps(rows).encode()
    files["package/LICENSE"] = b"MIT"
    return make_tarball(tmp_path / "emoji-datasource-google-16.0.0.tgz", files)


def build(tarball: Path, out: Path, name: str = "noto", **kw) -> dict:
    kw = {"size": 16, "per_set": 3000, "seed": 0, "min_category": 1, **kw}
    return rgb_sets.build_set(name, tarball, out, **kw)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_noto_layouts_rgb_on_white_categories_and_licence(tmp_path):
    tarball, out = noto_tarball(tmp_path), tmp_path / "rgb"
    source = build(tarball, out)
    labelled, flat = out / "noto", out / "noto-flat"
    cats = sorted(p.name for p in labelled.iterdir() if p.is_dir())
    assert cats == ["animals-nature", "people-body", "smileys-emotion"]  # from emoji.json; Component excluded
    assert source["per_category"] == {"animals-nature": 2, "people-body": 1, "smileys-emotion": 3}
    assert (
        source["dropped"]["skin-tone variant"] == 1 and "category component (excluded)" in source["dropped"]
    )
    in_folders = sorted(labelled.glob("*/*.png"))
    in_flat = sorted(flat.glob("*.png"))
    assert len(in_folders) == len(in_flat) == source["count"] == 6
    assert [p.name for p in in_flat] == sorted(p.name for p in in_folders)
    assert not list(flat.glob("*/")), "the flat layout has no class folders"
    for p in in_folders + in_flat:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (16, 16)
            assert im.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
            assert im.getpixel((8, 8)) != (255, 255, 255)  # opaque colour kept
    with Image.open(labelled / "smileys-emotion" / "1f600.png") as im:
        assert im.getpixel((8, 8)) == (200, 40, 40)
    for d in (labelled, flat):
        lic = (d / "LICENSES.md").read_text()
        assert "Apache-2.0" in lic and "Noto" in lic
        src = json.loads((d / "SOURCE.json").read_text())
        pkg = src["build"]["package"]
        assert pkg["name"] == "emoji-datasource-google" and pkg["version"] == "16.0.0"
        assert pkg["sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
        assert src["per_category"] == source["per_category"]
        assert (d / "manifest.csv").read_text().count("\n") == 7  # header + 6


def test_rerun_is_idempotent_and_force_rebuilds_the_same(tmp_path, capsys):
    tarball, out = noto_tarball(tmp_path), tmp_path / "rgb"
    build(tarball, out)
    first = tree(out)
    build(tarball, out)
    assert "up to date" in capsys.readouterr().out
    assert tree(out) == first
    (out / "noto" / "smileys-emotion" / "stray.png").write_bytes(b"x")  # a rebuild replaces the folder whole
    build(tarball, out, force=True)
    again = tree(out)
    assert set(again) == set(first) and all(
        again[k] == first[k] for k in first if not k.endswith("SOURCE.json")
    )
    assert sorted(p.name for p in out.iterdir()) == ["noto", "noto-flat"]  # no staging or old folders left
    build(tarball, out, size=8)  # another option: rebuilt, not merged
    with Image.open(next((out / "noto-flat").glob("*.png"))) as im:
        assert im.size == (8, 8)
    assert len(list((out / "noto-flat").glob("*.png"))) == 6


def test_variants_all_keeps_skin_tones_and_tiny_categories_are_dropped(tmp_path):
    tarball = noto_tarball(tmp_path)
    source = build(tarball, tmp_path / "all", variants="all")
    assert source["per_category"]["people-body"] == 2
    source = build(tarball, tmp_path / "min", min_category=3)
    assert source["per_category"] == {"smileys-emotion": 3}
    assert source["dropped"]["category animals-nature (fewer than 3)"] == 2


def test_sample_is_seeded_per_category_and_proportional():
    items = [
        rgb_sets.Item(f"{c}{i:03d}", c, "", "", "")
        for c, n in (("a", 60), ("b", 30), ("c", 10))
        for i in range(n)
    ]
    chosen = rgb_sets.sample_items(items, 50, seed=0)
    assert len(chosen) == 50
    assert {c: sum(it.category == c for it in chosen) for c in "abc"} == {"a": 30, "b": 15, "c": 5}
    assert chosen == rgb_sets.sample_items(list(reversed(items)), 50, seed=0)
    assert chosen != rgb_sets.sample_items(items, 50, seed=1)
    assert len(rgb_sets.sample_items(items, 1000, seed=0)) == 100


def test_fluent_webp_with_a_separate_metadata_package(tmp_path):
    """@lobehub/fluent-emoji-3d: package/assets/<codepoints>.webp; groups from unicode-emoji-json."""
    assets = {
        "1f600": (250, 200, 0),
        "1f431": (240, 150, 40),
        "0023-fe0f-20e3": (90, 90, 200),  # keycap, FE0F
        "1f44b": (250, 190, 60),
        "1f44b-1f3fd": (180, 120, 60),  # base + skin tone
        "1f1fa-1f1f8": (20, 20, 160),  # a country flag: excluded for fluent
        "e000": (1, 2, 3),  # not an emoji in the metadata
    }
    images = make_tarball(
        tmp_path / "lobehub-fluent-emoji-3d-1.1.0.tgz",
        {
            **{f"package/assets/{k}.webp": rgba_picture(c, size=12, fmt="WEBP") for k, c in assets.items()},
            "package/package.json": b"{}",
        },
    )
    meta = {
        "\U0001f600": "Smileys & Emotion",
        "\U0001f431": "Animals & Nature",
        "#\ufe0f\u20e3": "Symbols",
        "\U0001f44b": "People & Body",
        "\U0001f1fa\U0001f1f8": "Flags",
    }
    meta_tar = make_tarball(
        tmp_path / "unicode-emoji-json-0.9.0.tgz",
        {
            "package/data-by-emoji.json": json.dumps(
                {e: {"name": e, "group": g} for e, g in meta.items()}
            ).encode()
        },
    )
    out = tmp_path / "rgb"
    source = build(images, out, "fluent", meta_tarball=meta_tar)
    assert source["per_category"] == {
        "animals-nature": 1,
        "people-body": 1,
        "smileys-emotion": 1,
        "symbols": 1,
    }
    assert source["dropped"] == {
        "category flags (excluded)": 1,
        "not in unicode-emoji-json": 1,
        "skin-tone variant": 1,
    }
    assert (out / "fluent" / "symbols" / "0023-fe0f-20e3.png").exists()
    assert len(list((out / "fluent-flat").glob("*.png"))) == 4
    with Image.open(out / "fluent-flat" / "1f600.png") as im:
        assert im.mode == "RGB" and im.size == (16, 16) and im.getpixel((0, 0)) == (255, 255, 255)
    lic = (out / "fluent" / "LICENSES.md").read_text()
    assert "MIT" in lic and "Microsoft" in lic and "unicode-emoji-json@0.9.0" in lic
    with pytest.raises(ValueError, match="meta_tarball"):
        build(images, tmp_path / "x", "fluent")


def openmoji_tarball(tmp_path: Path) -> Path:
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="23" '
        'fill="#{}"/></svg>'
    )
    rows = [
        ("1F600", "smileys-emotion", "", "FCEA2B"),
        ("1F431", "animals-nature", "", "F4AA41"),
        ("1F44B", "people-body", "", "FCEA2B"),
        ("1F44B-1F3FB", "people-body", "1F3FB", "FADCBC"),
        ("E000", "extras-openmoji", "", "92D3F5"),
        ("2B55", "extras-unicode", "", "EA5A47"),
        ("1F3FB", "component", "1F3FB", "FADCBC"),
    ]
    files = {f"package/color/svg/{h}.svg": svg.format(c).encode() for h, _, _, c in rows}
    files.update({f"package/black/svg/{h}.svg": svg.format("000000").encode() for h, _, _, _ in rows})
    meta = [
        {
            "hexcode": h,
            "group": g,
            "subgroups": "x",
            "annotation": f"e {h}",
            "skintone": s,
            "openmoji_author": "Jane Doe",
        }
        for h, g, s, _ in rows
    ]
    files["package/data/openmoji.json"] = json.dumps(meta).encode()
    return make_tarball(tmp_path / "openmoji-17.0.0.tgz", files)


def test_openmoji_svgs_groups_and_share_alike_licence(tmp_path, monkeypatch):
    def fake_rasterise(data: bytes, size: int) -> Image.Image:  # no SVG renderer needed
        assert data.startswith(b"<svg")
        return Image.open(io.BytesIO(rgba_picture((250, 230, 40), size=size)))

    monkeypatch.setattr(rgb_sets, "rasterise_svg", fake_rasterise)
    out = tmp_path / "rgb"
    source = build(openmoji_tarball(tmp_path), out, "openmoji")
    assert source["per_category"] == {
        "animals-nature": 1,
        "extras": 2,
        "people-body": 1,
        "smileys-emotion": 1,
    }
    assert source["dropped"]["skin-tone variant"] == 2  # the toned hand and the swatch
    lic = (out / "openmoji" / "LICENSES.md").read_text()
    assert "CC-BY-SA-4.0" in lic and "OpenMoji" in lic and "ShareAlike" in lic
    assert "Jane Doe" in (out / "openmoji-flat" / "manifest.csv").read_text()
    with Image.open(out / "openmoji" / "extras" / "e000.png") as im:
        assert im.mode == "RGB" and im.size == (16, 16) and im.getpixel((0, 0)) == (255, 255, 255)


def test_openmoji_real_svg_render(tmp_path):
    pytest.importorskip("resvg_py")
    out = tmp_path / "rgb"
    build(openmoji_tarball(tmp_path), out, "openmoji", size=32)
    with Image.open(out / "openmoji" / "smileys-emotion" / "1f600.png") as im:
        assert im.mode == "RGB" and im.size == (32, 32)
        assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((16, 16)) == (0xFC, 0xEA, 0x2B)


def test_to_rgb_pads_non_square_on_white():
    img = Image.new("RGBA", (20, 10), (0, 0, 255, 255))
    out = rgb_sets.to_rgb(img, 20)  # no resize: the padding shows as is
    assert out.mode == "RGB" and out.size == (20, 20)
    assert out.getpixel((10, 4)) == (255, 255, 255) and out.getpixel((10, 5)) == (0, 0, 255)
    assert out.getpixel((10, 14)) == (0, 0, 255) and out.getpixel((10, 15)) == (255, 255, 255)
    assert rgb_sets.to_rgb(img, 10).size == (10, 10)


def test_fetch_reuses_a_cached_tarball_without_npm(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    data = b"fake tarball"
    pkg = rgb_sets.Package("@scope/pkg", "1.2.3", hashlib.sha1(data).hexdigest(), "MIT")
    (cache / "scope-pkg-1.2.3.tgz").write_bytes(data)

    def no_npm(*a, **k):
        raise AssertionError("npm must not run when the cached tarball matches")

    monkeypatch.setattr(rgb_sets.subprocess, "run", no_npm)
    assert rgb_sets.fetch_tarball(pkg, cache) == cache / "scope-pkg-1.2.3.tgz"


def test_codepoints_parse_without_fe0f():
    assert rgb_sets.parse_codepoints("0023-fe0f-20e3") == (0x23, 0x20E3)
    assert rgb_sets.parse_codepoints("1f3f4-e0067_e0062") == (0x1F3F4, 0xE0067, 0xE0062)
    assert rgb_sets.slug("Smileys & Emotion") == "smileys-emotion"
