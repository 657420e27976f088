"""DCGAN networks: output shapes and ranges for every supported size and variant."""

from __future__ import annotations

import pytest
import torch

from pipeline.nets import NetConfig, build
from pipeline.nets.common import MinibatchStd
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


def test_minibatch_std_appends_each_groups_spread():
    """Images i and i + B/g share a group of g; each gets its group's std, averaged over channels and pixels."""
    x = torch.zeros(8, 2, 3, 3)
    x[0] = 2.0  # group {0, 2, 4, 6} (B = 8, groups of 4): std over the group of (2, 0, 0, 0) is sqrt(0.75)
    y = MinibatchStd()(x)
    assert y.shape == (8, 3, 3, 3) and torch.equal(y[:, :2], x)
    spread = y[:, 2]
    assert torch.allclose(spread[0::2], torch.full((4, 3, 3), 0.75**0.5), atol=1e-6)
    assert torch.allclose(spread[1::2], torch.zeros(4, 3, 3), atol=1e-3)  # sqrt(1e-8): no NaN gradient at 0
    assert MinibatchStd()(torch.randn(6, 2, 3, 3)).shape == (6, 3, 3, 3)  # 6 images: groups of 3


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_minibatch_std_discriminator_reads_the_batch(arch):
    """With minibatch_std, an image's score depends on the rest of its batch; without, it does not."""
    gen = torch.Generator().manual_seed(0)
    varied = torch.randn(8, 3, 32, 32, generator=gen)
    alike = varied[:1].expand(8, -1, -1, -1).clone()  # image 0's group has no spread
    for mb in (False, True):
        torch.manual_seed(0)
        _, d = build(NetConfig(arch=arch, channels=3, d_channels=4, d_norm="none", minibatch_std=mb))
        if mb:
            with torch.no_grad():
                d.out.weight[:, -1] = 1.0  # the spread's weight: at init (N(0, 0.02)) its effect is tiny
        with torch.no_grad():
            change = (d(varied)[0] - d(alike)[0]).abs().item()
        assert change > 1e-3 if mb else change < 1e-6, change
        assert d(varied).shape == (8,)


@pytest.mark.parametrize("classes, conditioning", [(0, "concat"), (3, "concat"), (3, "cbn")])
def test_skip_excitation_gates_g_from_16px_up(classes, conditioning):
    """Stage k (4 * 2**k px) from 16x16 up is gated by stage k - 2: at 32 px stage 2 by stage 0, at 64 px stage 3
    by stage 1 too. A closed gate zeroes its stage, and at 32 px that stage is all the image is made from."""
    labels = torch.tensor([0, 1]) if classes else None
    for size, pairs in ((32, {"2": (16, 4)}), (64, {"2": (16, 4), "3": (32, 8)})):
        torch.manual_seed(0)
        g, _ = build(NetConfig(image_size=size, channels=3, z_dim=8, g_channels=4, num_classes=classes,
                               g_conditioning=conditioning, skip_excitation=True))
        seen = {}
        for k, sle in g.excite.items():
            sle.register_forward_hook(lambda m, inp, out, k=k, seen=seen: seen.update({k: (inp[1].shape[-1],
                                                                                      inp[0].shape[-1])}))
        assert g(torch.randn(2, 8), labels).shape == (2, 3, size, size)
        assert seen == pairs  # (gated stage's size, gating stage's size)
    g, _ = build(NetConfig(image_size=32, channels=3, z_dim=8, g_channels=4, num_classes=classes,
                           g_conditioning=conditioning, skip_excitation=True))
    g.excite["2"].gate[-1] = torch.nn.Dropout(1.0)  # in train mode: a gate that is shut for every input
    assert torch.equal(g(torch.randn(2, 8), labels), torch.zeros(2, 3, 32, 32))
    assert not build(NetConfig(image_size=32, channels=3))[0].excite  # off by default


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
