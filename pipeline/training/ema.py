"""An exponential moving average of G's weights (Karras et al., 2018; Yazıcı et al., 2019), and its file.

The EMA generator is what evaluate scores and export ships by default (`eval.weights: ema`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from pipeline.nets.weights import cpu_state, load_weights


class EMA(nn.Module):
    """Exponential moving average of G's parameters; buffers (BatchNorm statistics) are copied."""

    def __init__(self, model: nn.Module, halflife_steps: float):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False).float()
        self.beta = 0.5 ** (1.0 / halflife_steps) if halflife_steps > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p, p = list(self.module.parameters()), [q.float() for q in model.parameters()]
        torch._foreach_lerp_(ema_p, p, 1.0 - self.beta)
        torch._foreach_copy_(list(self.module.buffers()), list(model.buffers()))  # one launch, not one per buffer

    def save(self, path: Path) -> None:
        """The averaged weights as safetensors (a checkpoint's `ema.safetensors`)."""
        save_file(cpu_state(self), str(path))

    def load(self, path: Path) -> None:
        self.load_state_dict(load_weights(path))
