"""Stateless partial convolution (Liu et al., ECCV 2018), as used by every CTSDG encoder/decoder layer.

For an input ``x`` and a per-channel ``known_mask`` M (1 = valid), one layer computes

    out  = W * (x ⊙ M) · r,   r = (C_in·k·k) / sum(M over the window) · 1[sum > 0]      (PConv eq. 1)
    M'   = 1[sum(M over the window) > 0]                                                   (PConv eq. 2)

The official code gets ``sum(M over the window)`` from a dense convolution of the C_in-channel mask
with an all-ones (C_out, C_in, k, k) kernel — as costly as the feature convolution itself. That
convolution is the same for every output channel and equals a single-channel box filter of the mask
summed over input channels, which is what :class:`PartialConv2d` computes. Both are exact integer
counts in float32, so the results are bit-identical; :func:`partial_conv_reference` keeps the dense
version for the tests.

The updated mask is returned with C_out channels (an expanded view: no memory) so that the interface
matches the official per-channel masks.

Fast path (what :class:`~ctsdg.generator.Generator` uses). Every updated mask is channel-uniform, so
the generator carries one channel per mask plus the *valid-channel count* ``valid_count`` =
Σ_c M_c (B, 1, H, W): for a concatenation of features with C_1 and C_2 channels and masks m_1, m_2
it is C_1·m_1 + C_2·m_2, and sum(M over the window) = box_k(valid_count). :class:`PConvBNActiv` then
takes ``x ⊙ M`` already multiplied (``valid_count=...``) and returns a one-channel mask. In eval mode
without autograd, BatchNorm and the activation are applied in place on the convolution output
(``out·ratio·γ/σ + (β - μγ/σ)``): the same numbers up to float rounding, without extra tensors.
"""

from __future__ import annotations

import contextlib
import functools
import platform

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu, winograd


def autocast_off(device_type: str):
    """Context that disables autocast on ``device_type`` (a no-op where autocast does not exist, e.g. meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class InferenceWeight:
    """A layer's weight prepared once for inference: cast to the autocast dtype under
    ``torch.autocast``, and/or laid out channels-last.

    Autocast casts every float32 weight on every call it is not tracking for autograd: under
    ``torch.no_grad()`` a full-width bf16 forward at 256² spent about 15 ms of its ~180 ms copying
    the decoders' weights (docs/speed.md). And oneDNN re-lays out a contiguous weight on every
    channels-last call; the encoders' strided layers only gain from channels-last with the weight
    laid out that way beforehand. This keeps each prepared copy, keyed like
    :class:`~ctsdg.winograd.WeightCache` by the weight's identity, storage and version counter, so it
    is redone after ``load_state_dict`` or an optimizer step. With autograd on the weight is returned
    unchanged (autocast then does what it always does), and so it is where nothing is to change. A
    copy costs the weight's memory (half of it in bf16) while it is cached. :meth:`packed` keeps a
    third kind, the weight in oneDNN's blocked layout for the deep layers (:func:`packed_conv`).
    """

    def __init__(self):
        # (dtype, channels_last), or ("packed", dtype) -> (key, source, prepared); the source is held so
        # that id(weight) cannot be reused while its copy is cached
        self._entries: dict[tuple, tuple[tuple, torch.Tensor, torch.Tensor]] = {}

    def __deepcopy__(self, memo) -> InferenceWeight:
        """An empty cache: copies are derived from the weight, and a copied layer has its own weight
        (a packed copy is an opaque oneDNN tensor, which cannot be copied or pickled anyway)."""
        return type(self)()

    def __getstate__(self) -> dict:
        return {"_entries": {}}

    def _prepared(self, slot, weight: torch.Tensor, key: tuple, prepare) -> torch.Tensor:
        """The copy in ``slot``, made by ``prepare(weight)`` unless the cached one has ``key`` (after the
        weight's identity, storage and version counter)."""
        key = (id(weight), weight.data_ptr(), weight._version, *key)
        entry = self._entries.get(slot)
        if entry is None or entry[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                entry = self._entries[slot] = (key, weight, prepare(weight.detach()))
        return entry[2]

    def packed(self, weight: torch.Tensor, input_shape: tuple[int, ...], stride: int, padding: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``weight`` cast to ``dtype`` (as autocast casts it) and reordered once into oneDNN's blocked
        layout for a convolution of inputs of ``input_shape`` (:func:`packed_conv`); one copy per dtype,
        for the last input shape, so that fp32 and bf16 forwards in turn (a script that runs both, the
        bench's interleaved rounds) do not re-pack the deep layers every time (15-50 ms of a 256² fp32
        forward, 30 ms of a bf16 one, docs/speed.md); it is redone after ``load_state_dict`` or an
        optimizer step like the other prepared copies."""
        return self._prepared(("packed", dtype), weight, (tuple(input_shape), stride, padding),
                              lambda w: torch.ops.mkldnn._reorder_convolution_weight(
                                  w.to(dtype), [padding, padding], [stride, stride], [1, 1], 1, list(input_shape)))

    def get(self, weight: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        device = weight.device.type
        if torch.is_grad_enabled() or weight.dtype != torch.float32:
            return weight
        autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else weight.dtype
        if dtype == weight.dtype and not channels_last:
            return weight
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return self._prepared((dtype, channels_last), weight, (),
                              lambda w: w.to(dtype).contiguous(memory_format=layout))


def _window_count(known_mask: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
    """Number of valid input elements (over channels and the k×k window) under each output position."""
    with torch.no_grad(), autocast_off(known_mask.device.type):
        summed = known_mask.float().sum(dim=1, keepdim=True)
        return _box_count(summed, kernel_size, stride, padding)


def _box_count(valid_count: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
    """sum(M over the window) from the valid-channel count Σ_c M_c (B, 1, H, W); always float32.

    Counts reach C_in·k·k (up to 9216 here), which bf16 cannot hold exactly, so this never autocasts.
    """
    with torch.no_grad(), autocast_off(valid_count.device.type):
        valid_count = valid_count.float()
        ones = torch.ones(1, 1, kernel_size, kernel_size, dtype=valid_count.dtype, device=valid_count.device)
        return F.conv2d(valid_count, ones, stride=stride, padding=padding)


def _ratio_and_mask(count: torch.Tensor, window_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PConv eq. 1-2 from the window count: r = window/(count + 1e-8)·1[count > 0], M' = clamp(count, 0, 1)."""
    new_mask = count.clamp(0.0, 1.0)
    ratio = window_size / (count + 1e-8) * new_mask  # official: slide_winsize / (update + 1e-8)
    return ratio, new_mask


# Strided (encoder) layers with outputs of at least this many pixels run channels-last in inference.
CHANNELS_LAST_STRIDED_PIXELS = 8 * 8

# Inference (fp32, and bf16 under autocast): layers whose output is smaller than their weight (the deep
# ones) run with the weight reordered once into oneDNN's blocked layout (packed_conv). False: F.conv2d,
# which reorders the weight on every call.
PACKED_WEIGHTS = True


@functools.cache
def _packing_available() -> bool:
    """oneDNN's packed-weight convolution is there, on an x86-64 CPU (where it was measured)."""
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"))


@functools.cache
def _bf16_packing_available() -> bool:
    """oneDNN has bf16 kernels on this CPU (:func:`ctsdg.cpu.has_fast_bf16`): its bf16 weight reorder
    raises on an AVX2-only one ("bf16 path needs the cpu support avx_ne_convert or avx512bw, ...")."""
    return cpu.has_fast_bf16()


def packed_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype in which a direct convolution of x with ``weight`` runs through :func:`packed_conv`
    here, or None: float32, or bf16 under bf16 autocast where the CPU has bf16 kernels, on an x86-64 CPU
    with oneDNN, in inference (no autograd), and not while a graph is traced, exported or compiled (they
    must see a plain ``conv2d``; checked before the platform, whose query Dynamo cannot trace). On a CPU
    without bf16 kernels a bf16 forward (``CTSDG_ALLOW_SLOW_BF16=1``, or autocast in a script) takes
    ``F.conv2d``, slow but working."""
    if not (PACKED_WEIGHTS and x.device.type == "cpu" and weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not winograd.capturing_graph() and _packing_available()):
        return None
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16
        return torch.bfloat16 if bf16 and _bf16_packing_available() else None
    return torch.float32 if x.dtype == torch.float32 else None


def packed_conv(x: torch.Tensor, packed_weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding)`` with the weight already in oneDNN's blocked
    layout (:meth:`InferenceWeight.packed`), on channels-last x cast to the weight's dtype; the output
    is channels-last, in that dtype.

    ``F.conv2d`` reorders a plain weight into that layout on every call: for the decoders' 1024→512
    weights (19 MB) that copy took longer than the convolution itself inside a forward (1024→512 at 8²
    with the weight out of the cache: 4.3 ms, 2.4 ms without the copy; docs/speed.md)."""
    x = x.to(packed_weight.dtype).contiguous(memory_format=torch.channels_last)
    return torch.ops.mkldnn._convolution_pointwise(x, packed_weight, None, [padding, padding], [stride, stride],
                                                   [1, 1], 1, "none", [], "")


class PartialConv2d(nn.Conv2d):
    """Partial convolution without bias, multi-channel masks (the official ``multi_channel=True``).

    Its only state is ``weight`` (key ``conv.weight`` inside :class:`PConvBNActiv`), as in the
    authors' checkpoints: no mask kernel is stored.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self._winograd = winograd.WeightCache()  # the transformed weight, for fp32 inference (winograd.py)
        self._inference = InferenceWeight()  # the weight cast and laid out once, for inference

    def forward(self, x: torch.Tensor, known_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: features (B, C_in, H, W).
            known_mask: (B, C_in, H, W) or (B, 1, H, W) broadcastable, 1 = valid.

        Returns:
            ``(out, new_known_mask)``: (B, C_out, H', W') and the updated mask (B, C_out, H', W').
        """
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        count = _window_count(known_mask.expand(-1, self.in_channels, -1, -1), k, s, p)
        ratio, new_mask = _ratio_and_mask(count, float(self.in_channels * k * k))
        out = F.conv2d(x * known_mask.to(x.dtype), self.weight, None, s, p)
        out = out * ratio.to(out.dtype)
        b, _, h, w = new_mask.shape
        return out, new_mask.expand(b, self.out_channels, h, w)

    def forward_counted(self, masked_x: torch.Tensor, valid_count: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same layer on pre-masked input: returns ``(W * (x ⊙ M), ratio, new_known_mask)``.

        Args:
            masked_x: x ⊙ M, (B, C_in, H, W).
            valid_count: Σ_c M_c, (B, 1, H, W), the number of valid input channels at each pixel.

        Returns:
            the convolution *before* the ratio (B, C_out, H', W'), ``ratio`` (B, 1, H', W') float32
            and the one-channel updated mask M' (B, 1, H', W') float32.
        """
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        if valid_count.shape[1] != 1:
            raise ValueError(f"valid_count must be (B, 1, H, W), got {tuple(valid_count.shape)}")
        ratio, new_mask = _ratio_and_mask(_box_count(valid_count, k, s, p), float(self.in_channels * k * k))
        if winograd.applies(masked_x, self.weight, s, p):  # the wide deep layers in fp32 inference
            u = self._winograd.for_input(masked_x, self.weight)
            return winograd.conv3x3(masked_x, u), ratio, new_mask
        if winograd.applies_5x5_stride2(masked_x, self.weight, s, p):  # the encoders' wide 5×5 layers, likewise
            return winograd.conv5x5_stride2(masked_x, self._winograd.for_input(masked_x, self.weight)), ratio, new_mask
        if winograd.applies(masked_x, self.weight, s, p, autograd=True):  # the same layers in fp32 training
            return winograd.conv3x3_trained(masked_x, self.weight), ratio, new_mask
        # Channels-last is ~2x faster for wide maps, but oneDNN then re-lays out a contiguous weight on
        # every call: take it where the output is larger than the weight (the shallow layers), and in
        # inference for the strided layers (the encoders) down to 8² outputs, with the weight laid out
        # channels-last once (1.5-5.3 -> 1.2-4.2 ms per layer at 256², docs/speed.md). Where the output
        # is smaller than the weight (the deep layers), inference takes the weight in oneDNN's own
        # layout, reordered once (packed_conv).
        b, _, h, w = ratio.shape
        wide = self.out_channels * h * w >= self.weight.numel()
        dtype = None if wide else packed_dtype(masked_x, self.weight)
        if dtype is not None:
            weight = self._inference.packed(self.weight, tuple(masked_x.shape), s, p, dtype)
            return packed_conv(masked_x, weight, s, p), ratio, new_mask
        strided = s > 1 and h * w >= CHANNELS_LAST_STRIDED_PIXELS and not torch.is_grad_enabled()
        cl = wide or strided
        masked_x = masked_x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        weight = self._inference.get(self.weight, channels_last=strided)
        return F.conv2d(masked_x, weight, None, s, p), ratio, new_mask


def partial_conv_reference(
    x: torch.Tensor, known_mask: torch.Tensor, weight: torch.Tensor, stride: int, padding: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official computation, literally: dense all-ones mask convolution. For tests only."""
    out_ch, in_ch, k, _ = weight.shape
    ones = torch.ones(out_ch, in_ch, k, k, dtype=known_mask.dtype, device=known_mask.device)
    with torch.no_grad():
        update = F.conv2d(known_mask, ones, stride=stride, padding=padding)
        ratio = (in_ch * k * k) / (update + 1e-8)
        update = update.clamp(0, 1)
        ratio = ratio * update
    out = F.conv2d(x * known_mask, weight, None, stride, padding) * ratio
    return out, update


# sample -> (kernel, stride, padding), official pconv.py:84-91
SAMPLING = {"down-7": (7, 2, 3), "down-5": (5, 2, 2), "down-3": (3, 2, 1), "none-3": (3, 1, 1)}


class PConvBNActiv(nn.Module):
    """Partial conv -> optional BatchNorm -> ReLU or LeakyReLU(0.2). Keys: ``conv.weight``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, sample: str = "none-3", bn: bool = True,
                 activ: str = "relu"):
        super().__init__()
        k, s, p = SAMPLING[sample]
        self.conv = PartialConv2d(in_channels, out_channels, k, s, p)
        if bn:
            self.bn = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU() if activ == "relu" else nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, known_mask: torch.Tensor | None, valid_count: torch.Tensor | None = None,
                reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: features (B, C_in, H, W); already multiplied by the mask when ``valid_count`` is given.
            known_mask: (B, C_in or 1, H, W), 1 = valid; unused (may be None) with ``valid_count``.
            valid_count: Σ_c M_c (B, 1, H, W) for the fast path (see the module docstring); the
                returned mask is then one channel, (B, 1, H', W').
            reference: the authors' literal computation (dense all-ones mask convolution,
                per-channel masks); for tests and benchmarks.

        Returns:
            ``(out, new_known_mask)``, out (B, C_out, H', W').
        """
        if reference:
            known_mask = known_mask.expand(-1, self.conv.in_channels, -1, -1)
            s, p = self.conv.stride[0], self.conv.padding[0]
            x, known_mask = partial_conv_reference(x, known_mask, self.conv.weight, s, p)
        elif valid_count is None:
            x, known_mask = self.conv(x, known_mask)
        else:
            out, ratio, known_mask = self.conv.forward_counted(x, valid_count)
            if torch.is_grad_enabled() or (hasattr(self, "bn") and self.bn.training):
                x = out * ratio.to(out.dtype)
            else:  # inference: ratio, frozen BN and activation in place on the conv output
                out.mul_(ratio.to(out.dtype))
                if hasattr(self, "bn"):
                    bn = self.bn
                    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
                    shift = bn.bias - bn.running_mean * scale
                    view = (1, -1, 1, 1)
                    torch.addcmul(shift.to(out.dtype).view(view), out, scale.to(out.dtype).view(view), out=out)
                if isinstance(self.activation, nn.ReLU):
                    return F.relu_(out), known_mask
                return F.leaky_relu_(out, self.activation.negative_slope), known_mask
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.activation(x), known_mask
