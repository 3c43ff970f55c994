"""Winograd convolution for the wide layers on CPU (issue 7): F(4×4, 3×3) in fp32 for the generator's
deep 3×3 layers (inference and training) and the frozen VGG16 of the training losses, F(3×3, 4×4) for
the discriminator's stride-1 4×4 layer in training, F(2×2, 3×3) in bf16 for bf16 inference.

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
layer (:class:`WeightCache`). So :func:`applies` takes it for at least ``MIN_CHANNELS`` input and
output channels on maps of at least ``MIN_PIXELS`` pixels: in the paper-size generator, Bi-GFF's
gates and the decoders' 3×3 layers from 32² up (about 7 % of a forward at 512², 10 % at 256²). On
16² maps (``MIN_PIXELS_SMALL``: the decoders' 1024→512 layers at 16² for a 256² input) inference takes
F(2×2, 3×3) instead (:func:`output_tile`): 4×4 tiles, 16 multiplications per channel pair and 2×2
output tile instead of 36, and a transformed weight 16/9 of the weight (34 MB for 1024→512, against
F(4×4, 3×3)'s 75 MB): alone, 1024→512 at 16² takes 3.1 against oneDNN's 6.2 ms. At 8² it still
halves the layer alone, but inside a forward, where the weights come from memory rather than the
cache, the larger weight ate the gain (docs/speed.md). Its scratch is bounded by working through bands of tile rows
(``SCRATCH_ELEMENTS``). ``ENABLED = False`` turns it off.

Where the package was built with a C compiler, F(4×4, 3×3)'s gather and transforms run in C
(winograd_native.py, :func:`native`): cheap enough that inference then also takes layers from
``MIN_CHANNELS_NATIVE`` (64) channels, and the encoders' 5×5 stride-2 layers by their phases
(``PHASES_NATIVE``). :class:`Conv2d` brings plain 3×3 layers (``fusion_layer2``, MSFA's) to it. On a CPU
with AVX-512, layers with 64·j output channels and a small weight take a fused C kernel that keeps the
transformed tiles and their products in the cache (:func:`float_fused`). Trained layers take the C kernels
from 64 channels too (``TRAINED_NATIVE``: the forward and the input's gradient by them, the weight's
gradient from oneDNN). And bf16 inference (under bf16 autocast, :func:`bf16_inference`) takes F(2×2, 3×3)
with bf16 tiles, weights and products for its wide layers, fused where the CPU has AVX512-BF16
(:func:`bf16_fused`): F(2×2, 3×3)'s transforms only add and subtract, so bf16 rounds them about as well
as a direct convolution, where F(4×4, 3×3)'s would lose eight times as much.

In training, two autograd forms. :func:`conv3x3_autograd` is for a frozen weight (VGG16's conv2_2
and conv3_x in the perceptual and style losses, ``losses.VGG16Pools``): both its transformed weight
and that of the flipped weight (the input's gradient is a 3×3 convolution too) are cached.
:func:`conv3x3_trained` and :func:`conv4x4` are for weights that change on every step (the
generator's decoder layers and Bi-GFF's gates; the discriminator's stride-1 4×4 layer, by F(3×3, 4×4)
on the same 6×6 tiles): the weight is transformed once per call and the backward runs the forward's
transforms transposed, so the input's and the weight's gradients also take 36 products per tile.
On x86 CPUs without AVX-512, where oneDNN's backward is slow, trained layers take it from 64 channels
(``MIN_CHANNELS_TRAINED_AVX2``, :func:`min_channels`).

On those CPUs oneDNN's direct convolution runs at about half its AVX-512 rate, so inference takes
Winograd in two more places (measured with the instruction sets limited to AVX2 on an AVX-512 CPU,
docs/speed_history.md, "A tenth look"): the decoders' 192→64 layers (``INFERENCE_BALANCE_AVX2``,
:func:`wide_enough`), and the encoders' 5×5 stride-2 layers, as a 3×3 convolution over the input's
four phases (:func:`conv5x5_stride2`, :func:`phase_weight`, ``MIN_CHANNELS_PHASES_AVX2``).
"""

from __future__ import annotations

import functools

import torch

from . import cpu, winograd_native

# Set to False to run every convolution with the backend's own algorithm (benchmarks, debugging).
ENABLED = True
MIN_CHANNELS = 128  # input and output channels; at 64 output channels Winograd is slower here
# A trained weight (forward, input and weight gradients) on an x86 CPU without AVX-512: oneDNN's
# backward is slow there (128→128 at 256², batch 2, forward + both gradients: 1.9 s, against 0.54 s on
# a Zen 4 with AVX-512), and Winograd halves the 64-output-channel layers too (66→64 at 256²: 391 →
# 191 ms; docs/speed_history.md, "A second machine").
MIN_CHANNELS_TRAINED_AVX2 = 64
# Inference on an x86 CPU without AVX-512, where oneDNN's direct convolution runs at about half its
# AVX-512 rate: a layer of at least MIN_CHANNELS_TRAINED_AVX2 input and output channels also takes it
# where its channel products (C·K per tile position) outweigh its transforms (C + K) by this much, C·K ≥
# 48·(C + K): the decoders' 192→64 layers. A 256² forward 2.0–2.7 % faster and a 512² one 1.5 % with the
# instruction sets limited to AVX2 on an AVX-512 Xeon; with AVX-512 the same layers gained nothing
# (1.001), so there MIN_CHANNELS alone decides (docs/speed_history.md, "A tenth look").
INFERENCE_BALANCE_AVX2 = 48
# Inference on an AVX2-only CPU: the encoders' 5×5 stride-2 layers of at least this many input and output
# channels run as a 3×3 convolution over the input's four phases by Winograd (conv5x5_stride2). Alone,
# 64→128 from 128²: 10.8 → 8.8 ms, 128→256 from 64²: 10.1 → 5.5 ms; a 256² forward 2.9 % faster, a 512²
# one 1.2 %, with the instruction sets limited to AVX2. With AVX-512, 128→256 alone gains too (5.2 → 3.5
# ms) but the forward did not (1.000 and 1.002 at 256², 1.007 and 1.027 at 512²) and the transformed
# weights would hold 38 MB more, so there the encoders stay direct (docs/speed_history.md, "A tenth look").
MIN_CHANNELS_PHASES_AVX2 = 64
MIN_PIXELS = 32 * 32  # F(4×4, 3×3) from here; in training, no Winograd below
# Inference on maps from here up to MIN_PIXELS takes F(2×2, 3×3); on 8² it gained nothing in a forward.
MIN_PIXELS_SMALL = 16 * 16
# Transformed tiles held at once (per band of tile rows), in elements: 8 MiB of float32, so that a band
# stays in the cache between its transform, its products and its inverse transform (128→128 at 256²:
# 41.8 ms with 2^24, 32.8 with 2^22, 30.6 with 2^21; at 512²: 178, 138, 129 ms; bench/winograd_probe.py
# --bands). With the freed memory kept (ctsdg/cpu.py); with glibc's default allocator every band
# page-faulted fresh memory in, and 2^24 was the fastest. A band still holds at least as many values
# as the layer's weight (_band_rows), which it reads once per band.
SCRATCH_ELEMENTS = 1 << 21
# On 2 threads, F(4×4, 3×3)'s input transform as two half products in one batched call (_input_transform),
# where it has at least SPLIT_MIN_COLUMNS columns (tiles × channels): one product over the halves, per round,
# 0.86-0.92 at 4096 and 8192 columns, 1.02-1.13 from 16 384 to 65 536 (bench/winograd_probe.py --transform,
# three runs; docs/speed_history.md, "A twelfth look").
SPLIT_INPUT_TRANSFORM = True
SPLIT_MIN_COLUMNS = 1 << 14
# F(4×4, 3×3)'s gather and transforms in C where the package was built with them (winograd_native.py;
# CTSDG_NATIVE=0 in the environment turns them off): inference and the forward of trained layers. Its
# band (values per band, as SCRATCH_ELEMENTS) is half the eager one: Bi-GFF's gates alone at 256² 47 ms with
# 2^20, 61 with 2^21 (a first version; in the forward 2^18 to 2^21 were within the noise: docs/speed_history.md,
# "A fifteenth look"). With them the transforms cost little enough that inference takes Winograd from
# MIN_CHANNELS_NATIVE input and output channels on maps of at least MIN_PIXELS (the decoders' 192→64 and
# 67→64 layers, fusion_layer2, MSFA's): alone, on a Zen 4, 192→64 at 128² took 7.6 ms against oneDNN's
# 16.6, 67→64 at 256² 13.0 against 22.4. PHASES_NATIVE: the encoders' 5×5 stride-2 layers by their phases
# (conv5x5_stride2) with them, as on AVX2-only CPUs (a 256² forward 1.8 % faster per round, 20 rounds).
NATIVE = cpu.native_wanted()
SCRATCH_ELEMENTS_NATIVE = 1 << 20
MIN_CHANNELS_NATIVE = 64
PHASES_NATIVE = True
# bf16 inference (under bf16 autocast) with the C transforms: F(2×2, 3×3) with bf16 tiles, weights and products
# (bf16 channel products run about 2.5× as fast as float32 ones on a Zen 4), where C·K ≥ BALANCE_BF16·(C + K)
# on maps of at least MIN_PIXELS_BF16: Bi-GFF's gates and the decoders' 384→128, 768→256 and 1024→512 (at 16²)
# layers at a 256² input. Alone, on a Zen 4, 128→128 at 256² took 30-36 against oneDNN's 42 ms, 768→256 at 32² 6.1
# against 8.6, 1024→512 at 16² 3.4-3.8 against 8.0; layers with 64 output channels lost (67→64 at 256²: 13.2
# against 11.4 ms; F(2×2, 3×3)'s transforms quadruple the values moved). A 256² bf16 forward 1.109× as fast per
# round (10 rounds); BALANCE_BF16 40 or 96, MIN_PIXELS_BF16 8², bands of 2^22 to 2^25 values and the encoders'
# 5×5 layers by phases were within the noise or slower. F(2×2, 3×3)'s transforms add and subtract only, so a
# layer's mean error is about twice a direct bf16 convolution's (0.46 % against 0.24 % of the mean output);
# F(4×4, 3×3)'s, with factors up to 5 and 1/24, made it eight times (2.0 %), so bf16 never takes it
# (docs/speed_history.md, "A sixteenth look").
BF16_NATIVE = True
BALANCE_BF16 = 64
MIN_PIXELS_BF16 = MIN_PIXELS_SMALL
SCRATCH_ELEMENTS_BF16 = 1 << 22
# On a CPU with AVX512-BF16, layers with K a multiple of 64 and C·K ≤ FUSED_MAX_WEIGHT take the fused kernel
# (winograd_native.fused: the tiles are transformed, multiplied with bf16 pair dot products summed in float32,
# and transformed back block by block, in cache), and with it Winograd from C·K ≥ BALANCE_BF16_FUSED·(C + K):
# the decoders' 64-output-channel layers too. Alone, on a Zen 4, against oneDNN's direct bf16 convolution:
# 67→64 at 256² 7.6 against 11.4 ms, 192→64 at 128² 4.8 against 8.2, 64→64 at 128² 1.9 against 2.7, 128→128
# at 256² 23.9 against 42.4, 384→128 at 64² 4.7 against 8.1. It reads the whole transformed weight once per
# block of tiles, so wider layers keep the bands and torch.bmm (1024→512 at 16²: fused 9.1, bands 3.5 ms).
# Summing the products in float32 also lowers the error (0.38 % of the mean output against 0.45 %).
FUSED_BF16 = True
BALANCE_BF16_FUSED = 32
FUSED_MAX_WEIGHT = 1 << 16
FUSED_FLOAT = True
FUSED_MAX_WEIGHT_FLOAT = 1 << 16
# Trained 3×3 layers (conv3x3_trained) with the C kernels: the forward by them (fused where it can), the input's
# gradient as the 3×3 convolution of the output's gradient with the flipped weight, by them too, and the weight's
# gradient from oneDNN's convolution backward; from MIN_CHANNELS_TRAINED_NATIVE channels. At batch 2 on a Zen 4,
# forward and backward: 192→64 at 128² 115 ms with oneDNN, 79 this way; 67→64 at 256² 161 → 108; 128→128 at 256²
# 540 → 323 (the transformed-domain backward, below, took 409).
TRAINED_NATIVE = True
MIN_CHANNELS_TRAINED_NATIVE = 64
# MSFA's dilated 3×3 layers in fp32 inference as 3×3 layers on the input's phases (dilated_by_phases).
DILATED_BY_PHASES = True

# The interpolation points of both algorithms: 0, ±1, ±2 and ∞, so both work on 6×6 tiles.
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0)


@functools.cache
def toom_cook(m: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bᵀ (n, n), G (n, r), Aᵀ (m, n) in float64 for F(m, r), n = m + r - 1 ≤ 6, with y = Aᵀ[(G g) ⊙ (Bᵀ d)]
    the correlation y_i = Σ_k d_{i+k} g_k of n inputs with r taps.

    Derivation: a linear convolution c = g * h (h of m taps) is evaluated at the n points, multiplied,
    and interpolated back, c = V⁻¹ [(V_r g) ⊙ (V_m h)], with V_j the n × j Vandermonde matrix of the
    points (the point ∞ takes the leading coefficient). The correlation is that map transposed in h:
    y = V_mᵀ [(V_r g) ⊙ (V⁻ᵀ d)]. Each row of Bᵀ = V⁻ᵀ is scaled to small integers, and G takes the
    inverse scale (with the points above this gives Lavin & Gray's F(4×4, 3×3) matrices, up to signs)."""
    n = m + r - 1

    def vandermonde(cols: int) -> torch.Tensor:
        v = torch.zeros(n, cols, dtype=torch.float64)
        for j, a in enumerate(_POINTS[:n - 1]):
            v[j] = torch.tensor([a ** i for i in range(cols)], dtype=torch.float64)
        v[n - 1, cols - 1] = 1.0  # the point at infinity
        return v

    b_t, g = torch.linalg.inv(vandermonde(n)).T.contiguous(), vandermonde(r)
    for j in range(n):
        scale = b_t[j][b_t[j].abs() > 1e-9].abs().min()
        b_t[j] /= scale
        g[j] *= scale
    return b_t.round(), g, vandermonde(m).T.contiguous()  # Bᵀ's entries are integers up to float64 rounding


@functools.cache
def _matrices(device: torch.device, m: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kron(Bᵀ, Bᵀ) (n², n²), kron(Aᵀ, Aᵀ) (m², n²) and kron(G, G) (n², r²) in float32: the 2-D
    transforms of a flattened tile (and of a flattened kernel)."""
    b_t, g, a_t = toom_cook(m, r)
    return tuple(torch.kron(t, t).float().to(device) for t in (b_t, a_t, g))


def _cpu_without_avx512() -> bool:
    return cpu.torch_runs_avx2()


def native() -> bool:
    """Whether F(4×4, 3×3) takes the C transforms here: ``NATIVE`` and the extension built."""
    return NATIVE and winograd_native.kernels() is not None


def bf16_inference() -> bool:
    """Whether this is bf16 inference that takes F(2×2, 3×3) in bf16 (``BF16_NATIVE``): bf16 autocast on the
    CPU, no autograd, the C transforms built (:func:`native`), oneDNN's bf16 kernels here, AVX-512 and no
    AMX (:func:`_cpu_with_amx`; it was timed on an AVX-512 CPU without AMX only)."""
    return (BF16_NATIVE and not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and native() and cpu.has_fast_bf16()
            and not _cpu_without_avx512() and not _cpu_with_amx())


def bf16_fused(c: int, k: int) -> bool:
    """Whether a bf16 layer of ``c`` input and ``k`` output channels takes the fused kernel
    (``FUSED_BF16``, ``FUSED_MAX_WEIGHT``, :func:`winograd_native.fused_available`)."""
    return FUSED_BF16 and k % 64 == 0 and c * k <= FUSED_MAX_WEIGHT and winograd_native.fused_available(torch.bfloat16)


def float_fused(c: int, k: int) -> bool:
    """Whether a float32 layer of ``c`` input and ``k`` output channels takes the fused F(4×4, 3×3) kernel."""
    return (FUSED_FLOAT and k % 64 == 0 and c * k <= FUSED_MAX_WEIGHT_FLOAT
            and winograd_native.fused_available(torch.float32))


def trained_native() -> bool:
    """Whether trained 3×3 layers take the C kernels with oneDNN's weight gradient (``TRAINED_NATIVE``): the
    kernels built, on a CPU with AVX-512. Without AVX-512 oneDNN's backward is slow (see
    ``MIN_CHANNELS_TRAINED_AVX2``): with the instruction sets limited to AVX2, the generator's forward and
    backward took 1.47× as long this way as in the transformed domain, which keeps both gradients there."""
    return TRAINED_NATIVE and native() and not _cpu_without_avx512()


@functools.cache
def _cpu_with_amx() -> bool:
    """An x86 CPU with AMX tiles, where oneDNN's bf16 convolutions run on them (the Xeons of
    docs/speed.md): bf16 Winograd was measured on a Zen 4 only, so it stays off there until it is timed on
    one."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def min_channels(weight: torch.Tensor, autograd: bool) -> int:
    """The narrowest layer (input and output channels) that takes Winograd: ``MIN_CHANNELS``, lowered
    for a trained weight with autograd to ``MIN_CHANNELS_TRAINED_AVX2`` on an AVX2-only CPU and to
    ``MIN_CHANNELS_TRAINED_NATIVE`` with the C kernels (:func:`native`)."""
    if autograd and weight.requires_grad and torch.is_grad_enabled():
        if _cpu_without_avx512():
            return min(MIN_CHANNELS, MIN_CHANNELS_TRAINED_AVX2)
        if trained_native():
            return min(MIN_CHANNELS, MIN_CHANNELS_TRAINED_NATIVE)
    return MIN_CHANNELS


def wide_enough(weight: torch.Tensor, autograd: bool) -> bool:
    """Whether a layer has the channels to take Winograd: at least :func:`min_channels` input and output
    channels, or, in inference on an AVX2-only CPU, at least ``MIN_CHANNELS_TRAINED_AVX2`` of each with
    C·K ≥ ``INFERENCE_BALANCE_AVX2``·(C + K)."""
    k, c = weight.shape[:2]
    if min(c, k) >= min_channels(weight, autograd):
        return True
    return (not torch.is_grad_enabled() and _cpu_without_avx512() and min(c, k) >= MIN_CHANNELS_TRAINED_AVX2
            and c * k >= INFERENCE_BALANCE_AVX2 * (c + k))


def _parts(x: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``x`` as a tuple of parts: an input given as parts is read as their concatenation along channels
    (:func:`conv3x3`; Bi-GFF's gates read F_t and F_s so), a single tensor is one part."""
    return x if isinstance(x, tuple) else (x,)


def output_tile(x: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """m of F(m×m, 3×3) for a 3×3 layer on x (or its parts) in inference: 4 on maps of at least
    ``MIN_PIXELS`` pixels, 2 on smaller ones and in bf16 (see the module docstring)."""
    h, w = _parts(x)[0].shape[-2:]
    return 4 if h * w >= MIN_PIXELS and not bf16_inference() else 2


def inference_dtype() -> torch.dtype:
    """The dtype Winograd runs in for inference here: bf16 under :func:`bf16_inference`, else float32."""
    return torch.bfloat16 if bf16_inference() else torch.float32


def capturing_graph() -> bool:
    """Whether a graph is being traced, exported or compiled: the paths that run their own code in eager
    inference (Winograd here, ``partial_conv.packed_conv``) then step aside, so that it sees plain ops."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _eligible(x: torch.Tensor | tuple[torch.Tensor, ...], weight: torch.Tensor, autograd: bool) -> bool:
    """What both algorithms need: fp32 on CPU without autocast, without autograd unless ``autograd``
    (then the caller runs an autograd form), not while a graph is traced, exported or compiled (it
    must hold any input size, and the bands here are a loop over the size), a layer wide enough
    (:func:`wide_enough`) on a map large enough to gain: ``MIN_PIXELS``, or ``MIN_PIXELS_SMALL`` in
    inference (F(2×2, 3×3), :func:`output_tile`). ``x`` may be a tuple of parts, read as their
    concatenation along channels (inference only, :func:`conv3x3`). Under bf16 autocast: bf16 inference
    (:func:`bf16_inference`), C·K ≥ ``BALANCE_BF16``·(C + K) (``BALANCE_BF16_FUSED`` where the layer takes
    the fused kernel, :func:`bf16_fused`), on maps of at least ``MIN_PIXELS_BF16``."""
    parts = _parts(x)
    if not (ENABLED and all(t.device.type == "cpu" for t in parts) and weight.dtype == torch.float32
            and not capturing_graph()
            and weight.shape[1] == sum(t.shape[1] for t in parts)
            and all(t.shape[0] == parts[0].shape[0] and t.shape[2:] == parts[0].shape[2:] for t in parts)):
        return False
    if torch.is_autocast_enabled("cpu"):
        k, c = weight.shape[:2]
        balance = BALANCE_BF16_FUSED if bf16_fused(c, k) else BALANCE_BF16
        return (not autograd and bf16_inference() and c * k >= balance * (c + k)
                and all(t.dtype in (torch.float32, torch.bfloat16) for t in parts)
                and parts[0].shape[-2] * parts[0].shape[-1] >= MIN_PIXELS_BF16)
    return (all(t.dtype == torch.float32 for t in parts)
            and (autograd or not torch.is_grad_enabled())
            and (wide_enough(weight, autograd) or _native_wide_enough(parts, weight))
            and parts[0].shape[-2] * parts[0].shape[-1] >= (MIN_PIXELS if autograd else MIN_PIXELS_SMALL))


def dilated_by_phases(x: torch.Tensor, weight: torch.Tensor, d: int) -> bool:
    """Whether :class:`Conv2d`'s 3×3 convolution with dilation and padding ``d`` runs as a 3×3 one on each of
    x's d² phases (``DILATED_BY_PHASES``): float32 inference with the C kernels (not bf16, where it gained
    little), sides that are multiples of ``d``, and phases large enough for F(4×4, 3×3) (MSFA's dilations 2
    and 4 at a 256² input; alone, 64→64 at 128² with dilation 2: 5.6 → 2.0 ms, 4: 5.3 → 3.0; with dilation
    8 its 16² phases took F(2×2, 3×3) and lost, 14 against 5.1 ms). A forward 1.018× as fast per round at
    256² (12 rounds), 1.021× at 512² (5 rounds)."""
    if capturing_graph() or torch.is_grad_enabled():  # first: Dynamo would trace the kernels' loading in native()
        return False
    h, w = x.shape[-2:]
    if not (DILATED_BY_PHASES and native() and h % d == 0 and w % d == 0):
        return False
    phase = x[:, :, ::d, ::d]
    return applies(phase, weight, 1, 1) and output_tile(phase) == 4 and inference_dtype() == torch.float32  # applies: a 3×3 kernel


def _native_wide_enough(parts: tuple[torch.Tensor, ...], weight: torch.Tensor) -> bool:
    """In inference with the C transforms (:func:`native`), layers of at least ``MIN_CHANNELS_NATIVE``
    input and output channels on maps of at least ``MIN_PIXELS`` (F(4×4, 3×3)) take Winograd too."""
    return (not torch.is_grad_enabled() and min(weight.shape[:2]) >= MIN_CHANNELS_NATIVE
            and parts[0].shape[-2] * parts[0].shape[-1] >= MIN_PIXELS and native())


def applies(x: torch.Tensor | tuple[torch.Tensor, ...], weight: torch.Tensor, stride: int, padding: int,
            dilation: int = 1, autograd: bool = False) -> bool:
    """Whether :func:`conv3x3` should replace ``F.conv2d(x, weight, stride=..., padding=...)`` here: a
    3×3 kernel, stride 1, padding 1, no dilation, and what :func:`_eligible` asks."""
    return (tuple(weight.shape[-2:]) == (3, 3) and stride == 1 and padding == 1 and dilation == 1
            and _eligible(x, weight, autograd))


def applies_4x4(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, dilation: int = 1) -> bool:
    """Whether :func:`conv4x4` should replace ``F.conv2d(x, weight, stride=..., padding=...)`` here: a
    4×4 kernel, stride 1, padding 0 to 3, no dilation, and what :func:`_eligible` asks (with autograd:
    :func:`conv4x4` differentiates itself)."""
    return (tuple(weight.shape[-2:]) == (4, 4) and stride == 1 and 0 <= padding <= 3 and dilation == 1
            and _eligible(x, weight, autograd=True))


def applies_5x5_stride2(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> bool:
    """Whether :func:`conv5x5_stride2` should replace ``F.conv2d(x, weight, stride=2, padding=2)`` here: fp32
    inference on an AVX2-only CPU or with the C transforms (``PHASES_NATIVE``; with AVX-512 and the eager
    transforms the forward did not gain, see ``MIN_CHANNELS_PHASES_AVX2``),
    a 5×5 kernel, stride 2, padding 2, even sides, an output of at least ``MIN_PIXELS`` (F(4×4, 3×3) on
    the phases) and at least ``MIN_CHANNELS_PHASES_AVX2`` input and output channels: the encoders' 64→128
    and 128→256 layers."""
    if capturing_graph():  # first: under torch.compile the CPU query below breaks the graph
        return False
    h, w = x.shape[-2:]
    k, c = weight.shape[:2]
    if not ((_cpu_without_avx512() or (PHASES_NATIVE and native())) and not bf16_inference()
            and tuple(weight.shape[-2:]) == (5, 5)
            and stride == 2 and padding == 2
            and h % 2 == 0 and w % 2 == 0 and (h // 2) * (w // 2) >= MIN_PIXELS
            and min(c, k) >= MIN_CHANNELS_PHASES_AVX2):
        return False
    stacked = weight[:, :1, :3, :3].expand(k, 4 * c, 3, 3)  # the shape and dtype of phase_weight(weight)
    return _eligible(_phases(x), stacked, autograd=False)


def phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 5, 5) -> (K, 4C, 3, 3): the 5×5 stride-2 convolution (padding 2) as a 3×3 stride-1 one
    (padding 1) over the input's four phases x[:, :, p_y::2, p_x::2], stacked along channels in the
    order p = 2·p_y + p_x. Output row o reads input rows 2o - 2 + d, d = 0..4; row 2j + p_y is tap
    j - o + 1 of phase p_y, so tap t of phase p_y holds kernel row 2t + p_y (zero where that is 5)."""
    k, c = weight.shape[:2]
    out = weight.new_zeros(k, 4, c, 3, 3)
    for py in (0, 1):
        for px in (0, 1):
            sub = weight[:, :, py::2, px::2]  # (K, C, 3 or 2, 3 or 2)
            out[:, 2 * py + px, :, :sub.shape[2], :sub.shape[3]] = sub
    return out.view(k, 4 * c, 3, 3)


def conv5x5_stride2(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """5×5 convolution, stride 2, padding 2, of x (N, C, H, W) with even H and W, as the 3×3 convolution
    of its four phases (:func:`phase_weight`; ``u`` is its transformed weight) by F(4×4, 3×3) or
    F(2×2, 3×3). The phases are read as strided views, band by band (:func:`_input_band`), so the
    stacked input is never made. Returns (N, K, H/2, W/2) in channels-last memory layout."""
    return conv3x3(_phases(x), u)


def _phases(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four phases x[:, :, p_y::2, p_x::2] of x (N, C, H, W), in the order p = 2·p_y + p_x (views)."""
    return tuple(x[:, :, py::2, px::2] for py in (0, 1) for px in (0, 1))


def transform_weight(weight: torch.Tensor, m: int = 4) -> torch.Tensor:
    """(K, C, 3, 3) -> U (t², C, K) = G g Gᵀ of F(m×m, 3×3), t = m + 2, for every (output, input) channel
    pair, computed in float64 a few output channels at a time (the float64 intermediates of a whole
    1024→512 layer would take several hundred MB, which the process would keep)."""
    k, c = weight.shape[:2]
    t = m + 2
    g = toom_cook(m, 3)[1].to(weight.device)
    u = torch.empty(t, t, c, k, dtype=torch.float32, device=weight.device)
    step = max(1, (1 << 20) // (t * t * c))
    for k0 in range(0, k, step):
        u[:, :, :, k0:k0 + step] = torch.einsum("ai,kcij,bj->abck", g, weight[k0:k0 + step].detach().double(), g)
    return u.view(t * t, c, k)


class Conv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that runs by Winograd where :func:`applies` says
    so: in inference with its transformed weight cached (also in bf16), in training by
    :func:`conv3x3_trained`. The generator's ``fusion_layer2`` (128→64) and MSFA's two undilated 3×3 layers
    (64→64), at 128² for a 256² input, take it with the C transforms (``MIN_CHANNELS_NATIVE``), and MSFA's
    dilated ones by phases in fp32 inference (:func:`dilated_by_phases`). Elsewhere (graph capture, stride,
    other paddings) it is ``nn.Conv2d``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._winograd = WeightCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = self.stride == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
        if plain and self.padding == (1, 1) and self.dilation == (1, 1):
            if applies(x, self.weight, 1, 1):
                return conv3x3(x, self._winograd.for_input(x, self.weight), self.bias)
            if applies(x, self.weight, 1, 1, autograd=True):
                return conv3x3_trained(x, self.weight, self.bias)
        d = self.dilation[0]
        if plain and d > 1 and self.dilation == (d, d) and self.padding == (d, d) and dilated_by_phases(x, self.weight, d):
            return self._dilated(x, d)
        return super().forward(x)

    def _dilated(self, x: torch.Tensor, d: int) -> torch.Tensor:
        """The convolution with dilation and padding ``d`` as a 3×3 one (padding 1) on each of the input's d²
        phases x[:, :, p_y::d, p_x::d]: an output pixel reads only input pixels of its own phase."""
        n, _, h, w = x.shape
        u = self._winograd.for_input(x[:, :, ::d, ::d], self.weight)
        out = torch.empty(n, self.out_channels, h, w, dtype=u.dtype, device=x.device, memory_format=torch.channels_last)
        for py in range(d):
            for px in range(d):
                out[:, :, py::d, px::d] = conv3x3(x[:, :, py::d, px::d], u, self.bias)
        return out


class WeightCache:
    """U for one layer and each output tile size it was asked for, recomputed when any source weight
    changes (in-place update, new tensor or new storage): keyed by each source's identity, storage and
    version counter. It holds a reference to the sources, so an identity cannot be reused while it is
    cached."""

    def __init__(self):
        # (m, dtype) -> (key, sources, U)
        self._entries: dict[tuple[int, torch.dtype], tuple[tuple, tuple[torch.Tensor, ...], torch.Tensor]] = {}

    def get(self, weight: torch.Tensor, *sources: torch.Tensor, flipped: bool = False, m: int = 4,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """U of ``weight`` (K, C, 3, 3) for F(m×m, 3×3) in ``dtype`` (transformed in float64, then
        rounded), which is built from ``sources`` (default: ``weight`` itself; Bi-GFF's fused gate weight
        is a concatenation, rebuilt on every call). ``flipped``: U of the weight of the input-gradient
        convolution instead (kernel flipped, channels swapped). A 5×5 ``weight`` gives U of its
        :func:`phase_weight`, for :func:`conv5x5_stride2`."""
        sources = sources or (weight,)
        key = tuple((id(t), t.data_ptr(), t._version) for t in sources)
        entry = self._entries.get((m, dtype))
        if entry is None or entry[0] != key:
            if weight.shape[-1] == 5:
                weight = phase_weight(weight)
            u = transform_weight(weight.flip(2, 3).transpose(0, 1) if flipped else weight, m).to(dtype)
            entry = self._entries[m, dtype] = (key, sources, u)
        return entry[2]

    def for_input(self, x: torch.Tensor | tuple[torch.Tensor, ...], weight: torch.Tensor,
                  *sources: torch.Tensor) -> torch.Tensor:
        """U for an inference layer on ``x`` (or its parts) here: F(:func:`output_tile`) in
        :func:`inference_dtype` (F(2×2, 3×3) in bf16 under bf16 inference)."""
        return self.get(weight, *sources, m=output_tile(x), dtype=inference_dtype())


def _band_rows(n: int, tw: int, c: int, k: int, th: int, scratch: int | None = None) -> int:
    """Tile rows per band: the band's transformed tiles (36 values per tile and channel) stay within
    ``scratch`` values (default ``SCRATCH_ELEMENTS``), unless a band's tiles would then hold fewer values
    (C + K per tile position) than the transformed weight (C·K per position), which each band reads
    whole: the deep layers' bands stay large (1024→512 at 32²: 9.3 ms in one band, 11.8 in two)."""
    scratch = SCRATCH_ELEMENTS if scratch is None else scratch
    by_scratch = scratch // (36 * n * tw * max(c, k))  # 36: F(4×4, 3×3)'s t², the largest
    by_weight = -(-c * k // ((c + k) * n * tw))
    return max(1, min(th, max(by_scratch, by_weight)))


def _input_band(x_last: torch.Tensor | tuple[torch.Tensor, ...], top: int, rows: int, cols: int,
                padding: int) -> torch.Tensor:
    """Rows ``top`` .. ``top + rows - 1`` and columns ``-padding`` .. ``cols - padding - 1`` of the
    zero-padded input (N, H, W, C), as a new channels-last (N, rows, cols, C) tensor. ``x_last`` may be
    a tuple of (N, H, W, C_i) parts, whose concatenation along channels is the input: each is copied
    into its channels of the band, so that the concatenation is never made whole."""
    parts = _parts(x_last)
    n, h, w = parts[0].shape[:3]
    c = sum(t.shape[3] for t in parts)
    r0, r1, c1 = max(0, top), min(h, top + rows), min(w, cols - padding)
    if r1 <= r0 or c1 <= 0:
        return parts[0].new_zeros(n, rows, cols, c)
    band = parts[0].new_empty(n, rows, cols, c)
    band[:, :r0 - top].zero_()  # only what the input does not cover is zeroed: the padding
    band[:, r1 - top:].zero_()
    band[:, r0 - top:r1 - top, :padding].zero_()
    band[:, r0 - top:r1 - top, padding + c1:].zero_()
    first = 0
    for t in parts:
        band[:, r0 - top:r1 - top, padding:padding + c1, first:first + t.shape[3]] = t[:, r0:r1, :c1]
        first += t.shape[3]
    return band


def _tiles(band: torch.Tensor, m: int, t: int, tile_rows: int, tw: int) -> torch.Tensor:
    """The overlapping t×t tiles of a (N, rows, cols, C) band, spaced m apart: (t, t, N, tile_rows, tw, C) view."""
    sn, sh, sw, sc = band.stride()
    n, c = band.shape[0], band.shape[3]
    return band.as_strided((t, t, n, tile_rows, tw, c), (sh, sw, sn, m * sh, m * sw, sc))


def _input_transform(in_transform: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
    """Bᵀ d B of every tile and channel: kron(Bᵀ, Bᵀ) (t², t²) times the tiles (t², tiles·C). The
    backward of trained layers also runs its transpose kron(B, B) through here, on the tiles' gradients.

    On 2 threads F(4×4, 3×3)'s product runs as two products of 18 of the 36 output rows each, in one
    batched call, which gives each thread one: MKL runs this short, wide product (36 × 36 by 36 × N)
    only 1.3× faster on two threads than on one, the halves 1.6× faster (Bi-GFF's band: 0.88 → 0.69 ms),
    with the same output bit for bit here (``bench/winograd_probe.py --transform``). A 256² forward 0.9–1.8 %
    faster (1.4 % with AVX2 code), a 512² one 0.9–3.4 % (``bench/generator_speed.py --ab
    ctsdg.winograd.SPLIT_INPUT_TRANSFORM False True``). F(2×2, 3×3)'s 16 × 16 product, and any product on
    one thread, lose that way (docs/speed_history.md, "An eleventh look"), and so do products of fewer than
    ``SPLIT_MIN_COLUMNS`` columns; other thread counts were not measured, so they keep the single product."""
    if (SPLIT_INPUT_TRANSFORM and in_transform.shape[0] == 36 and tiles.shape[1] >= SPLIT_MIN_COLUMNS
            and torch.get_num_threads() == 2):
        return row_halves(in_transform, tiles)
    return torch.mm(in_transform, tiles)


def row_halves(matrix: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``matrix @ other`` (``matrix`` with an even number of rows) as two products of half the rows each, in
    one batched call (``other`` expanded, not copied): on several threads each half goes to its own."""
    rows = matrix.shape[0]
    return torch.bmm(matrix.view(2, rows // 2, matrix.shape[1]), other.expand(2, *other.shape)).view(rows, -1)


def _conv(x: torch.Tensor | tuple[torch.Tensor, ...], u: torch.Tensor, m: int, r: int, padding: int,
          out_h: int, out_w: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Stride-1 r×r convolution of x (N, C, H, W) with ``padding`` zeros on each side, by F(m×m, r×r) on
    t×t tiles (t = m + r - 1) with the transformed weight ``u`` (t², C, K); the output's first
    ``out_h`` × ``out_w`` values, in channels-last memory layout. ``x`` may be a tuple of (N, C_i, H, W)
    parts, read as their concatenation along channels (:func:`_input_band`).

    Works through bands of tile rows, so that its scratch (the transformed tiles, 2.25× their input
    and output) stays within ``SCRATCH_ELEMENTS`` whatever the image size. F(4×4, 3×3) takes the C
    transforms where they are built (:func:`native`, ``winograd_native.fill``), in bands of
    ``SCRATCH_ELEMENTS_NATIVE``, or the fused kernel (:func:`float_fused`); a bf16 ``u`` (F(2×2, 3×3))
    takes them always, fused (:func:`bf16_fused`) or in bands of ``SCRATCH_ELEMENTS_BF16``."""
    parts = _parts(x)
    n, c = parts[0].shape[0], sum(t.shape[1] for t in parts)
    k = u.shape[2]
    th, tw = -(-out_h // m), -(-out_w // m)  # m×m output tiles
    result = torch.empty(n, k, m * th, m * tw, dtype=u.dtype, device=parts[0].device,
                         memory_format=torch.channels_last)
    out = result.permute(0, 2, 3, 1)  # (N, H, W, K), contiguous
    bf16 = u.dtype == torch.bfloat16
    in_c = bf16 or ((m, r) == (4, 3) and native())  # bf16 runs in C only
    if in_c and (bf16_fused(c, k) if bf16 else float_fused(c, k)):
        winograd_native.fused(parts, u, padding, out, bias)
    elif in_c:
        scratch = SCRATCH_ELEMENTS_BF16 if bf16 else SCRATCH_ELEMENTS_NATIVE
        winograd_native.fill(parts, u, padding, out, _band_rows(n, tw, c, k, th, scratch), bias)
    else:
        _fill(parts, u, m, r, padding, out, _band_rows(n, tw, c, k, th), bias)
    if m * th != out_h or m * tw != out_w:
        return result[:, :, :out_h, :out_w].contiguous(memory_format=torch.channels_last)
    return result  # not a view: autograd lets in-place operations follow (conv3x3_autograd)


def _fill(parts: tuple[torch.Tensor, ...], u: torch.Tensor, m: int, r: int, padding: int, out: torch.Tensor,
          band: int, bias: torch.Tensor | None) -> None:
    """:func:`_conv`'s work in eager PyTorch: ``out`` (N, m·th, m·tw, K), written ``band`` tile rows at a time."""
    n, c, k, t = parts[0].shape[0], u.shape[1], u.shape[2], m + r - 1
    th, tw = out.shape[1] // m, out.shape[2] // m
    in_transform, out_transform, _ = _matrices(parts[0].device, m, r)
    x_last = tuple(p.permute(0, 2, 3, 1) for p in parts)  # (N, H, W, C_i) views
    for t0 in range(0, th, band):
        t1 = min(th, t0 + band)
        p = n * (t1 - t0) * tw
        xb = _input_band(x_last, m * t0 - padding, m * (t1 - t0) + r - 1, m * tw + r - 1, padding)
        # each tile's t² values as one column
        v = _input_transform(in_transform, _tiles(xb, m, t, t1 - t0, tw).reshape(t * t, -1)).view(t * t, p, c)
        del xb
        prod = torch.bmm(v, u)  # (t², tiles, K): the channel sums of U ⊙ V, one product per tile position
        del v
        y = torch.mm(out_transform, prod.view(t * t, -1)).view(m, m, n, t1 - t0, tw, k)  # Aᵀ prod A
        del prod
        y, dest = y.permute(2, 3, 0, 4, 1, 5), out[:, m * t0:m * t1].view(n, t1 - t0, m, tw, m, k)
        if bias is None:
            dest.copy_(y)
        else:  # the bias in the same pass
            torch.add(y, bias, out=dest)


def conv3x3(x: torch.Tensor | tuple[torch.Tensor, ...], u: torch.Tensor, bias: torch.Tensor | None = None
            ) -> torch.Tensor:
    """3×3 convolution, stride 1, padding 1, of x (N, C, H, W) with the transformed weight ``u``
    (:func:`transform_weight`), by F(4×4, 3×3) or F(2×2, 3×3), whichever ``u`` is for (36 or 16 tile
    positions). ``x`` may be a tuple of parts, read as their concatenation along channels (Bi-GFF's
    gates read F_t and F_s so). Returns (N, K, H, W) in channels-last memory layout."""
    m = {36: 4, 16: 2}[u.shape[0]]
    h, w = _parts(x)[0].shape[-2:]
    return _conv(x, u, m, 3, 1, h, w, bias)


class _Conv3x3(torch.autograd.Function):
    """conv3x3 with autograd: the input's gradient is itself a 3×3 convolution (of the output's
    gradient with the weight flipped and its channels swapped), so it runs Winograd too; the weight's
    and bias's gradients, where needed, come from the backend's own convolution backward. With the two
    caches None (a trained weight, :func:`conv3x3_trained` with the C kernels) both transformed weights
    are made on each call."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                cache: WeightCache | None, cache_flipped: WeightCache | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.cache_flipped, ctx.has_bias = cache_flipped, bias is not None
        return conv3x3(x, cache.get(weight) if cache else _transform_trained_weight(weight, 4), bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            cache = ctx.cache_flipped
            flipped = (cache.get(weight, flipped=True) if cache
                       else _transform_trained_weight(weight.flip(2, 3).transpose(0, 1), 4))
            grad_x = conv3x3(grad, flipped)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [1, 1], [1, 1], False,
                [0, 0], 1, [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_weight, grad_bias, None, None


def conv3x3_autograd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     cache: WeightCache, cache_flipped: WeightCache) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` by Winograd, differentiable; ``cache`` keeps the
    transformed weight, ``cache_flipped`` the transformed weight of the input-gradient convolution.
    Pays where the weight stays fixed (the frozen VGG16 of the perceptual and style losses); for a
    trained weight, see :func:`conv3x3_trained`."""
    return _Conv3x3.apply(x, weight, bias, cache, cache_flipped)


def _transform_trained_weight(weight: torch.Tensor, m: int) -> torch.Tensor:
    """(K, C, r, r) -> U (t², C, K) = G g Gᵀ for F(m×m, r×r), in float32 (a trained weight changes every
    step, so this runs on every call): a (t², C, K) view of a (t², K, C) tensor."""
    k, c, r = weight.shape[:3]
    t = m + r - 1
    g_kron = _matrices(weight.device, m, r)[2]
    return torch.mm(g_kron, weight.reshape(k * c, r * r).t()).view(t * t, k, c).transpose(1, 2)


class _WinogradConv(torch.autograd.Function):
    """F(m×m, r×r) convolution (stride 1) with its exact gradients: the backward runs the forward's transforms
    transposed. With dM = A dY Aᵀ per output tile, the weight's gradient is Gᵀ (Σ_tiles Vᵀ dM) G and the
    input's is B (dM Uᵀ) Bᵀ added back over the overlapping input tiles. So all three passes take
    t² products per m×m output tile instead of m²r², and no flipped weight needs transforming."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, m: int, padding: int
                ) -> torch.Tensor:
        r = weight.shape[-1]
        u = _transform_trained_weight(weight, m)
        out_h, out_w = x.shape[-2] + 2 * padding - r + 1, x.shape[-1] + 2 * padding - r + 1
        ctx.save_for_backward(x, u)
        ctx.m, ctx.r, ctx.padding, ctx.has_bias = m, r, padding, bias is not None
        return _conv(x, u, m, r, padding, out_h, out_w, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, u = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        m, r, padding = ctx.m, ctx.r, ctx.padding
        t = m + r - 1
        n, c, h, w = x.shape
        k, out_h, out_w = grad.shape[1:]
        th, tw = -(-out_h // m), -(-out_w // m)
        in_transform, out_transform, g_kron = _matrices(x.device, m, r)
        adjoint = in_transform.t().contiguous()  # kron(B, B): the input transform run backwards
        x_last, grad_last = x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1)
        grad_x = x.new_zeros(n, m * th + r - 1, m * tw + r - 1, c) if need_x else None  # padded, channels last
        grad_u = x.new_zeros(t * t, c, k) if need_w else None
        band = _band_rows(n, tw, c, k, th)
        for t0 in range(0, th, band):
            t1 = min(th, t0 + band)
            rows, p = t1 - t0, n * (t1 - t0) * tw
            dy = grad.new_zeros(n, m * rows, m * tw, k)
            dy[:, :min(out_h, m * t1) - m * t0, :out_w] = grad_last[:, m * t0:m * t1]
            dy = dy.view(n, rows, m, tw, m, k).permute(2, 4, 0, 1, 3, 5).reshape(m * m, -1)
            dm = torch.mm(out_transform.t(), dy).view(t * t, p, k)  # A dY Aᵀ per tile
            del dy
            if need_w:
                xb = _input_band(x_last, m * t0 - padding, m * rows + r - 1, m * tw + r - 1, padding)
                v = _input_transform(in_transform, _tiles(xb, m, t, rows, tw).reshape(t * t, -1)).view(t * t, p, c)
                grad_u.baddbmm_(v.transpose(1, 2), dm)
                del xb, v
            if need_x:
                dv = torch.bmm(dm, u.transpose(1, 2))  # (t², tiles, C)
                tiles = _input_transform(adjoint, dv.view(t * t, -1)).view(t, t, n, rows, tw, c)
                del dv
                for i in range(t):  # each tile position back onto the rows and columns it was read from
                    for j in range(t):
                        grad_x[:, m * t0 + i:m * t0 + i + m * rows:m, j:j + m * tw:m] += tiles[i, j]
                del tiles
        if need_x:
            grad_x = grad_x[:, padding:padding + h, padding:padding + w].permute(0, 3, 1, 2)
        grad_w = None
        if need_w:
            grad_w = torch.mm(g_kron.t(), grad_u.view(t * t, -1)).view(r, r, c, k).permute(3, 2, 0, 1).contiguous()
        grad_b = grad.sum((0, 2, 3)) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None


def conv4x4(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` for a 4×4 kernel at stride 1, by Winograd F(3×3, 4×4)
    (6×6 tiles, the points of F(4×4, 3×3)), differentiable in x, weight and bias. For the
    discriminator's stride-1 4×4 layer in training, whose weight changes on every call (spectral
    norm), so it is transformed on every call (a few ms for 256→512). Returns channels-last memory."""
    return _WinogradConv.apply(x, weight, bias, 3, padding)


def conv3x3_trained(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` by Winograd F(4×4, 3×3), differentiable in x, weight and
    bias, for a weight that changes on every step (the generator's wide layers in training): the
    weight is transformed once per call in float32, and the backward works in the transformed
    domain (:class:`_WinogradConv`), so one transform serves all three passes; with the C kernels
    (``TRAINED_NATIVE``), the forward and the input's gradient by them, and the weight's gradient from
    oneDNN (:class:`_Conv3x3`, the weight transformed on each call) instead. Channels-last memory."""
    if trained_native():
        return _Conv3x3.apply(x, weight, bias, None, None)
    return _WinogradConv.apply(x, weight, bias, 4, 1)
