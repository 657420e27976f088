"""evaluate: score the trained generator (IS/FID/KID/PRC via torch-fidelity) against the held-out reference split;
write metrics/eval.json and a sample grid, and log both to the pipeline's MLflow run. Runs under `accelerate launch`."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands import runner


def main(argv: list[str] | None = None) -> None:
    p = runner.parser(__doc__)
    for name in ("prepared", "models", "classifier", "run-file", "metrics", "plots"):
        p.add_argument(f"--{name}", required=True, type=Path)
    args = p.parse_args(argv)
    params = runner.params_from(args)
    # The library (torch and the rest) is imported only once the params are checked: a refusal comes in a second.
    from pipeline.evaluation.stage import EvalPaths, evaluate

    evaluate(params, EvalPaths(prepared=args.prepared, models=args.models, classifier=args.classifier,
                               run_file=args.run_file, metrics=args.metrics, plots=args.plots))


if __name__ == "__main__":
    runner.run(main)
