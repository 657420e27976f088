"""classifier: train the in-domain feature extractor on the labelled train split; report its held-out accuracy.
Skipped, with the reason, when evaluate will score with another extractor (eval.extractor resolved)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.commands import runner


def main(argv: list[str] | None = None) -> None:
    p = runner.parser(__doc__)
    p.add_argument("--prepared", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="classifier directory (safetensors + JSON)")
    p.add_argument("--metrics", required=True, type=Path, help="metrics JSON (held-out accuracy)")
    args = p.parse_args(argv)
    params = runner.params_from(args)
    # The library (torch and the rest) is imported only once the params are checked: a refusal comes in a second.
    from pipeline.data import read_meta
    from pipeline.evaluation.classifier import fit
    from pipeline.evaluation.resolve import classifier_unused

    skip = classifier_unused(params.eval, read_meta(args.prepared))  # the extractor evaluate will really use
    metrics = fit(args.prepared, args.out, params.eval.classifier_steps, params.eval.classifier_seed, skip)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    if "skipped" not in metrics:
        print(f"classifier: held-out accuracy {metrics['ref_accuracy']:.4f} (train {metrics['train_accuracy']:.4f}) "
              f"after {metrics['steps']} steps, {metrics['train_seconds']} s")
    else:
        print(f"classifier: skipped, {metrics['skipped']}")


if __name__ == "__main__":
    runner.run(main)
