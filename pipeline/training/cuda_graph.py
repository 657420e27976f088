"""The training step replayed as CUDA graphs (`train.cuda_graphs`): one captured graph per penalty pattern.

Inputs go through static buffers, Adam is capturable and autocast runs without its weight cache, so a replay does
exactly what the eager step does. Off CUDA the same code runs eagerly through the same buffers (the CPU tests use
this to check the buffered path). STACK-NOTES measured 3.3x the reference loop at batch 64 on an H200.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from pipeline.errors import ParamsError
from pipeline.training.step import GANStep


class _GraphStats:
    """Stands in for `Stats` while a CUDA graph is captured: keeps the graph's static output tensors by name."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.values: list[torch.Tensor] = []

    def report(self, name: str, value: torch.Tensor) -> None:
        self.names.append(name)
        self.values.append(value.detach().float().reshape(()))


class GraphedStep(GANStep):
    """`GANStep` whose step reads its real batch from static buffers and, on CUDA, replays a captured graph."""

    GRAPH_WARMUP_STEPS = 2  # eager steps (on a side stream) per graph before it is captured

    def __init__(self, params, acc, images: torch.Tensor, *args, **kwargs):
        check_graphable(params.train, acc.num_processes)
        self.capture = acc.device.type == "cuda"  # before the optimisers are made: they must be capturable
        super().__init__(params, acc, images, *args, **kwargs)
        n_critic = self.tc.n_critic
        self._real_labels = torch.zeros((n_critic, self.per_rank), dtype=torch.long, device=self.device)
        self._real_u8 = torch.empty((n_critic, self.per_rank, *images.shape[1:]), dtype=torch.uint8,
                                    device=self.device)
        self._graphs: dict[tuple[bool, ...], tuple] = {}
        self._warm: dict[tuple[bool, ...], int] = defaultdict(int)

    def _run(self, step: int, gp_at: tuple[bool, ...]) -> None:
        """Copy this step's real batches into the static buffers (grad_accum_steps is 1 here), then run the step."""
        for j in range(self.tc.n_critic):
            self.sampler.batch(step * self.tc.n_critic + j, out=self._real_u8[j])
            if self.cfg.num_classes:
                self._real_labels[j].copy_(self.sampler.batch_labels(step * self.tc.n_critic + j))
        self._static_step(gp_at)

    def _static_real(self, j: int, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._float(self._real_u8[j]), self._real_labels[j] if self.cfg.num_classes else None

    def _static_step(self, gp_at: tuple[bool, ...]) -> None:
        """Eager warm-up steps, then capture once per penalty pattern, then replay; off CUDA, always eager."""
        if not self.capture:
            return self._iteration(gp_at, self._static_real)
        entry = self._graphs.get(gp_at)
        if entry is None and self._warm[gp_at] < self.GRAPH_WARMUP_STEPS:
            self._warm[gp_at] += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._iteration(gp_at, self._static_real)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        if entry is None:
            graph, stats, self.stats = torch.cuda.CUDAGraph(), self.stats, _GraphStats()
            try:
                with torch.cuda.graph(graph):
                    self._iteration(gp_at, self._static_real)
                entry = self._graphs[gp_at] = (graph, self.stats.names, self.stats.values)
            finally:
                self.stats = stats
        graph, names, values = entry
        graph.replay()  # capture recorded the work; this runs it
        snapshot = torch.stack(values)  # the next replay overwrites the graph's outputs
        for i, name in enumerate(names):
            self.stats.report(name, snapshot[i])


def check_graphable(tc, world: int) -> None:
    """train.cuda_graphs captures one process's whole step: no gradient all-reduce, accumulation or loss scaler;
    ADA's, APA's and LeCam's device-side state and DynamicD's masks are not captured yet."""
    why = graph_blocker(tc, world)
    if why:
        raise ParamsError(f"params.yaml: train.cuda_graphs=true cannot be used here: {why}")


def graph_blocker(tc, world: int) -> str:
    """Why this run cannot be captured as CUDA graphs, or '' when it can."""
    if tc.grad_accum_steps != 1:
        return "train.grad_accum_steps must be 1"
    if tc.mixed_precision == "fp16":
        return "train.mixed_precision fp16 needs a loss scaler that syncs with the host; use bf16 or no"
    if world != 1:
        return f"it needs a single process, got {world}"
    if tc.augment == "ada":
        return "train.augment=ada is not graphed yet; use diffaug or none"
    if tc.apa:  # APA's and LeCam's device-side state has not been checked under capture
        return "train.apa=true is not graphed yet; set it to false"
    if tc.lecam_weight > 0:
        return "train.lecam_weight>0 is not graphed yet; set it to 0"
    if tc.d_width_end < 1:
        return "train.d_width_end<1 is not graphed yet (its masks change every step); set it to 1"
    return ""
