"""Launched by tests/test_distributed.py under `accelerate launch`: train, then dump this rank's weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from pipeline.config import load_params
from pipeline.training.build import make_accelerator
from pipeline.training.outputs import TrainPaths
from pipeline.training.stage import train


def main(params_file: str, prepared: str, out: str) -> None:
    params = load_params(params_file)
    acc = make_accelerator(params)
    o = Path(out)
    paths = TrainPaths(prepared=Path(prepared), models=o / "models", metrics=o / "metrics.json", plots=o / "plots",
                       run_file=o / "run.json", checkpoints=o / "checkpoints")
    train(params, paths, accelerator=acc)
    g, d = (acc.unwrap_model(m) for m in acc._models)  # prepared in this order by GANStep
    state = {f"G.{k}": v.detach().contiguous() for k, v in g.state_dict().items()}
    state |= {f"D.{k}": v.detach().contiguous() for k, v in d.state_dict().items()}
    save_file(state, str(o / f"rank{acc.process_index}.safetensors"))
    (o / f"rank{acc.process_index}.json").write_text(json.dumps({"world_size": acc.num_processes}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
