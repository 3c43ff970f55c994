"""Winograd F(4×4, 3×3) convolution for the wide 3×3 layers in fp32 on CPU (issue 7): the generator's
deep layers in inference, and the frozen VGG16 of the training losses (forward and input gradient).

A 3×3 convolution (stride 1, padding 1) computed on 6×6 input tiles that overlap by 2 gives a 4×4
output tile per tile with 36 multiplications per (input, output) channel pair instead of 144
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

summed over input channels, so the ⊙ becomes 36 channel products (tiles, C) × (C, K). Exact in real
arithmetic; in float32 its rounding error is 4–6× that of a direct convolution (about 5e-5 on
outputs of magnitude 7, `bench/winograd_probe.py`), and the generator's output stays within 1e-6 of
the authors' computation at full width.

It only pays where the channel products dominate the cost of the transforms, which move every
input and output value through memory twice more: on a 2-core CPU it halves oneDNN's time for the
decoder's 768→256 and 1024→512 layers, gains 10–15 % at 128→128, and loses for 64 output channels
(`bench/winograd_probe.py`, docs/speed.md). The transformed weight is 4× the weight and is kept per
layer (:class:`WeightCache`), which is wasted on maps too small to gain. So :func:`applies` takes it
for at least ``MIN_CHANNELS`` input and output channels on maps of at least ``MIN_PIXELS`` pixels:
in the paper-size generator, Bi-GFF's gates and the decoders' 3×3 layers from 32² up (about 7 % of a
forward at 512², 10 % at 256²). Its scratch is bounded by working through bands of tile rows
(``SCRATCH_ELEMENTS``). ``ENABLED = False`` turns it off.

In training, :func:`conv3x3_autograd` differentiates it: the input's gradient is a 3×3 convolution
too, so it runs Winograd with the flipped weight. It is used where the weight is frozen (VGG16's
conv2_2 and conv3_x in the perceptual and style losses, ``losses.VGG16Pools``), since a trained
weight would have to be transformed twice per step, which costs about what it saves there.
"""

from __future__ import annotations

import functools

import torch

# Set to False to run every convolution with the backend's own algorithm (benchmarks, debugging).
ENABLED = True
MIN_CHANNELS = 128  # input and output channels; at 64 output channels Winograd is slower here
MIN_PIXELS = 32 * 32  # smaller maps gain a few ms for a transformed weight of up to 75 MB
# Transformed tiles held at once (per band of tile rows), in elements: 64 MiB of float32. Smaller bands
# are slower (128→128 at 512²: 292 ms with 2^24, 411 ms with 2^22, 512 ms with 2^20, against 339 ms direct).
SCRATCH_ELEMENTS = 1 << 24

# F(4×4, 3×3) with interpolation points 0, ±1, ±2, ∞
_B_T = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_A_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


@functools.cache
def _matrices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """kron(Bᵀ, Bᵀ) (36, 36) and kron(Aᵀ, Aᵀ) (16, 36): the 2-D transforms of a flattened tile."""
    b_t = torch.tensor(_B_T, dtype=torch.float64)
    a_t = torch.tensor(_A_T, dtype=torch.float64)
    return torch.kron(b_t, b_t).float().to(device), torch.kron(a_t, a_t).float().to(device)


def applies(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, dilation: int = 1,
            autograd: bool = False) -> bool:
    """Whether :func:`conv3x3` should replace ``F.conv2d(x, weight, stride=..., padding=...)`` here:
    fp32 on CPU without autocast, and without autograd unless ``autograd`` (then the caller runs
    :func:`conv3x3_autograd`); not while a graph is traced, exported or compiled (it must hold any
    input size, and the bands here are a loop over the size); a 3×3 kernel, stride 1, padding 1, no
    dilation; a layer wide enough (``MIN_CHANNELS``) on a map large enough (``MIN_PIXELS``) to gain."""
    return (ENABLED and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and (autograd or not torch.is_grad_enabled()) and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling()
            and tuple(weight.shape[-2:]) == (3, 3) and stride == 1 and padding == 1 and dilation == 1
            and weight.shape[1] == x.shape[1] and min(weight.shape[0], weight.shape[1]) >= MIN_CHANNELS
            and x.shape[-2] * x.shape[-1] >= MIN_PIXELS)


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> U (36, C, K) = G g Gᵀ for every (output, input) channel pair, computed in float64
    a few output channels at a time (the float64 intermediates of a whole 1024→512 layer would take
    several hundred MB, which the process would keep)."""
    k, c = weight.shape[:2]
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.empty(6, 6, c, k, dtype=torch.float32, device=weight.device)
    step = max(1, (1 << 20) // (36 * c))
    for k0 in range(0, k, step):
        u[:, :, :, k0:k0 + step] = torch.einsum("ai,kcij,bj->abck", g, weight[k0:k0 + step].detach().double(), g)
    return u.view(36, c, k)


class WeightCache:
    """U for one layer, recomputed when any source weight changes (in-place update, new tensor or
    new storage): keyed by each source's identity, storage and version counter. It holds a reference
    to the sources, so an identity cannot be reused while it is cached."""

    def __init__(self):
        self._key: tuple | None = None
        self._sources: tuple[torch.Tensor, ...] = ()
        self._u: torch.Tensor | None = None

    def get(self, weight: torch.Tensor, *sources: torch.Tensor, flipped: bool = False) -> torch.Tensor:
        """U of ``weight`` (K, C, 3, 3), which is built from ``sources`` (default: ``weight`` itself;
        Bi-GFF's fused gate weight is a concatenation, rebuilt on every call). ``flipped``: U of the
        weight of the input-gradient convolution instead (kernel flipped, channels swapped)."""
        sources = sources or (weight,)
        key = tuple((id(t), t.data_ptr(), t._version) for t in sources)
        if key != self._key:
            self._u = transform_weight(weight.flip(2, 3).transpose(0, 1) if flipped else weight)
            self._key, self._sources = key, sources
        return self._u


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """3×3 convolution, stride 1, padding 1, of x (N, C, H, W) with the transformed weight ``u``
    (:func:`transform_weight`). Returns (N, K, H, W) in channels-last memory layout.

    Works through bands of tile rows, so that its scratch (the transformed tiles, 2.25× their input
    and output) stays within ``SCRATCH_ELEMENTS`` whatever the image size."""
    n, c, h, w = x.shape
    k = u.shape[2]
    th, tw = -(-h // 4), -(-w // 4)  # 4×4 output tiles
    in_transform, out_transform = _matrices(x.device)
    x_last = x.permute(0, 2, 3, 1)  # (N, H, W, C) view
    result = torch.empty(n, k, 4 * th, 4 * tw, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    out = result.permute(0, 2, 3, 1)  # (N, H, W, K), contiguous
    band = max(1, min(th, SCRATCH_ELEMENTS // (36 * n * tw * max(c, k))))  # tile rows per band
    for t0 in range(0, th, band):
        t1 = min(th, t0 + band)
        p = n * (t1 - t0) * tw
        # the band's input rows 4·t0 - 1 .. 4·t1, zero-padded, channels last
        xb = x.new_zeros(n, 4 * (t1 - t0) + 2, 4 * tw + 2, c)
        r0, r1 = max(0, 4 * t0 - 1), min(h, 4 * t1 + 1)
        xb[:, r0 - (4 * t0 - 1):r1 - (4 * t0 - 1), 1:w + 1] = x_last[:, r0:r1]
        sn, sh, sw, sc = xb.stride()
        # its overlapping 6×6 tiles, each tile's 36 values as one column
        tiles = xb.as_strided((6, 6, n, t1 - t0, tw, c), (sh, sw, sn, 4 * sh, 4 * sw, sc))
        v = torch.mm(in_transform, tiles.reshape(36, -1)).view(36, p, c)  # Bᵀ d B
        del xb, tiles
        m = torch.bmm(v, u)  # (36, tiles, K): the channel sums of U ⊙ V, one product per tile position
        del v
        y = torch.mm(out_transform, m.view(36, -1)).view(4, 4, n, t1 - t0, tw, k)  # Aᵀ m A
        del m
        out[:, 4 * t0:4 * t1].view(n, t1 - t0, 4, tw, 4, k).copy_(y.permute(2, 3, 0, 4, 1, 5))
    if bias is not None:
        out += bias
    if 4 * th != h or 4 * tw != w:
        return result[:, :, :h, :w].contiguous(memory_format=torch.channels_last)
    return result  # not a view: autograd lets in-place operations follow (conv3x3_autograd)


class _Conv3x3(torch.autograd.Function):
    """conv3x3 with autograd: the input's gradient is itself a 3×3 convolution (of the output's
    gradient with the weight flipped and its channels swapped), so it runs Winograd too; the weight's
    and bias's gradients, where needed, come from the backend's own convolution backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                cache: WeightCache, cache_flipped: WeightCache) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.cache_flipped, ctx.has_bias = cache_flipped, bias is not None
        return conv3x3(x, cache.get(weight), bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = conv3x3(grad, ctx.cache_flipped.get(weight, flipped=True))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [1, 1], [1, 1], False,
                [0, 0], 1, [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_weight, grad_bias, None, None


def conv3x3_autograd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     cache: WeightCache, cache_flipped: WeightCache) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` by Winograd, differentiable; ``cache`` keeps the
    transformed weight, ``cache_flipped`` the transformed weight of the input-gradient convolution.
    Pays where the weight stays fixed (the frozen VGG16 of the perceptual and style losses): a
    trained weight changes every step, and transforming it twice per step costs about what
    Winograd saves on the generator's layers (docs/speed.md)."""
    return _Conv3x3.apply(x, weight, bias, cache, cache_flipped)
