"""Champion promotion in the model registry, and the `promote VERSION` / `rollback` / `show` command.

A version takes the `champion` alias only if its FID (Heusel et al., 2017, arXiv:1706.08500) beats the champion's,
measured with the same feature extractor, sample count and reference data; otherwise the comparison is refused.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from pipeline import cli, model_registry

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


class RegistryError(RuntimeError):
    """A registry request that cannot be carried out (unknown version, nothing to roll back to)."""


cli.register_user_error(RegistryError)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def _metric(tags: dict, key: str) -> float | None:
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
    score_new, score_old = _metric(new["tags"], key), _metric(champion["tags"], key)
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


def show(uri: str, name: str, metric: str = "fid") -> str:
    key = METRICS[metric][0]
    rows = [f"{'version':>7}  {'alias':9} {metric:>10}  {'extractor':24} {'samples':>7}  {'classes':>7}  decision"]
    for v in model_registry.list_versions(uri, name):
        score = _metric(v["tags"], key)
        rows.append(f"{v['version']:>7}  {','.join(v['aliases']):9} {'-' if score is None else f'{score:.4g}':>10}  "
                    f"{v['tags'].get(TAG_EXTRACTOR, '-'):24} {v['tags'].get(TAG_SAMPLES, '-'):>7}  "
                    f"{_classes(v['tags']):>7}  {v['tags'].get(TAG_DECISION, '')}")
    return "\n".join(rows) if len(rows) > 1 else f"{name} has no registered versions at {uri}"


def _classes(tags: dict) -> str:
    """`show`'s conditioning column: the class count of a conditional version, "uncond", or "-" (untagged)."""
    if tags.get(TAG_CONDITIONAL) == "true":
        return tags.get(TAG_NUM_CLASSES, "yes")
    return "uncond" if tags.get(TAG_CONDITIONAL) == "false" else "-"


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("Inspect the model registry and move the champion alias by hand.")
    p.add_argument("--name", help="registered model name (default: export.model_name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.uri)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("promote", help="make VERSION the champion").add_argument("version")
    sub.add_parser("rollback", help="give the alias back to the previous champion")
    sub.add_parser("show", help="list versions, metrics and decisions")
    args = p.parse_args(argv)
    uri, name, metric = _resolve(args)
    if args.command == "promote":
        print(promote(uri, name, args.version))
    elif args.command == "rollback":
        print(rollback(uri, name))
    else:
        print(show(uri, name, metric))


def _resolve(args: argparse.Namespace) -> tuple[str, str, str]:
    if args.name and args.tracking_uri:
        return args.tracking_uri, args.name, "fid"
    params = cli.params_from(args)
    return args.tracking_uri or params.tracking.uri, args.name or params.export.model_name, params.export.promote_metric


def cli_main() -> None:
    """Console script entry point (`gan-registry`)."""
    cli.run(main)


if __name__ == "__main__":
    cli_main()
