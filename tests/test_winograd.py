"""Winograd F(4×4, 3×3) for the wide layers in fp32 inference (ctsdg/winograd.py, issue 7). The
generator with it against the authors' computation: tests/test_speed_parity.py."""

import pytest
import torch
import torch.nn.functional as F

from ctsdg import winograd


@pytest.mark.parametrize("n,c,k,h,w,scratch", [
    (1, 8, 6, 13, 10, 1 << 24),  # sides not multiples of 4: a partial last tile in both directions
    (2, 5, 7, 9, 17, 100),  # a batch of 2, one tile row per band
    (1, 6, 5, 21, 8, 2000),  # several bands of a few tile rows
    (2, 4, 3, 2, 3, 1),  # smaller than one tile
])
def test_winograd_convolution_equals_the_direct_one(monkeypatch, n, c, k, h, w, scratch):
    monkeypatch.setattr(winograd, "SCRATCH_ELEMENTS", scratch)
    torch.manual_seed(0)
    x, weight, bias = torch.randn(n, c, h, w), torch.randn(k, c, 3, 3) / 3, torch.randn(k)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    got = winograd.conv3x3(x, winograd.transform_weight(weight), bias)
    assert got.shape == exact.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got.double() - exact).abs().max().item() < 2e-5 * exact.abs().max().item()
    no_bias = winograd.conv3x3(x, winograd.transform_weight(weight))
    torch.testing.assert_close(no_bias + bias.view(1, -1, 1, 1), got, rtol=0, atol=1e-5)


def test_it_applies_only_to_wide_fp32_inference_convolutions():
    x, weight = torch.zeros(1, 128, 32, 32), torch.zeros(128, 128, 3, 3)
    with torch.no_grad():
        assert winograd.applies(x, weight, 1, 1)
        assert not winograd.applies(x, weight, 2, 1)  # stride
        assert not winograd.applies(x, weight, 1, 2, dilation=2)
        assert not winograd.applies(x, torch.zeros(128, 128, 5, 5), 1, 2)
        assert not winograd.applies(x, torch.zeros(64, 128, 3, 3), 1, 1)  # too few output channels
        assert not winograd.applies(torch.zeros(1, 128, 16, 16), weight, 1, 1)  # map too small
        assert not winograd.applies(x.double(), weight.double(), 1, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd.applies(x, weight, 1, 1)
    assert not winograd.applies(x, weight, 1, 1)  # autograd on: training
    assert winograd.applies(x, weight, 1, 1, autograd=True)  # unless the caller differentiates it itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.applies(x, weight, 1, 1, autograd=True)


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, False)])
def test_winograd_with_autograd_gives_the_convolution_gradients(needs):
    """Forward, and the gradients of input (Winograd of the flipped weight), weight and bias (the
    backend's) that are asked for, on sides that are not multiples of 4."""
    torch.manual_seed(1)
    x, weight, bias = torch.randn(2, 6, 11, 9), torch.randn(5, 6, 3, 3) / 3, torch.randn(5)
    grad_out = torch.randn(2, 5, 11, 9)
    leaves = [t.clone().requires_grad_(need) for t, need in zip((x, weight, bias), needs, strict=True)]
    out = winograd.conv3x3_autograd(*leaves, winograd.WeightCache(), winograd.WeightCache())
    (out * grad_out).sum().backward()
    ref_leaves = [t.double().requires_grad_(need) for t, need in zip((x, weight, bias), needs, strict=True)]
    ref = F.conv2d(*ref_leaves, padding=1)
    (ref * grad_out.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0, atol=2e-5 * ref.abs().max().item())
    for got, want, need in zip(leaves, ref_leaves, needs, strict=True):
        assert (got.grad is not None) == need
        if need:
            torch.testing.assert_close(got.grad.double(), want.grad, rtol=0, atol=2e-5 * want.grad.abs().max().item())


def test_frozen_vgg_with_winograd_equals_it_without(monkeypatch):
    """VGG16Pools takes Winograd for its 128- and 256-channel layers, also under autograd (the
    perceptual and style losses); features and the input's gradient stay the same. The output is
    no view, so the in-place ReLU after it is allowed."""
    from ctsdg.losses import VGG16Pools

    torch.manual_seed(2)
    vgg = VGG16Pools()
    image, weight = torch.rand(1, 3, 128, 128) * 2 - 1, torch.randn(1, 256, 16, 16)
    calls = []
    real = winograd.conv3x3_autograd
    monkeypatch.setattr(winograd, "conv3x3_autograd", lambda *a: calls.append(a[0].shape[1]) or real(*a))
    results = []
    for enabled in (False, True):
        monkeypatch.setattr(winograd, "ENABLED", enabled)
        x = image.clone().requires_grad_()
        feats = vgg(x)
        (feats[2] * weight).sum().backward()
        results.append((feats, x.grad))
    assert calls == [128, 128, 256, 256]  # input channels: conv2_2 (64² map), conv3_1..3 (32²); not conv1_x or conv2_1 (64 in)
    for a, b in zip(results[0][0], results[1][0], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * a.abs().max().item())
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=1e-4 * results[0][1].abs().max().item())


@pytest.mark.parametrize("flag", ["onnx.is_in_onnx_export", "compiler.is_compiling", "jit.is_tracing"])
def test_graph_capture_takes_the_plain_convolution(monkeypatch, flag):
    """Exported and compiled graphs must hold any input size; the banded loop here does not."""
    x, weight = torch.zeros(1, 128, 32, 32), torch.zeros(128, 128, 3, 3)
    with torch.no_grad():
        assert winograd.applies(x, weight, 1, 1)
        monkeypatch.setattr(f"torch.{flag}", lambda: True)
        assert not winograd.applies(x, weight, 1, 1)


def test_transformed_weight_follows_the_weight():
    cache = winograd.WeightCache()
    weight = torch.randn(4, 3, 3, 3)
    first = cache.get(weight)
    assert cache.get(weight) is first  # unchanged: not recomputed
    with torch.no_grad():
        weight.mul_(2)  # in place, as load_state_dict does
    torch.testing.assert_close(cache.get(weight), 2 * first)
    other = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(cache.get(other), winograd.transform_weight(other))
