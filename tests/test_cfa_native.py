"""RAL's attention and E in C (ctsdg/cfa_native.py, src/ctsdg/_cfa_native.c) against the torch path of
ctsdg/cfa.py and the authors' form; RAL's other tests (tests/test_cfa.py, tests/test_speed_parity.py) run
whichever path is on, the C one where it is built."""

import platform
import shutil

import pytest
import torch

from ctsdg import cfa, cfa_native
from ctsdg.cfa import region_affinity, region_affinity_reference

built = pytest.mark.skipif(cfa_native.kernels() is None,
                           reason="the C kernels are not built here (no C compiler when the package was installed)")


@pytest.fixture(autouse=True, params=["ctsdg._cfa_native", "ctsdg._cfa_native_avx2"])
def build(request, monkeypatch):
    """Every test here runs with each build of the kernels this CPU runs: the 16-lane one (its AVX-512, AVX2 and
    plain clones, picked for this CPU) and the 8-lane AVX2 one (_cfa_native_avx2.c), which CPUs without AVX-512
    load; so an AVX-512 CPU, CI's included, tests both."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if request.param.endswith("avx2") and not (x86 and torch.cpu._is_avx2_supported()):
        pytest.skip("the AVX2 build needs an x86-64 CPU with AVX2")
    if cfa_native.load(request.param) is None and cfa_native.load("ctsdg._cfa_native") is not None:
        pytest.fail(f"{request.param} was not built beside ctsdg._cfa_native")
    monkeypatch.setattr(cfa_native, "kernels", lambda: cfa_native.load(request.param))
    return request.param


def test_the_kernels_are_built_where_there_is_a_c_compiler(build):
    """setup.py builds them as an optional extension (the AVX2 build on x86-64): a build that failed on a machine
    with a compiler would otherwise only show as a slower forward."""
    if shutil.which("cc") or shutil.which("gcc"):
        assert cfa_native.available(torch.ones(1)) and cfa_native.available(torch.ones(1, dtype=torch.bfloat16))
        assert not cfa_native.available(torch.ones(1, device="meta"))
    else:
        assert not cfa_native.available(torch.ones(1))


def ral(x: torch.Tensor, native: bool, query_chunk: int | None = None, monkeypatch=None) -> torch.Tensor:
    """RAL without autograd on the C path or the torch path."""
    monkeypatch.setattr(cfa, "NATIVE", native)
    with torch.no_grad():
        return region_affinity(x, query_chunk=query_chunk)


def spy(monkeypatch) -> dict:
    """Count the calls of the two kernels."""
    calls = {"attention": 0, "e_rows": 0}
    for name in calls:
        real = getattr(cfa_native, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)
        monkeypatch.setattr(cfa_native, name, counted)
    return calls


# (batch, channels, height, width, queries per block): whole vectors of keys along x (ws = 32); sides that leave
# a partial vector (ws = 19, hs = 15) and two images; blocks of one query row; a map smaller than one vector
CASES = [(1, 16, 64, 64, None), (2, 8, 30, 38, None), (1, 8, 36, 36, 18), (1, 4, 6, 4, None)]


@built
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("b,c,h,w,query_chunk", CASES)
def test_c_attention_gives_the_torch_paths_numbers(threads, b, c, h, w, query_chunk, monkeypatch):
    """Same sums in the same order: float32 scores are the same, and the kernel's exponential is within a few ulp
    of torch's, so the outputs agree to float rounding; both are the authors' RAL."""
    x = torch.randn(b, c, h, w) * 0.2  # a spread attention, not one key per query
    calls = spy(monkeypatch)
    native = ral(x, True, query_chunk, monkeypatch)
    blocks = -(-(h // 2) // ((query_chunk or 512) // (w // 2)))
    assert calls["e_rows"] == b * blocks and b <= calls["attention"] <= b * blocks  # attention rows run one ahead
    before = dict(calls)
    torch_path = ral(x, False, query_chunk, monkeypatch)
    assert calls == before  # the torch path calls neither
    torch.testing.assert_close(native, torch_path, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(native, region_affinity_reference(x), rtol=1e-4, atol=1e-5)


@built
@pytest.mark.parametrize("b,c,h,w,query_chunk", CASES[1:3])
def test_c_attention_in_bf16_is_as_close_to_float32_as_torchs(b, c, h, w, query_chunk, monkeypatch):
    """Under bf16 autocast the scores and the attention are bf16 (cfa.region_affinity); the kernels read bf16 and
    round once, torch's ops after each op, so the C path is at least as close to the float32 output."""
    x = torch.randn(b, c, h, w) * 0.2
    exact = region_affinity_reference(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        calls = spy(monkeypatch)
        native = ral(x, True, query_chunk, monkeypatch)
        assert calls["attention"] > 0 and calls["e_rows"] > 0
        torch_path = ral(x, False, query_chunk, monkeypatch)
    error_native, error_torch = ((out.float() - exact).abs().mean() for out in (native, torch_path))
    assert error_native <= 1.1 * error_torch
    assert error_torch < 0.01 * exact.abs().mean()  # a bf16 error, not a wrong sum
    torch.testing.assert_close(native.float(), torch_path.float(), rtol=0.05, atol=0.02 * exact.abs().max().item())


def ring_case(m: int, hs: int, ws: int, dtype: torch.dtype):
    """Gram rows of a block of m query rows (random, not a real Gram matrix), a key scale and the attention the
    kernel should write: the logits summed in float32 in the kernel's order, the softmax in float64."""
    lp = (hs + 2) * (ws + 2)
    grams = [torch.randn(ws + 2, lp).mul(4).to(dtype) for _ in range(m + 2)]
    scale = torch.rand(hs * ws).add(0.5).to(dtype)
    g = torch.stack([r.float().view(ws + 2, hs + 2, ws + 2) for r in grams])  # (padded row, column, key y, key x)

    def along_x(oy):
        return (g[oy:oy + m, 0:ws, oy:oy + hs, 0:ws] + g[oy:oy + m, 1:ws + 1, oy:oy + hs, 1:ws + 1]
                + g[oy:oy + m, 2:ws + 2, oy:oy + hs, 2:ws + 2])
    scores = (along_x(0) + along_x(1)) + along_x(2)
    logits = (scores.reshape(m, ws, hs * ws) * scale.float()).reshape(m * ws, hs * ws).double()
    logits = torch.maximum(logits, logits.amax(dim=1, keepdim=True) - cfa.LOGIT_FLOOR)
    expected = torch.softmax(logits, dim=1).clamp_min(1e-8).view(m, ws, hs, ws)
    return grams, scale, expected


@built
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,hs,ws", [(3, 5, 16), (1, 4, 21), (2, 3, 3)])
def test_attention_kernel_is_the_floored_clamped_softmax_of_the_nine_slices(threads, dtype, m, hs, ws):
    """The kernel alone: scores summed from the nine shifted slices of the Gram rows, times the key scale, softmax
    over the keys with logits raised to (max - LOGIT_FLOOR), clamped at 1e-8, written into strided rows."""
    grams, scale, expected = ring_case(m, hs, ws, dtype)
    out = torch.full((m, ws + 2, hs + 2, ws + 2), -1.0, dtype=dtype)  # padded as cfa.py's attention buffer is
    scratch = torch.empty(threads * hs * ws)
    cfa_native.attention(grams, scale, hs, ws, out[:, 1:-1, 1:-1, 1:-1], cfa.LOGIT_FLOOR, 1e-8, scratch)
    inside = out[:, 1:-1, 1:-1, 1:-1].double()
    assert (expected < 1e-6).any() and (expected > 1e-3).any()  # some floored or clamped, some not
    if dtype == torch.float32:
        torch.testing.assert_close(inside, expected, rtol=1e-6, atol=1e-12)
    else:  # the float32 result rounded once to bf16 (8 bits)
        torch.testing.assert_close(inside, expected, rtol=2 ** -8, atol=1e-12)
    frame = torch.ones_like(out, dtype=torch.bool)
    frame[:, 1:-1, 1:-1, 1:-1] = False
    assert (out[frame] == -1).all()  # nothing written outside the rows


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_e_rows_kernel_sums_the_attention_and_its_three_shifts(dtype, monkeypatch):
    """E = (P[t,u,k,v] + P[t,u+1,k,v+1]) + (P[t+1,u,k+1,v] + P[t+1,u+1,k+1,v+1]) over a padded, strided block, the
    sums of the torch path (cfa._e_rows without the kernel), to the bit in float32."""
    t, hs, ws = 4, 5, 18
    p = torch.rand(1, t + 1, ws + 2, hs + 2, ws + 3).to(dtype)[..., 1:]  # keys contiguous, the rest strided
    monkeypatch.setattr(cfa, "NATIVE", False)
    expected = cfa._e_rows(p, {}).clone()
    monkeypatch.setattr(cfa, "NATIVE", True)
    native = cfa._e_rows(p, {})
    if dtype == torch.float32:
        assert torch.equal(native, expected)
    else:  # rounded once, where torch rounds the pair sums too
        torch.testing.assert_close(native.float(), expected.float(), rtol=2 ** -7, atol=0)
