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
