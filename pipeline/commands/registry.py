"""`gan-registry show | promote VERSION | rollback`: inspect the model registry and move the champion alias by hand."""

from __future__ import annotations

import argparse

from pipeline.commands import runner
from pipeline.registry import client, promotion


def show(uri: str, name: str, metric: str = "fid") -> str:
    key = promotion.METRICS[metric][0]
    rows = [f"{'version':>7}  {'alias':9} {metric:>10}  {'extractor':24} {'samples':>7}  {'classes':>7}  decision"]
    for v in client.list_versions(uri, name):
        score = promotion.metric_value(v["tags"], key)
        rows.append(f"{v['version']:>7}  {','.join(v['aliases']):9} {'-' if score is None else f'{score:.4g}':>10}  "
                    f"{v['tags'].get(promotion.TAG_EXTRACTOR, '-'):24} {v['tags'].get(promotion.TAG_SAMPLES, '-'):>7}  "
                    f"{_classes(v['tags']):>7}  {v['tags'].get(promotion.TAG_DECISION, '')}")
    return "\n".join(rows) if len(rows) > 1 else f"{name} has no registered versions at {uri}"


def _classes(tags: dict) -> str:
    """`show`'s conditioning column: the class count of a conditional version, "uncond", or "-" (untagged)."""
    if tags.get(promotion.TAG_CONDITIONAL) == "true":
        return tags.get(promotion.TAG_NUM_CLASSES, "yes")
    return "uncond" if tags.get(promotion.TAG_CONDITIONAL) == "false" else "-"


def main(argv: list[str] | None = None) -> None:
    p = runner.parser("Inspect the model registry and move the champion alias by hand.")
    p.add_argument("--name", help="registered model name (default: export.model_name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.uri)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("promote", help="make VERSION the champion").add_argument("version")
    sub.add_parser("rollback", help="give the alias back to the previous champion")
    sub.add_parser("show", help="list versions, metrics and decisions")
    args = p.parse_args(argv)
    uri, name, metric = _resolve(args)
    if args.command == "promote":
        print(promotion.promote(uri, name, args.version))
    elif args.command == "rollback":
        print(promotion.rollback(uri, name))
    else:
        print(show(uri, name, metric))


def _resolve(args: argparse.Namespace) -> tuple[str, str, str]:
    if args.name and args.tracking_uri:
        return args.tracking_uri, args.name, "fid"
    params = runner.params_from(args)
    return args.tracking_uri or params.tracking.uri, args.name or params.export.model_name, params.export.promote_metric


def cli_main() -> None:
    """Console script entry point (`gan-registry`)."""
    runner.run(main)


if __name__ == "__main__":
    cli_main()
