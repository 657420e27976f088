"""DCGAN networks: output shapes and ranges for every supported size and variant."""

from __future__ import annotations

import pytest
import torch

from pipeline.nets import NetConfig, build
from pipeline.nets.sampling import from_uint8, to_uint8


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_ranges(size, channels):
    g, d = build(NetConfig(image_size=size, channels=channels, z_dim=10, g_channels=4, d_channels=4))
    x = g(torch.randn(3, 10))
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert d(x).shape == (3,)


@pytest.mark.parametrize("norm", ["batch", "instance", "layer", "none"])
def test_discriminator_variants(norm):
    cfg = NetConfig(image_size=32, channels=1, d_channels=4, d_norm=norm, dropout=0.3, spectral_norm=True)
    _, d = build(cfg)
    assert d(torch.randn(5, 1, 32, 32)).shape == (5,)
    assert any(isinstance(m, torch.nn.Dropout) for m in d.modules())
    assert any("parametrizations" in name for name, _ in d.named_modules())
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert has_bn == (norm == "batch")


def test_examples_architecture_at_64px():
    """At 64 px, z=100, 64 channels these are pytorch/examples' dcgan networks (3.58M G / 2.77M D params)."""
    g, d = build(NetConfig(image_size=64, channels=3, z_dim=100, g_channels=64, d_channels=64))
    assert sum(p.numel() for p in g.parameters()) == 3_576_704
    assert sum(p.numel() for p in d.parameters()) == 2_765_568


def test_bad_size_is_rejected():
    with pytest.raises(ValueError, match="power of two"):
        build(NetConfig(image_size=48))


def test_uint8_round_trip():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 2.0])
    u = to_uint8(x)
    assert u.dtype == torch.uint8 and u.tolist() == [0, 64, 128, 255, 255, 255]
    assert torch.allclose(from_uint8(u)[:2], torch.tensor([-1.0, -0.498]), atol=1e-3)


def test_from_uint8_never_modifies_its_input():
    x = torch.tensor([0.0, 255.0])  # already float: a plain .to() would return x itself
    assert from_uint8(x).tolist() == [-1.0, 1.0] and x.tolist() == [0.0, 255.0]
