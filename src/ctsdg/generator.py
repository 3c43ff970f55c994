"""The CTSDG generator (paper Sec. 3, Fig. 2), in the paper's order:

1. two partial-conv U-Net streams (Sec. 3.1): the texture stream sees the masked image, the
   structure stream the masked edge + gray image. Each decoder starts from the *other* stream's
   bottleneck ("borrow encoded deep features from each other", official generator.py:115,129) and
   takes its own encoder's skips, the raw inputs being the last skip;
2. projection heads P_t, P_s on the decoder outputs (projection.py, intermediate supervision);
3. Bi-GFF (bigff.py, Sec. 3.2);
4. fusion_layer1 (stride 2) -> CFA (cfa.py, Sec. 3.3) -> fusion_layer2 -> ×2 -> output layer (tanh).

Shapes for a 256×256 input at base width C = 64: encoder 128²×C ... 2²×8C; decoder back to 256²×C;
Bi-GFF 256²×2C; CFA at 128²×C; output (B, 3, 256, 256) in [-1, 1].

``Generator()`` is the authors' architecture, key for key (docs/paper_map.md, tests/test_generator.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu, upsample_native, winograd
from .bigff import BiGFF
from .cfa import CFA, ContextualAttention
from .config import ModelConfig
from .conventions import SIZE_MULTIPLE
from .partial_conv import PConvBNActiv
from .projection import StructureProjection, TextureProjection
from .state_dict import load_checked
from .winograd import capturing_graph

# The decoders' bilinear ×2 and mask product in one C pass where the kernel is built (upsample_native.py; CTSDG_NATIVE=0
# in the environment turns it off, as it does Winograd's and RAL's): inference only, float32 or bf16 on the CPU.
NATIVE_UPSAMPLE = cpu.native_wanted()
ENCODER_SAMPLING = ("down-7", "down-5", "down-5", "down-3", "down-3", "down-3", "down-3")
LEVELS = 7


class GeneratorOutput(NamedTuple):
    """What :meth:`Generator.forward` returns (a tuple, like the official generator)."""

    output: torch.Tensor  # I_out (B, 3, H, W) in [-1, 1]; composite it with the known pixels
    projected_image: torch.Tensor | None  # P_t(F_t) (B, 3, H, W) in [-1, 1]
    projected_edge: torch.Tensor | None  # P_s(F_s) (B, 1, H, W) in [0, 1]


def _build_stream(gen: nn.Module, name: str, in_channels: int, widths: tuple[int, ...]) -> None:
    """Register one partial-conv U-Net stream on ``gen`` with the official names: encoder
    ``ec_{name}_1..7`` and decoder ``dc_{name}_7..1`` (official generator.py:24-57). The forward pass
    lives in :class:`Generator`, since each decoder starts from the other stream's bottleneck."""
    prev = in_channels
    for level in range(1, LEVELS + 1):
        out = widths[level - 1]
        layer = PConvBNActiv(prev, out, sample=ENCODER_SAMPLING[level - 1], bn=level > 1)
        gen.add_module(f"ec_{name}_{level}", layer)
        prev = out
    for level in range(LEVELS, 0, -1):
        deep = widths[level - 1]  # what the previous decoder step (or the bottleneck) outputs
        skip = widths[level - 2] if level > 1 else in_channels
        out = widths[level - 2] if level > 1 else widths[0]
        gen.add_module(f"dc_{name}_{level}", PConvBNActiv(deep + skip, out, activ="leaky"))


class Generator(nn.Module):
    """CTSDG generator. ``Generator()`` = the paper's model (52,147,789 parameters).

    Args:
        config: architecture; ``ModelConfig()`` by default. Ablations are switches on it.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        c = config.base_width
        widths = config.widths
        self.image_channels = 3
        self.edge_channels = 2 if config.structure_priors else 3  # edge+gray, or the image itself
        if config.dual_stream:
            _build_stream(self, "texture", self.image_channels, widths)
            _build_stream(self, "structure", self.edge_channels, widths)
        else:  # single-stream ablation: one U-Net on Concat(image, edge, gray)
            single_in = self.image_channels + (2 if config.structure_priors else 0)
            _build_stream(self, "texture", single_in, widths)

        self.structure_feature_projection = StructureProjection(c)
        self.texture_feature_projection = TextureProjection(c)

        fused = 2 * c if config.dual_stream else c
        if config.dual_stream and config.bigff:
            self.bigff = BiGFF(c)
        self.fusion_layer1 = nn.Sequential(nn.Conv2d(fused, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        if config.attention == "cfa":
            self.cfa = CFA(c, config.dilations, config.softmax_scale)
        elif config.attention == "contextual":
            self.contextual_attention = ContextualAttention(config.softmax_scale)
        attended = c if config.attention == "none" else 2 * c
        self.fusion_layer2 = nn.Sequential(winograd.Conv2d(attended, c, 3, padding=1), nn.LeakyReLU(0.2))
        self.out_layer = nn.Sequential(nn.Conv2d(c + fused, 3, 1), nn.Tanh())
        self.apply(init_weights)

    # --- helpers -------------------------------------------------------------------------------

    def _encode(self, name: str, x: torch.Tensor, known_mask: torch.Tensor) -> list[tuple]:
        """Reference encoder of one stream (the authors' computation, per-channel masks);
        returns [(input, mask), (level-1 feat, mask), ..., (level-7, mask)]."""
        skips = [(x, known_mask)]
        for level in range(1, LEVELS + 1):
            x, known_mask = getattr(self, f"ec_{name}_{level}")(x, known_mask, reference=True)
            skips.append((x, known_mask))
        return skips

    def _decode(self, name: str, start: tuple, skips: list[tuple]) -> torch.Tensor:
        """Reference decoder of one stream from bottleneck ``start`` with this stream's ``skips``."""
        x, known_mask = start
        for level in range(LEVELS, 0, -1):
            skip, skip_mask = skips[level - 1]
            x = F.interpolate(x, scale_factor=2, mode="bilinear")
            known_mask = F.interpolate(known_mask, scale_factor=2, mode="nearest")
            x = torch.cat((x, skip), dim=1)
            known_mask = torch.cat((known_mask, skip_mask.expand_as(skip)), dim=1)
            x, known_mask = getattr(self, f"dc_{name}_{level}")(x, known_mask, reference=True)
        return x

    def _encode_fast(self, name: str, x: torch.Tensor, known_mask: torch.Tensor) -> list[tuple]:
        """Encoder of one stream on one-channel masks (partial_conv.py, "Fast path").

        Returns [(input ⊙ M, Σ_c M), (level-1 feat ⊙ M_1, C_1·M_1), ..., (level-6 ...), (level-7 feat,
        M_7)]: every skip is stored already multiplied by its mask, which is also the next layer's
        input; the bottleneck is stored unmasked because the other decoder upsamples it first.
        """
        inplace = not torch.is_grad_enabled()
        count = known_mask.sum(1, keepdim=True) if known_mask.shape[1] > 1 else known_mask * x.shape[1]
        x = x * known_mask.to(x.dtype)
        skips = [(x, count)]
        for level in range(1, LEVELS + 1):
            x, known = getattr(self, f"ec_{name}_{level}")(x, None, valid_count=count)
            if level == LEVELS:
                skips.append((x, known))
                break
            count = known * x.shape[1]
            x = x.mul_(known.to(x.dtype)) if inplace else x * known.to(x.dtype)
            skips.append((x, count))
        return skips

    def _decode_fast(self, name: str, start: tuple, skips: list[tuple]) -> torch.Tensor:
        """Decoder of one stream on one-channel masks; ``skips`` from :meth:`_encode_fast`."""
        inplace = not torch.is_grad_enabled()
        x, known = start
        cl = torch.channels_last  # torch's bilinear ×2 is 4-20× faster on it for the deep maps (docs/speed.md)
        for level in range(LEVELS, 0, -1):
            skip, skip_count = skips[level - 1]
            x = x.contiguous(memory_format=cl)
            skip = skip.contiguous(memory_format=cl)  # one layout for the concatenation
            b, c, h, w = x.shape
            known_here, known = known, F.interpolate(known, scale_factor=2, mode="nearest")
            count = known * c + skip_count  # Σ_c over Concat(upsampled, skip) of the mask
            if inplace:  # Concat(up(x) ⊙ M, skip), the product written straight into the concatenation
                both = torch.empty(b, c + skip.shape[1], 2 * h, 2 * w, dtype=x.dtype, device=x.device,
                                   memory_format=cl)
                if _native_upsample(x, both):  # up(x) ⊙ M in one pass, from x and M at x's resolution
                    upsample_native.upsample2x_masked(x, known_here.float(), both[:, :c])
                else:
                    torch.mul(F.interpolate(x, scale_factor=2, mode="bilinear"), known.to(x.dtype), out=both[:, :c])
                both[:, c:] = skip
                x = both
            else:
                x = torch.cat((F.interpolate(x, scale_factor=2, mode="bilinear") * known.to(x.dtype), skip), dim=1)
            x, known = getattr(self, f"dc_{name}_{level}")(x, None, valid_count=count)
        return x

    def check_inputs(self, input_image: torch.Tensor, input_edge: torch.Tensor, known_mask: torch.Tensor) -> None:
        """Raise a ValueError (TypeError for a dtype) naming what was given and what is needed: shapes and
        dtypes always, value ranges in eval mode (0.07 ms at 256², 0.3 ms at 512² on 2 CPU threads)."""
        for name, t in (("input_image", input_image), ("input_edge", input_edge), ("known_mask", known_mask)):
            if not isinstance(t, torch.Tensor) and (t is not None or name != "input_edge"):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; for pictures as numpy "
                                "arrays or files use ctsdg.Inpainter")
        if input_edge is None and self.config.structure_priors:
            raise ValueError("input_edge is required when structure_priors is on: (B, 2, H, W) (edge, gray); "
                             "ctsdg.data.compute_structure makes it, and ctsdg.Inpainter does it all")
        if input_image.ndim != 4 or input_image.shape[1] != 3:
            raise ValueError(f"input_image must be (B, 3, H, W) in [-1, 1], got {tuple(input_image.shape)}")
        b, _, h, w = input_image.shape
        if input_edge is not None and self.config.structure_priors and (
            input_edge.ndim != 4 or input_edge.shape[1] != 2
        ):
            raise ValueError(f"input_edge must be (B, 2, H, W) (edge, gray), got {tuple(input_edge.shape)}")
        if known_mask.ndim != 4 or known_mask.shape[1] != 1:
            raise ValueError(f"known_mask must be (B, 1, H, W) with 1 = known pixel, got {tuple(known_mask.shape)}")
        for name, t in (("input_edge", input_edge), ("known_mask", known_mask)):
            if t is not None and (t.shape[0] != b or t.shape[-2:] != (h, w)):
                raise ValueError(
                    f"{name} is {tuple(t.shape)} but input_image is {tuple(input_image.shape)}; "
                    "batch size and H, W must match"
                )
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(
                f"input is {w}x{h} but the generator needs sides divisible by {SIZE_MULTIPLE}; "
                "pad or resize first (ctsdg.Inpainter does this for any size)"
            )
        dtype = next(self.parameters()).dtype  # the weights' (autocast casts inside, not the inputs)
        for name, t in (("input_image", input_image), ("input_edge", input_edge), ("known_mask", known_mask)):
            if t is not None and t.dtype != dtype:
                raise TypeError(f"{name} is {t.dtype} but the generator's weights are {dtype}; convert it with "
                                f".to({dtype}) (images in [-1, 1], edges and masks in [0, 1])")
        if not self.training and not capturing_graph() and known_mask.device.type != "meta":
            # The ranges, in eval only (one sync, a few reductions of the inputs): a mask of 0 and 255, an image
            # of 0 to 255 or an inverted mask would otherwise give a plausible-looking wrong picture.
            edge = input_edge if input_edge is not None else known_mask
            stats = torch.stack((known_mask.amin(), known_mask.amax(), input_image.abs().amax(),
                                 edge.amin(), edge.amax())).tolist()
            m_lo, m_hi, image_hi, e_lo, e_hi = stats
            if m_lo < 0 or m_hi > 1:
                raise ValueError(f"known_mask must hold 1 (known pixel) and 0 (hole), got values from {m_lo:g} to "
                                 f"{m_hi:g}; for a 0/255 file mask with white = fill use 1 - mask / 255")
            if image_hi > 1.01:
                raise ValueError(f"input_image must be in [-1, 1], got values up to {image_hi:g}; from 0..255 use "
                                 "x / 127.5 - 1")
            if e_lo < 0 or e_hi > 1.01:
                raise ValueError(f"input_edge must be in [0, 1] (edge, gray), got values from {e_lo:g} to {e_hi:g}")

    # --- forward -------------------------------------------------------------------------------

    def forward(self, input_image: torch.Tensor, input_edge: torch.Tensor | None, known_mask: torch.Tensor,
                with_projections: bool | None = None,
                structure_known_mask: torch.Tensor | None = None,
                reference: bool = False) -> GeneratorOutput:
        """Args:
            input_image: I_in = I_gt ⊙ M, (B, 3, H, W) in [-1, 1], holes 0.
            input_edge: Concat(E_gt ⊙ M, Y_gt ⊙ M), (B, 2, H, W) in [0, 1]; ignored (may be None)
                when ``structure_priors`` is off.
            known_mask: M, (B, 1, H, W), 1 = known pixel, 0 = hole.
            with_projections: compute P_t and P_s (they feed the training loss only). None (default)
                = in the fast path only when they can be used: in training mode or with autograd
                enabled, so ``eval()`` under ``torch.no_grad()`` skips them and returns None for both;
                with ``reference`` always, as the authors' generator runs them on every call (official
                generator.py:147-148; their test.py discards them).
            structure_known_mask: optional per-channel mask (B, 2, H, W) for the structure stream only
                (1 = valid), e.g. known_mask plus user-drawn edge strokes on the edge channel
                (ctsdg.Inpainter's ``extra_edges``); None = ``known_mask`` (the paper).
            reference: run the authors' straightforward computation (dense mask convolutions,
                per-channel masks, RAL as convolutions, no in-place tricks) instead of the fast path.
                Same outputs within float rounding; for tests and benchmarks (docs/speed.md).

        Returns:
            :class:`GeneratorOutput` (output, projected_image, projected_edge).

        Works under ``torch.autocast`` (bf16): partial-conv window counts and RAL's key norms stay
        float32; the convolutions and RAL's products run in bf16, and so do its scores and softmax in
        inference (with autograd they stay float32, as RAL's hand-written backward recomputes them).

        In eval mode without autograd the fast path runs under ``torch.inference_mode()``, which skips
        the version counters and view records of its ~2,900 tensor operations (about 2.5 % of a 256²
        fp32 forward, docs/speed.md); the outputs are copied out of it, so the caller gets ordinary
        tensors, as under ``torch.no_grad()``.
        """
        if (not reference and not self.training and not torch.is_grad_enabled()
                and not torch.is_inference_mode_enabled() and not capturing_graph()):
            with torch.inference_mode():  # the same call again, inside inference mode (it checks the inputs)
                result = self.forward(input_image, input_edge, known_mask, with_projections, structure_known_mask)
            return GeneratorOutput(*(None if t is None else t.clone() for t in result))
        self.check_inputs(input_image, input_edge, known_mask)
        cfg = self.config
        if with_projections is None:
            with_projections = reference or self.training or torch.is_grad_enabled()
        if not reference:  # channels-last convolutions are about 2x faster on CPU (docs/speed.md)
            cl = torch.channels_last
            input_image = input_image.contiguous(memory_format=cl)
            input_edge = None if input_edge is None else input_edge.contiguous(memory_format=cl)
        encode = self._encode if reference else self._encode_fast
        decode = self._decode if reference else self._decode_fast
        structure_in = input_edge if cfg.structure_priors else input_image
        if cfg.dual_stream:
            tex_skips = encode("texture", input_image, known_mask)
            str_mask = known_mask if structure_known_mask is None else structure_known_mask
            str_skips = encode("structure", structure_in, str_mask)
            texture_feat = decode("texture", str_skips[-1], tex_skips)  # F_t from the structure bottleneck
            structure_feat = decode("structure", tex_skips[-1], str_skips)  # F_s from the texture bottleneck
        else:
            single_in = torch.cat((input_image, input_edge), 1) if cfg.structure_priors else input_image
            skips = encode("texture", single_in, known_mask)
            texture_feat = structure_feat = decode("texture", skips[-1], skips)

        projected_image = projected_edge = None
        if with_projections:
            projected_edge = self.structure_feature_projection(structure_feat)
            projected_image = self.texture_feature_projection(texture_feat)

        if not cfg.dual_stream:
            fused = texture_feat
        elif cfg.bigff and not reference and not torch.is_grad_enabled():
            fused = _bigff_inference(self.bigff, texture_feat, structure_feat)  # F_b, same numbers
        elif cfg.bigff:
            fused = self.bigff(texture_feat, structure_feat, reference=reference)  # F_b
        else:
            fused = torch.cat((texture_feat, structure_feat), dim=1)
        texture_feat = structure_feat = None

        x = self.fusion_layer1(fused)
        if cfg.attention == "cfa":
            x = torch.cat((x, self.cfa(x, reference=reference)), dim=1)
        elif cfg.attention == "contextual":
            known_small = -F.max_pool2d(-known_mask, 2)
            x = torch.cat((x, self.contextual_attention(x, known_small)), dim=1)
        x = self.fusion_layer2(x)
        if reference:
            x = F.interpolate(x, scale_factor=2, mode="bilinear")
            output = self.out_layer(torch.cat((x, fused), dim=1))
        else:
            # The 1x1 out conv commutes with the bilinear x2 (both linear; bilinear weights sum to 1,
            # so the bias passes through): apply its x-part at half resolution on 3 channels instead
            # of upsampling 64 channels and concatenating them with F_b.
            conv = self.out_layer[0]
            c = x.shape[1]
            x = F.interpolate(F.conv2d(x, conv.weight[:, :c]), scale_factor=2, mode="bilinear")
            output = self.out_layer[1](x + F.conv2d(fused, conv.weight[:, c:], conv.bias))
        return GeneratorOutput(output, projected_image, projected_edge)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Like ``nn.Module.load_state_dict``; with ``strict`` a mismatch raises a ValueError that names
        every missing, unexpected and wrongly shaped key. A ``module.`` prefix (DDP) is removed."""
        return load_checked(self, state_dict, strict=strict, assign=assign, what="generator")


def _bigff_inference(bigff: BiGFF, texture_feat: torch.Tensor, structure_feat: torch.Tensor) -> torch.Tensor:
    """:class:`~ctsdg.bigff.BiGFF` (Eq. 1-3) without autograd, F_b = Concat(F_t', F_s') written over the
    gates Concat(G_s, G_t) (B, 2C, H, W): each equation is one ``addcmul`` whose output replaces the gate
    it has just read, so that F_b takes no memory of its own. In fp32 the gates' Winograd convolution
    reads F_t and F_s as they are, and Concat(F_t, F_s) is never made (one pass over the largest map
    fewer)."""
    c = texture_feat.shape[1]
    gates = bigff.gates((texture_feat, structure_feat))
    gate_s, gate_t = gates[:, :c], gates[:, c:]
    # as Python numbers, so that each equation is one addcmul pass (on the meta device, used for FLOP
    # counts, there are no values to read)
    beta, alpha = ((1.0, 1.0) if gates.device.type == "meta"
                   else (float(bigff.texture_gamma), float(bigff.structure_gamma)))
    torch.addcmul(texture_feat, gate_s, structure_feat, value=beta, out=gate_s)  # Eq. (1): F_t' = F_t + β (G_s ⊙ F_s)
    torch.addcmul(structure_feat, gate_t, gate_s, value=alpha, out=gate_t)  # Eq. (2): F_s' = F_s + α (G_t ⊙ F_t')
    return gates  # Eq. (3): Concat(F_t', F_s')


def _native_upsample(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the decoders' upsampling takes the C kernel (``NATIVE_UPSAMPLE``, :mod:`ctsdg.upsample_native`): x
    into ``out`` on the CPU, float32 or bf16, and no graph being traced, exported or compiled."""
    return NATIVE_UPSAMPLE and not capturing_graph() and upsample_native.available(x, out)


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Official ``weights_init('normal', 0.02)``: convs N(0, 0.02) with zero bias; BN weight N(1, 0.02)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, gain)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, gain)
        nn.init.zeros_(module.bias)
