"""export: ship the evaluated generator (safetensors, .pt2, ONNX), register it in MLflow and apply the champion rule."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands import runner


def main(argv: list[str] | None = None) -> None:
    p = runner.parser(__doc__)
    for name in ("models", "eval", "run-file", "out", "metrics"):
        p.add_argument(f"--{name}", required=True, type=Path)
    args = p.parse_args(argv)
    params = runner.params_from(args)
    # The library (torch and the rest) is imported only once the params are checked: a refusal comes in a second.
    from pipeline.export.stage import ExportPaths, run_export

    run_export(params, ExportPaths(models=args.models, eval_json=args.eval, run_file=args.run_file, out=args.out,
                                   metrics=args.metrics))


if __name__ == "__main__":
    runner.run(main)
