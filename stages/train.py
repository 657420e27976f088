"""train: check what later stages need (pipeline.training.preflight), then run (or resume) GAN training under
`python -m pipeline.commands.launch` (accelerate launch); write the generator, metrics, plots, run id."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.commands import runner


def main(argv: list[str] | None = None) -> None:
    p = runner.parser(__doc__)
    for name in ("prepared", "models", "metrics", "plots", "run-file", "checkpoints"):
        p.add_argument(f"--{name}", required=True, type=Path)
    p.add_argument("--tensorboard", type=Path, default=None)
    p.add_argument("--classifier", type=Path, default=None, help="in-domain classifier dir (train.fid_every_steps > 0)")
    args = p.parse_args(argv)
    params = runner.params_from(args)
    # The library (torch and the rest) is imported only once the params are checked: a refusal comes in a second.
    from pipeline.training import preflight
    from pipeline.training.stage import TrainPaths, train

    runner.on_disk_error(lambda: _last_checkpoint(args.checkpoints))
    if not os.environ.get(preflight.DONE_ENV):  # pipeline.commands.launch ran them before launching
        preflight.check(params, args.prepared, args.classifier)
    paths = TrainPaths(prepared=args.prepared, models=args.models, metrics=args.metrics, plots=args.plots,
                       run_file=args.run_file, checkpoints=args.checkpoints, tensorboard=args.tensorboard)
    acc = evaluator = None
    if params.train.fid_every_steps > 0:  # FID during training, same extractor and reference stats as evaluate
        from pipeline.evaluation.scorer import train_fid_evaluator
        from pipeline.training.build import make_accelerator

        acc = make_accelerator(params)
        evaluator = train_fid_evaluator(params.eval, args.prepared, args.classifier, dist=acc)
    train(params, paths, accelerator=acc, evaluator=evaluator)


def _last_checkpoint(root: Path) -> str | None:
    from pipeline.training import checkpoint

    last = checkpoint.latest_checkpoint(root)
    return f"the last good checkpoint is {last}" if last is not None else None


if __name__ == "__main__":
    runner.run(main)
