"""train: run (or resume) GAN training under `accelerate launch`; write the generator, metrics, plots, run id."""

from __future__ import annotations

from pathlib import Path

from pipeline import cli
from pipeline.train import DivergenceError, TrainPaths, train

cli.register_user_error(DivergenceError)


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__)
    for name in ("prepared", "models", "metrics", "plots", "run-file", "checkpoints"):
        p.add_argument(f"--{name}", required=True, type=Path)
    p.add_argument("--tensorboard", type=Path, default=None)
    args = p.parse_args(argv)
    params = cli.params_from(args)
    paths = TrainPaths(prepared=args.prepared, models=args.models, metrics=args.metrics, plots=args.plots,
                       run_file=args.run_file, checkpoints=args.checkpoints, tensorboard=args.tensorboard)
    train(params, paths)


if __name__ == "__main__":
    cli.run(main)
