"""Partial convolution: the invariants of Liu et al. (2018) and equality with the official dense form."""

import pytest
import torch
import torch.nn.functional as F

from ctsdg.partial_conv import SAMPLING, PartialConv2d, PConvBNActiv, _window_count, partial_conv_reference


@pytest.mark.parametrize("sample", list(SAMPLING))
def test_all_known_mask_equals_plain_conv(sample):
    k, s, p = SAMPLING[sample]
    conv = PartialConv2d(5, 7, k, s, p)
    x = torch.randn(2, 5, 16, 16)
    out, new_mask = conv(x, torch.ones(2, 5, 16, 16))
    plain = F.conv2d(x, conv.weight, None, s, p)
    # interior windows see no padding: ratio 1, so partial conv == plain conv there
    m = k // 2 // s + 1
    torch.testing.assert_close(out[..., m:-m, m:-m], plain[..., m:-m, m:-m], rtol=1e-5, atol=1e-5)
    assert new_mask.shape == (2, 7) + out.shape[-2:]
    assert torch.all(new_mask == 1)


def test_border_windows_are_renormalised():
    """At the zero-padded border, the ratio rescales by (window size / valid count)."""
    conv = PartialConv2d(1, 1, 3, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out, _ = conv(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
    # every window averages ones and rescales to the full window sum 9
    torch.testing.assert_close(out, torch.full_like(out, 9.0))


def test_all_hole_window_gives_zero_output_and_zero_mask():
    conv = PartialConv2d(3, 4, 3, 1, 1)
    x = torch.randn(1, 3, 12, 12)
    known = torch.ones(1, 3, 12, 12)
    known[..., 2:9, 2:9] = 0  # a 7x7 hole: 3x3 windows centred in 3..7 see no valid pixel
    out, new_mask = conv(x, known)
    assert torch.all(out[..., 3:8, 3:8] == 0)
    assert torch.all(new_mask[..., 3:8, 3:8] == 0)
    assert torch.all(new_mask[..., 2, 2] == 1)  # a window touching a valid pixel becomes valid


@pytest.mark.parametrize("sample", list(SAMPLING))
def test_box_filter_mask_update_matches_official_dense_update(sample):
    k, s, p = SAMPLING[sample]
    conv = PartialConv2d(6, 8, k, s, p)
    x = torch.randn(2, 6, 32, 32)
    known = (torch.rand(2, 6, 32, 32) > 0.4).float()  # channels differ: the general case
    out, new_mask = conv(x, known)
    ref_out, ref_mask = partial_conv_reference(x, known, conv.weight, s, p)
    assert torch.equal(new_mask, ref_mask)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)


def test_single_channel_mask_broadcasts_like_tiled_mask():
    conv = PartialConv2d(3, 4, 7, 2, 3)
    x = torch.randn(1, 3, 32, 32)
    known = (torch.rand(1, 1, 32, 32) > 0.5).float()
    a, ma = conv(x, known)
    b, mb = conv(x, known.repeat(1, 3, 1, 1))
    assert torch.equal(a, b) and torch.equal(ma, mb)


def test_mask_kernel_is_not_in_state_dict():
    layer = PConvBNActiv(3, 8, "down-7", bn=False)
    assert list(layer.state_dict()) == ["conv.weight"]
    assert "conv.weight" in PConvBNActiv(3, 8).state_dict()
    assert "bn.running_mean" in PConvBNActiv(3, 8).state_dict()


def test_window_count_stays_exact_under_bf16_autocast():
    """Valid-pixel counts up to C*k*k (here 576) are not representable in bf16; they must stay fp32."""
    known = (torch.rand(1, 64, 16, 16) > 0.5).float()
    exact = F.conv2d(known.double(), torch.ones(1, 64, 3, 3, dtype=torch.float64), padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _window_count(known, 3, 1, 1)
    assert got.dtype == torch.float32
    assert torch.equal(got.double(), exact)


@pytest.mark.parametrize("channels, kernel, stride, side", [
    ((64, 128), 5, 2, 64),  # the encoders' 5×5 layer: Winograd over the phases on AVX2 CPUs, a packed weight here
    ((128, 128), 3, 1, 32),  # a layer that takes Winograd in inference
])
@pytest.mark.parametrize("grad", [True, False])
def test_choosing_the_algorithm_does_not_break_a_compiled_graph(channels, kernel, stride, side, grad):
    """Under torch.compile the checks that pick Winograd or a packed weight must step aside before they ask
    which CPU and oneDNN build this is: Dynamo cannot trace those queries, so each partial convolution's
    graph broke in two, and inductor then failed on the pieces (``scale.compile``:
    ``test_torch_compile_step_matches_eager`` failed from 2026-12-07 until this was fixed)."""
    import torch._dynamo

    torch._dynamo.reset()
    layer = PartialConv2d(*channels, kernel, stride, kernel // 2)
    x = torch.randn(1, channels[0], side, side)
    count = torch.full((1, 1, side, side), float(channels[0]))
    with torch.set_grad_enabled(grad):
        explained = torch._dynamo.explain(layer.forward_counted)(x, count)
    assert explained.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explained.break_reasons]
