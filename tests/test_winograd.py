"""Winograd F(4×4, 3×3) for the wide layers in fp32 inference, and F(3×3, 4×4) for the discriminator's
stride-1 4×4 layer in training (ctsdg/winograd.py, issue 7). The generator with it against the
authors' computation: tests/test_speed_parity.py."""

import pytest
import torch
import torch.nn.functional as F

from ctsdg import winograd


@pytest.fixture
def eager_rules(monkeypatch):
    """The thresholds of the eager transforms: the C ones (tests/test_winograd_native.py) take 64-channel
    layers in inference wherever they are built."""
    monkeypatch.setattr(winograd, "NATIVE", False)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)  # on 2, F(4×4, 3×3)'s input transform is split
@pytest.mark.parametrize("m", [4, 2])  # F(4×4, 3×3) and, for small maps in inference, F(2×2, 3×3)
@pytest.mark.parametrize("n,c,k,h,w,scratch", [
    (1, 8, 6, 13, 10, 1 << 24),  # sides not multiples of the tile: a partial last tile in both directions
    (2, 5, 7, 9, 17, 100),  # a batch of 2, one tile row per band
    (1, 6, 5, 21, 8, 2000),  # several bands of a few tile rows
    (2, 4, 3, 2, 3, 1),  # smaller than one tile
])
def test_winograd_convolution_equals_the_direct_one(monkeypatch, n, c, k, h, w, scratch, m, threads):
    monkeypatch.setattr(winograd, "SCRATCH_ELEMENTS", scratch)
    monkeypatch.setattr(winograd, "SPLIT_MIN_COLUMNS", 0)  # these layers are narrow: split them on 2 threads anyway
    torch.manual_seed(0)
    x, weight, bias = torch.randn(n, c, h, w), torch.randn(k, c, 3, 3) / 3, torch.randn(k)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    u = winograd.transform_weight(weight, m)
    assert u.shape == ((m + 2) ** 2, c, k)
    got = winograd.conv3x3(x, u, bias)
    assert got.shape == exact.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got.double() - exact).abs().max().item() < 2e-5 * exact.abs().max().item()
    no_bias = winograd.conv3x3(x, u)
    torch.testing.assert_close(no_bias + bias.view(1, -1, 1, 1), got, rtol=0, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("m", [4, 2])
def test_the_input_transform_is_split_in_two_halves_only_for_f4x4_on_two_threads(monkeypatch, m, threads):
    """On 2 threads F(4×4, 3×3)'s 36 × 36 input transform runs as two 18-row products in one batched call
    (one per thread); it must give the single product's numbers, and stay a single product for
    F(2×2, 3×3), on one thread and below SPLIT_MIN_COLUMNS columns, where the halves were slower."""
    torch.manual_seed(0)
    b_kron = winograd._matrices(torch.device("cpu"), m, 3)[0]
    batched = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *args, **kwargs: batched.append(args[0].shape) or bmm(*args, **kwargs))
    narrow = torch.randn(b_kron.shape[0], winograd.SPLIT_MIN_COLUMNS - 1)
    assert torch.equal(winograd._input_transform(b_kron, narrow), torch.mm(b_kron, narrow)) and not batched
    tiles = torch.randn(b_kron.shape[0], winograd.SPLIT_MIN_COLUMNS)
    got = winograd._input_transform(b_kron, tiles)
    torch.testing.assert_close(got, torch.mm(b_kron, tiles), rtol=1e-6, atol=1e-4)
    assert batched == ([torch.Size([2, 18, 36])] if (m, threads) == (4, 2) else [])
    monkeypatch.setattr(winograd, "SPLIT_INPUT_TRANSFORM", False)
    batched.clear()
    assert torch.equal(winograd._input_transform(b_kron, tiles), torch.mm(b_kron, tiles)) and not batched


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_the_trained_backward_splits_both_of_its_36_row_products_on_two_threads(monkeypatch, threads):
    """The backward of a trained layer in the transformed domain (without the C kernels) runs kron(Bᵀ, Bᵀ)
    on the input's tiles (for the weight's gradient) and kron(B, B) on the tiles' gradients (for the
    input's) through the same split as the forward, with the same numbers as without it, bit for bit (the
    layer is small, so the split is allowed at any width)."""
    monkeypatch.setattr(winograd, "SPLIT_MIN_COLUMNS", 0)
    monkeypatch.setattr(winograd, "TRAINED_NATIVE", False)
    torch.manual_seed(7)
    x, weight = torch.randn(2, 6, 11, 9), torch.randn(5, 6, 3, 3) / 3
    grad_out = torch.randn(2, 5, 11, 9)
    grads, halves = {}, []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *args, **kwargs: halves.append(args[0].shape == (2, 18, 36))
                        or bmm(*args, **kwargs))
    for split in (True, False):
        monkeypatch.setattr(winograd, "SPLIT_INPUT_TRANSFORM", split)
        leaves = [t.clone().requires_grad_() for t in (x, weight)]
        out = winograd.conv3x3_trained(*leaves)
        halves.clear()
        (out * grad_out).sum().backward()
        assert sum(halves) == (2 if split else 0)  # one band: the weight's product and the input's
        grads[split] = [t.grad for t in leaves]
    for with_split, without in zip(grads[True], grads[False], strict=True):
        assert torch.equal(with_split, without)


@pytest.mark.parametrize("m, scratch", [(4, 1 << 21), (4, 4096), (2, 1 << 21)])
def test_an_input_given_as_parts_is_read_as_their_concatenation(monkeypatch, m, scratch):
    """Bi-GFF's gates read (F_t, F_s) without concatenating them: the same numbers, bit for bit, as the
    concatenation, in one band or many (scratch 4096: a band per tile row), whatever the part widths."""
    monkeypatch.setattr(winograd, "SCRATCH_ELEMENTS", scratch)
    torch.manual_seed(0)
    parts = (torch.randn(2, 48, 20, 28), torch.randn(2, 80, 20, 28).contiguous(memory_format=torch.channels_last))
    weight, bias = torch.randn(128, 128, 3, 3) / 3, torch.randn(128)
    u = winograd.transform_weight(weight, m)
    whole = winograd.conv3x3(torch.cat(parts, dim=1), u, bias)
    assert torch.equal(winograd.conv3x3(parts, u, bias), whole)
    with torch.no_grad():
        assert winograd.applies(parts, weight, 1, 1)
        assert not winograd.applies(parts[:1], weight, 1, 1)  # 48 of the weight's 128 channels
        assert not winograd.applies((parts[0], parts[1][..., :14]), weight, 1, 1)  # sizes differ
        assert not winograd.applies((parts[0], parts[1].double()), weight, 1, 1)


def test_it_applies_only_to_wide_fp32_inference_convolutions(eager_rules):
    x, weight = torch.zeros(1, 128, 32, 32), torch.zeros(128, 128, 3, 3)
    with torch.no_grad():
        assert winograd.applies(x, weight, 1, 1)
        assert not winograd.applies(x, weight, 2, 1)  # stride
        assert not winograd.applies(x, weight, 1, 2, dilation=2)
        assert not winograd.applies(x, torch.zeros(128, 128, 5, 5), 1, 2)
        assert not winograd.applies(x, torch.zeros(64, 128, 3, 3), 1, 1)  # too few output channels
        assert winograd.output_tile(x) == 4
        assert winograd.applies(torch.zeros(1, 128, 16, 16), weight, 1, 1)  # F(2×2, 3×3) on 16²
        assert winograd.output_tile(torch.zeros(1, 128, 16, 16)) == 2
        assert not winograd.applies(torch.zeros(1, 128, 8, 8), weight, 1, 1)  # map too small
        assert not winograd.applies(x.double(), weight.double(), 1, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd.applies(x, weight, 1, 1)
    assert not winograd.applies(x, weight, 1, 1)  # autograd on: training
    assert winograd.applies(x, weight, 1, 1, autograd=True)  # unless the caller differentiates it itself
    assert not winograd.applies(torch.zeros(1, 128, 16, 16), weight, 1, 1, autograd=True)  # F(4×4) only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.applies(x, weight, 1, 1, autograd=True)


@pytest.mark.parametrize("avx2_only", [True, False])
def test_trained_64_channel_layers_take_it_only_on_cpus_without_avx512(monkeypatch, avx2_only, eager_rules):
    """oneDNN's backward is slow without AVX-512, so there a trained 66→64 layer takes Winograd in
    training; a frozen weight, inference and CPUs with AVX-512 keep the 128-channel threshold."""
    monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: avx2_only)
    x = torch.zeros(2, 66, 32, 32)
    trained, frozen = torch.zeros(64, 66, 3, 3, requires_grad=True), torch.zeros(64, 66, 3, 3)
    assert winograd.applies(x, trained, 1, 1, autograd=True) == avx2_only
    assert winograd.min_channels(trained, autograd=True) == (64 if avx2_only else 128)
    assert not winograd.applies(x, frozen, 1, 1, autograd=True)  # VGG16's frozen layers
    assert not winograd.applies(x[:, :32], torch.zeros(64, 32, 3, 3, requires_grad=True), 1, 1, autograd=True)
    with torch.no_grad():
        assert not winograd.applies(x, trained, 1, 1)  # inference: slower at 64 output channels
    d = torch.zeros(128, 64, 4, 4, requires_grad=True)  # the width-16 discriminator's stride-1 layer
    assert winograd.applies_4x4(torch.zeros(2, 64, 32, 32), d, 1, 1) == avx2_only


@pytest.mark.parametrize("avx2_only", [True, False])
def test_inference_on_cpus_without_avx512_takes_the_192_to_64_layers(monkeypatch, avx2_only, eager_rules):
    """Without AVX-512, inference also takes layers whose channel products outweigh the transforms,
    C·K ≥ 48·(C + K) (the decoders' 192→64); 160→64 and 67→64 fall short, and with autograd, or with
    AVX-512, 128 channels stay the threshold."""
    monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: avx2_only)
    x = torch.zeros(1, 192, 32, 32)
    weight = torch.zeros(64, 192, 3, 3)
    with torch.no_grad():
        assert winograd.applies(x, weight, 1, 1) == avx2_only
        assert winograd.applies(torch.zeros(1, 256, 32, 32), torch.zeros(64, 256, 3, 3), 1, 1) == avx2_only
        assert winograd.applies(torch.zeros(1, 192, 16, 16), weight, 1, 1) == avx2_only  # F(2×2, 3×3)
        assert not winograd.applies(torch.zeros(1, 160, 32, 32), torch.zeros(64, 160, 3, 3), 1, 1)
        assert not winograd.applies(torch.zeros(1, 67, 32, 32), torch.zeros(64, 67, 3, 3), 1, 1)
        assert not winograd.applies(torch.zeros(1, 48, 32, 32), torch.zeros(1024, 48, 3, 3), 1, 1)  # < 64 in
        assert winograd.applies(torch.zeros(1, 128, 32, 32), torch.zeros(128, 128, 3, 3), 1, 1)
    assert not winograd.applies(x, weight, 1, 1, autograd=True)  # a frozen weight under autograd
    assert winograd.applies(x, weight.requires_grad_(), 1, 1, autograd=True) == avx2_only  # trained: from 64


def test_a_192_to_64_partial_convolution_without_avx512_runs_by_winograd_with_the_same_output(monkeypatch):
    """The rule reaches the decoders' layers: a 192→64 partial convolution in inference on an AVX2-only
    CPU goes through Winograd and gives what the authors' form of the layer gives."""
    from ctsdg.partial_conv import PartialConv2d

    torch.manual_seed(0)
    conv = PartialConv2d(192, 64, 3, 1, 1).eval()
    x, mask = torch.randn(1, 192, 32, 36), (torch.rand(1, 1, 32, 36) > 0.3).float()
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *args: calls.append(args[1].shape) or real(*args))
    monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: True)
    with torch.no_grad():
        out, ratio, _ = conv.forward_counted(x * mask, mask * 192)
        expected, _ = conv(x, mask)
    assert calls == [(36, 192, 64)]
    torch.testing.assert_close(out * ratio, expected, atol=1e-4, rtol=1e-4)  # Winograd: 4-6x the rounding


@pytest.mark.parametrize("m", [4, 2])
@pytest.mark.parametrize("size", [(8, 12), (18, 10), (32, 36)])
def test_5x5_stride2_convolution_over_the_phases_equals_the_direct_one(m, size):
    """phase_weight + conv5x5_stride2 (by F(4×4, 3×3) or F(2×2, 3×3)) against F.conv2d(stride=2,
    padding=2), on even sides that are and are not multiples of the tile."""
    torch.manual_seed(2)
    x, weight = torch.randn(2, 6, *size), torch.randn(5, 6, 5, 5) / 5
    with torch.no_grad():
        out = winograd.conv5x5_stride2(x, winograd.transform_weight(winograd.phase_weight(weight), m))
    expected = F.conv2d(x.double(), weight.double(), stride=2, padding=2)
    assert out.shape == expected.shape == (2, 5, size[0] // 2, size[1] // 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - expected).abs().max() < 1e-5 * expected.abs().max()


@pytest.mark.parametrize("avx2_only", [True, False])
def test_5x5_stride2_layers_take_the_phases_only_in_inference_without_avx512(monkeypatch, avx2_only, eager_rules):
    monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: avx2_only)
    x, weight = torch.zeros(1, 64, 64, 64), torch.zeros(128, 64, 5, 5)
    with torch.no_grad():
        assert winograd.applies_5x5_stride2(x, weight, 2, 2) == avx2_only  # ec_*_2 at 128² (output 32²)
        assert winograd.applies_5x5_stride2(torch.zeros(1, 128, 64, 64), torch.zeros(256, 128, 5, 5), 2, 2) == avx2_only
        assert not winograd.applies_5x5_stride2(torch.zeros(1, 64, 62, 62), weight, 2, 2)  # output 31²: too small
        assert not winograd.applies_5x5_stride2(torch.zeros(1, 64, 64, 65), weight, 2, 2)  # an odd side
        assert not winograd.applies_5x5_stride2(torch.zeros(1, 32, 64, 64), torch.zeros(128, 32, 5, 5), 2, 2)
        assert not winograd.applies_5x5_stride2(x, weight, 1, 2)
        assert not winograd.applies_5x5_stride2(x, torch.zeros(128, 64, 3, 3), 2, 1)
        assert not winograd.applies_5x5_stride2(x.double(), weight.double(), 2, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd.applies_5x5_stride2(x, weight, 2, 2)
    assert not winograd.applies_5x5_stride2(x, weight, 2, 2)  # autograd on: training


def test_a_5x5_stride2_partial_convolution_without_avx512_follows_its_weight(monkeypatch):
    """An encoder layer on an AVX2-only CPU in inference runs over the phases, gives the authors' form of
    the layer, and its cached transformed weight is redone when the weight changes in place."""
    from ctsdg.partial_conv import PartialConv2d

    torch.manual_seed(0)
    conv = PartialConv2d(64, 128, 5, 2, 2).eval()
    x, mask = torch.randn(1, 64, 64, 66), (torch.rand(1, 1, 64, 66) > 0.3).float()
    calls = []
    real = winograd.conv5x5_stride2
    monkeypatch.setattr(winograd, "conv5x5_stride2", lambda x, u: calls.append(tuple(u.shape)) or real(x, u))
    monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: True)
    with torch.no_grad():
        for _ in range(2):
            out, ratio, _ = conv.forward_counted(x * mask, mask * 64)
            expected, _ = conv(x, mask)
            torch.testing.assert_close(out * ratio, expected, atol=1e-4, rtol=1e-4)
            conv.weight.mul_(-0.5)
    assert calls == [(36, 256, 128)] * 2


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


def test_each_tile_size_keeps_its_own_transformed_weight():
    """A layer that sees a 16² map at one input size and a 32² map at another (a decoder layer at 256²
    and 512²) keeps both transforms, and each still follows the weight."""
    cache, weight = winograd.WeightCache(), torch.randn(4, 3, 3, 3)
    small, large = cache.get(weight, m=2), cache.get(weight, m=4)
    assert small.shape == (16, 3, 4) and large.shape == (36, 3, 4)
    assert cache.get(weight, m=2) is small and cache.get(weight, m=4) is large
    with torch.no_grad():
        weight.mul_(2)
    torch.testing.assert_close(cache.get(weight, m=2), 2 * small)
    torch.testing.assert_close(cache.get(weight, m=4), 2 * large)


@pytest.mark.parametrize("m,r", [(4, 3), (3, 4), (5, 2)])
def test_toom_cook_matrices_compute_the_correlation(m, r):
    b_t, g, a_t = winograd.toom_cook(m, r)
    assert b_t.shape == (m + r - 1, m + r - 1) and g.shape == (m + r - 1, r) and a_t.shape == (m, m + r - 1)
    assert torch.equal(b_t, b_t.round())  # rows scaled to integers: the input transform adds no rounding
    torch.manual_seed(3)
    d, taps = torch.randn(m + r - 1, dtype=torch.float64), torch.randn(r, dtype=torch.float64)
    want = torch.stack([(d[i:i + r] * taps).sum() for i in range(m)])
    torch.testing.assert_close(a_t @ ((g @ taps) * (b_t @ d)), want, rtol=0, atol=1e-12)


def test_the_3x3_matrices_are_lavin_and_grays():
    """F(4×4, 3×3) from the derivation equals the table of Lavin & Gray (2016), up to the signs of rows
    of Bᵀ and G (which cancel in the product)."""
    b_t, g, a_t = winograd.toom_cook(4, 3)
    lavin_b_t = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
    lavin_g = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                            [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
    lavin_a_t = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                             dtype=torch.float64)
    signs = torch.tensor([1, -1, -1, 1, 1, 1], dtype=torch.float64).view(-1, 1)
    torch.testing.assert_close(b_t * signs, lavin_b_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(g * signs, lavin_g, rtol=0, atol=1e-12)
    torch.testing.assert_close(a_t, lavin_a_t, rtol=0, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)  # on 2, the backward's 36 × 36 products are split
@pytest.mark.parametrize("n,c,k,h,w,padding,scratch,needs", [
    (2, 6, 5, 11, 9, 1, 1 << 24, (True, True, True)),  # the discriminator's padding; sides not multiples of 3
    (1, 4, 3, 10, 13, 0, 1 << 24, (True, True, False)),
    (2, 5, 4, 9, 8, 2, 300, (True, True, True)),  # one tile row per band: bands overlap by 3 input rows
    (1, 3, 2, 7, 12, 3, 2000, (False, True, False)),  # the weight's gradient only (D frozen: the input's only)
    (2, 4, 6, 12, 7, 1, 1 << 24, (True, False, False)),
])
def test_winograd_4x4_gives_the_convolution_and_its_gradients(monkeypatch, n, c, k, h, w, padding, scratch, needs,
                                                              threads):
    monkeypatch.setattr(winograd, "SCRATCH_ELEMENTS", scratch)
    monkeypatch.setattr(winograd, "SPLIT_MIN_COLUMNS", 0)  # these layers are narrow: split them on 2 threads anyway
    torch.manual_seed(4)
    x, weight, bias = torch.randn(n, c, h, w), torch.randn(k, c, 4, 4) / 4, torch.randn(k)
    leaves = [t.clone().requires_grad_(need) for t, need in zip((x, weight, bias), needs, strict=True)]
    out = winograd.conv4x4(*leaves, padding=padding)
    ref_leaves = [t.double().requires_grad_(need) for t, need in zip((x, weight, bias), needs, strict=True)]
    ref = F.conv2d(*ref_leaves, padding=padding)
    assert out.shape == ref.shape and out.dtype == torch.float32
    grad_out = torch.randn(ref.shape)
    (out * grad_out).sum().backward()
    (ref * grad_out.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0, atol=2e-5 * ref.abs().max().item())
    for got, want, need in zip(leaves, ref_leaves, needs, strict=True):
        assert (got.grad is not None) == need
        if need:
            assert got.grad.shape == want.grad.shape
            torch.testing.assert_close(got.grad.double(), want.grad, rtol=0, atol=2e-5 * want.grad.abs().max().item())


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("scratch", [1 << 24, 200])
@pytest.mark.parametrize("c,k,native", [(6, 5, False), (6, 5, True), (67, 64, True)])
def test_trained_3x3_winograd_gives_the_convolution_and_its_gradients(monkeypatch, scratch, threads, c, k, native):
    """conv3x3_trained (a weight that changes every step): forward and all three gradients, on sides that
    are not multiples of 4, in one band or many: in the transformed domain, or with the C kernels (the
    input's gradient by them, fused for 64 channels where the CPU has AVX-512; the weight's by oneDNN)."""
    if native and not winograd.native():
        pytest.skip("the C kernels are not built here")
    monkeypatch.setattr(winograd, "TRAINED_NATIVE", native)
    monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: False)  # the rule with AVX-512 first, on any CPU
    monkeypatch.setattr(winograd, "SCRATCH_ELEMENTS", scratch)
    monkeypatch.setattr(winograd, "SCRATCH_ELEMENTS_NATIVE", scratch)
    monkeypatch.setattr(winograd, "SPLIT_MIN_COLUMNS", 0)  # these layers are narrow: split them on 2 threads anyway
    torch.manual_seed(6)
    x, weight, bias = torch.randn(2, c, 11, 9), torch.randn(k, c, 3, 3) / 3, torch.randn(k)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    calls = []
    for name in ("_WinogradConv", "_Conv3x3"):
        real = getattr(winograd, name).apply
        monkeypatch.setattr(getattr(winograd, name), "apply", lambda *a, name=name, real=real: calls.append(name) or real(*a))
    out = winograd.conv3x3_trained(*leaves)
    assert calls == ["_Conv3x3" if native else "_WinogradConv"]
    if native:  # not without AVX-512, where oneDNN's backward is slow: the transformed domain there
        monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: True)
        winograd.conv3x3_trained(*(t.detach() for t in leaves))
        assert calls[-1] == "_WinogradConv"
        monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: False)
    ref_leaves = [t.double().requires_grad_() for t in (x, weight, bias)]
    ref = F.conv2d(*ref_leaves, padding=1)
    grad_out = torch.randn(ref.shape)
    (out * grad_out).sum().backward()
    (ref * grad_out.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=0, atol=2e-5 * ref.abs().max().item())
    for got, want in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=0, atol=2e-5 * want.grad.abs().max().item())


def test_winograd_4x4_applies_to_wide_fp32_stride_1_layers_with_autograd():
    x, weight = torch.zeros(2, 128, 32, 32), torch.zeros(256, 128, 4, 4)
    assert winograd.applies_4x4(x, weight, 1, 1)  # autograd on: it differentiates itself
    with torch.no_grad():
        assert winograd.applies_4x4(x, weight, 1, 1)
    assert not winograd.applies_4x4(x, weight, 2, 1)  # the stride-2 layers
    assert not winograd.applies_4x4(x, weight, 1, 1, dilation=2)
    assert not winograd.applies_4x4(x, torch.zeros(256, 128, 3, 3), 1, 1)
    assert not winograd.applies_4x4(x[:, :64], torch.zeros(256, 64, 4, 4), 1, 1)  # too few input channels
    assert not winograd.applies_4x4(torch.zeros(2, 128, 16, 16), weight, 1, 1)  # map too small
    assert not winograd.applies(x, weight, 1, 1, autograd=True)  # a 4×4 kernel never goes to conv3x3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.applies_4x4(x, weight, 1, 1)


def test_discriminator_with_winograd_equals_it_without(monkeypatch):
    """At width 32 on 256² images the branches' 128→256 4×4 layer takes Winograd; the predictions, the
    edge map and every parameter's gradient stay those of the backend's convolution, over two steps
    (spectral norm's vectors move between them)."""
    import copy

    from ctsdg.config import ModelConfig
    from ctsdg.discriminator import Discriminator, PatchConv2d

    torch.manual_seed(5)
    plain = Discriminator(ModelConfig(base_width=32))
    fast = copy.deepcopy(plain)
    for module in plain.modules():
        if isinstance(module, PatchConv2d):
            module.winograd = False
    calls = []
    real = winograd.conv4x4
    monkeypatch.setattr(winograd, "conv4x4", lambda x, *a, **kw: calls.append(tuple(x.shape)) or real(x, *a, **kw))
    image, gray, edge = torch.rand(2, 3, 256, 256) * 2 - 1, torch.rand(2, 1, 256, 256), torch.rand(2, 1, 256, 256)
    for _ in range(2):
        results = []
        for d in (plain, fast):
            d.zero_grad()
            prediction, fake_edge = d(image, gray, edge, is_real=False)
            (prediction.square().sum() + fake_edge.sum()).backward()
            results.append((prediction, fake_edge, [p.grad for p in d.parameters()]))
        (p0, e0, g0), (p1, e1, g1) = results
        torch.testing.assert_close(p1, p0, rtol=0, atol=1e-5)
        torch.testing.assert_close(e1, e0, rtol=0, atol=1e-6)
        # the floor: the edge detector's conv biases feed BatchNorm, so their true gradient is 0 and what
        # is computed is rounding noise of the large gradients around them
        floor = 1e-7 * max(a.abs().max().item() for a in g0)
        for a, b in zip(g0, g1, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=3e-4 * a.abs().max().item() + floor)
    assert calls == [(2, 128, 32, 32)] * 4  # texture and structure branch, two steps; never for the plain copy


def test_winograd_conv2d_is_an_nn_conv2d_that_takes_winograd_in_inference(monkeypatch):
    """fusion_layer2 and MSFA's undilated layers: the same keys, outputs and gradients as nn.Conv2d, by
    Winograd in inference and (conv3x3_trained) in training; dilated or strided, the plain convolution."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    calls, trained = [], []
    real, real_trained = winograd.conv3x3, winograd.conv3x3_trained
    monkeypatch.setattr(winograd, "conv3x3", lambda *args: calls.append(1) or real(*args))
    monkeypatch.setattr(winograd, "conv3x3_trained", lambda *args: trained.append(1) or real_trained(*args))
    torch.manual_seed(0)
    conv = winograd.Conv2d(8, 6, 3, padding=1)
    plain = torch.nn.Conv2d(8, 6, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    assert list(conv.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), plain(x), rtol=0, atol=1e-5)
        assert calls == [1]
        for other in (winograd.Conv2d(8, 6, 3, padding=2, dilation=2), winograd.Conv2d(8, 6, 3, stride=2, padding=1)):
            other(x)
        assert calls == [1] and not trained
    y, y_plain = conv(x), plain(x)
    (y * y_plain.detach()).sum().backward()
    (y_plain * y_plain.detach()).sum().backward()
    assert trained == [1]
    torch.testing.assert_close(y, y_plain, rtol=0, atol=1e-5)
    for ours, theirs in ((conv.weight, plain.weight), (conv.bias, plain.bias)):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-3)
