"""`train.init_from`: start training from a trained generator (fine-tuning), not from random weights.

The source is a registered model (`models:/NAME@ALIAS` or `models:/NAME/VERSION`: the safetensors file and
generator.json that export logged into the version's run, under `export/`) or a local `.safetensors` generator with
its generator.json beside it (the train stage's `models/`, or `export/`). D starts from `discriminator.safetensors`
beside a local file when there is one and it fits; otherwise D starts fresh. The source's architecture must equal
the one this run builds, or the run is refused in one line. The weights' SHA-256 goes into the checkpoint
fingerprint and the run's tags, so a moved alias is a new experiment, never a silent resume.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pipeline.errors import ParamsError, first_line
from pipeline.nets import NetConfig
from pipeline.nets.weights import GENERATOR_CONFIG, load_weights
from pipeline.registry import client as model_registry
from pipeline.tracking.store import resolve_uri

DISCRIMINATOR_FILE = "discriminator.safetensors"
# What must match between the source generator and this run's G for its weights to load.
G_FIELDS = ("arch", "z_dim", "image_size", "channels", "g_channels", "num_classes", "g_conditioning",
            "skip_excitation")
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))\Z")


@dataclass(frozen=True)
class WarmStart:
    weights: Path  # G's safetensors
    net: dict  # the source's NetConfig, as generator.json holds it
    source: str  # what the user named, resolved: "dcgan-digits v3 (run abc...)" or the file
    sha256: str
    discriminator: Path | None = None


def _error(init_from: str, why: str) -> ParamsError:
    return ParamsError(f"params.yaml: train.init_from={init_from}: {why}")


def _from_registry(init_from: str, tracking_uri: str, dest: Path) -> tuple[Path, str]:
    """Download export/ of the model version's run; return (its safetensors file, a description)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    m = _MODELS_URI.match(init_from)
    if m is None:
        raise _error(init_from, "a registered model is named models:/NAME@ALIAS or models:/NAME/VERSION")
    uri = resolve_uri(tracking_uri)
    mv = model_registry.model_version(uri, m["name"], m["version"], alias=m["alias"] or model_registry.CHAMPION)
    if mv is None:
        raise _error(init_from, f"not found in the registry at {uri}")
    try:
        local = mlflow.artifacts.download_artifacts(run_id=mv["run_id"], artifact_path="export", dst_path=str(dest),
                                                    tracking_uri=uri)
    except MlflowException as e:
        raise _error(init_from, f"the run {mv['run_id']} of {m['name']} v{mv['version']} has no export/ to start "
                                f"from ({first_line(e)})") from None
    return Path(local) / "generator.safetensors", f"{m['name']} v{mv['version']} (run {mv['run_id']})"


def resolve(init_from: str, tracking_uri: str, cache: Path | None = None) -> WarmStart:
    """The generator `init_from` names, downloaded when registered; refused in one line when it cannot be used."""
    if init_from.startswith("models:/"):
        weights, source = _from_registry(init_from, tracking_uri, Path(cache or tempfile.mkdtemp(prefix="init-")))
    else:
        weights, source = Path(init_from), init_from
        if weights.suffix != ".safetensors":
            raise _error(init_from, "name a .safetensors generator file or a registered model (models:/NAME@ALIAS)")
    config = weights.with_name(GENERATOR_CONFIG)
    if not weights.is_file() or not config.is_file():
        raise _error(init_from, f"needs {weights.name} and {GENERATOR_CONFIG} side by side; "
                                f"{weights if not weights.is_file() else config} is missing")
    d = weights.with_name(DISCRIMINATOR_FILE)
    return WarmStart(weights=weights, net=json.loads(config.read_text())["net"], source=source,
                     sha256=hashlib.sha256(weights.read_bytes()).hexdigest(), discriminator=d if d.is_file() else None)


def check_fits(init_from: str, warm: WarmStart, cfg: NetConfig) -> None:
    """Refuse a source generator whose architecture differs from the one this run builds."""
    ours = cfg.to_dict()
    for key in G_FIELDS:
        theirs = warm.net.get(key, NetConfig.__dataclass_fields__[key].default)
        if theirs != ours[key]:
            raise _error(init_from, f"{warm.source} was trained with model {key}={theirs}, this run builds "
                                    f"{key}={ours[key]}; set the same model params, or train.init_from: null")


def load_into(warm: WarmStart, G: nn.Module, D: nn.Module) -> None:
    """G from the source (it fits: check_fits ran); D too where saved and it fits."""
    G.load_state_dict(load_weights(warm.weights))
    if warm.discriminator is None:
        return
    try:
        D.load_state_dict(load_weights(warm.discriminator))
    except RuntimeError as e:
        print(f"WARNING: {warm.discriminator} does not fit this run's D ({first_line(e, 120)}); D starts "
              "from random weights", file=sys.stderr)
