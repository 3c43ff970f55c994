"""F(4×4, 3×3)'s transforms in C (ctsdg/winograd_native.py, src/ctsdg/_winograd_native.c) against the
eager ones and the direct convolution; where the generator takes them: tests/test_speed_parity.py."""

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ctsdg import cpu, winograd, winograd_native

SOURCE = Path(winograd_native.__file__).with_name("_winograd_native.c")
built = pytest.mark.skipif(winograd_native.kernels() is None,
                           reason="the C kernels are not built here (no C compiler when the package was installed)")


def test_the_c_file_is_the_one_generated_from_toom_cook():
    """The kernels' constants are toom_cook(4, 3)'s Bᵀ and Aᵀ (winograd_native.py says how to regenerate
    the file after changing either)."""
    assert SOURCE.read_text() == winograd_native.c_source()


# the 8-lane build of the kernels that CPUs without AVX-512 load (_winograd_native_avx2.c)
AVX2_BUILD = "ctsdg._winograd_native_avx2"


def use_the_avx2_build(monkeypatch) -> None:
    """Make the kernels the 8-lane AVX2 build's, as where torch runs its AVX2 code (its fused kernel: AVX2's)."""
    lib = winograd_native.load(AVX2_BUILD)
    monkeypatch.setattr(winograd_native, "kernels", lambda: lib)
    monkeypatch.setattr(winograd_native, "fused_isa", lambda dtype: "avx2" if dtype == torch.float32 else None)


def test_the_kernels_are_built_where_there_is_a_c_compiler():
    """setup.py builds them as an optional extension: a build that failed on a machine with a compiler
    would otherwise only show as a slower forward."""
    if shutil.which("cc") or shutil.which("gcc"):
        assert winograd_native.kernels() is not None
        assert winograd.native()
        if platform.machine().lower() in ("x86_64", "amd64"):  # and the AVX2 build beside them
            assert winograd_native.load(AVX2_BUILD) is not None
    else:  # without one, the eager transforms
        assert not winograd.native()


def test_ctsdg_arch_builds_one_instruction_set_only(tmp_path):
    """The C kernels' functions are built for AVX-512, AVX2 and plain x86-64, the build picked when the library is
    loaded; with CTSDG_ARCH defined, for that instruction set only (the AVX2 builds, _winograd_native_avx2.c and
    _cfa_native_avx2.c, define it as x86-64-v3)."""
    compiler = shutil.which("gcc")
    if compiler is None or sys.platform != "linux" or not torch.cpu._is_avx2_supported():
        pytest.skip("needs gcc on x86-64 Linux")
    version = subprocess.run([compiler, "-dumpversion"], capture_output=True, text=True).stdout
    if int(version.split(".")[0]) < 12:
        pytest.skip(f"gcc {version.strip()} builds one instruction set only (target_clones of x86-64-v4 needs 12)")
    source = tmp_path / "one.c"
    source.write_text('#include "_native_vectors.h"\n'
                      "CLONES void twice(float *p) { store_float(p, load_float(p, L) * 2.0f, L); }\n")
    header = Path(winograd_native.__file__).parent

    def symbols(*flags: str) -> set[str]:
        subprocess.run([compiler, "-O2", "-c", "-Wno-psabi", f"-I{header}", *flags, str(source), "-o",
                        str(tmp_path / "one.o")], check=True, capture_output=True)
        listing = subprocess.run(["nm", str(tmp_path / "one.o")], check=True, capture_output=True, text=True).stdout
        return {line.split()[-1] for line in listing.splitlines() if line.split()[-1].startswith("twice")}

    assert {"twice.arch_x86_64_v4", "twice.arch_x86_64_v3", "twice.default"} <= symbols()
    assert symbols("-DCTSDG_ARCH=x86-64-v3") == {"twice"}


def split(x: torch.Tensor, parts: tuple[int, ...], rest=lambda p: p) -> tuple[torch.Tensor, ...]:
    """``x`` as parts of ``parts`` channels: the first channels-last, the others ``rest(slice)`` (a plain
    (N, C, H, W) slice, which the kernels copy, unless ``rest`` makes it something else)."""
    pieces = tuple(x[:, sum(parts[:i]):sum(parts[:i + 1])] for i in range(len(parts)))
    return (pieces[0].contiguous(memory_format=torch.channels_last),) + tuple(rest(p) for p in pieces[1:])


def float_case(n: int, parts: tuple[int, ...], k: int, h: int, w: int) -> tuple:
    """A float32 layer's input, the same as ``parts`` (:func:`split`), U of F(4×4, 3×3), the bias and the exact
    output."""
    torch.manual_seed(0)
    c = sum(parts)
    x, weight, bias = torch.randn(n, c, h, w), torch.randn(k, c, 3, 3) / 3, torch.randn(k)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    return x, split(x, parts), winograd.transform_weight(weight), bias, exact


@built
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("n,parts,k,h,w,scratch", [
    (1, (16,), 16, 16, 16, 1 << 20),  # whole vectors of 16 channels, one band
    (2, (67,), 64, 13, 10, 1 << 20),  # a partial last vector of channels; sides not multiples of 4
    (1, (5,), 3, 9, 17, 100),  # fewer channels than a vector, one tile row per band
    (2, (48, 80), 128, 20, 28, 4096),  # an input given as two parts, several bands
    (1, (8, 3), 21, 2, 3, 1),  # smaller than one tile
])
@pytest.mark.parametrize("build", ["ctsdg._winograd_native", AVX2_BUILD])
def test_the_c_transforms_give_the_convolution(monkeypatch, n, parts, k, h, w, scratch, threads, build):
    """In the 16-lane build and in the 8-lane AVX2 one."""
    if build == AVX2_BUILD:
        if not (torch.cpu._is_avx2_supported() and winograd_native.load(AVX2_BUILD) is not None):
            pytest.skip("the AVX2 build needs an x86-64 CPU with AVX2")
        use_the_avx2_build(monkeypatch)
    monkeypatch.setattr(winograd, "SCRATCH_ELEMENTS_NATIVE", scratch)
    monkeypatch.setattr(winograd, "SCRATCH_ELEMENTS", scratch)
    x, pieces, u, bias, exact = float_case(n, parts, k, h, w)
    got = winograd.conv3x3(pieces if len(parts) > 1 else pieces[0], u, bias)
    assert got.shape == exact.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert (got.double() - exact).abs().max().item() < 2e-5 * exact.abs().max().item()
    monkeypatch.setattr(winograd, "NATIVE", False)
    eager = winograd.conv3x3(pieces if len(parts) > 1 else pieces[0], u, bias)
    torch.testing.assert_close(got, eager, rtol=0, atol=2e-5 * exact.abs().max().item())
    monkeypatch.setattr(winograd, "NATIVE", True)
    no_bias = winograd.conv3x3(x, u)
    torch.testing.assert_close(no_bias + bias.view(1, -1, 1, 1), got, rtol=0, atol=2e-5 * exact.abs().max().item())


@built
def test_the_c_transforms_read_every_tile_from_where_it_is():
    """A one-hot input: each output pixel is one weight tap, so a tile read from the wrong place, a
    channel from the wrong part or a value written to the wrong output shows as a wrong number, not
    as a small error."""
    weight = torch.arange(2 * 3 * 9, dtype=torch.float32).view(2, 3, 3, 3)
    u = winograd.transform_weight(weight)
    for y, x_, ch in ((0, 0, 0), (5, 6, 1), (9, 3, 2), (4, 11, 0)):
        x = torch.zeros(1, 3, 10, 12)
        x[0, ch, y, x_] = 1.0
        got = winograd.conv3x3((x[:, :1], x[:, 1:]), u)
        torch.testing.assert_close(got, F.conv2d(x, weight, padding=1), rtol=0, atol=1e-4)  # the taps are 0..53


@built
def test_inference_takes_64_channel_layers_with_the_c_transforms(monkeypatch):
    """With them the transforms cost little enough for the decoders' 192→64 and 67→64 layers (from 32²
    maps, in inference and in training); without them 128 channels stay the threshold."""
    monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: False)
    x, weight = torch.zeros(1, 67, 32, 32), torch.zeros(64, 67, 3, 3)
    with torch.no_grad():
        assert winograd.applies(x, weight, 1, 1)
        assert winograd.applies(torch.zeros(1, 192, 32, 32), torch.zeros(64, 192, 3, 3), 1, 1)
        assert not winograd.applies(torch.zeros(1, 67, 16, 16), weight, 1, 1)  # F(2×2, 3×3) maps: eager rules
        assert not winograd.applies(torch.zeros(1, 48, 32, 32), torch.zeros(64, 48, 3, 3), 1, 1)
        monkeypatch.setattr(winograd, "NATIVE", False)
        assert not winograd.applies(x, weight, 1, 1)
        monkeypatch.setattr(winograd, "NATIVE", True)
    assert winograd.applies(x, weight.requires_grad_(), 1, 1, autograd=True)  # training too (TRAINED_NATIVE)
    monkeypatch.setattr(winograd, "TRAINED_NATIVE", False)
    assert not winograd.applies(x, weight, 1, 1, autograd=True)  # the transformed-domain backward: 128 channels


def test_ctsdg_native_0_in_the_environment_turns_them_off():
    """Winograd's kernels, and RAL's and the decoders' upsampling's too (one setting, ``cpu.native_wanted``)."""
    code = ("from ctsdg import cfa, generator, winograd; "
            "print(winograd.NATIVE, winograd.native(), cfa.NATIVE, generator.NATIVE_UPSAMPLE)")
    for value, expected in (("0", "False False False False"),
                            ("1", f"True {winograd_native.kernels() is not None} True True")):
        out = subprocess.run([sys.executable, "-c", code], env={"CTSDG_NATIVE": value, "PATH": ""},
                             capture_output=True, text=True, check=True).stdout.split()
        assert " ".join(out) == expected


# --- F(2×2, 3×3) in bf16 (bf16 inference) -------------------------------------------------------

bf16_kernels = pytest.mark.skipif(winograd_native.kernels() is None or not cpu.has_fast_bf16(),
                                  reason="needs the C kernels and oneDNN's bf16 kernels")


def bf16_error(got: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """Mean and largest absolute error of ``got`` over the mean absolute value of ``exact``."""
    err, scale = (got.double() - exact).abs(), exact.abs().mean().item()
    return err.mean().item() / scale, err.max().item() / scale


def bf16_case(n: int, parts: tuple[int, ...], k: int, h: int, w: int) -> tuple:
    """A bf16 layer by :func:`winograd.conv3x3` on an input given as ``parts`` (the first channels-last, the
    others float32, cast): (the parts, U, the bias, the exact output, the layer's (mean, largest) error, a
    direct bf16 convolution's), each error over the exact output's mean absolute value (:func:`bf16_error`)."""
    torch.manual_seed(0)
    c = sum(parts)
    x = torch.randn(n, c, h, w).relu().bfloat16()
    weight, bias = torch.randn(k, c, 3, 3) / (9 * c) ** 0.5, torch.randn(k) / 4
    pieces = split(x, parts, rest=lambda p: p.float())
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    u = winograd.transform_weight(weight, 2).bfloat16()
    got = winograd.conv3x3(pieces if len(parts) > 1 else pieces[0], u, bias)
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    direct = F.conv2d(x, weight.bfloat16(), bias.bfloat16(), padding=1)
    return pieces, u, bias, exact, bf16_error(got, exact), bf16_error(direct, exact)


@bf16_kernels
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("n,parts,k,h,w,scratch", [
    (1, (16,), 16, 16, 16, 1 << 22),  # whole vectors of 16 channels, one band
    (2, (67,), 64, 13, 10, 1 << 22),  # a partial last vector; odd sides
    (1, (5,), 3, 9, 17, 100),  # fewer channels than a vector, one tile row per band
    (2, (48, 80), 128, 20, 28, 4096),  # two parts (one float32, cast), several bands
])
def test_the_bf16_c_transforms_give_the_convolution(monkeypatch, n, parts, k, h, w, scratch, threads):
    """F(2×2, 3×3) with bf16 tiles, weights and products, in bands (the fused kernel off): within about
    twice a direct bf16 convolution's error of the exact convolution of the same bf16 input, and written
    where each output belongs."""
    monkeypatch.setattr(winograd, "SCRATCH_ELEMENTS_BF16", scratch)
    monkeypatch.setattr(winograd, "FUSED_BF16", False)
    pieces, u, bias, exact, (mean, largest), (direct_mean, direct_max) = bf16_case(n, parts, k, h, w)
    assert mean < 3 * direct_mean and largest < 4 * direct_max, (mean, direct_mean, largest, direct_max)


@bf16_kernels
def test_the_bf16_c_transforms_read_every_tile_from_where_it_is():
    """A one-hot input, as for float32: a misplaced tile, channel or output is a wrong number (the taps
    0..53 are exact in bf16, and their transforms within a few bf16 steps)."""
    weight = torch.arange(2 * 3 * 9, dtype=torch.float32).view(2, 3, 3, 3)
    u = winograd.transform_weight(weight, 2).bfloat16()
    for y, x_, ch in ((0, 0, 0), (5, 6, 1), (9, 3, 2), (4, 11, 0)):
        x = torch.zeros(1, 3, 10, 12, dtype=torch.bfloat16)
        x[0, ch, y, x_] = 1.0
        got = winograd.conv3x3((x[:, :1], x[:, 1:]), u)
        torch.testing.assert_close(got.float(), F.conv2d(x.float(), weight, padding=1), rtol=0, atol=0.6)


def test_bf16_rounding_in_the_kernels_is_torchs():
    """The output kernel rounds its float32 sums to bf16 as torch does (to nearest, ties to even; NaN stays
    NaN): with a zero weight each output is its channel's float32 bias, rounded there once."""
    if winograd_native.kernels() is None:
        pytest.skip("the C kernels are not built here")
    bias = torch.tensor([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -9, -(1 + 2 ** -8 + 2 ** -20), 3e38, 1e-40,
                         -2.5, float("inf"), float("nan")])
    u = winograd.transform_weight(torch.zeros(bias.numel(), 1, 3, 3), 2).bfloat16()
    got = winograd.conv3x3(torch.zeros(1, 1, 3, 2, dtype=torch.bfloat16), u, bias).float()
    expected = bias.bfloat16().float().view(1, -1, 1, 1).expand_as(got)
    assert torch.equal(got[:, :-1], expected[:, :-1]) and got[:, -1].isnan().all()
    assert expected[0, 1, 0, 0] == 1.0 and expected[0, 2, 0, 0] == 1 + 2 ** -6  # the ties went to even


@bf16_kernels
def test_bf16_inference_takes_f2_where_the_channel_products_outweigh_the_transforms(monkeypatch):
    """Under bf16 autocast in inference: F(2×2, 3×3) in bf16 for C·K ≥ 64·(C + K) on maps from 16²
    (Bi-GFF's 128→128, the decoders' 384→128 and wider), not for 64 output channels, smaller maps,
    autograd, ``BF16_NATIVE = False``, or a CPU with AMX or without AVX-512 (untimed there). Without the
    fused kernel (the next tests)."""
    monkeypatch.setattr(winograd, "_cpu_with_amx", lambda: False)
    monkeypatch.setattr(winograd, "FUSED_BF16", False)
    x = torch.zeros(1, 128, 16, 16, dtype=torch.bfloat16)
    weight = torch.zeros(128, 128, 3, 3)
    cache = winograd.WeightCache()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert winograd.applies(x, weight, 1, 1) and winograd.applies(x.float(), weight, 1, 1)
        assert winograd.applies(torch.zeros(1, 384, 64, 64), torch.zeros(128, 384, 3, 3), 1, 1)
        assert winograd.output_tile(torch.zeros(1, 128, 256, 256)) == 2
        u = cache.for_input(x, weight)
        assert u.shape == (16, 128, 128) and u.dtype == torch.bfloat16
        assert not winograd.applies(torch.zeros(1, 67, 256, 256), torch.zeros(64, 67, 3, 3), 1, 1)
        assert not winograd.applies(torch.zeros(1, 192, 128, 128), torch.zeros(64, 192, 3, 3), 1, 1)
        assert not winograd.applies(x[..., :8, :8], weight, 1, 1)
        assert not winograd.applies_5x5_stride2(torch.zeros(1, 64, 128, 128), torch.zeros(128, 64, 5, 5), 2, 2)
        monkeypatch.setattr(winograd, "BF16_NATIVE", False)
        assert not winograd.applies(x, weight, 1, 1)
        assert winograd.output_tile(torch.zeros(1, 128, 256, 256)) == 4
        monkeypatch.setattr(winograd, "BF16_NATIVE", True)
        monkeypatch.setattr(winograd, "_cpu_with_amx", lambda: True)
        assert not winograd.applies(x, weight, 1, 1)
        monkeypatch.setattr(winograd, "_cpu_with_amx", lambda: False)
        monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: True)  # untimed there too
        assert not winograd.applies(x, weight, 1, 1)
        monkeypatch.setattr(winograd, "_cpu_without_avx512", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.applies(x, weight, 1, 1)  # autograd on
    with torch.no_grad():  # float32: F(4×4, 3×3) as before
        assert cache.for_input(torch.zeros(1, 128, 32, 32), weight).dtype == torch.float32


fused_kernel = pytest.mark.skipif(not winograd_native.fused_available(torch.bfloat16),
                                  reason="the fused bf16 kernel needs a CPU with AVX512-BF16")


# Shapes for both fused kernels (n, input parts' channels, output channels, h, w)
FUSED_CASES = [
    (1, (64,), 64, 16, 16),  # whole vectors, whole blocks of tiles
    (2, (67,), 64, 13, 10),  # a partial last vector (in bf16 an odd count, paired with zero), odd sides, a partial block
    (1, (48, 80), 128, 20, 28),  # two parts (the second not channels-last, copied or cast), two 64-channel steps
    (1, (5,), 64, 3, 3),  # fewer channels than a vector, fewer tiles than a block
]


@fused_kernel
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("n,parts,k,h,w", FUSED_CASES)
def test_the_fused_bf16_kernel_gives_the_convolution(n, parts, k, h, w, threads):
    """F(2×2, 3×3) in bf16 in one pass: within about twice a direct bf16 convolution's error, and below the
    banded kernels' (its products are summed in float32 and not rounded to bf16)."""
    assert winograd.bf16_fused(sum(parts), k)
    pieces, u, bias, exact, (mean, largest), (direct_mean, direct_max) = bf16_case(n, parts, k, h, w)
    assert mean < 2.5 * direct_mean and largest < 4 * direct_max, (mean, direct_mean, largest, direct_max)
    th, tw = -(-h // 2), -(-w // 2)
    banded = torch.empty(n, 2 * th, 2 * tw, k, dtype=torch.bfloat16)
    winograd_native.fill(pieces, u, 1, banded, th, bias)
    assert mean < bf16_error(banded.permute(0, 3, 1, 2)[..., :h, :w], exact)[0]


@fused_kernel
def test_the_fused_bf16_kernel_reads_every_tile_from_where_it_is():
    """A one-hot input with small integer taps: every number on the way is exact in bf16 and float32, so
    the output is the tap itself, bit for bit, or a tile, channel or output went to the wrong place."""
    k_idx, c_idx, i_idx, j_idx = torch.meshgrid(*(torch.arange(s) for s in (64, 3, 3, 3)), indexing="ij")
    weight = ((k_idx + 5 * c_idx + 3 * i_idx + j_idx) % 16).float()
    u = winograd.transform_weight(weight, 2).bfloat16()
    for y, x_, ch in ((0, 0, 0), (5, 6, 1), (9, 3, 2), (4, 11, 0)):
        x = torch.zeros(2, 3, 10, 12, dtype=torch.bfloat16)
        x[1, ch, y, x_] = 1.0
        got = winograd.conv3x3((x[:, :1], x[:, 1:]), u)
        assert torch.equal(got.float(), F.conv2d(x.float(), weight, padding=1))


@fused_kernel
def test_bf16_inference_takes_64_channel_layers_with_the_fused_kernel(monkeypatch):
    """With the fused kernel the decoders' 64-output-channel layers (C·K ≥ 32·(C + K)) take bf16 Winograd
    too; wide weights (C·K > FUSED_MAX_WEIGHT) keep the bands, and K not a multiple of 64 never fuses."""
    monkeypatch.setattr(winograd, "_cpu_with_amx", lambda: False)
    x, weight = torch.zeros(1, 67, 256, 256), torch.zeros(64, 67, 3, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert winograd.applies(x, weight, 1, 1) and winograd.applies(x[:, :64, :128, :128], weight[:, :64], 1, 1)
        assert winograd.bf16_fused(384, 128) and not winograd.bf16_fused(768, 256) and not winograd.bf16_fused(64, 48)
        assert not winograd.applies(torch.zeros(1, 48, 64, 64), torch.zeros(64, 48, 3, 3), 1, 1)  # 27 < 32
        monkeypatch.setattr(winograd, "FUSED_BF16", False)
        assert not winograd.applies(x, weight, 1, 1)
        monkeypatch.setattr(winograd, "FUSED_BF16", True)
        monkeypatch.setattr(winograd_native, "fused_available", lambda dtype: False)
        assert not winograd.applies(x, weight, 1, 1)


def _runs_here(isa: str) -> bool:
    """Whether this CPU runs the fused float32 kernel for ``isa``: AVX-512's where fused_isa picks it, AVX2's (in the
    16-lane build, "avx2", and in the 8-lane AVX2 build, "avx2, 8 lanes") on any CPU with AVX2 (an AVX-512 CPU runs
    them too, so all are tested there)."""
    if winograd_native.fused_isa(torch.float32) is None:
        return False
    if isa == "avx512":
        return winograd_native.fused_isa(torch.float32) == "avx512"
    return torch.cpu._is_avx2_supported() and (isa == "avx2" or winograd_native.load(AVX2_BUILD) is not None)


# Each fused float32 kernel, run here in place of the one fused_isa picks
FLOAT_ISAS = [pytest.param(isa, marks=pytest.mark.skipif(not _runs_here(isa), reason=f"the fused float32 kernel for "
                                                         f"{isa} does not run here (a CPU without it, or not built)"))
              for isa in ("avx512", "avx2", "avx2, 8 lanes")]


class _NamesAsked:
    """The compiled library, noting the names of the kernels asked of it."""

    def __init__(self, lib):
        self.lib, self.asked = lib, []

    def __getattr__(self, name):
        self.asked.append(name)
        return getattr(self.lib, name)


@pytest.fixture
def float_isa(request, monkeypatch):
    """The fused float32 kernel to test (a parameter of FLOAT_ISAS), made the one :func:`fused_isa` picks; its
    instruction set."""
    if request.param == "avx2, 8 lanes":
        use_the_avx2_build(monkeypatch)
        return "avx2"
    real = winograd_native.fused_isa
    monkeypatch.setattr(winograd_native, "fused_isa", lambda dtype: request.param if dtype == torch.float32 else real(dtype))
    return request.param


@pytest.mark.parametrize("float_isa", FLOAT_ISAS, indirect=True)
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("n,parts,k,h,w", FUSED_CASES)
def test_the_fused_float32_kernel_gives_the_convolution(monkeypatch, n, parts, k, h, w, threads, float_isa):
    """F(4×4, 3×3) in float32 in one pass, with AVX-512 and with AVX2: within Winograd's own error of the exact
    convolution, and the banded kernels' output within float rounding."""
    assert winograd.float_fused(sum(parts), k)
    _, pieces, u, bias, exact = float_case(n, parts, k, h, w)
    fused_calls = []
    real = winograd_native.fused
    monkeypatch.setattr(winograd_native, "fused", lambda *a: fused_calls.append(1) or real(*a))
    lib = _NamesAsked(winograd_native.kernels())
    monkeypatch.setattr(winograd_native, "kernels", lambda: lib)
    got = winograd.conv3x3(pieces if len(parts) > 1 else pieces[0], u, bias)
    assert fused_calls and got.shape == exact.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert winograd_native.fused_name(4, "float", float_isa) in lib.asked
    assert (got.double() - exact).abs().max().item() < 2e-5 * exact.abs().max().item()
    monkeypatch.setattr(winograd, "FUSED_FLOAT", False)
    banded = winograd.conv3x3(pieces if len(parts) > 1 else pieces[0], u, bias)
    assert len(fused_calls) == 1
    torch.testing.assert_close(got, banded, rtol=0, atol=2e-5 * exact.abs().max().item())


@pytest.mark.parametrize("float_isa", FLOAT_ISAS, indirect=True)
def test_the_fused_float32_kernel_reads_every_tile_from_where_it_is(float_isa):
    """A one-hot input: each output is one weight tap, so a misplaced tile, channel or output is a wrong
    number, not a small error (with AVX-512 and with AVX2)."""
    assert winograd.float_fused(3, 64)
    weight = torch.arange(64 * 3 * 9, dtype=torch.float32).view(64, 3, 3, 3) % 53
    u = winograd.transform_weight(weight)
    for y, x_, ch in ((0, 0, 0), (5, 6, 1), (9, 3, 2), (4, 11, 0)):
        x = torch.zeros(2, 3, 10, 12)
        x[1, ch, y, x_] = 1.0
        got = winograd.conv3x3((x[:, :1], x[:, 1:]), u)
        torch.testing.assert_close(got, F.conv2d(x, weight, padding=1), rtol=0, atol=1e-4)


def test_fused_float32_takes_64_channel_steps_of_small_weights(monkeypatch):
    """The fused float32 kernel: K a multiple of 64 and C·K ≤ FUSED_MAX_WEIGHT_FLOAT (wider weights keep the
    bands and torch.bmm: 768→256 at 32² gained nothing, and a 256² forward lost 3.5 % with them fused),
    ``FUSED_FLOAT``, and a CPU with AVX-512."""
    monkeypatch.setattr(winograd_native, "fused_available", lambda dtype: True)
    assert winograd.float_fused(128, 128) and winograd.float_fused(67, 64) and winograd.float_fused(384, 128)
    assert not winograd.float_fused(768, 256) and not winograd.float_fused(64, 3) and not winograd.float_fused(64, 96)
    monkeypatch.setattr(winograd, "FUSED_FLOAT", False)
    assert not winograd.float_fused(128, 128)
    monkeypatch.setattr(winograd, "FUSED_FLOAT", True)
    monkeypatch.setattr(winograd_native, "fused_available", lambda dtype: False)
    assert not winograd.float_fused(128, 128)


@built
@pytest.mark.parametrize("d,h,w", [(2, 64, 64), (4, 128, 96), (2, 66, 64), (8, 64, 64)])
def test_dilated_layers_by_phases_give_the_dilated_convolution(monkeypatch, d, h, w):
    """MSFA's dilated 3×3 layers in fp32 inference: a 3×3 convolution on each of the input's d² phases
    where the phases take F(4×4, 3×3) (sides that are multiples of d, phases from 32²), else nn.Conv2d's
    own dilated convolution; the same numbers either way, within Winograd's rounding."""
    torch.manual_seed(0)
    conv = winograd.Conv2d(64, 64, 3, padding=d, dilation=d)
    plain = torch.nn.Conv2d(64, 64, 3, padding=d, dilation=d)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 64, h, w)
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        got, want = conv(x), plain(x)
    by_phases = h % d == 0 and w % d == 0 and (h // d) * (w // d) >= winograd.MIN_PIXELS
    assert len(calls) == (d * d if by_phases else 0)
    assert all(shape[-2:] == (h // d, w // d) for shape in calls)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    calls.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # not in bf16
        conv(x)
    x.requires_grad_()
    conv(x).sum().backward()  # nor with autograd
    assert not calls and x.grad is not None


def test_torchs_avx2_code_picks_the_avx2_builds_and_fused_kernel():
    """Where torch runs its AVX2 code (a CPU without AVX-512, or ``ATEN_CPU_CAPABILITY=avx2``) Winograd's and RAL's
    8-lane AVX2 builds are loaded, the fused float32 kernel is AVX2's and bf16 has none; with torch's AVX-512 code,
    the 16-lane builds and AVX-512's fused kernels."""
    if winograd_native.load(AVX2_BUILD) is None or not torch.cpu._is_avx2_supported():
        pytest.skip("needs the AVX2 builds, on an x86-64 CPU with AVX2")
    code = ("import torch; from ctsdg import cfa_native, winograd_native as w; "
            "print(torch.backends.cpu.get_cpu_capability(), w.fused_isa(torch.float32), w.fused_isa(torch.bfloat16), "
            "torch.cpu._is_avx512_bf16_supported(), *(m.kernels()._name.split('/')[-1].split('.')[0] "
            "for m in (w, cfa_native)))")
    for env in ({"ATEN_CPU_CAPABILITY": "avx2"}, {}):
        capability, isa, bf16_isa, bf16, *names = subprocess.run(
            [sys.executable, "-c", code], env={"PATH": "", **env}, capture_output=True, text=True, check=True).stdout.split()
        assert capability == "AVX2" or not env
        if capability == "AVX2":
            assert (isa, bf16_isa) == ("avx2", "None")
            assert names == ["_winograd_native_avx2", "_cfa_native_avx2"]
        else:
            assert (isa, bf16_isa) == ("avx512", "avx512" if bf16 == "True" else "None")
            assert names == ["_winograd_native", "_cfa_native"]
