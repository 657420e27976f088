"""prepare: read the configured image source once and write the prepared uint8 arrays and meta.json."""

from __future__ import annotations

from pipeline.commands import runner


def main(argv: list[str] | None = None) -> None:
    p = runner.parser(__doc__)
    p.add_argument("--out", required=True, help="prepared data directory")
    args = p.parse_args(argv)
    params = runner.params_from(args)
    # The library (torch and the rest) is imported only once the params are checked: a refusal comes in a second.
    from pipeline.data import prepare

    # Refuses, before writing anything, a set too small for one batch or for the metrics (a check only: those
    # params do not change what it writes, so dvc.yaml does not list them)
    meta = prepare(params.data, args.out, min_train=params.train.batch_size,
                   min_ref=params.eval.min_reference_images())
    print(f"prepared {params.data.dataset}: {meta['count']} images of shape {meta['shape']}, hash {meta['hash']}")


if __name__ == "__main__":
    runner.run(main)
