"""What a training run is built from: the class count resolved against the prepared data, the fingerprint a
checkpoint must match to be resumed, the Accelerator (Hugging Face Accelerate), and the step the params ask for.
"""

from __future__ import annotations

import hashlib
import json

from pipeline import cores, hardware
from pipeline.config import Params
from pipeline.errors import DataError
from pipeline.training.cuda_graph import GraphedStep
from pipeline.training.step import GANStep


def num_classes(params: Params, meta: dict) -> int:
    """model.conditional resolved against the prepared data: the class count, or 0 for an unconditional GAN."""
    if params.model.conditional == "false":
        return 0
    if not meta.get("labelled"):
        if params.model.conditional == "true":
            raise DataError("model.conditional is true but the prepared data has no labels (an image folder needs "
                            "one subfolder per class); set model.conditional: auto or false")
        return 0
    return len(meta["classes"])


# Train params that change neither the weights nor the optimiser state: a checkpoint resumes across them.
SCHEDULE_ONLY = ("steps", "log_every_steps", "sample_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                 "fid_every_steps", "cuda_graphs")


def fingerprint(params: Params, meta: dict, init_sha256: str | None = None, device=None) -> str:
    """What a checkpoint must match to be resumed: data (the prepared data's `meta`), model, the train params that
    shape the trajectory, with their `auto` values resolved for the data and for `device` (the precision; default the
    CPU), and the weights train.init_from started from (an alias that moved is another experiment)."""
    import torch

    params = hardware.resolved(params.resolved(), device or torch.device("cpu"))
    train = {k: v for k, v in params.to_dict()["train"].items() if k not in SCHEDULE_ONLY}
    blob = json.dumps({"data": meta["hash"], "model": params.to_dict()["model"], "train": train,
                       **({"init": init_sha256} if init_sha256 else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_accelerator(params: Params):
    """The run's Accelerator, its precision resolved for the device Accelerate picks (`hardware.choose`)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env

    # The process state the Accelerator below adopts: made as AcceleratorState would make it (the CPU flag of
    # `accelerate launch --cpu` / ACCELERATE_USE_CPU decides the distributed backend too).
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    hardware.warn_slow_bf16(params.train.mixed_precision, device.type)
    tc = hardware.resolved(params, device).train
    acc = Accelerator(mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.grad_accum_steps)
    cores.use_cpu_cores(acc, tc.cpu_threads)
    return acc


def make_step(params: Params, acc, *args, **kwargs) -> GANStep:
    """The training step the params ask for: replayed as CUDA graphs (train.cuda_graphs), or eager. Arguments as
    `GANStep`'s."""
    return (GraphedStep if params.train.cuda_graphs else GANStep)(params, acc, *args, **kwargs)
