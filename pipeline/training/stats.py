"""Training metrics decoupled from their writers (as stylegan2-ada's `training_stats`): code calls
`report('Loss/G', x)`, and only the loop writes the means out, once per tick."""

from __future__ import annotations

from collections import defaultdict

import torch


class Stats:
    """Collects detached device tensors between ticks; one host sync per tick, none per step."""

    def __init__(self) -> None:
        self._v: dict[str, list[torch.Tensor]] = defaultdict(list)

    def report(self, name: str, value: torch.Tensor) -> None:
        self._v[name].append(value.detach().float().reshape(()))

    def pop_means(self) -> dict[str, float]:
        out = {k: torch.stack(v).mean().item() for k, v in self._v.items() if v}
        self._v.clear()
        return out
