"""evaluate: score the trained generator (IS/FID/KID/PRC via torch-fidelity) against the held-out reference split;
write metrics/eval.json and a sample grid, and log both to the pipeline's MLflow run. Runs under `accelerate launch`."""

from __future__ import annotations

from pathlib import Path

from pipeline import cli
from pipeline.evaluate import EvalPaths, evaluate
from pipeline.metrics import MetricsError

cli.register_user_error(MetricsError)


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__)
    for name in ("prepared", "models", "classifier", "run-file", "metrics", "plots"):
        p.add_argument(f"--{name}", required=True, type=Path)
    args = p.parse_args(argv)
    params = cli.params_from(args)
    evaluate(params, EvalPaths(prepared=args.prepared, models=args.models, classifier=args.classifier,
                               run_file=args.run_file, metrics=args.metrics, plots=args.plots))


if __name__ == "__main__":
    cli.run(main)
