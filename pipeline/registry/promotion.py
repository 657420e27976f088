"""Champion promotion in the model registry: the rule, and promote / rollback by hand (`gan-registry`).

A version takes the `champion` alias only if its FID (Heusel et al., 2017, arXiv:1706.08500) beats the champion's,
measured with the same feature extractor, sample count and reference data; otherwise the comparison is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import RegistryError
from pipeline.registry import client as model_registry

# Version tags written by the export stage and read by the rule below.
TAG_RUN = "run_id"
TAG_COMMIT = "git_commit"
TAG_DATA = "data_hash"
TAG_EXTRACTOR = "eval.extractor"
TAG_SAMPLES = "eval.num_samples"
TAG_EVAL_DATA = "eval.data_hash"  # the reference data the metrics were computed against
TAG_WEIGHTS = "eval.weights"
TAG_DECISION = "promotion"
TAG_CONDITIONAL = "conditional"  # "true" | "false": whether the pyfunc takes the `labels` param
TAG_NUM_CLASSES = "num_classes"  # conditional only: labels are ints in [0, num_classes)
TAG_CLASSES = "classes"  # conditional only: JSON list of class names, label k is the k-th
METRIC_TAG_PREFIX = "eval."  # + a torch-fidelity key, e.g. eval.frechet_inception_distance

# export.promote_metric -> (torch-fidelity key, lower is better).
METRICS = {"fid": ("frechet_inception_distance", True)}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def metric_value(tags: dict, key: str) -> float | None:
    try:
        value = float(tags[METRIC_TAG_PREFIX + key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def decide(new: dict, champion: dict | None, metric: str = "fid") -> Decision:
    """Pure rule. `new` and `champion` are {"version", "tags"} dicts as `model_registry.model_version` returns them."""
    key, lower_is_better = METRICS[metric]
    v_new = new["version"]
    if champion is None:
        return Decision(True, f"v{v_new} is the first model: no champion yet")
    v_old = champion["version"]
    if v_old == v_new:
        return Decision(False, f"v{v_new} is already the champion")
    score_new, score_old = metric_value(new["tags"], key), metric_value(champion["tags"], key)
    if score_new is None:
        return Decision(False, f"v{v_new} has no finite {key} tag (does eval.metrics include {metric}?); "
                               f"champion v{v_old} stays")
    if score_old is None:
        return Decision(False, f"champion v{v_old} has no finite {key} tag, so there is nothing to compare with; "
                               f"promote by hand if v{v_new} should serve")
    for tag, what in ((TAG_EXTRACTOR, "feature extractor"), (TAG_SAMPLES, "sample count"),
                      (TAG_EVAL_DATA, "reference data hash")):
        a, b = new["tags"].get(tag), champion["tags"].get(tag)
        if a is None or a != b:
            return Decision(False, f"refusing to compare {metric}: v{v_new} was measured with {what} {a!r}, "
                                   f"champion v{v_old} with {b!r}; {metric.upper()}s from different {what}s are "
                                   f"not comparable. Champion v{v_old} stays; promote by hand if intended")
    better = score_new < score_old if lower_is_better else score_new > score_old
    setting = f"{new['tags'][TAG_EXTRACTOR]}, {new['tags'][TAG_SAMPLES]} samples"
    if better:
        return Decision(True, f"v{v_new} {metric} {score_new:.4g} beats champion v{v_old}'s {score_old:.4g} ({setting})")
    return Decision(False, f"v{v_new} {metric} {score_new:.4g} does not beat champion v{v_old}'s {score_old:.4g} "
                           f"({setting}); v{v_new} stays registered without the alias")


def apply_rule(uri: str, name: str, version: str, metric: str = "fid") -> Decision:
    """Decide for a newly registered version, move the alias if it wins, and tag the version with the reason.
    Read, decide and move happen under one lock, so concurrent exports cannot both beat the same champion."""
    with model_registry.champion_lock(uri, name):
        new = model_registry.model_version(uri, name, version)
        if new is None:
            raise RegistryError(f"{name} has no version {version}")
        champion = model_registry.model_version(uri, name)
        decision = decide(new, champion, metric)
        if decision.promote:
            model_registry.move_champion(uri, name, version, previous=champion["version"] if champion else None)
    verdict = "champion" if decision.promote else "not promoted"
    model_registry.set_version_tags(uri, name, version, {TAG_DECISION: f"{verdict}: {decision.reason}"})
    return decision


def promote(uri: str, name: str, version: str) -> str:
    """Move the champion alias to `version` by hand, whatever the metrics say."""
    with model_registry.champion_lock(uri, name):
        if model_registry.model_version(uri, name, version) is None:
            raise RegistryError(f"{name} has no version {version}")
        champion = model_registry.model_version(uri, name)
        if champion is not None and champion["version"] == str(version):
            return f"v{version} is already the champion of {name}"
        model_registry.move_champion(uri, name, version, previous=champion["version"] if champion else None)
        model_registry.set_version_tags(uri, name, version, {TAG_DECISION: "champion: promoted by hand"})
        was = f" (was v{champion['version']})" if champion else ""
        return f"champion of {name} is now v{version}{was}"


def rollback(uri: str, name: str) -> str:
    """Move the champion alias back to the version it replaced."""
    with model_registry.champion_lock(uri, name):
        champion = model_registry.model_version(uri, name)
        if champion is None:
            raise RegistryError(f"{name} has no champion to roll back")
        previous = champion["tags"].get(model_registry.PREVIOUS_TAG)
        if previous is None or model_registry.model_version(uri, name, previous) is None:
            raise RegistryError(f"champion v{champion['version']} of {name} records no earlier champion to roll back to")
        model_registry.move_champion(uri, name, previous, previous=None)
        model_registry.set_version_tags(uri, name, champion["version"], {TAG_DECISION: f"rolled back to v{previous}"})
        return f"champion of {name} rolled back from v{champion['version']} to v{previous}"
