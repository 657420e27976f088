"""export: ship the evaluated generator (safetensors, .pt2, ONNX), register it in MLflow and apply the champion rule."""

from __future__ import annotations

from pathlib import Path

from pipeline import cli
from pipeline.export import ExportError, ExportPaths, run_export
from pipeline.pyfunc_model import UnsafeArchiveError
from pipeline.registry import RegistryError

cli.register_user_error(ExportError, RegistryError, UnsafeArchiveError)


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__)
    for name in ("models", "eval", "run-file", "out", "metrics"):
        p.add_argument(f"--{name}", required=True, type=Path)
    args = p.parse_args(argv)
    params = cli.params_from(args)
    run_export(params, ExportPaths(models=args.models, eval_json=args.eval, run_file=args.run_file, out=args.out,
                                   metrics=args.metrics))


if __name__ == "__main__":
    cli.run(main)
