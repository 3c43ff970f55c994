"""The fast path (the default) against the authors' straightforward computation (``reference=True``).

Every speed trick must leave the numbers alone: one-channel masks with valid-channel counts, BatchNorm
and activations in place, RAL from a Gram matrix in query chunks, the 1x1 output conv before the x2
upsampling, channels-last. Tiny widths on every run; the full-width model behind ``slow``.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ctsdg import Generator, ModelConfig, cfa_native, cpu, upsample_native, winograd, winograd_native
from ctsdg import cfa as cfa_module
from ctsdg import generator as generator_module
from ctsdg.cfa import region_affinity, region_affinity_reference
from ctsdg.export import example_inputs, export_torchscript
from ctsdg.partial_conv import PartialConv2d, PConvBNActiv, partial_conv_reference


def make_inputs(b=1, size=128, seed=0, holes=True):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    edge = (torch.rand(b, 1, size, size, generator=g) > 0.9).float()
    gray = torch.rand(b, 1, size, size, generator=g)
    known = torch.ones(b, 1, size, size)
    if holes:  # one big hole (whole deep windows are empty) and scattered small ones
        known[:, :, size // 4: size // 2, size // 3: 3 * size // 4] = 0
        known *= (torch.rand(b, 1, size, size, generator=g) > 0.05).float()
    return image * known, torch.cat((edge, gray), 1) * known, known


def randomised(config, seed=0):
    """A generator whose weights, BN statistics and γ are all non-trivial (init hides most of it)."""
    torch.manual_seed(seed)
    g = Generator(config)
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0.0, 0.07) if p.ndim > 1 else p.uniform_(0.5, 1.0)
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return g


def assert_parity(fast, ref, atol):
    for name in ("output", "projected_image", "projected_edge"):
        a, b = getattr(fast, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            diff = (a.float() - b.float()).abs().max().item()
            assert diff <= atol, f"{name}: max abs diff {diff:.2e} > {atol:.0e}"


# --- partial convolution -------------------------------------------------------------------------


@pytest.mark.parametrize("bn,activ", [(True, "relu"), (True, "leaky"), (False, "relu")])
def test_counted_layer_in_eval_equals_the_official_layer(bn, activ):
    """x⊙M + valid-channel count + BN/activation in place == dense mask conv, BN module, activation."""
    layer = PConvBNActiv(6, 8, "down-5", bn=bn, activ=activ).eval()
    if bn:
        with torch.no_grad():
            layer.bn.running_mean.normal_()
            layer.bn.running_var.uniform_(0.2, 3.0)
            layer.bn.weight.normal_()
            layer.bn.bias.normal_()
    x = torch.randn(2, 6, 32, 32)
    known = (torch.rand(2, 1, 32, 32) > 0.4).float()
    with torch.no_grad():
        ref, ref_mask = layer(x, known, reference=True)
        fast, fast_mask = layer(x * known, None, valid_count=known * 6)
    assert fast_mask.shape == (2, 1, 16, 16)
    assert torch.equal(fast_mask.expand_as(ref_mask), ref_mask)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


def test_valid_count_of_a_concatenation_is_the_channel_weighted_sum():
    """Concat of a C1-channel feature with mask m1 and a C2-channel one with m2: count = C1·m1 + C2·m2."""
    layer = PConvBNActiv(5, 4, "none-3", bn=False)
    a, b = torch.randn(1, 3, 16, 16), torch.randn(1, 2, 16, 16)
    m1 = (torch.rand(1, 1, 16, 16) > 0.5).float()
    m2 = (torch.rand(1, 1, 16, 16) > 0.3).float()
    dense_mask = torch.cat((m1.expand(1, 3, 16, 16), m2.expand(1, 2, 16, 16)), 1)
    ref, _ = partial_conv_reference(torch.cat((a, b), 1), dense_mask, layer.conv.weight, 1, 1)
    out, ratio, _ = layer.conv.forward_counted(torch.cat((a * m1, b * m2), 1), 3 * m1 + 2 * m2)
    torch.testing.assert_close(out * ratio, ref, rtol=0, atol=1e-6)


# --- RAL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 6, 16, 24), (1, 4, 32, 32), (1, 3, 10, 6)])
def test_gram_form_of_ral_equals_the_official_conv_form(shape):
    x = torch.randn(shape) * 2
    with torch.no_grad():  # inference: Gram scores, aggregation by output phase
        fast = region_affinity(x)
    torch.testing.assert_close(fast, region_affinity_reference(x), rtol=0, atol=2e-5)
    # with autograd on (training) the unfolded form runs; same numbers
    torch.testing.assert_close(region_affinity(x), region_affinity_reference(x), rtol=0, atol=2e-5)


def test_logit_floor_changes_nothing_on_peaky_scores():
    """Features ×40: score ranges of thousands, so most softmax weights underflow; raising logits to
    (row max − 30) before the softmax must give the authors' numbers, in inference and training."""
    x = torch.randn(1, 4, 16, 20) * 40
    ref = region_affinity_reference(x)
    with torch.no_grad():
        scores = torch.nn.functional.unfold(torch.nn.functional.interpolate(x, scale_factor=0.5), 3, padding=1)
        assert (scores.norm(dim=1).max() * 10) > 500  # the regime where exp() would go denormal
        torch.testing.assert_close(region_affinity(x), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(region_affinity(x), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("query_chunk", [1, 7, 16, 33])
def test_ral_query_chunks_of_any_size_are_exact(query_chunk):
    """Chunks are whole rows of the x1/2 map (≥ 1 row); the last chunk may be partial."""
    x = torch.randn(1, 4, 26, 20)
    ref = region_affinity_reference(x)
    with torch.no_grad():
        torch.testing.assert_close(region_affinity(x, query_chunk=query_chunk), ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(region_affinity(x, query_chunk=query_chunk), ref, rtol=0, atol=2e-5)


# RAL's two paths: torch's, and the C kernels where the package was built with them
RAL_PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(cfa_native.kernels() is None,
                                                                 reason="RAL's C kernels are not built here"))]


def attention_blocks(monkeypatch, native: bool) -> list[int]:
    """RAL on its C path (``native``) or its torch path; the queries of each block of Ŝ it computes, as it computes
    them: from the softmax's input on the torch path (all images at once), from the kernel's output on the C path
    (one call per image)."""
    seen = []
    monkeypatch.setattr(cfa_module, "NATIVE", native)
    if native:
        real = cfa_native.attention
        monkeypatch.setattr(cfa_native, "attention",
                            lambda grams, scale, hs, ws, out, *rest: seen.append(out.shape[0] * out.shape[1])
                            or real(grams, scale, hs, ws, out, *rest))
    else:
        real_softmax = torch.softmax
        monkeypatch.setattr(cfa_module.torch, "softmax", lambda t, dim: seen.append(t.shape[1]) or real_softmax(t, dim))
    return seen


@pytest.mark.parametrize("native", RAL_PATHS)
def test_ral_score_block_never_exceeds_the_chunk_budget(native, monkeypatch):
    """A budget of 5 rows of queries: chunks of 3 rows plus the row above and below they need."""
    x = torch.randn(1, 4, 32, 48)  # x1/2 map 16 x 24, L = 384 keys
    seen = attention_blocks(monkeypatch, native)
    monkeypatch.setattr(cfa_module, "ATTENTION_CHUNK_ELEMENTS", 5 * 24 * 384)
    with torch.no_grad():
        out = region_affinity(x)
    # 6 chunks of 3 rows (ceil(16 / 3)); the first computes its rows and the one below (4 rows), the
    # next ones only their new rows, the last none: every one of the 16 rows exactly once
    assert seen == [4 * 24] + [3 * 24] * 4
    torch.testing.assert_close(out, region_affinity_reference(x), rtol=0, atol=2e-5)


def test_ral_takes_smaller_chunks_on_small_maps():
    """Queries per chunk: as many as keep the score block within 4 MiB where that is at least 256
    (fp32 scores of a 256² input at batch 1: 256, 4 rows of its 64² ×½ map), else 512 (bf16 scores
    there, batch 2, a 512² input); whole rows; the backward (no score size given) keeps 512."""
    rows = cfa_module._rows_per_chunk
    assert (cfa_module.SMALL_MAP_QUERIES, cfa_module.SMALL_MAP_BLOCK_BYTES) == (256, 4 << 20)
    assert rows(64, 64, 1, None, score_bytes=4) == 4  # 256 of 4096 queries
    assert rows(64, 64, 1, None, score_bytes=2) == 8  # bf16 scores: 512 fit
    assert rows(64, 64, 2, None, score_bytes=4) == 8  # batch 2: 128 would fit, too few
    assert rows(128, 128, 1, None, score_bytes=4) == 4  # 512 queries of a 512² input
    assert rows(32, 32, 1, None, score_bytes=4) == 16  # 1024 would fit; at most QUERIES_PER_CHUNK
    assert rows(64, 64, 1, None) == 8  # no score size (the backward)
    assert rows(64, 64, 1, 128, score_bytes=4) == 2  # an explicit query_chunk wins


@pytest.mark.parametrize("native", RAL_PATHS)
def test_ral_chunks_of_one_row_compute_each_attention_row_once(native, monkeypatch):
    """1-row chunks move their carried rows onto overlapping places (the torch path) or wrap around the ring of
    Gram rows (the C path); each row of Ŝ is still computed once and the result is the authors'."""
    x = torch.randn(2, 3, 14, 10)  # x1/2 map 7 x 5
    seen = attention_blocks(monkeypatch, native)
    with torch.no_grad():
        out = region_affinity(x, query_chunk=5)
    blocks = [2 * 5] + [5] * 5  # rows 0-1, then rows 2 .. 6 one by one
    assert seen == (blocks if not native else [q for q in blocks for _ in range(2)])  # C: one call per image
    torch.testing.assert_close(out, region_affinity_reference(x), rtol=0, atol=2e-5)


def _ral_input_gradient(ral, x, weight):
    x = x.detach().requires_grad_()
    (ral(x) * weight).sum().backward()
    return x.grad


@pytest.mark.parametrize("shape,features", [
    ((1, 4, 16, 16), 1.0),
    ((1, 4, 16, 16), 0.05),  # a soft softmax: the scores' gradient matters
    ((2, 5, 12, 20), 1.0),  # batch 2, hs != ws
    ((2, 4, 10, 14), 40.0),  # peaky scores: most weights under the clamp, logits under the floor
])
def test_ral_gradients_match_the_official_form(shape, features):
    """The hand-written backward (training) against autograd through the authors' form."""
    torch.manual_seed(3)
    x = torch.randn(shape) * features
    # keys of norm ~1e-6: the key norm's floor at 1e-4 holds, no gradient through it (exact zeros would
    # make the authors' form NaN: sqrt's derivative at 0)
    x[0, :, :4, :6] = 1e-7
    weight = torch.randn(shape)
    ref = _ral_input_gradient(region_affinity_reference, x, weight)
    torch.testing.assert_close(_ral_input_gradient(region_affinity, x, weight), ref,
                               rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("query_rows", [1, 2, 3])
def test_ral_gradients_in_blocks_of_query_rows_are_exact(query_rows):
    """The backward runs in blocks of query rows, carrying rows from block to block (x1/2 map 7 x 6;
    the last block is partial for 2 and 3 rows). Small features keep the softmax soft: with peaky
    attention the scores' gradient all but vanishes and would hide a wrong ∂Ŝ."""
    torch.manual_seed(5)
    x, weight = torch.randn(2, 4, 14, 12) * 0.05, torch.randn(2, 4, 14, 12)
    x[1, :, 6:10, 4:10] = 1e-7  # floored key norms in the middle rows
    ref = _ral_input_gradient(region_affinity_reference, x, weight)
    fast = _ral_input_gradient(lambda t: region_affinity(t, query_chunk=query_rows * 6), x, weight)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_ral_gradients_under_bf16_autocast_stay_near_float32():
    torch.manual_seed(4)
    x, weight = torch.randn(2, 8, 16, 20), torch.randn(2, 8, 16, 20)
    ref = _ral_input_gradient(region_affinity_reference, x, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = _ral_input_gradient(region_affinity, x, weight)
    assert bf16.dtype == torch.float32
    assert (bf16 - ref).abs().max() < 0.05 * ref.abs().max()


# --- Winograd (winograd.py) in the fast path ---------------------------------------------------


@pytest.fixture
def everywhere(monkeypatch):
    """Winograd for every eligible 3×3 layer, whatever its width and map size; counts its calls."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_PIXELS", 1)
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *args: calls.append(args[1]) or real(*args))
    return calls  # the transformed weights, (t², C, K)


@pytest.mark.parametrize("small_tiles,native,fused", [(False, True, True), (False, True, False), (False, False, False),
                                                      (True, False, False)])
def test_fast_path_with_winograd_equals_the_authors_computation(everywhere, monkeypatch, small_tiles, native, fused):
    """F(4×4, 3×3) on every layer, with its transforms in C (winograd_native.py; fused into one pass for
    64·j output channels where the CPU has AVX-512, or in bands) or eager, or F(2×2, 3×3) on every layer
    (what inference takes on 16² maps)."""
    if native and not winograd.native():
        pytest.skip("the C kernels are not built here (tests/test_winograd_native.py says why)")
    if fused and not winograd_native.fused_available(torch.float32):
        pytest.skip("the fused kernels need a CPU with AVX-512")
    monkeypatch.setattr(winograd, "NATIVE", native)
    monkeypatch.setattr(winograd, "FUSED_FLOAT", fused)
    calls = kernel_calls(monkeypatch)
    if small_tiles:
        monkeypatch.setattr(winograd, "MIN_PIXELS", 10 ** 9)
        monkeypatch.setattr(winograd, "MIN_PIXELS_SMALL", 1)
    g = randomised(ModelConfig(base_width=8)).eval()
    inputs = make_inputs(b=2)
    with torch.no_grad():
        fast = g(*inputs, with_projections=True)
        ref = g(*inputs, with_projections=True, reference=True)
    assert len(everywhere) >= 9  # Bi-GFF's gates and the decoders' 3×3 layers
    assert {u.shape[0] for u in everywhere} == ({16} if small_tiles else {36})
    # every conv3x3 call, and with MIN_PIXELS at 1 the trained form's forward on the maps under
    # MIN_PIXELS_SMALL (2² to 8²), which takes it too
    native_calls = [name for name, _ in calls if name == "fill"]
    fused_calls = [name for name, _ in calls if name == "fused"]
    assert (len(native_calls) + len(fused_calls) >= len(everywhere)) if native else not native_calls
    assert bool(fused_calls) == fused and bool(native_calls) == native  # at width 8, K is 64 in some layers only
    assert_parity(fast, ref, atol=1e-5)


def test_fast_path_with_the_encoders_by_phases_equals_the_authors_computation(everywhere, monkeypatch):
    """On a CPU without AVX-512 (pretended here) the encoders' 5×5 stride-2 layers run by Winograd over
    their input's four phases; with every threshold at its lowest, the forward is still the authors'."""
    monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: True)
    monkeypatch.setattr(winograd, "MIN_CHANNELS_PHASES_AVX2", 1)
    calls = []
    real = winograd.conv5x5_stride2
    monkeypatch.setattr(winograd, "conv5x5_stride2", lambda x, u: calls.append(tuple(u.shape)) or real(x, u))
    g = randomised(ModelConfig(base_width=8)).eval()
    inputs = make_inputs(b=2)
    with torch.no_grad():
        fast = g(*inputs, with_projections=True)
        ref = g(*inputs, with_projections=True, reference=True)
    assert sorted(calls) == [(36, 32, 16), (36, 32, 16), (36, 64, 32), (36, 64, 32)]  # ec_*_2, ec_*_3
    assert_parity(fast, ref, atol=1e-5)


def test_new_weights_are_used_after_load_state_dict(everywhere):
    g = randomised(ModelConfig(base_width=4)).eval()
    inputs = make_inputs()
    with torch.no_grad():
        g(*inputs)  # fills the caches
        g.load_state_dict(randomised(ModelConfig(base_width=4), seed=1).state_dict())
        fast = g(*inputs, with_projections=True)
        ref = g(*inputs, reference=True)  # the authors' computation runs the projection heads too
    assert everywhere
    assert_parity(fast, ref, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_does_not_trace_winograd(everywhere, tmp_path):
    g = randomised(ModelConfig(base_width=4)).eval()
    path = export_torchscript(g, tmp_path / "g.torchscript.pt", example_size=(128, 128))
    assert not everywhere  # tracing takes the plain convolutions, which hold any input size
    inputs = example_inputs(128, 256, seed=3)
    with torch.no_grad():
        got = torch.jit.load(str(path))(*inputs)
        ref = g(*inputs[:3], structure_known_mask=inputs[3], reference=True).output
    assert (got - ref).abs().max().item() < 1e-4


# --- whole generator -----------------------------------------------------------------------------


# the decoders' upsampling: torch's, and the C kernel where the package was built with it
UPSAMPLE_PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(upsample_native.kernels() is None,
                                                                     reason="the upsampling kernel is not built here"))]


@pytest.mark.parametrize("native_upsample", UPSAMPLE_PATHS)
@pytest.mark.parametrize("config", [
    ModelConfig(base_width=8),
    ModelConfig(base_width=4, dual_stream=False),
    ModelConfig(base_width=4, bigff=False, structure_priors=False),
])
def test_eval_fast_path_equals_reference_at_tiny_width(config, native_upsample, monkeypatch):
    monkeypatch.setattr(generator_module, "NATIVE_UPSAMPLE", native_upsample)
    calls = []
    real = upsample_native.upsample2x_masked
    monkeypatch.setattr(upsample_native, "upsample2x_masked", lambda *a: calls.append(a[0].shape) or real(*a))
    g = randomised(config).eval()
    inputs = make_inputs(b=2)
    with torch.no_grad():
        fast = g(*inputs, with_projections=True)
        ref = g(*inputs, with_projections=True, reference=True)
    assert_parity(fast, ref, atol=1e-5)
    assert len(calls) == (7 * (2 if config.dual_stream else 1) if native_upsample else 0)  # every decoder step


def test_per_channel_structure_mask_takes_the_same_path_in_both():
    """structure_known_mask differs per channel (user edges): the count is Σ_c, not C·M."""
    g = randomised(ModelConfig(base_width=4)).eval()
    image, edge, known = make_inputs()
    str_known = torch.cat((torch.maximum(known, (torch.rand_like(known) > 0.97).float()), known), 1)
    with torch.no_grad():
        fast = g(image, edge * str_known, known, structure_known_mask=str_known, with_projections=True)
        ref = g(image, edge * str_known, known, structure_known_mask=str_known, reference=True)
    assert_parity(fast, ref, atol=1e-5)


def test_training_path_equals_reference_in_outputs_and_gradients():
    assert_training_parity(randomised(ModelConfig(base_width=4)).train())


def test_training_path_with_winograd_equals_the_authors_computation(monkeypatch):
    """With Winograd for every eligible layer, as the wide layers take it at full width in fp32 training
    (winograd.conv3x3_trained: decoders' 3×3 layers and Bi-GFF's fused gates, all three passes)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_PIXELS", 1)
    calls = []
    real = winograd.conv3x3_trained
    monkeypatch.setattr(winograd, "conv3x3_trained", lambda *args: calls.append(args[0].shape) or real(*args))
    assert_training_parity(randomised(ModelConfig(base_width=4)).train())
    assert len(calls) >= 9  # the fast pass only: Bi-GFF's gates and the decoders' 3×3 layers


def assert_training_parity(g):
    inputs = make_inputs(b=2)
    grads = []
    outs = []
    for reference in (False, True):
        g.zero_grad()
        out = g(*inputs, reference=reference)
        loss = out.output.pow(2).mean() + out.projected_image.abs().mean() + out.projected_edge.mean()
        loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in g.named_parameters()})
    assert_parity(outs[0], outs[1], atol=1e-5)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-3, atol=1e-5, msg=name)


def fp32_and_bf16_outputs(g: Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``g``'s output on :func:`make_inputs` in fp32 and under bf16 autocast, and their mean absolute
    difference on the [0, 1] image."""
    inputs = make_inputs()
    with torch.no_grad():
        fp32 = g(*inputs).output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = g(*inputs).output
    return fp32, bf16, ((bf16.float() - fp32) / 2).abs().mean().item()  # [-1, 1] -> [0, 1]


def test_bf16_autocast_stays_within_one_grey_level():
    """bf16 (autocast) against fp32 on the [0, 1] image: mean abs error ≤ 1/255 (issue 7 target)."""
    _, _, mae = fp32_and_bf16_outputs(randomised(ModelConfig(base_width=8)).eval())
    assert 0 < mae <= 1 / 255, mae


bf16_winograd = pytest.mark.skipif(not (winograd.native() and cpu.has_fast_bf16()),
                                   reason="needs the C kernels (winograd_native.py) and oneDNN's bf16 kernels")


def kernel_calls(monkeypatch, dtype: torch.dtype | None = None) -> list[tuple[str, torch.Tensor]]:
    """Records the C kernels' calls (``fill``: in bands, or ``fused``) as (kernel, transformed weight), those
    whose transformed weight is ``dtype`` or all of them."""
    calls = []
    for name in ("fill", "fused"):
        real = getattr(winograd_native, name)
        monkeypatch.setattr(winograd_native, name, lambda *a, name=name, real=real:
                            (dtype in (None, a[1].dtype) and calls.append((name, a[1]))) or real(*a))
    return calls


def bf16_winograd_calls(monkeypatch) -> list[tuple[str, torch.Tensor]]:
    """bf16 Winograd's calls (:func:`kernel_calls`), with AMX pretended away (bf16 Winograd is off on AMX
    CPUs for speed, not for its numbers)."""
    monkeypatch.setattr(winograd, "_cpu_with_amx", lambda: False)
    return kernel_calls(monkeypatch, torch.bfloat16)


@bf16_winograd
@pytest.mark.parametrize("fused", [True, False])
def test_bf16_winograd_on_every_layer_stays_within_one_grey_level(monkeypatch, fused):
    """bf16 inference with F(2×2, 3×3) in bf16 on every 3×3 stride-1 layer (here any width and map; in the
    paper-size model only the wide ones, docs/speed.md), with the fused kernel where this CPU has it and
    in bands: within 1/255 of fp32, and different from the direct bf16 convolutions' output (so it ran)."""
    if fused and not winograd_native.fused_available(torch.bfloat16):
        pytest.skip("the fused bf16 kernel needs a CPU with AVX512-BF16")
    monkeypatch.setattr(winograd, "FUSED_BF16", fused)
    calls = bf16_winograd_calls(monkeypatch)
    g = randomised(ModelConfig(base_width=8)).eval()
    fp32, direct, direct_mae = fp32_and_bf16_outputs(g)
    assert not calls  # at width 8 no layer is wide enough by default
    monkeypatch.setattr(winograd, "BALANCE_BF16", 0)
    monkeypatch.setattr(winograd, "MIN_PIXELS_BF16", 1)
    fp32_again, bf16, mae = fp32_and_bf16_outputs(g)
    assert len(calls) >= 9  # Bi-GFF's gates, the decoders' 3×3 layers, fusion_layer2, MSFA's undilated two
    assert any(kernel == "fused" for kernel, _ in calls) == fused
    assert torch.equal(fp32_again, fp32)  # float32 is untouched
    assert not torch.equal(bf16, direct)
    assert 0 < mae <= 1 / 255 and mae < 3 * direct_mae, (mae, direct_mae)


def test_bf16_weights_cast_once_give_what_autocast_gives():
    """Inference under autocast uses each partial conv's weight cast once (InferenceWeight): the same
    numbers as autocast's own per-call cast, no cast on the second call, a new cast after the weights
    change, and the float32 weight itself whenever autograd is on."""
    g = randomised(ModelConfig(base_width=8)).eval()
    inputs = make_inputs()
    layers = [m for m in g.modules() if isinstance(m, PartialConv2d)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cached = g(*inputs).output
        casts = [layer._inference._entries for layer in layers]
        assert all(e and all(v[2].dtype == torch.bfloat16 for v in e.values()) for e in casts)
        casts = [[v[2] for v in e.values()] for e in casts]
        again = g(*inputs).output
        assert all([v[2] for v in layer._inference._entries.values()] == c  # not cast again
                   for layer, c in zip(layers, casts, strict=True))
        for layer in layers:  # autocast's own cast, every call
            layer._inference.get = lambda weight, channels_last=False: weight
        uncached = g(*inputs).output
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    torch.testing.assert_close(again, cached, rtol=0, atol=0)

    fresh = randomised(ModelConfig(base_width=8), seed=1)
    g2 = randomised(ModelConfig(base_width=8)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        g2(*inputs)
    g2.load_state_dict(fresh.state_dict())  # outside autocast, whose own cast cache lives as long as it
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = g2(*inputs).output
        expected = fresh.eval()(*inputs).output
    torch.testing.assert_close(after, expected, rtol=0, atol=0)

    layer = next(m for m in g2.modules() if isinstance(m, PartialConv2d))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._inference.get(layer.weight) is layer.weight  # autograd on: autocast's own cast
    with torch.no_grad():
        assert layer._inference.get(layer.weight) is layer.weight  # no autocast, no new layout



def test_bf16_ral_in_chunks_equals_bf16_ral_in_one_chunk():
    """Under bf16 autocast the attention block, scores and softmax are bf16: carrying rows from
    chunk to chunk must give what one chunk gives, and stay near the float32 result."""
    x = torch.randn(2, 8, 20, 24)  # x1/2 map 10 x 12
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = region_affinity(x, query_chunk=10 * 12)
        for rows in (1, 3):
            torch.testing.assert_close(region_affinity(x, query_chunk=rows * 12), whole, rtol=0, atol=1e-2)
    assert whole.dtype == torch.float32 and (whole - region_affinity_reference(x)).abs().max() < 0.05


def test_bf16_inference_scores_run_in_bf16_and_stay_near_float32_scores():
    """In inference under bf16 autocast the Gram rows, scores and softmax run in bf16: the result moves
    away from the same computation with float32 scores (so the bf16 path is taken), but only by about
    the bf16 rounding of the aggregation. With autograd the forward keeps float32 scores, because the
    hand-written backward differentiates that function."""
    torch.manual_seed(7)
    x = torch.randn(1, 16, 32, 40) * 0.1 + 1  # similar features: a soft softmax, where rounding shows
    small = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=True)
    ref = region_affinity_reference(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = region_affinity(x)
        float32_scores = cfa_module._region_affinity_forward(x, small, 10.0, None, scores_in_bf16=False)
    assert not torch.equal(fast, float32_scores)
    spread = ref.abs().max().item()
    assert (fast - ref).abs().mean() < 0.01 * spread
    assert (fast - ref).abs().max() < 0.1 * spread
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = region_affinity(x.clone().requires_grad_())
    torch.testing.assert_close(trained.detach(), float32_scores, rtol=0, atol=0)


@pytest.mark.slow
def test_ral_gradients_at_the_paper_size():
    """The map CFA sees in training at 256² (64 channels, 128², eight blocks of query rows per sample),
    with a soft softmax and with the scale of trained features: the hand-written backward against
    autograd through the authors' form."""
    torch.manual_seed(6)
    weight = torch.randn(1, 64, 128, 128)
    for features in (0.02, 0.5):
        x = torch.randn(1, 64, 128, 128) * features
        ref = _ral_input_gradient(region_affinity_reference, x, weight)
        torch.testing.assert_close(_ral_input_gradient(region_affinity, x, weight), ref,
                                   rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def paper_model(inputs: tuple[torch.Tensor, ...]) -> Generator:
    """The paper's model in eval mode with its activations at a trained network's scale: BN running
    statistics set from one train-mode pass over ``inputs`` (momentum 1), Bi-GFF's γ non-zero. (Random
    weights with untouched statistics blow features up to ~1e5, where the ×10 RAL softmax becomes an
    argmax that float ties decide, and the output saturates at ±1.)"""
    torch.manual_seed(0)
    g = Generator().train()
    with torch.no_grad():
        g.bigff.texture_gamma.fill_(0.7)
        g.bigff.structure_gamma.fill_(0.4)
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0
        g(*inputs)
    return g.eval()


@pytest.mark.slow
@pytest.mark.parametrize("size", [256])
@pytest.mark.parametrize("without_avx512,native", [(False, True), (True, False)])
def test_full_width_fast_path_equals_reference(size, without_avx512, native, monkeypatch):
    """The paper's model (52.1M parameters): fast vs reference within 1e-4 (issue 7), with Winograd's
    transforms in C where they are built (which also take the 64-channel layers and the encoders' 5×5
    stride-2 layers over the phases); and with the eager transforms and the layers that take Winograd
    only on CPUs without AVX-512 (the decoders' 192→64, the 5×5 layers), whatever this CPU has.

    Activations are kept at a trained network's scale (:func:`paper_model`).
    """
    monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: without_avx512)
    monkeypatch.setattr(winograd, "NATIVE", native)
    phases = []
    real = winograd.conv5x5_stride2
    monkeypatch.setattr(winograd, "conv5x5_stride2", lambda x, u: phases.append(u.shape) or real(x, u))
    inputs = make_inputs(size=size)
    g = paper_model(inputs)
    with torch.no_grad():
        phases.clear()
        fast = g(*inputs, with_projections=True)
        ref = g(*inputs, with_projections=True, reference=True)
    assert ref.output.std() > 0.05  # not saturated: the comparison means something
    assert len(phases) == (4 if without_avx512 or winograd.native() else 0)  # ec_*_2 and ec_*_3 of the fast forward
    assert_parity(fast, ref, atol=1e-4)


@pytest.mark.slow
@bf16_winograd
def test_full_width_bf16_with_winograd_stays_within_one_grey_level(monkeypatch):
    """The paper's model at 256² under bf16 autocast: its wide layers by F(2×2, 3×3) in bf16 (Bi-GFF's gates and
    the decoders' 384→128, 768→256 and 1024→512 at 16²; with the fused kernel also every 3×3 stride-1 layer of 64
    output channels but MSFA's dilated ones), the output within 1/255 of fp32 on the [0, 1] image (issue 7)."""
    calls = bf16_winograd_calls(monkeypatch)
    inputs = make_inputs(size=256)
    g = paper_model(inputs)
    with torch.no_grad():
        fp32 = g(*inputs).output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = g(*inputs).output
    shapes = sorted((kernel, *u.shape[1:]) for kernel, u in calls)
    wide = [("fill", 768, 256), ("fill", 1024, 512)] * 2  # two streams
    if winograd_native.fused_available(torch.bfloat16):  # and the 64-channel decoders, fusion_layer2, MSFA's two
        narrow = [(128, 128), (67, 64), (66, 64), (128, 64), (64, 64), (64, 64)] + [(384, 128), (192, 64)] * 2
        assert shapes == sorted(wide + [("fused", c, k) for c, k in narrow]), shapes
    else:
        assert shapes == sorted(wide + [("fill", 128, 128)] + [("fill", 384, 128)] * 2), shapes
    mae = ((bf16.float() - fp32) / 2).abs().mean().item()
    assert fp32.std() > 0.05 and 0 < mae <= 1 / 255, mae


def test_fast_path_does_not_change_the_inputs():
    g = randomised(ModelConfig(base_width=4)).eval()
    inputs = make_inputs()
    copies = [t.clone() for t in inputs]
    with torch.no_grad():
        g(*inputs)
    assert all(torch.equal(a, b) for a, b in zip(inputs, copies, strict=True))



def test_fast_path_does_half_the_multiply_adds_of_the_authors_at_256():
    """Counted on the meta device (no compute): the reference is the authors' 183.5 GFLOP (issue 7);
    the fast path drops the dense mask convolutions, the projection heads and 3/4 of the RAL products."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        g = Generator().eval()
        inputs = (torch.zeros(1, 3, 256, 256), torch.zeros(1, 2, 256, 256), torch.ones(1, 1, 256, 256))
    counts = {}
    for reference in (True, False):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            g(*inputs, reference=reference, with_projections=reference)
        counts[reference] = counter.get_total_flops() / 1e9
    assert abs(counts[True] - 183.5) < 0.1
    assert counts[False] < 0.5 * counts[True]


def test_strided_layers_use_a_channels_last_weight_that_follows_the_weights():
    """In fp32 inference the encoders' strided layers whose output is larger than their weight (the
    first two at 128²) run channels-last with a channels-last copy of the weight made once (the deeper
    ones take the packed weight, next test); after load_state_dict the new weights are used, and the
    results stay those of the authors' computation."""
    from ctsdg import partial_conv

    g = randomised(ModelConfig(base_width=8)).eval()
    inputs = make_inputs()  # 128²: encoder outputs 64², 32², ... 1²
    with torch.no_grad():
        g(*inputs)
        copies = {name: layer.conv._inference._entries for name, layer in g.named_children()
                  if name.startswith("ec_")}
        laid_out = {name for name, e in copies.items() if (torch.float32, True) in e}
        assert laid_out == {f"ec_{s}_{i}" for s in ("texture", "structure") for i in (1, 2)}
        prepared = copies["ec_texture_2"][(torch.float32, True)][2]
        assert prepared.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(prepared, g.ec_texture_2.conv.weight)
        fresh = randomised(ModelConfig(base_width=8), seed=1).eval()
        g.load_state_dict(fresh.state_dict())
        assert_parity(g(*inputs, with_projections=True), fresh(*inputs, reference=True), atol=1e-5)
    assert partial_conv.CHANNELS_LAST_STRIDED_PIXELS == 64


def _deep_layers(g, inputs) -> dict[str, PartialConv2d]:
    """The partial convolutions of ``g`` whose output (H·W per channel, in one fast forward on ``inputs``)
    is smaller than their weight, by layer name: the ones that take a packed weight."""
    pixels = {}
    hooks = [layer.register_forward_hook(lambda m, a, out, name=name: pixels.__setitem__(name, out[0][0, 0].numel()))
             for name, layer in g.named_children() if isinstance(layer, PConvBNActiv)]
    try:
        with torch.no_grad():
            g(*inputs)
    finally:
        for h in hooks:
            h.remove()
    layers = {name: layer.conv for name, layer in g.named_children() if isinstance(layer, PConvBNActiv)}
    return {name: conv for name, conv in layers.items() if conv.out_channels * pixels[name] < conv.weight.numel()}


def test_deep_layers_use_a_packed_weight_that_follows_the_weights():
    """In fp32 inference every partial conv whose output is smaller than its weight runs with the weight
    reordered once into oneDNN's layout (partial_conv.packed_conv), and only those; after
    load_state_dict the new weights are packed, and the results stay those of the authors' computation
    with or without packing. Training, autocast and other dtypes keep F.conv2d."""
    from ctsdg import partial_conv

    g = randomised(ModelConfig(base_width=8)).eval()
    inputs = make_inputs()
    layers = {name: layer.conv for name, layer in g.named_children() if isinstance(layer, PConvBNActiv)}
    deep = set(_deep_layers(g, inputs))
    packed = {name for name, conv in layers.items() if ("packed", torch.float32) in conv._inference._entries}
    assert packed == deep
    assert {"ec_texture_4", "ec_structure_7", "dc_texture_7", "dc_structure_5"} <= deep
    assert not deep & {"ec_texture_1", "dc_texture_1", "dc_structure_2"}
    before = {name: layers[name]._inference._entries["packed", torch.float32][2] for name in deep}
    fresh = randomised(ModelConfig(base_width=8), seed=1).eval()
    g.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        expected = fresh(*inputs, reference=True)
        assert_parity(g(*inputs, with_projections=True), expected, atol=1e-5)  # fails if the packed copies kept the old weights
        assert all(layers[name]._inference._entries["packed", torch.float32][2] is not before[name] for name in deep)
        try:
            partial_conv.PACKED_WEIGHTS = False
            assert_parity(g(*inputs, with_projections=True), expected, atol=1e-5)
        finally:
            partial_conv.PACKED_WEIGHTS = True
    x, w = torch.randn(1, 64, 8, 8), torch.randn(32, 64, 3, 3)
    with torch.no_grad():
        assert partial_conv.packed_dtype(x, w) == torch.float32
        assert partial_conv.packed_dtype(x.double(), w.double()) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert partial_conv.packed_dtype(x, w) == (torch.bfloat16 if cpu.has_fast_bf16() else None)
        with torch.autocast("cpu", dtype=torch.float16):
            assert partial_conv.packed_dtype(x, w) is None
    assert partial_conv.packed_dtype(x, w) is None  # autograd on


# On a CPU without bf16 kernels (AVX2-only x86) a bf16 forward takes F.conv2d: nothing is packed in bf16
# there (test_a_bf16_forward_without_bf16_kernels_takes_plain_convolutions).
needs_bf16_kernels = pytest.mark.skipif(not cpu.has_fast_bf16(), reason="no bf16 kernels on this CPU")


def test_a_bf16_forward_without_bf16_kernels_takes_plain_convolutions(monkeypatch):
    """Where oneDNN has no bf16 kernels its bf16 weight reorder raises ("bf16 path needs the cpu support
    avx_ne_convert or avx512bw, ..."), so a bf16 forward there (CTSDG_ALLOW_SLOW_BF16=1, or autocast in a
    script) packs nothing in bf16 and runs F.conv2d; fp32 keeps its packed weights."""
    from ctsdg import partial_conv

    monkeypatch.setattr(partial_conv, "_bf16_packing_available", lambda: False)
    g = randomised(ModelConfig(base_width=8)).eval()
    _, bf16, mae = fp32_and_bf16_outputs(g)
    layers = [layer.conv for layer in g.children() if isinstance(layer, PConvBNActiv)]
    assert not any(("packed", torch.bfloat16) in conv._inference._entries for conv in layers)
    assert ("packed", torch.float32) in g.dc_texture_7.conv._inference._entries
    assert bf16.dtype == torch.bfloat16 and 0 < mae <= 1 / 255


def test_a_bf16_forward_runs_where_onednn_is_limited_to_avx2():
    """The same, for real: oneDNN, MKL and torch limited to AVX2 (an AVX2-only CPU's code, emulated on an
    AVX-512 one). The packed bf16 path used to fail there with oneDNN's RuntimeError."""
    code = ("import torch\n"
            "from ctsdg import Generator, ModelConfig\n"
            "g = Generator(ModelConfig(base_width=4)).eval()\n"
            "img, edge, known = torch.rand(1, 3, 128, 128) * 2 - 1, torch.rand(1, 2, 128, 128), torch.ones(1, 1, 128, 128)\n"
            "known[..., 32:96, 32:96] = 0\n"
            "with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):\n"
            "    out = g(img * known, edge, known).output\n"
            "print(out.dtype, tuple(out.shape))\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "torch.bfloat16 (1, 3, 128, 128)"


@needs_bf16_kernels
def test_bf16_packed_weights_give_what_autocast_gives(monkeypatch):
    """Under bf16 autocast the deep layers take the bf16 weight packed once: bit for bit what autocast's
    own convolution gives on the same channels-last input. With packing off those layers take their input
    contiguous, and on an AVX-512 CPU without AMX (Zen 4) oneDNN then sums in another order: the forward
    moves by at most a bf16 rounding step in some pixels (one step near 1, in 2 % of them, on Zen 4;
    none on the AMX Xeons)."""
    from ctsdg import partial_conv

    g = randomised(ModelConfig(base_width=8)).eval()
    inputs = make_inputs()
    deep = set(_deep_layers(g, inputs).values())
    calls = []
    original = PartialConv2d.forward_counted

    def recorded(self, masked_x, valid_count):
        result = original(self, masked_x, valid_count)
        if self in deep:
            calls.append((self, masked_x.clone(), result[0].clone()))  # the layer goes on in place
        return result

    monkeypatch.setattr(PartialConv2d, "forward_counted", recorded)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        packed = g(*inputs).output
        assert {conv for conv, _, _ in calls} == deep
        for conv, masked_x, out in calls:
            assert conv._inference._entries["packed", torch.bfloat16][2].dtype == torch.bfloat16
            expected = F.conv2d(masked_x.contiguous(memory_format=torch.channels_last), conv.weight, None,
                                conv.stride, conv.padding)
            assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
        try:
            partial_conv.PACKED_WEIGHTS = False
            plain = g(*inputs).output
        finally:
            partial_conv.PACKED_WEIGHTS = True
    assert plain.dtype == packed.dtype == torch.bfloat16
    assert (packed.float() - plain.float()).abs().max() <= 2 ** -7  # one bf16 step at 1.0


@needs_bf16_kernels
def test_fp32_and_bf16_forwards_in_turn_keep_one_packed_copy_each():
    """A script that runs fp32 and bf16 forwards in turn, or the bench's interleaved rounds: each dtype
    keeps its own packed copy, so neither re-packs the deep layers after the other ran (with one shared
    copy every switch re-packed them: 15-50 ms of a full-width 256² forward)."""
    from ctsdg import partial_conv

    g = randomised(ModelConfig(base_width=8)).eval()
    inputs = make_inputs()
    conv = g.dc_texture_7.conv
    with torch.no_grad():
        fp32 = g(*inputs).output
        first = conv._inference._entries["packed", torch.float32][2]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            g(*inputs)
        again = g(*inputs).output
    assert conv._inference._entries["packed", torch.float32][2] is first  # not re-packed after bf16
    assert conv._inference._entries["packed", torch.bfloat16][2].dtype == torch.bfloat16
    assert partial_conv.PACKED_WEIGHTS and torch.equal(again, fp32)


def test_packed_weights_only_on_x86_64(monkeypatch):
    """Measured on x86-64 only: elsewhere (an Arm Mac, say) the deep layers keep F.conv2d."""
    from ctsdg import partial_conv

    x, w = torch.randn(1, 64, 8, 8), torch.randn(32, 64, 3, 3)
    partial_conv._packing_available.cache_clear()
    monkeypatch.setattr(partial_conv.platform, "machine", lambda: "arm64")
    try:
        with torch.no_grad():
            assert partial_conv.packed_dtype(x, w) is None
    finally:
        partial_conv._packing_available.cache_clear()


@pytest.mark.parametrize("stride", [1, 2])
def test_packed_convolution_equals_the_plain_one(stride):
    from ctsdg.partial_conv import InferenceWeight, packed_conv

    torch.manual_seed(0)
    x, w = torch.randn(1, 96, 8, 8), torch.randn(64, 96, 3, 3)
    with torch.no_grad():
        y = packed_conv(x, InferenceWeight().packed(w, tuple(x.shape), stride, 1), stride, 1)
        expected = torch.nn.functional.conv2d(x.double(), w.double(), None, stride, 1)
    assert y.shape == expected.shape and y.dtype == torch.float32
    assert (y.double() - expected).abs().max().item() < 1e-6 * expected.abs().max().item() * 96


def test_a_model_with_packed_weights_can_be_copied_and_pickled():
    """The packed copies are opaque oneDNN tensors: a deep copy (ctsdg.adapt copies the generator) or a
    pickle of the whole module starts with empty caches, and the copy computes what the original does."""
    import copy
    import io

    g = randomised(ModelConfig(base_width=8)).eval()
    inputs = make_inputs()
    with torch.no_grad():
        expected = g(*inputs).output
    assert ("packed", torch.float32) in g.dc_texture_7.conv._inference._entries
    twin = copy.deepcopy(g)
    assert twin.dc_texture_7.conv._inference._entries == {}
    buffer = io.BytesIO()
    torch.save(g, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(twin(*inputs).output, expected)
        assert torch.equal(loaded(*inputs).output, expected)
