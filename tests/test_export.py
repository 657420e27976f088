"""Exported files reproduce the in-memory generator; damaged or unsafe files are refused; generate samples them."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import DATA_HASH, NET, params_for, save_models, tiny_generator, write_eval

from pipeline.commands import generate
from pipeline.errors import WeightsError
from pipeline.export import formats, pyfunc_model
from pipeline.export import stage as export
from pipeline.nets.sampling import to_uint8
from pipeline.nets.weights import load_generator


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny generator exported in every format (the export costs a few seconds, so it is shared)."""
    root = tmp_path_factory.mktemp("export")
    g = save_models(root / "models")
    _, config = load_generator(root / "models" / "generator_ema.safetensors", root / "models" / "generator.json")
    files, skipped = export.export_files(g, config, root / "export", onnx=True)
    return g, files, skipped


def _z(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, NET.z_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 3, 17])
def test_torch_formats_equal_generator_exactly(exported, n):
    g, files, _ = exported
    z = _z(n)
    with torch.no_grad():
        want = g(z)
        reloaded, _ = load_generator(files["safetensors"], files["config"])
        assert torch.equal(reloaded(z), want)
        assert torch.equal(pyfunc_model.load_pt2(files["pt2"])(z), want)  # dynamic batch: n differs from export's 2


def test_unconditional_exports_take_z_alone(exported):
    _, files, _ = exported
    import onnx

    placeholders = [n.name for n in pyfunc_model.load_pt2(files["pt2"]).graph.nodes if n.op == "placeholder"]
    assert placeholders == ["z"]
    assert [i.name for i in onnx.load(str(files["onnx"])).graph.input] == ["z"]


def test_onnx_export_of_a_conditional_generator_warns_nothing(tmp_path):
    """z and labels share one batch Dim on purpose, so torch.onnx's "The axis name: batch will not be used" note is
    silenced; any other warning still comes through."""
    import warnings

    from export_helpers import conditional_net

    net = conditional_net()
    g = tiny_generator(net=net)
    program = formats.export_pt2(g, tmp_path / "g.pt2", net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("another warning", UserWarning, stacklevel=1)  # the recording works, and outlives the export
        assert formats.export_onnx(program, tmp_path / "g.onnx", net) is None
    messages = [str(w.message) for w in caught]
    assert "another warning" in messages
    assert not [m for m in messages if "axis name" in m], messages


@pytest.mark.parametrize("n", [1, 6])
def test_onnx_matches_generator(exported, n):
    g, files, skipped = exported
    assert skipped is None and files["onnx"].exists()
    z = _z(n)
    got = formats.run_onnx(files["onnx"], z)
    with torch.no_grad():
        want = g(z)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=formats.ONNX_ATOL, rtol=0)


def test_verify_reports_and_rejects_a_wrong_export(exported, tmp_path):
    g, files, _ = exported
    errors = export.verify(g, files, NET)
    assert errors["pt2"] == 0 and errors["safetensors"] == 0 and errors["onnx"] <= formats.ONNX_ATOL
    other = tiny_generator(seed=5)  # same architecture, different weights
    with pytest.raises(export.ExportError, match="differs from the in-memory generator"):
        export.verify(other, files, NET)


def test_json_config_describes_the_model(exported):
    _, files, _ = exported
    cfg = json.loads(files["config"].read_text())
    assert cfg["net"]["z_dim"] == NET.z_dim and cfg["net"]["image_size"] == 16 and cfg["net"]["channels"] == 1
    assert cfg["net"]["arch"] == "dcgan" and cfg["data_hash"] == DATA_HASH and "params" in cfg


@pytest.mark.slow  # subprocesses or Inception on the CPU: the full suite runs it
def test_pt2_loads_with_plain_torch_outside_the_repo(exported, tmp_path):
    """`python -I` in another directory: no repository on sys.path, only torch."""
    g, files, _ = exported
    z = _z(4)
    np.save(tmp_path / "z.npy", z.numpy())
    code = ("import numpy as np, torch, sys\n"
            "sys.modules['pipeline'] = None  # as if the project were not installed (CI installs it editable)\n"
            f"m = torch.export.load({str(files['pt2'])!r}).module()\n"
            "np.save('out.npy', m(torch.from_numpy(np.load('z.npy'))).detach().numpy())\n")
    subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, check=True, timeout=120)
    with torch.no_grad():
        assert np.array_equal(np.load(tmp_path / "out.npy"), g(z).numpy())


def test_pyfunc_quantisation_is_nets_to_uint8(exported):
    g, files, _ = exported
    z = _z(9)
    images = pyfunc_model.generate_images(pyfunc_model.load_pt2(files["pt2"]), z.numpy())
    with torch.no_grad():
        want = to_uint8(g(z)).permute(0, 2, 3, 1).numpy()
    assert images.dtype == np.uint8 and images.shape == (9, 16, 16, 1)
    assert np.array_equal(images, want)
    with pytest.raises(ValueError, match=r"\(N, z_dim\)"):
        pyfunc_model.generate_images(pyfunc_model.load_pt2(files["pt2"]), np.zeros(8, np.float32))


# Safety.
def test_truncated_or_tampered_safetensors_give_a_clear_error(exported, tmp_path):
    _, files, _ = exported
    blob = files["safetensors"].read_bytes()
    (tmp_path / "generator.json").write_text(files["config"].read_text())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(WeightsError, match="truncated or tampered"):
        load_generator(truncated, tmp_path / "generator.json")
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(blob[:8] + b"{not json" + blob[17:])  # the header is JSON after an 8-byte length
    with pytest.raises(WeightsError, match="truncated or tampered"):
        load_generator(tampered, tmp_path / "generator.json")


def _rewrite_pt2(src: Path, dest: Path, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        prefix = zin.namelist()[0].split("/", 1)[0]
        for item in zin.infolist():
            rel = item.filename.split("/", 1)[1]
            zout.writestr(item, (replace or {}).get(rel, zin.read(item)))
        for rel, data in (add or {}).items():
            zout.writestr(f"{prefix}/{rel}", data)
    return dest


class _Marker:
    """Unpickling this creates a file: proof that something ran pickle on the archive."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pt2_that_would_unpickle_is_refused_before_loading(exported, tmp_path):
    _, files, _ = exported
    marker = tmp_path / "pickle-ran"
    buf = io.BytesIO()
    torch.save({"evil": _Marker(str(marker))}, buf)
    sample_inputs = _rewrite_pt2(files["pt2"], tmp_path / "sample.pt2", replace={"data/sample_inputs/model.pt": buf.getvalue()})
    with pytest.raises(pyfunc_model.UnsafeArchiveError, match="unpickling"):
        pyfunc_model.load_pt2(sample_inputs)
    legacy = _rewrite_pt2(files["pt2"], tmp_path / "legacy.pt2", add={"data/weights/model.pt": buf.getvalue()})
    with pytest.raises(pyfunc_model.UnsafeArchiveError, match="unexpected archive member"):
        pyfunc_model.load_pt2(legacy)
    with zipfile.ZipFile(files["pt2"]) as zf:
        name = next(n for n in zf.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(zf.read(name))
    next(iter(config["config"].values()))["use_pickle"] = True
    pickled = _rewrite_pt2(files["pt2"], tmp_path / "pickled.pt2",
                           replace={"data/weights/model_weights_config.json": json.dumps(config).encode()})
    with pytest.raises(pyfunc_model.UnsafeArchiveError, match="as a pickle"):
        pyfunc_model.load_pt2(pickled)
    assert not marker.exists()


def test_truncated_or_corrupted_pt2_gives_a_clear_error(exported, tmp_path):
    _, files, _ = exported
    blob = files["pt2"].read_bytes()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(pyfunc_model.UnsafeArchiveError, match="truncated or damaged"):
        pyfunc_model.load_pt2(truncated)
    with zipfile.ZipFile(files["pt2"]) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("weight_0"))
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26 : info.header_offset + 30])
    offset = info.header_offset + 30 + name_len + extra_len + 10  # inside weight_0's stored bytes
    flipped = bytearray(blob)
    flipped[offset] ^= 0xFF
    corrupted = tmp_path / "corrupted.pt2"
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(pyfunc_model.UnsafeArchiveError, match="CRC|damaged"):
        pyfunc_model.load_pt2(corrupted)


# Stage inputs.
def test_eval_json_problems_are_named(tmp_path):
    with pytest.raises(export.ExportError, match="run the evaluate stage"):
        export.read_eval(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"fid": 3}))
    with pytest.raises(export.ExportError, match="not an evaluate-stage result"):
        export.read_eval(tmp_path / "bad.json")
    summary = export.read_eval(write_eval(tmp_path / "eval.json", fid=12.5))
    assert summary.metrics["frechet_inception_distance"] == 12.5 and summary.num_samples == 200


def test_export_refuses_metrics_of_other_weights_or_data(tmp_path):
    models = tmp_path / "models"
    save_models(models)
    for eval_kw, message in (({"weights": "last"}, "export.weights"), ({"data_hash": "other"}, "re-run evaluate")):
        paths = export.ExportPaths(models=models, eval_json=write_eval(tmp_path / "eval.json", 10.0, **eval_kw),
                                   run_file=tmp_path / "run.json", out=tmp_path / "export",
                                   metrics=tmp_path / "export.json")
        with pytest.raises(export.ExportError, match=message):
            export.run_export(params_for(tmp_path), paths)
    assert not (tmp_path / "export").exists()


def test_untracked_export_writes_files_and_says_it_did_not_register(tmp_path, capsys):
    models = tmp_path / "models"
    g = save_models(models)
    params = params_for(tmp_path, tracking=False)
    paths = export.ExportPaths(models=models, eval_json=write_eval(tmp_path / "eval.json", 10.0),
                               run_file=tmp_path / "run.json", out=tmp_path / "export", metrics=tmp_path / "export.json")
    result = export.run_export(params, paths)
    record = json.loads((tmp_path / "export" / "registry.json").read_text())
    assert record["registered"] is False and "tracking" in record["reason"]
    assert result["bytes"]["generator.pt2"] == (tmp_path / "export" / "generator.pt2").stat().st_size
    assert "wall time" in capsys.readouterr().out
    images = generate.generate(str(tmp_path / "export" / "generator.pt2"), tmp_path / "png", n=3, seed=2)
    with torch.no_grad():
        want = to_uint8(g(generate.latents(3, NET.z_dim, 2))).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images, want)
    assert not os.path.exists(tmp_path / "mlflow.db")


# generate.
def test_latents_are_seeded_and_truncation_resamples():
    assert torch.equal(generate.latents(5, 8, seed=3), generate.latents(5, 8, seed=3))
    assert not torch.equal(generate.latents(5, 8, seed=3), generate.latents(5, 8, seed=4))
    z = generate.latents(2000, 8, seed=0, truncation=0.5)
    assert z.abs().max() <= 0.5
    assert (z.abs() > 0.499).float().mean() < 0.01  # resampled, not clamped onto the bound
    with pytest.raises(ValueError, match="truncation must be > 0"):
        generate.latents(2, 8, seed=0, truncation=0.0)


def test_generate_from_files_writes_grid_and_singles(exported, tmp_path):
    g, files, _ = exported
    from_pt2 = generate.generate(str(files["pt2"]), tmp_path / "a", n=5, seed=7, truncation=1.0, singles=True)
    from_st = generate.generate(str(files["safetensors"]), tmp_path / "b", n=5, seed=7, truncation=1.0)
    with pytest.raises(generate.SourceError, match="truncation must be > 0"):  # the CLI's one-line error
        generate.generate(str(files["pt2"]), tmp_path / "c", n=2, truncation=0.0)
    assert np.array_equal(from_pt2, from_st)
    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / "a" / "grid.png"))
    assert grid.shape == (2 + 2 * 18, 2 + 3 * 18)  # 5 images -> 3 columns x 2 rows of 16 px + 2 px padding
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "000004.png")), from_pt2[4, ..., 0])
    with pytest.raises(generate.SourceError, match="unknown source"):
        generate.Sampler(str(tmp_path / "model.bin"))
