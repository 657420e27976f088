"""Class labels survive every export format of a conditional generator (DCGAN and ResNet): safetensors, .pt2, ONNX,
the MLflow pyfunc (`params={"labels": [...]}`), gan-generate and REST; bad labels are refused with errors naming them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from export_helpers import (
    CLASSES,
    conditional_net,
    fresh_env,
    params_for,
    post_json,
    save_models,
    serving,
    start_run,
    tiny_generator,
    write_eval,
)

from pipeline.commands import generate
from pipeline.commands import registry as registry_cli
from pipeline.export import formats, pyfunc_model
from pipeline.export import stage as export
from pipeline.nets.sampling import to_uint8
from pipeline.nets.weights import load_generator
from pipeline.registry import client as model_registry
from pipeline.registry import promotion as registry

Z_DIM, K = conditional_net().z_dim, len(CLASSES)


@pytest.fixture(scope="module", params=["dcgan", "resnet"])
def cond(request, tmp_path_factory, one_thread):
    """A conditional tiny G through the whole export stage: files, verification, registration as champion."""
    arch = request.param
    root = tmp_path_factory.mktemp(f"cond-{arch}")
    net = conditional_net(arch)
    g = save_models(root / "models", net=net)
    params = params_for(root, onnx=True, model_name=f"cond-{arch}")
    run_file = root / "run.json"
    start_run(params, root, run_file)
    paths = export.ExportPaths(models=root / "models", eval_json=write_eval(root / "eval.json", 10.0),
                               run_file=run_file, out=root / "export", metrics=root / "export.json")
    result = export.run_export(params, paths)
    files = {k: paths.out / f"generator.{ext}" for k, ext in
             (("safetensors", "safetensors"), ("config", "json"), ("pt2", "pt2"), ("onnx", "onnx"))}
    record = json.loads((paths.out / "registry.json").read_text())
    yield SimpleNamespace(arch=arch, net=net, g=g, files=files, record=record, result=result, root=root,
                          uri=params.tracking.uri, name=params.export.model_name)
    import mlflow

    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _z(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, Z_DIM, generator=torch.Generator().manual_seed(seed))


def _images(g, z, labels) -> np.ndarray:
    """What every consumer must get: the in-memory G's uint8 (N, H, W, C) images."""
    with torch.no_grad():
        return to_uint8(g(torch.as_tensor(z), torch.as_tensor(labels))).permute(0, 2, 3, 1).numpy()


def _all_differ(a, b) -> bool:
    """Every image of batch a differs from the same-index image of b."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return bool(((a - b).abs().flatten(1).amax(1) > 0).all())


# Files.
@pytest.mark.parametrize("n", [1, 7])
def test_torch_formats_reproduce_labels_exactly(cond, n):
    z, y = _z(n), torch.arange(n) % K
    reloaded, cfg = load_generator(cond.files["safetensors"], cond.files["config"])
    pt2 = pyfunc_model.load_pt2(cond.files["pt2"])
    assert cfg["net"]["num_classes"] == K and cfg["net"]["arch"] == cond.arch and cfg["classes"] == CLASSES
    with torch.no_grad():
        want = cond.g(z, y)
        assert torch.equal(reloaded(z, y), want)
        assert torch.equal(pt2(z, y), want)  # dynamic batch for both inputs: n differs from export's 2
        assert _all_differ(pt2(z, (y + 1) % K), want)  # the labels reach the program


def test_onnx_takes_z_and_labels_with_one_dynamic_batch(cond):
    import onnx

    inputs = {i.name: i.type.tensor_type for i in onnx.load(str(cond.files["onnx"])).graph.input}
    assert list(inputs) == ["z", "labels"] and inputs["labels"].elem_type == onnx.TensorProto.INT64
    batch = {name: t.shape.dim[0].dim_param for name, t in inputs.items()}
    assert batch["z"] == batch["labels"] == "batch"  # symbolic, and the same symbol
    for n in (1, 6):
        z, y = _z(n, seed=n), torch.tensor([2, 0, 1, 1, 2, 0][:n])
        with torch.no_grad():
            want = cond.g(z, y)
        torch.testing.assert_close(formats.run_onnx(cond.files["onnx"], z, y), want, atol=formats.ONNX_ATOL, rtol=0)
        assert _all_differ(formats.run_onnx(cond.files["onnx"], z, (y + 1) % K), want)


def test_verify_compares_with_labels(cond):
    errors = cond.result["max_abs_error"]
    assert errors["pt2"] == 0 and errors["safetensors"] == 0 and errors["onnx"] <= formats.ONNX_ATOL
    other = tiny_generator(net=cond.net)
    with torch.no_grad():  # one class's embedding changed: only a check that feeds that class can see it
        next(m for m in other.modules() if isinstance(m, torch.nn.Embedding)).weight[1] += 1.0
    with pytest.raises(export.ExportError, match="differs from the in-memory generator"):
        export.verify(other, cond.files, cond.net)


# The pyfunc.
def test_label_checks_name_the_problem():
    assert pyfunc_model.labels_for(4, 0) is None
    assert pyfunc_model.labels_for(3, 10, [9, 0, 4]).tolist() == [9, 0, 4]
    cases = [([1, 2, 12, 3], "labels must be N=4 ints in \\[0, 10\\), got 12 at position 2"),
             ([1, -1, 0, 0], "got -1 at position 1"), ([1, 2, 3], "got 3 labels"), ([[1, 2], [3, 4]], "shape"),
             ([0.0, 1.0, 2.0, 3.0], "got float64 values")]
    for labels, message in cases:
        with pytest.raises(ValueError, match=message):
            pyfunc_model.labels_for(4, 10, labels)
    with pytest.raises(ValueError, match="unconditional: it takes no labels, got 2"):
        pyfunc_model.labels_for(2, 0, [0, 1])
    drawn = pyfunc_model.labels_for(3000, 10, [], seed=7)  # empty (MLflow's default) = none given
    assert np.array_equal(drawn, pyfunc_model.labels_for(3000, 10, None, seed=7))
    assert not np.array_equal(drawn, pyfunc_model.labels_for(3000, 10, None, seed=8))
    counts = np.bincount(drawn, minlength=10)
    assert drawn.dtype == np.int64 and len(counts) == 10 and counts.min() > 240  # uniform: ~300 each


def test_pyfunc_takes_labels_and_seed_params(cond):
    model = model_registry.load_pyfunc(cond.record["model_uri"], cond.uri)
    assert [p.name for p in model.metadata.get_params_schema().params] == ["labels", "seed"]
    z, y = _z(5).numpy(), [2, 0, 1, 1, 2]
    got = model.predict(z, params={"labels": y})
    assert got.dtype == np.uint8 and np.array_equal(got, _images(cond.g, z, y))
    assert _all_differ(model.predict(z, params={"labels": [0, 1, 2, 2, 0]}), got)
    seeded = model.predict(z, params={"seed": 3})
    assert np.array_equal(seeded, model.predict(z, params={"seed": 3}))
    assert np.array_equal(seeded, _images(cond.g, z, pyfunc_model.labels_for(5, K, None, seed=3)))
    with pytest.raises(ValueError, match=r"labels must be N=5 ints in \[0, 3\), got 3 at position 1"):
        model.predict(z, params={"labels": [0, 3, 0, 0, 0]})
    with pytest.raises(ValueError, match="got 2 labels"):
        model.predict(z, params={"labels": [0, 1]})


@pytest.mark.slow  # subprocesses or Inception on the CPU: the full suite runs it
def test_pyfunc_with_labels_in_a_fresh_directory(cond, tmp_path):
    """The issue's "done when": mlflow.pyfunc.load_model(uri).predict(z, params={"labels": [...]}) without the repo."""
    z = _z(4, seed=2).numpy()
    np.save(tmp_path / "z.npy", z)
    code = ("import sys, numpy as np, mlflow\n"
            "sys.modules['pipeline'] = None  # as if the project were not installed (CI installs it editable)\n"
            f"m = mlflow.pyfunc.load_model('models:/{cond.name}@champion')\n"
            "z = np.load('z.npy')\n"
            "np.save('a.npy', m.predict(z, params={'labels': [0, 1, 2, 0]}))\n"
            "np.save('b.npy', m.predict(z, params={'labels': [2, 2, 2, 2]}))\n")
    subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=fresh_env(cond.uri), check=True, timeout=300)
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert np.array_equal(a, _images(cond.g, z, [0, 1, 2, 0])) and np.array_equal(b, _images(cond.g, z, [2] * 4))


@pytest.mark.slow
def test_serve_passes_labels_through_rest(cond, tmp_path):
    if cond.arch != "dcgan":
        pytest.skip("one server is enough: the pyfunc code is the same for every arch")
    z = _z(3, seed=4).numpy()
    with serving(f"models:/{cond.name}@champion", cond.uri, tmp_path) as url:
        answers = [post_json(f"{url}/invocations", {"inputs": z.tolist(), "params": {"labels": y}})
                   for y in ([0, 1, 2], [1, 1, 1], [0, 5, 0])]
    (s0, a0), (s1, a1), (s_bad, bad) = answers
    assert s0 == 200 and s1 == 200, (a0, a1)
    first, second = (np.asarray(a["predictions"]).astype(np.uint8) for a in (a0, a1))
    assert np.array_equal(first, _images(cond.g, z, [0, 1, 2])) and np.array_equal(second, _images(cond.g, z, [1] * 3))
    assert s_bad == 400 and "labels must be N=3 ints in [0, 3), got 5 at position 1" in bad["message"]


# gan-generate.
def test_generate_label_from_every_source(cond, tmp_path, capsys):
    want = _images(cond.g, generate.latents(4, Z_DIM, seed=5), [2] * 4)
    sources = [str(cond.files["pt2"]), str(cond.files["safetensors"]), f"models:/{cond.name}@champion",
               f"runs:/{cond.record['run_id']}/generator"]
    for i, source in enumerate(sources):
        got = generate.generate(source, tmp_path / str(i), n=4, seed=5, tracking_uri=cond.uri, labels=[2] * 4)
        assert np.array_equal(got, want), source
    generate.main([str(cond.files["pt2"]), "--out", str(tmp_path / "cli"), "--labels", "0,1,2,0", "--seed", "5"])
    assert "wrote 4 images" in capsys.readouterr().out  # -n follows --labels
    generate.main([str(cond.files["safetensors"]), "--out", str(tmp_path / "cli"), "-n", "4", "--label", "2",
                   "--seed", "5", "--singles"])
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli" / "000003.png")), want[3, ..., 0])


def test_generate_without_labels_draws_them_as_the_pyfunc_does(cond, tmp_path):
    z = generate.latents(6, Z_DIM, seed=9)
    want = _images(cond.g, z, pyfunc_model.labels_for(6, K, None, seed=9))
    for i, source in enumerate((str(cond.files["pt2"]), f"models:/{cond.name}@champion")):
        assert np.array_equal(generate.generate(source, tmp_path / str(i), n=6, seed=9, tracking_uri=cond.uri), want)


def test_generate_refuses_out_of_range_labels(cond, tmp_path):
    for source in (str(cond.files["pt2"]), str(cond.files["safetensors"]), f"models:/{cond.name}@champion"):
        with pytest.raises(generate.SourceError, match=r"ints in \[0, 3\), got 3 at position 0"):
            generate.main([source, "--out", str(tmp_path), "-n", "2", "--label", "3", "--tracking-uri", cond.uri])
    with pytest.raises(generate.SourceError, match="got 2 labels"):
        generate.main([str(cond.files["pt2"]), "--out", str(tmp_path), "-n", "3", "--labels", "0,1"])
    assert not (tmp_path / "grid.png").exists()


def test_pt2_alone_knows_its_classes_from_the_program(cond, tmp_path):
    """No generator.json next to it: the class count is the rows of the embeddings the labels index."""
    alone = Path(shutil.copy(cond.files["pt2"], tmp_path / "g.pt2"))
    sampler = generate.Sampler(str(alone))
    assert (sampler.z_dim, sampler.num_classes) == (Z_DIM, K)
    with pytest.raises(generate.SourceError, match=r"got 7 at position 1"):
        sampler.labels(2, [0, 7], seed=0)
    sampler.num_classes = None  # a program whose class count cannot be read: labels are required, then trusted
    with pytest.raises(generate.SourceError, match="class count is unknown"):
        sampler.labels(2, None, seed=0)
    assert sampler.labels(2, [1, 2], seed=0).tolist() == [1, 2]


def test_unconditional_source_refuses_labels(tmp_path):
    g = save_models(tmp_path / "models")
    _, config = load_generator(tmp_path / "models" / "generator.safetensors", tmp_path / "models" / "generator.json")
    files, _ = export.export_files(g, config, tmp_path / "export", onnx=False)
    for source in (files["pt2"], files["safetensors"]):
        assert generate.Sampler(str(source)).num_classes == 0
        with pytest.raises(generate.SourceError, match="unconditional generator: --label/--labels do not apply"):
            generate.main([str(source), "--out", str(tmp_path / "png"), "--label", "1"])


# Registry.
def test_version_is_tagged_conditional_with_its_classes(cond, capsys):
    tags = model_registry.model_version(cond.uri, cond.name)["tags"]
    assert tags[registry.TAG_CONDITIONAL] == "true" and tags[registry.TAG_NUM_CLASSES] == str(K)
    assert json.loads(tags[registry.TAG_CLASSES]) == CLASSES
    registry_cli.main(["--name", cond.name, "--tracking-uri", cond.uri, "show"])
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert row.split()[header.split().index("classes")] == str(K)


def test_classes_tag_is_truncated_as_json():
    names = [f"class-{i:05d}" for i in range(5000)]
    tag = export.classes_tag(names)
    kept = json.loads(tag)
    assert len(tag) <= export.CLASSES_TAG_CHARS and kept[:-1] == names[: len(kept) - 1]
    assert kept[-1] == f"... ({5000 - len(kept) + 1} more)" and len(kept) > 100
    assert export.classes_tag(CLASSES) == json.dumps(CLASSES)
