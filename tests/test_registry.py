"""The export stage registers the generator; the champion alias moves only on a comparable, better FID; the
champion loads, generates and serves from anywhere. MLflow lives in a sqlite store under tmp, never the repo's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from export_helpers import (
    DATA_HASH,
    EXTRACTOR,
    NET,
    fresh_env,
    params_for,
    post_json,
    save_models,
    serving,
    start_run,
    write_eval,
)

from pipeline.commands import generate
from pipeline.commands import registry as registry_cli
from pipeline.errors import TrackingError
from pipeline.export import stage as export
from pipeline.nets.sampling import to_uint8
from pipeline.registry import client as model_registry
from pipeline.registry import promotion as registry
from pipeline.tracking import store

NAME = "tiny-gan"
REPO = Path(__file__).resolve().parents[1]


def _tags(fid: float | None, extractor: str = EXTRACTOR, samples: int = 200, data: str = DATA_HASH) -> dict:
    tags = {registry.TAG_EXTRACTOR: extractor, registry.TAG_SAMPLES: str(samples), registry.TAG_EVAL_DATA: data}
    if fid is not None:
        tags[registry.METRIC_TAG_PREFIX + "frechet_inception_distance"] = repr(fid)
    return tags


# The rule, pure.
@pytest.mark.parametrize("new, promote, says", [
    (_tags(40.0), True, "beats champion v1's 50"),
    (_tags(60.0), False, "does not beat"),
    (_tags(50.0), False, "does not beat"),  # a tie keeps the champion
    (_tags(1.0, extractor="inception-v3-compat"), False, "different feature extractors"),
    (_tags(1.0, samples=10000), False, "different sample counts"),
    (_tags(1.0, data="other"), False, "v2 was trained and measured on other data than champion v1 (data 'other'"),
    # Other data differ in the sample count too (auto counts follow the data): the data are named, not the count.
    (_tags(1.0, samples=1000, data="other"), False, "refusing to compare fid: v2 was trained and measured on other "
                                                    "data"),
    (_tags(None), False, "no finite frechet_inception_distance"),
    (_tags(float("nan")), False, "no finite frechet_inception_distance"),
])
def test_decide(new, promote, says):
    decision = registry.decide({"version": "2", "tags": new}, {"version": "1", "tags": _tags(50.0)})
    assert decision.promote is promote
    assert says in decision.reason


def test_first_model_is_promoted_even_without_fid():
    assert registry.decide({"version": "1", "tags": _tags(None)}, None).promote


# The stage and the registry.
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    g = save_models(root / "models")
    params = params_for(root, onnx=True, model_name=NAME, max_batch=8)  # small, so the serving test can exceed it
    (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict()))
    ns = SimpleNamespace(root=root, g=g, params=params, uri=params.tracking.uri)
    ns.record, ns.out = run_stage(ns, fid=50.0, out="export1")
    yield ns
    import mlflow

    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def run_stage(ns, fid: float, out: str, **eval_kw) -> tuple[dict, str]:
    """One pipeline run (new MLflow run, eval.json), then `python -m stages.export` as DVC runs it."""
    run_file = ns.root / f"{out}-run.json"
    start_run(ns.params, ns.root, run_file)
    eval_json = write_eval(ns.root / f"{out}-eval.json", fid, **eval_kw)
    cmd = [sys.executable, "-m", "stages.export", "--params", str(ns.root / "params.yaml"), "--models",
           str(ns.root / "models"), "--eval", str(eval_json), "--run-file", str(run_file), "--out", str(ns.root / out),
           "--metrics", str(ns.root / f"{out}.json")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((ns.root / out / "registry.json").read_text()), done.stdout


def _expected(g, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return to_uint8(g(torch.from_numpy(z))).permute(0, 2, 3, 1).numpy()


def test_first_export_is_registered_tagged_and_champion(env):
    assert env.record["registered"] and env.record["promoted"] and env.record["champion_version"] == "1"
    assert "first model" in env.record["reason"]
    champion = model_registry.model_version(env.uri, NAME)
    tags = champion["tags"]
    assert champion["version"] == env.record["version"] and champion["aliases"] == ["champion"]
    assert tags[registry.TAG_RUN] == json.loads((env.root / "export1-run.json").read_text())["run_id"]
    assert tags[registry.TAG_DATA] == DATA_HASH and len(tags[registry.TAG_COMMIT]) >= 7
    assert float(tags["eval.frechet_inception_distance"]) == 50.0 and tags[registry.TAG_EXTRACTOR] == EXTRACTOR
    for name in ("generator.safetensors", "generator.json", "generator.pt2", "generator.onnx"):
        assert f"export: {name}" in env.out and (env.root / "export1" / name).exists()
    assert "wall time" in env.out and "is now the champion" in env.out
    assert tags[registry.TAG_CONDITIONAL] == "false" and registry.TAG_CLASSES not in tags


def test_unconditional_pyfunc_refuses_labels(env):
    model = model_registry.load_pyfunc(f"models:/{NAME}@champion", env.uri)
    assert [p.name for p in model.metadata.get_params_schema().params] == ["labels", "seed"]
    z = generate.latents(2, NET.z_dim, seed=1).numpy()
    assert np.array_equal(model.predict(z, params={"seed": 4}), _expected(env.g, z))  # seed: only for label draws
    with pytest.raises(ValueError, match="unconditional: it takes no labels, got 2"):
        model.predict(z, params={"labels": [0, 1]})


@pytest.mark.parametrize("n, params, message", [
    (2, {"labels": [0, 1]}, "this generator is unconditional: it takes no labels, got 2"),
    (9, {}, "a request may hold at most 8 latents (export.max_batch), got 9; split it into several requests"),
])
def test_a_refused_rest_request_is_one_line_without_the_input(env, n, params, message):
    """`mlflow models serve`'s handler (scoring_server.invocations, here without the HTTP around it) prefixes an
    MlflowException's message with the whole input; the pyfunc's refusal stays the one line that names the problem."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    model = model_registry.load_pyfunc(f"models:/{NAME}@champion", env.uri)
    body = json.dumps({"inputs": generate.latents(n, NET.z_dim, seed=1).tolist(), "params": params})
    with pytest.raises(MlflowException) as e:
        scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
    assert e.value.get_http_status_code() == 400
    assert json.loads(e.value.serialize_as_json())["message"] == message


def test_worse_export_stays_registered_without_the_alias(env, capsys):
    run_file = env.root / "export2-run.json"
    start_run(env.params, env.root, run_file)
    paths = export.ExportPaths(models=env.root / "models", eval_json=write_eval(env.root / "export2-eval.json", 60.0),
                               run_file=run_file, out=env.root / "export2", metrics=env.root / "export2.json")
    export.run_export(env.params, paths)  # in-process: the stage's command line is covered by the fixture's run
    record, out = json.loads((paths.out / "registry.json").read_text()), capsys.readouterr().out
    assert record["registered"] and not record["promoted"] and record["champion_version"] == env.record["version"]
    version = model_registry.model_version(env.uri, NAME, record["version"])
    assert version["aliases"] == [] and version["tags"][registry.TAG_DECISION].startswith("not promoted: ")
    assert "NOT promoted" in out and "does not beat" in out


def test_champion_moves_only_on_comparable_better_fid(env):
    name = "rule-test"
    order = [(_tags(50.0), "1"), (_tags(40.0), "2"), (_tags(45.0), "2"), (_tags(1.0, extractor="inception-v3-compat"), "2"),
             (_tags(1.0, samples=5000), "2")]
    for tags, champion_after in order:
        version = model_registry.register_version(env.uri, name, env.record["model_uri"], tags)
        decision = registry.apply_rule(env.uri, name, version)
        assert model_registry.model_version(env.uri, name)["version"] == champion_after, decision.reason
    assert "feature extractor" in model_registry.model_version(env.uri, name, "4")["tags"][registry.TAG_DECISION]
    assert "sample count" in model_registry.model_version(env.uri, name, "5")["tags"][registry.TAG_DECISION]


def test_promote_and_rollback_by_hand(env, capsys):
    name = "cli-test"
    for fid in (50.0, 40.0, 45.0):  # v2 wins, v3 loses
        registry.apply_rule(env.uri, name, model_registry.register_version(env.uri, name, env.record["model_uri"], _tags(fid)))
    base = ["--name", name, "--tracking-uri", env.uri]
    steps = [(["promote", "3"], "3"), (["rollback"], "2"), (["rollback"], "1")]
    for argv, champion in steps:
        registry_cli.main(base + argv)
        assert model_registry.model_version(env.uri, name)["version"] == champion
    with pytest.raises(registry.RegistryError, match="no earlier champion"):
        registry_cli.main(base + ["rollback"])
    with pytest.raises(registry.RegistryError, match="no version 9"):
        registry_cli.main(base + ["promote", "9"])
    registry_cli.main(base + ["show"])
    shown = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in shown.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])}
    assert rows["1"][1] == "champion" and rows["2"][1] != "champion" and rows["3"][1] != "champion"
    assert "rolled back from v3 to v2" in shown


def test_generate_from_registry_and_run(env, tmp_path):
    z = generate.latents(6, NET.z_dim, seed=11).numpy()
    images = generate.generate(f"models:/{NAME}@champion", tmp_path / "reg", n=6, seed=11, tracking_uri=env.uri)
    assert images.dtype == np.uint8 and np.array_equal(images, _expected(env.g, z))
    assert (tmp_path / "reg" / "grid.png").exists()
    run_id = env.record["run_id"]
    from_run = generate.generate(f"runs:/{run_id}/generator", tmp_path / "run", n=6, seed=11, tracking_uri=env.uri)
    assert np.array_equal(from_run, images)


@pytest.mark.slow  # a fresh Python process: the full suite runs it
def test_champion_loads_in_a_fresh_directory_without_the_repo(env, tmp_path):
    z = generate.latents(3, NET.z_dim, seed=5).numpy()
    np.save(tmp_path / "z.npy", z)
    code = ("import sys, numpy as np, mlflow\n"
            f"assert {str(REPO)!r} not in [str(__import__('pathlib').Path(p).resolve()) for p in sys.path]\n"
            "sys.modules['pipeline'] = None  # as if the project were not installed (CI installs it editable)\n"
            f"m = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
            "np.save('out.npy', m.predict(np.load('z.npy')))\n")
    subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=fresh_env(env.uri), check=True, timeout=300)
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (3, 16, 16, 1) and np.array_equal(out, _expected(env.g, z))


@pytest.mark.slow
def test_serve_answers_a_rest_request(env, tmp_path):
    z = generate.latents(2, NET.z_dim, seed=3).numpy()
    with serving(f"models:/{NAME}@champion", env.uri, tmp_path) as url:
        status, answer = post_json(f"{url}/invocations", {"inputs": z.tolist()})
        assert status == 200, answer
        images = np.asarray(answer["predictions"])
        assert images.shape == (2, 16, 16, 1) and images.min() >= 0 and images.max() <= 255
        assert np.array_equal(images.astype(np.uint8), _expected(env.g, z))  # JSON carries the ints exactly
        status, answer = post_json(f"{url}/invocations", {"inputs": z.tolist(), "params": {"labels": [0, 1]}})
        assert status == 400 and "unconditional: it takes no labels, got 2" in answer["message"]
        # What would crash or swamp the server is refused with a 400 that says why, and the server stays up.
        big = generate.latents(9, NET.z_dim, seed=4).numpy()
        status, answer = post_json(f"{url}/invocations", {"inputs": big.tolist()})
        assert status == 400 and "at most 8 latents (export.max_batch), got 9" in answer["message"], answer
        nan = z.copy()
        nan[1, 3] = np.nan
        status, answer = post_json(f"{url}/invocations", {"inputs": nan.tolist()})
        assert status == 400 and "finite" in answer["message"] and "row 1" in answer["message"], answer
        status, answer = post_json(f"{url}/invocations", {"inputs": [["a"] * NET.z_dim] * 2})
        assert status == 400, answer  # wrong dtype: MLflow's schema check or ours, never a 500
        status, answer = post_json(f"{url}/invocations", {"inputs": z.tolist()})
        assert status == 200 and np.array_equal(np.asarray(answer["predictions"]).astype(np.uint8), _expected(env.g, z))


def _versions(uri: str, name: str, fids: list[float]) -> list[str]:
    """Registered versions of `name` carrying comparable eval tags and these FIDs, each a rule-promoted candidate."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(name)
    out = []
    for fid in fids:
        tags = {**_tags(fid), registry.TAG_CANDIDATE: "true"}
        out.append(str(client.create_model_version(name, "file:///nowhere", tags=tags).version))
    return out


def test_settle_moves_a_stale_writers_alias_to_the_best_candidate(tmp_path):
    """Two exports both beat the old champion; the slower one, deciding on what it read before, moves the alias to
    the worse model. Its settle round puts the alias on the best candidate, and a choice by hand then stands."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store.prepare_store(uri)
    best, worse, third = _versions(uri, "race", [1.0, 2.0, 1.5])
    model_registry.move_champion(uri, "race", worse, previous=None)  # the stale write landed last
    assert registry.settle(uri, "race") == best
    assert model_registry.model_version(uri, "race")["version"] == best
    assert registry.settle(uri, "race") == best  # settled: a second round moves nothing
    registry.promote(uri, "race", third)  # by hand: the rule's earlier winners stop being candidates
    assert registry.settle(uri, "race") == third
    assert [v["tags"].get(registry.TAG_CANDIDATE) for v in model_registry.list_versions(uri, "race")] == [
        None, None, "true"]


def test_a_writer_that_loses_the_race_to_create_the_alias_sets_it_again(tmp_path, monkeypatch):
    """Two first exports both find no champion and both insert the alias (or the same version's tag): the server
    refuses the second insert. The loser's move sets the key again, now an update, so it can go on to settle."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store.prepare_store(uri)
    first, second = _versions(uri, "race", [2.0, 1.0])
    set_alias, calls = MlflowClient.set_registered_model_alias, []

    def racing(self, name, alias, version):
        calls.append(version)
        if len(calls) == 1:  # the other writer's insert lands first, and this one's is refused
            set_alias(self, name, alias, first)
            raise MlflowException('duplicate key value violates unique constraint "registered_model_alias_pk"')
        return set_alias(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", racing)
    model_registry.move_champion(uri, "race", second, previous=None)
    assert calls == [second, second] and model_registry.model_version(uri, "race")["version"] == second
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias",
                        lambda *a: (_ for _ in ()).throw(MlflowException("refused")))
    with pytest.raises(TrackingError, match="moving the champion alias of race to v1 failed: MlflowException: refus"):
        model_registry.move_champion(uri, "race", first, previous=second)  # a failure that recurs is raised

