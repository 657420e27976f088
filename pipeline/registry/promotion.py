"""Champion promotion in the model registry: the rule, and promote / rollback by hand (`gan-registry`).

A version takes the `champion` alias only if its FID (Heusel et al., 2017, arXiv:1706.08500) beats the champion's,
measured with the same feature extractor, sample count and reference data; otherwise the comparison is refused.
Concurrent exports, on one machine or many, settle through the registry itself (`apply_rule`).
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
TAG_CANDIDATE = "champion_candidate"  # "true" on each version the rule promoted since the last choice by hand
SETTLE_ROUNDS = 20  # read-and-fix rounds before giving up (two exports racing settle in two or three)

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


def _incomparable(a: dict, b: dict) -> tuple[str, str | None, str | None] | None:
    """How version `a`'s metrics were measured differently from `b`'s: (what, a's, b's), or None when comparable."""
    for tag, what in ((TAG_EVAL_DATA, "reference data hash"), (TAG_EXTRACTOR, "feature extractor"),
                      (TAG_SAMPLES, "sample count")):  # the data first: other data differ in every setting
        x, y = a["tags"].get(tag), b["tags"].get(tag)
        if x is None or x != y:
            return what, x, y
    return None


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
    if (differs := _incomparable(new, champion)) is not None:
        what, a, b = differs
        if what == "reference data hash" and a is not None and b is not None:
            return Decision(False, f"refusing to compare {metric}: v{v_new} was trained and measured on other data "
                                   f"than champion v{v_old} (data {a!r}, champion's {b!r}); {metric.upper()}s on "
                                   f"different data are not comparable. Champion v{v_old} stays; give this data its "
                                   "own export.model_name, or promote by hand if intended")
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

    MLflow has no compare-and-set on an alias (its last write wins), and exports on different machines share no
    lock, so a winner settles the alias through the registry itself: it marks itself a candidate, moves the alias,
    then reads the candidates back and, while the alias is not on the best comparable one, moves it there and reads
    again. Every writer's last act is a read that found the alias on the best, so the last write of all is the best
    candidate, in whatever order concurrent exports run."""
    new = model_registry.model_version(uri, name, version)
    if new is None:
        raise RegistryError(f"{name} has no version {version}")
    champion = model_registry.model_version(uri, name)
    decision = decide(new, champion, metric)
    if decision.promote:
        model_registry.set_version_tags(uri, name, version, {TAG_CANDIDATE: "true"})
        model_registry.move_champion(uri, name, version, previous=champion["version"] if champion else None)
        winner = settle(uri, name, metric)
        if winner != str(version):
            decision = Decision(False, f"{decision.reason}, but a concurrent export's v{winner} is better and holds "
                                       f"the alias; v{version} stays registered without it")
    verdict = "champion" if decision.promote else "not promoted"
    model_registry.set_version_tags(uri, name, version, {TAG_DECISION: f"{verdict}: {decision.reason}"})
    return decision


def settle(uri: str, name: str, metric: str = "fid") -> str:
    """Move the alias to the best candidate comparable with the champion until a read finds it there; returns the
    champion's version."""
    key, lower_is_better = METRICS[metric]
    sign = 1.0 if lower_is_better else -1.0
    for _ in range(SETTLE_ROUNDS):
        champion = model_registry.model_version(uri, name)
        if champion is None:
            raise RegistryError(f"the {model_registry.CHAMPION} alias of {name} was removed while it settled")
        candidates = [v for v in model_registry.list_versions(uri, name)
                      if v["tags"].get(TAG_CANDIDATE) == "true" and metric_value(v["tags"], key) is not None
                      and _incomparable(v, champion) is None]
        best = min([champion, *candidates], key=lambda v, c=champion["version"]: _rank(v, c, key, sign))
        if best["version"] == champion["version"]:
            return champion["version"]
        model_registry.move_champion(uri, name, best["version"], previous=champion["version"])
    raise RegistryError(f"the {model_registry.CHAMPION} alias of {name} did not settle in {SETTLE_ROUNDS} rounds: "
                        "other writers keep moving it; run `gan-registry show` and promote by hand")


def _rank(v: dict, champion: str, key: str, sign: float) -> tuple[float, bool, int]:
    """Best score first; on a tie the champion stays, else the older version wins."""
    score = metric_value(v["tags"], key)
    return (math.inf if score is None else sign * score, v["version"] != champion, int(v["version"]))


def _clear_candidates(uri: str, name: str, keep: str) -> None:
    """A choice by hand stands until an export beats it: the rule's earlier winners stop being candidates."""
    for v in model_registry.list_versions(uri, name):
        if v["version"] != str(keep) and TAG_CANDIDATE in v["tags"]:
            model_registry.delete_version_tag(uri, name, v["version"], TAG_CANDIDATE)


def promote(uri: str, name: str, version: str) -> str:
    """Move the champion alias to `version` by hand, whatever the metrics say."""
    if model_registry.model_version(uri, name, version) is None:
        raise RegistryError(f"{name} has no version {version}")
    champion = model_registry.model_version(uri, name)
    if champion is not None and champion["version"] == str(version):
        return f"v{version} is already the champion of {name}"
    model_registry.move_champion(uri, name, version, previous=champion["version"] if champion else None)
    _clear_candidates(uri, name, keep=version)
    model_registry.set_version_tags(uri, name, version, {TAG_DECISION: "champion: promoted by hand"})
    was = f" (was v{champion['version']})" if champion else ""
    return f"champion of {name} is now v{version}{was}"


def rollback(uri: str, name: str) -> str:
    """Move the champion alias back to the version it replaced."""
    champion = model_registry.model_version(uri, name)
    if champion is None:
        raise RegistryError(f"{name} has no champion to roll back")
    previous = champion["tags"].get(model_registry.PREVIOUS_TAG)
    if previous is None or model_registry.model_version(uri, name, previous) is None:
        raise RegistryError(f"champion v{champion['version']} of {name} records no earlier champion to roll back to")
    model_registry.move_champion(uri, name, previous, previous=None)
    _clear_candidates(uri, name, keep=previous)
    model_registry.set_version_tags(uri, name, champion["version"], {TAG_DECISION: f"rolled back to v{previous}"})
    return f"champion of {name} rolled back from v{champion['version']} to v{previous}"
