"""The decoders' bilinear ×2 and mask product in C (ctsdg/upsample_native.py, src/ctsdg/_upsample_native.c) against
torch's F.interpolate and the product it replaces; the whole generator with it in tests/test_speed_parity.py."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from ctsdg import upsample_native

built = pytest.mark.skipif(upsample_native.kernels() is None,
                           reason="the C kernel is not built here (no C compiler when the package was installed)")
CL = torch.channels_last


def torch_path(x: torch.Tensor, known: torch.Tensor | None) -> torch.Tensor:
    """What the kernel replaces: torch's bilinear ×2 times the mask's nearest ×2."""
    up = F.interpolate(x, scale_factor=2, mode="bilinear")
    return up if known is None else up * F.interpolate(known, scale_factor=2, mode="nearest").to(x.dtype)


def run_kernel(x: torch.Tensor, known: torch.Tensor | None, extra: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's output written into the first channels of a wider channels-last map filled with 7 (the
    decoder's concatenation); returns (those channels, the others)."""
    n, c, h, w = x.shape
    both = torch.full((n, c + extra, 2 * h, 2 * w), 7.0, dtype=x.dtype).contiguous(memory_format=CL)
    upsample_native.upsample2x_masked(x, known, both[:, :c])
    return both[:, :c], both[:, c:]


def test_the_kernel_is_built_where_there_is_a_c_compiler():
    """setup.py builds it as an optional extension: a build that failed on a machine with a compiler would
    otherwise only show as a slower forward."""
    x = torch.ones(1, 2, 3, 3).contiguous(memory_format=CL)
    out = torch.ones(1, 2, 6, 6).contiguous(memory_format=CL)
    if shutil.which("cc") or shutil.which("gcc"):
        assert upsample_native.available(x, out)
        assert upsample_native.available(x.bfloat16(), out.bfloat16())
    else:
        assert not upsample_native.available(x, out)


@built
def test_available_only_for_what_the_kernel_reads():
    """CPU, one dtype of float32 or bf16, channels contiguous in both."""
    x = torch.ones(1, 2, 3, 3).contiguous(memory_format=CL)
    out = torch.ones(1, 2, 6, 6).contiguous(memory_format=CL)
    assert not upsample_native.available(x.contiguous(), out)  # channels not contiguous
    assert not upsample_native.available(x, out.contiguous())
    assert not upsample_native.available(x.double(), out.double())
    assert not upsample_native.available(x, out.bfloat16())
    assert not upsample_native.available(x.to("meta"), out.to("meta"))


# (batch, channels, height, width): whole vectors of channels; a channel count between vectors (the last one
# overlaps the one before); fewer channels than a vector; rows and columns of one pixel; two images
SHAPES = [(1, 64, 16, 12), (2, 20, 9, 7), (1, 5, 6, 4), (1, 16, 1, 5), (2, 32, 4, 1)]


@built
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_kernel_gives_torchs_upsampling_times_the_mask(threads, dtype, shape):
    """torch's weights and edges: float32 within the last bit or two of torch's (the sums are grouped along y
    first), bf16 rounded from float32 as torch rounds; the channels beyond the slice are left alone."""
    n, c, h, w = shape
    x = torch.randn(shape).to(dtype).contiguous(memory_format=CL)
    known = (torch.rand(n, 1, h, w) > 0.4).float()
    got, rest = run_kernel(x, known)
    want = torch_path(x, known)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:  # within one bf16 step of torch's where the float32 sums round differently, the same almost everywhere
        torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=1e-6)
        assert (got == want).float().mean() > 0.99
    assert (got[F.interpolate(known, scale_factor=2).expand_as(got) == 0] == 0).all()
    assert (rest == 7).all()


@built
def test_without_a_mask_it_is_torchs_upsampling():
    x = torch.randn(2, 24, 10, 14).contiguous(memory_format=CL)
    got, _ = run_kernel(x, None)
    torch.testing.assert_close(got, torch_path(x, None), rtol=1e-6, atol=1e-6)


@built
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_holes_of_every_width_read_every_column_they_need(threads):
    """The kernel skips blending input columns that no unmasked output pixel reads (a pixel reads its column and the
    two beside it): masks with holes of one, two and three columns and single known pixels inside holes, so that a
    column skipped wrongly would leave the previous row's blend in the output."""
    x = torch.randn(1, 16, 12, 24).contiguous(memory_format=CL)
    pattern = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1], dtype=torch.float32)
    known = pattern.roll(3).repeat(12, 1)
    known[::2] = pattern  # rows of two patterns, so that neighbouring rows of blends differ where they are kept
    known = known.view(1, 1, 12, 24)
    got, _ = run_kernel(x, known)
    torch.testing.assert_close(got, torch_path(x, known), rtol=1e-6, atol=1e-6)


@built
def test_wrong_operands_are_refused_with_what_was_given():
    x = torch.randn(1, 4, 5, 5).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match=r"out \(N, C, 2H, 2W\)"):
        upsample_native.upsample2x_masked(x, None, torch.empty(1, 4, 10, 9).contiguous(memory_format=CL))
    with pytest.raises(ValueError, match="known must be float32"):
        upsample_native.upsample2x_masked(x, torch.ones(1, 1, 5, 5, dtype=torch.bfloat16),
                                          torch.empty(1, 4, 10, 10).contiguous(memory_format=CL))
