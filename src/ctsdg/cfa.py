"""Contextual Feature Aggregation, CFA (paper Sec. 3.3, Eq. 4-7). Official: models/generator/cfa.py.

CFA = region affinity learning (RAL) followed by multi-scale feature aggregation (MSFA).

RAL (Eq. 4-5). On a feature map x (B, C, H, W), with rate 2:
    * keys/queries are the 3×3 patches f_i of x downsampled ×½ (bilinear, align_corners=True),
      zero-padded; each key is L2-normalised over (C, 3, 3) with max(‖f‖, 1e-4);
    * S^{i,j} = <f_i, f_j/‖f_j‖>  (the query is not normalised, as in the official code);
    * Ŝ = softmax_j(10·S), clamped at 1e-8;
    * the values are 4×4 patches (stride 2) of the full-resolution x; the output is their
      Ŝ-weighted sum placed back with a transposed convolution, divided by 4 (overlap count).
    No hole mask is used (official behaviour; docs/deviations.md).
    The passes over the attention (scores from the Gram rows, softmax, clamp, E) run in C where the package
    was built with them (:mod:`ctsdg.cfa_native`, ``NATIVE``).

MSFA (Eq. 6-7). Branches F^k = ReLU(Conv3x3_dilation=k(F_rec)) for k in the dilation list, weights
W = Softmax(ReLU(Conv1x1(ReLU(Conv3x3(F_rec))))) over the branches (ReLU before the softmax is
official), F_c = Σ_k F^k ⊙ W^k.

:class:`ContextualAttention` is DeepFill v1/v2's contextual attention (Yu et al. 2018) — hole-aware
keys and attention propagation — for the paper's "w/ CA" ablation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import cfa_native, cpu, winograd
from .partial_conv import autocast_off

# RAL runs its queries in chunks of whole rows of the ×½ map, each attention row computed once (a
# sliding window: the rows a chunk shares with the next are carried over). Chunks of about 512 queries
# were fastest on a 2-core CPU (RAL alone, best of 3, docs/speed.md): on a 128² map, 256 / 512 / 1024
# queries took 126 / 125 / 136 ms (fp32) and 91 / 84 / 93 ms (bf16); on a 256² map, 256 / 512 / 768
# took 2.44 / 2.23 / 2.40 s (fp32) and 1.71 / 1.48 / 1.43 s (bf16). Smaller chunks pay per-call
# overhead and narrower products, larger ones spill the scratch out of the cache.
QUERIES_PER_CHUNK = 512

# Except on small maps: where at least SMALL_MAP_QUERIES queries have a score block (batch × queries ×
# keys) of at most SMALL_MAP_BLOCK_BYTES (4 MiB; the 2-core Xeon's L2 is 2 MiB per core), the forward
# takes as many as fit, up to QUERIES_PER_CHUNK: 256 for a 256² input in fp32 (4096 keys), where they
# took 2.3-3.7 % less time than 512 inside a forward (per-round medians of three alternating runs,
# 2026-12-06). bf16 scores fit 512 there, and at 512² (16 384 keys) no useful chunk fits: 256 queries
# were 1.6 % slower in bf16 at 256² and 2 % slower in fp32 at 512² (docs/speed_history.md, "A seventh look").
SMALL_MAP_QUERIES = 256
SMALL_MAP_BLOCK_BYTES = 4 << 20

# Largest attention block (queries × keys, batch included) held at once, in elements (64 MiB of
# float32), which caps the chunk on large maps: 1 query row (plus the row above and below it) at 1024².
ATTENTION_CHUNK_ELEMENTS = 1 << 24

# The scores, softmax and clamp, and E, by the C kernels of cfa_native where the package was built with them
# (CTSDG_NATIVE=0 in the environment turns them off, as it does Winograd's): without autograd, where the
# scores and the attention share a dtype (inference, the forward of fp32 training), on CPU tensors, not while
# a graph is captured. On a Zen 4, per round: a 512² forward 1.150× as fast in fp32, 1.102× in bf16; 256²
# 1.022× and 1.034× (--ab ctsdg.cfa.NATIVE False True; docs/speed_history.md, "A seventeenth look").
NATIVE = cpu.native_wanted()


def _native(t: torch.Tensor) -> bool:
    """Whether the C kernels take ``t``: ``NATIVE``, built, a float32 or bf16 CPU tensor, and no graph being
    traced, exported or compiled (which would not see their work)."""
    return NATIVE and not winograd.capturing_graph() and cfa_native.available(t)


def _box3(t: torch.Tensor) -> torch.Tensor:
    """3×3 box sum, zero-padded, of one-channel maps (B, 1, H, W); its own adjoint."""
    return F.conv2d(t, torch.ones(1, 1, 3, 3, dtype=t.dtype, device=t.device), padding=1)


def _key_norm2(small: torch.Tensor) -> torch.Tensor:
    """‖f_j‖² for every key j (B, L): the 3×3 box sum of Σ_c small²."""
    return _box3(small.pow(2).sum(dim=1, keepdim=True)).flatten(1)


def _key_scale(norm2: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    """softmax_scale / max(‖f_j‖, 1e-4) for every key j (B, L), from ‖f_j‖² (:func:`_key_norm2`)."""
    return softmax_scale / norm2.sqrt().clamp_min(1e-4)


def _rows_per_chunk(hs: int, ws: int, batch: int, query_chunk: int | None, score_bytes: int | None = None) -> int:
    """Whole rows of the ×½ map per chunk of queries: ``query_chunk`` // ws, or by default
    ``QUERIES_PER_CHUNK`` (given ``score_bytes``, the size of a score: as many as fit a score block of
    ``SMALL_MAP_BLOCK_BYTES`` where that is at least ``SMALL_MAP_QUERIES``) capped by
    ``ATTENTION_CHUNK_ELEMENTS`` (the chunk plus the row above and below); at least 1, then balanced so
    that the chunks have about equal sizes."""
    n = hs * ws
    if query_chunk is None:
        queries = QUERIES_PER_CHUNK
        fit = SMALL_MAP_BLOCK_BYTES // (batch * n * score_bytes) if score_bytes else 0
        if fit >= SMALL_MAP_QUERIES:
            queries = min(queries, fit)
        rows = min(queries // ws, ATTENTION_CHUNK_ELEMENTS // (batch * ws * n) - 2)
    else:
        rows = query_chunk // ws
    rows = max(1, min(hs, rows))
    return -(-hs // -(-hs // rows))  # same number of chunks, balanced


def _phase_values(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The four phases of t (B, C, H, W) side by side, (B, K, 4C) in ``dtype``, K = (H/2+1)(W/2+1) the
    key grid of E (:func:`_region_affinity_forward`): block p = 2·p_y + p_x holds t[:, :, 2·jy + p_y,
    2·jx + p_x] at grid position (jy + p_y, jx + p_x), zero elsewhere."""
    b, c, h, w = t.shape
    hs, ws = h // 2, w // 2
    values = t.new_zeros(b, hs + 1, ws + 1, 4, c, dtype=dtype)
    for py in (0, 1):
        for px in (0, 1):
            values[:, py:py + hs, px:px + ws, 2 * py + px] = t[:, :, py::2, px::2].permute(0, 2, 3, 1)
    return values.view(b, (hs + 1) * (ws + 1), 4 * c)


def _e_rows(p: torch.Tensor, work: dict) -> torch.Tensor:
    """E from consecutive rows of the zero-padded attention Ŝp (B, T, ws + 2, hs + 2, ws + 2):
    E[t, u, k, v] = D[t, u, k, v] + D[t + 1, u, k + 1, v] with D[t, u, k, v] = Ŝp[t, u, k, v] +
    Ŝp[t, u + 1, k, v + 1] (the pairs along x of both x-phases), as (B, (T - 1)(ws + 1), (hs + 1)(ws + 1)).
    A_p is E shifted by (p_y, p_x) in query and key, so one product with all four phases' values
    serves them all. D and E live in buffers of ``work``; the C kernel (:func:`cfa_native.e_rows`) makes E in one
    pass, summing in the same order."""
    b, t, wp, hp, _ = p.shape
    ws, hs = wp - 2, hp - 2
    if _native(p):  # in one pass, the same sums
        e = _buffer(work, "e", (b, t - 1, ws + 1, hs + 1, ws + 1), p)
        for i in range(b):
            cfa_native.e_rows(p[i], e[i])
        return e.view(b, (t - 1) * (ws + 1), (hs + 1) * (ws + 1))
    d = _buffer(work, "d", (b, t, ws + 1, hs + 2, ws + 1), p)
    torch.add(p[:, :, 0:ws + 1, :, 0:ws + 1], p[:, :, 1:ws + 2, :, 1:ws + 2], out=d)
    e = _buffer(work, "e", (b, t - 1, ws + 1, hs + 1, ws + 1), p)
    torch.add(d[:, 0:t - 1, :, 0:hs + 1], d[:, 1:t, :, 1:hs + 2], out=e)
    return e.view(b, (t - 1) * (ws + 1), (hs + 1) * (ws + 1))


def _buffer(work: dict, name: str, shape: tuple[int, ...], like: torch.Tensor,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """A reusable scratch tensor of ``shape`` from the workspace ``work``. Reusing one block across
    chunks avoids page-faulting fresh memory in for every chunk (tens of ms per 64 MiB)."""
    dtype = dtype or like.dtype
    numel = 1
    for size in shape:
        numel *= size
    buf = work.get((name, dtype))
    if buf is None or buf.numel() < numel:
        buf = work[(name, dtype)] = torch.empty(numel, dtype=dtype, device=like.device)
    return buf[:numel].view(shape)


def _move_rows(buf: torch.Tensor, src: int, dst: int, count: int = 2) -> None:
    """Copy ``buf[:, src:src+count]`` to ``buf[:, dst:dst+count]`` (dst <= src), row by row in increasing
    order, so that overlapping places (1-row chunks) read each row before they overwrite it."""
    for k in range(count):
        buf[:, dst + k].copy_(buf[:, src + k])


class _AttentionRows:
    """Ŝ (Eq. 4) of the ×½ map, block by block of query rows, every row computed once. Without autograd
    (inference, and the hand-written backward of training).

    S^{i,j} = Σ_{o ∈ 3×3} G[i + o, j + o] with G = FᵀF over the zero-padded ×½ map ``padded``
    (B, C, (hs+2)(ws+2)): nine shifted slices of one C-deep product, summed three along x
    (``along_x``, one row per padded query row) then three along y, then scaled per key by
    ``scale`` = 10 / ‖f_j‖. A block of query rows [n0, n1) needs the x-sums of padded rows
    [n0, n1 + 2); the first two of those were the last two of the previous block, so they are
    carried over, and each Gram row is computed once (a sliding window down the map). Intermediates
    live in buffers of the workspace ``work``, reused from block to block.

    With the C kernels (``NATIVE``; no raw scores asked for, ``out`` in the scores' dtype) there are no
    x-sums: the Gram rows stay in a ring of ``rows`` + 3 (padded row r in slot r mod rows + 3), and
    :func:`cfa_native.attention` reads the nine slices of each query straight from them.
    """

    def __init__(self, padded: torch.Tensor, scale: torch.Tensor, hs: int, ws: int, rows: int, work: dict):
        self.padded, self.scale, self.hs, self.ws, self.work = padded, scale, hs, ws, work
        # positions × channels, for the Gram rows: a contiguous slice of it times its transposed view is
        # the layout oneDNN's bf16 product takes without copying the whole map per block (−16 % there)
        self.by_position = padded.transpose(1, 2).contiguous()
        self.slots = rows + 3  # padded rows a block reads: its rows + 2, the first block one more
        self.next = 0  # first query row not computed yet
        self.last = 0  # the torch path: rows of the previous block (its last two x-sums are at last, last+1)

    def compute(self, n1: int, out: torch.Tensor, scores: torch.Tensor | None = None) -> None:
        """Write Ŝ for query rows [next, n1) into ``out`` (B, n1 - next, ws, hs, ws), any float dtype.
        With ``scores`` (same shape, float32), for the backward: write the raw scores S (before the key
        scale) there, and the softmax output before the authors' clamp into ``out`` (float32)."""
        if scores is None and out.dtype == self.padded.dtype and _native(out):
            self._compute_native(n1, out)
            return
        padded, hs, ws = self.padded, self.hs, self.ws
        b, n, lp = padded.shape[0], hs * ws, padded.shape[2]
        along_x = _buffer(self.work, "along_x", (b, self.slots, ws, hs + 2, ws), padded)
        n0 = self.next
        m = n1 - n0
        c = 2 if n0 else 0  # after the first block, the x-sums of padded rows n0, n0+1 are carried over
        if c:
            _move_rows(along_x, self.last, 0, c)
        q = self.by_position[:, (n0 + c) * (ws + 2):(n1 + 2) * (ws + 2)]  # the padded query rows not summed yet
        g = m + 2 - c
        gram = _buffer(self.work, "gram", (b, g * (ws + 2), lp), padded)
        gram = torch.bmm(q, self.by_position.transpose(1, 2), out=gram).view(b, g, ws + 2, hs + 2, ws + 2)
        new = along_x[:, c:m + 2]
        torch.add(gram[:, :, 0:ws, :, 0:ws], gram[:, :, 1:ws + 1, :, 1:ws + 1], out=new)
        new += gram[:, :, 2:ws + 2, :, 2:ws + 2]
        del gram
        raw = _buffer(self.work, "score", (b, m, ws, hs, ws), padded) if scores is None else scores
        score = torch.add(along_x[:, 0:m, :, 0:hs], along_x[:, 1:m + 1, :, 1:hs + 1], out=raw)
        score += along_x[:, 2:m + 2, :, 2:hs + 2]  # S^{i,j} for i in the rows, all j
        if scores is None:
            score = score.view(b, m * ws, n).mul_(self.scale[:, None, :])
        else:  # keep S for the caller
            score = torch.mul(score.view(b, m * ws, n), self.scale[:, None, :],
                              out=_buffer(self.work, "score", (b, m * ws, n), padded))
        score = _floor_logits(score, dim=-1)
        attn = torch.softmax(score, dim=-1).view(b, m, ws, hs, ws)  # Ŝ over the keys j
        if scores is not None:
            out.copy_(attn)
        elif out.dtype == attn.dtype:
            torch.clamp_min(attn, 1e-8, out=out)  # the authors' clamp, in the same pass as the copy
        else:  # a clamp that casts is ~5x slower than clamping, then casting
            out.copy_(attn.clamp_min_(1e-8))
        self.next, self.last = n1, m

    def _compute_native(self, n1: int, out: torch.Tensor) -> None:
        """:meth:`compute` by :func:`cfa_native.attention`, from the Gram rows in the ring."""
        padded, hs, ws, slots = self.padded, self.hs, self.ws, self.slots
        b, wp, lp = padded.shape[0], ws + 2, padded.shape[2]
        n0 = self.next
        if n1 - n0 + 2 > slots:
            raise ValueError(f"a block of {n1 - n0} query rows needs more than the ring's {slots} Gram rows")
        ring = _buffer(self.work, "ring", (b, slots, wp, lp), padded)
        r = n0 + 2 if n0 else 0  # padded rows n0, n0 + 1 are in the ring from the previous block
        while r < n1 + 2:  # the new Gram rows, in runs of consecutive slots
            slot = r % slots
            count = min(n1 + 2 - r, slots - slot)
            torch.bmm(self.by_position[:, r * wp:(r + count) * wp], self.by_position.transpose(1, 2),
                      out=ring[:, slot:slot + count].view(b, count * wp, lp))
            r += count
        scratch = _buffer(self.work, "logits", (torch.get_num_threads() * hs * ws,), padded, torch.float32)
        for i in range(b):
            grams = [ring[i, row % slots] for row in range(n0, n1 + 2)]
            cfa_native.attention(grams, self.scale[i], hs, ws, out[i], LOGIT_FLOOR, 1e-8, scratch)
        self.next = n1


# Logits further than this below their row's maximum get a softmax weight below e^-30 ≈ 9e-14, which
# the authors' clamp at 1e-8 replaces by 1e-8 anyway; raising them to (max - 30) changes no output
# and keeps exp() out of the denormal range, where it is ~10x slower on CPU (peaky scores at ×10).
# The change to the softmax denominator is at most L·e^-30 ≤ 6e-9 relative (L ≤ 65 536 keys).
LOGIT_FLOOR = 30.0


def _floor_logits(score: torch.Tensor, dim: int) -> torch.Tensor:
    """max(score, max_dim(score) - LOGIT_FLOOR), in place (it runs without autograd: in inference and in
    the hand-written backward of training, whose gradient is zero there anyway: Ŝ < 1e-8 is clamped)."""
    floor = score.amax(dim=dim, keepdim=True).sub_(LOGIT_FLOOR)
    return torch.maximum(score, floor, out=score)


def region_affinity(x: torch.Tensor, softmax_scale: float = 10.0, rate: int = 2,
                    query_chunk: int | None = None) -> torch.Tensor:
    """RAL with background = foreground = ``x`` (as CTSDG calls it). (B, C, H, W) -> (B, C, H, W).

    Same numbers as :func:`region_affinity_reference` (the authors' form), with a quarter of the
    multiply-adds for the scores and for the aggregation:

    * Scores: not patch by patch (a (L, C·9) × (C·9, L) product, 19 GFLOP at 256²) but from the Gram
      matrix G = FᵀF of the zero-padded ×½ map (C-deep, 2.4 GFLOP), see :class:`_AttentionRows`.
    * Aggregation (Eq. 5): the authors place Σ_j Ŝ^{i,j} f_j, with f_j the 4×4 stride-2 patch of the
      full map, by a transposed convolution: 16 products of (C, L) × (L, L). Each full-resolution
      pixel of phase (p_y, p_x) (the parity of its row and column) receives exactly four of them,
      and they multiply the *same* phase image X_p (C, L) by the attention shifted along its diagonal,
      so out_p = X_p · A_pᵀ with A_p[i, j] = Σ_{a ∈ {0, s_y}, b ∈ {0, s_x}} Ŝ[i + (a, b), j + (a, b)]
      (s = -1 for even, +1 for odd phases). The four A_p are one sum E of Ŝ and three shifted copies,
      each seen shifted by (p_y, p_x) in query and key; a key shift moves to the values instead, so
      one product E × [X̃_1 | X̃_2 | X̃_3 | X̃_4] (4C wide) gives all four phases: the multiply-adds of
      4 products instead of 16, and 3 passes over the attention for E instead of 18.

    Key norms run in float32. In inference under bf16 autocast the Gram rows, their shifted sums, the
    scores and the softmax run in bf16 too (with the C kernels: stored in bf16, summed in float32): each
    logit keeps bf16's 8-bit mantissa, yet the output
    image moves by only 0.01–0.02/255 more than with the convolutions' bf16 alone (trained weights,
    ``bench/bf16_error.py``), and a 512² forward takes about a sixth less time. With autograd
    (training) they stay float32, because the hand-written backward recomputes them in float32 and
    must differentiate the same function. The aggregation runs in the autocast dtype.

    Queries are processed in chunks of whole rows of the ×½ map (the softmax runs over keys, so this
    is exact). E needs the attention row below each chunk, and the product for the row above; those
    are carried over from the previous chunk, so every attention row, Gram row and E row is computed
    once. ``query_chunk`` sets the queries per chunk; None takes ``QUERIES_PER_CHUNK`` (on small maps as
    many as keep the score block within ``SMALL_MAP_BLOCK_BYTES``), fewer if the block would exceed
    ``ATTENTION_CHUNK_ELEMENTS``. With autograd on (training) the same forward runs
    inside :class:`_RegionAffinity`, whose backward recomputes Ŝ sample by sample.
    """
    if rate != 2:
        return region_affinity_reference(x, softmax_scale, rate)
    small = F.interpolate(x, scale_factor=1 / rate, mode="bilinear", align_corners=True)
    h, w = x.shape[-2:]
    if small.shape[-2] * rate != h or small.shape[-1] * rate != w:
        raise ValueError(f"RAL needs a feature map with even sides, got {h}x{w}")
    if torch.is_grad_enabled() and (x.requires_grad or small.requires_grad):
        return _RegionAffinity.apply(x, small, softmax_scale, query_chunk)
    with torch.no_grad():
        return _region_affinity_forward(x, small, softmax_scale, query_chunk, scores_in_bf16=True)


def _aggregation_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype where autocast is on for ``x``'s device, else ``x``'s own."""
    autocast = torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type)
    return torch.get_autocast_dtype(x.device.type) if autocast else x.dtype


def _region_affinity_forward(x: torch.Tensor, small: torch.Tensor, softmax_scale: float,
                             query_chunk: int | None, scores_in_bf16: bool = False) -> torch.Tensor:
    """:func:`region_affinity` without autograd, ``small`` being x downsampled ×½ (see there). With
    ``scores_in_bf16`` and bf16 autocast on, the scores and the softmax run in bf16 as well (inference)."""
    b, c, h, w = x.shape
    hs, ws = small.shape[-2:]
    agg_dtype = _aggregation_dtype(x)
    values = _phase_values(x, agg_dtype)  # (B, K, 4C), K = (hs+1)(ws+1) the key grid of E
    out = x.new_empty(b, h, w, c, dtype=agg_dtype)  # channels-last, what the MSFA convolutions want
    work: dict = {}
    with autocast_off(x.device.type):
        small = small.float()
        scale = _key_scale(_key_norm2(small), softmax_scale)  # (B, L): 10 / ‖f_j‖, Eq. (4)
        padded = F.pad(small, (1, 1, 1, 1)).flatten(2)  # (B, C, Lp), Lp = (hs+2)(ws+2)
        if scores_in_bf16 and agg_dtype == torch.bfloat16:
            # half the bytes through the Gram rows, their sums and the softmax (not fp16: Gram entries
            # of unnormalised features can pass its range)
            padded, scale = padded.to(agg_dtype), scale.to(agg_dtype)
        rows = _rows_per_chunk(hs, ws, b, query_chunk, score_bytes=padded.element_size())
        producer = _AttentionRows(padded, scale, hs, ws, rows, work)
        # Ŝ zero-padded by one in its query column, key row and key column, for the attention rows
        # r0 - 1 .. r1 of a chunk (row k of the buffer is attention row r0 - 1 + k; row -1 and row hs
        # are zero), so that the shifted sums below are plain slices: a term whose query or key falls
        # off the map reads a zero, exactly the contribution the authors' transposed convolution does
        # not have. In the aggregation dtype: under bf16 autocast the sums and the product read half
        # the bytes (the scores and the softmax stay float32). Only its interior is ever written.
        pad_all = padded.new_zeros(b, rows + 2, ws + 2, hs + 2, ws + 2, dtype=agg_dtype)
        # R: E × values for E rows r0 - 1 .. r1 - 1, (B, rows + 1, ws + 1, 4C)
        res = _buffer(work, "res", (b, rows + 1, ws + 1, 4 * c), out)
        m = 0
        for r0 in range(0, hs, rows):
            if r0 > 0:  # carried from the previous chunk: attention row r0 (its last) and R of E row r0 - 1
                _move_rows(pad_all, m + 1, 1, 1)
                res[:, 0].copy_(res[:, m])
            r1 = min(hs, r0 + rows)
            m = r1 - r0
            if r1 == hs:
                pad_all[:, m + 1].zero_()  # attention row hs: off the map
            a1 = min(hs, r1 + 1)  # the chunk needs attention rows up to r1 (the row below it)
            if producer.next < a1:
                producer.compute(a1, out=pad_all[:, producer.next - r0 + 1:a1 - r0 + 1, 1:-1, 1:-1, 1:-1])
            e0 = r0 - 1 if r0 == 0 else r0  # first E row not carried over
            e = _e_rows(pad_all[:, e0 - r0 + 1:m + 2], work)  # E rows e0 .. r1 - 1, from attention rows e0 .. r1
            ne = r1 - e0
            first = e0 - r0 + 1  # R row of E row e0 (R row k is E row r0 - 1 + k)
            for i in range(b):
                torch.mm(e[i], values[i], out=res[i, first:first + ne].view(ne * (ws + 1), 4 * c))
            # out_p[iy, ix] = R[E row iy - 1 + p_y, column ix + p_x, block p]: Eq. (5), phase p
            blocks = res.view(b, rows + 1, ws + 1, 4, c)
            for py in (0, 1):
                for px in (0, 1):
                    out[:, 2 * r0 + py:2 * r1:2, px::2] = blocks[:, py:py + m, px:px + ws, 2 * py + px]
    # the authors divide by the 4 overlapping 4×4 patches of the transposed convolution
    return out.div_(4.0).to(x.dtype).permute(0, 3, 1, 2)


class _RegionAffinity(torch.autograd.Function):
    """RAL with autograd (training): the forward of inference (:func:`_region_affinity_forward`, which
    keeps no attention), and a hand-written backward that recomputes Ŝ per sample and runs the same
    Gram and phase forms in reverse (:func:`_region_affinity_backward_one`). Autograd through the
    phase form's sliced in-place sums would be ~4× slower, and the unfolded form saves several (L, L)
    tensors per sample and does 4× the multiply-adds."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, small: torch.Tensor, softmax_scale: float,
                query_chunk: int | None) -> torch.Tensor:
        ctx.save_for_backward(x, small)
        ctx.softmax_scale, ctx.agg_dtype, ctx.query_chunk = softmax_scale, _aggregation_dtype(x), query_chunk
        return _region_affinity_forward(x, small, softmax_scale, query_chunk)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, small = ctx.saved_tensors
        grad_x, grad_small = torch.empty_like(x), torch.empty_like(small)
        with autocast_off(x.device.type):
            for i in range(x.shape[0]):
                gx, gs = _region_affinity_backward_one(x[i], small[i], grad[i], ctx.softmax_scale, ctx.agg_dtype,
                                                       ctx.query_chunk)
                grad_x[i], grad_small[i] = gx, gs
        return grad_x, grad_small, None, None


def _region_affinity_backward_one(x: torch.Tensor, small: torch.Tensor, grad: torch.Tensor,
                                  softmax_scale: float, agg_dtype: torch.dtype,
                                  query_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of RAL for one sample: x (C, H, W), small = x ×½ (C, hs, ws), grad = ∂loss/∂out (C, H, W)
    -> (∂loss/∂x through the values, ∂loss/∂small through the scores), both float32.

    Reverses :func:`_region_affinity_forward` (same notation). The gradient of R = E × values is ∂R,
    the output gradient laid out like R (block p shifted by (p_y, p_x)); then

    * ∂values = Eᵀ ∂R and ∂E = ∂R valuesᵀ: the two products of the forward's size, 4C deep;
    * E = Ŝ + three shifted copies, so ∂Ŝ[i, j] = Σ_{a, b ∈ {0, 1}} ∂E[i + (a, b), j + (a, b)]
      (two sums of slices, through H = the pairs along x);
    * through the authors' clamp (no gradient below 1e-8), the softmax, and the key scale
      10/max(‖f_j‖, 1e-4) (its gradient reaches small through the norm's 3×3 box sum);
    * S = Σ_o G[i + o, j + o] with G = FᵀF, so ∂G is ∂S summed back at the nine shifts, and
      ∂F = F ∂G + F ∂Gᵀ.

    The products are those of the forward: 2 + 9 + 9 + 5 GFLOP per sample at 256² (full width)
    where the unfolded form differentiates with about 106. Like the forward it runs in blocks of
    query rows, each row computed once: Ŝ, S and E row by row (:class:`_AttentionRows`), carrying
    what a block shares with the next (attention row r0 - 1 for E, the H row r0 for ∂Ŝ, the ∂S rows
    r0 - 2, r0 - 1 for ∂G), so the (L, L) matrices never exist whole and the blocks stay in cache.
    Scores, softmax and ∂S run in float32; E, ∂E and their products in ``agg_dtype``.
    """
    c, hs, ws = small.shape
    n, lp, grid = hs * ws, (hs + 2) * (ws + 2), (hs + 1) * (ws + 1)
    small = small.float()
    padded = F.pad(small, (1, 1, 1, 1)).reshape(1, c, lp)
    norm2 = _key_norm2(small[None])  # (1, L), also for the key scale's gradient at the end
    scale = _key_scale(norm2, softmax_scale)  # (1, L)
    rows = _rows_per_chunk(hs, ws, 1, query_chunk)
    work: dict = {}
    producer = _AttentionRows(padded, scale, hs, ws, rows, work)
    # values and ∂R laid out like the forward's values and R (the output gradient's block p sits where
    # R's block p is read from)
    values = _phase_values(x[None], agg_dtype)[0]
    grad_r = _phase_values(grad[None], agg_dtype)[0].div_(4.0)  # the authors' /4
    f = padded[0]
    grad_values = torch.zeros(grid, 4 * c, dtype=torch.float32, device=x.device)
    grad_padded = torch.zeros(c, lp, dtype=torch.float32, device=x.device)  # ∂F
    grad_scale = torch.zeros(n, dtype=torch.float32, device=x.device)
    # row k of each buffer: attention row r0 - 1 + k (zero-padded as in the forward), H row r0 + k,
    # ∂S row r0 - 2 + k; r0 the block's first query row
    pad_all = padded.new_zeros(rows + 2, ws + 2, hs + 2, ws + 2, dtype=agg_dtype)
    h_rows = padded.new_empty(rows + 1, ws, hs + 1, ws, dtype=agg_dtype)
    grad_score = padded.new_empty(rows + 2, ws, hs, ws)
    score_rows = padded.new_empty(rows, ws, hs, ws)
    attn_rows = padded.new_empty(rows, ws, hs, ws)
    m = 0
    for r0 in range(0, hs, rows):
        if r0 > 0:  # carried from the previous block
            _move_rows(pad_all[None], m, 0, 1)
            _move_rows(h_rows[None], m, 0, 1)
            _move_rows(grad_score[None], m, 0, 2)
        r1 = min(hs, r0 + rows)
        m, last = r1 - r0, r1 == hs
        score, attn = score_rows[:m], attn_rows[:m]
        producer.compute(r1, out=attn[None], scores=score[None])  # S and the softmax of query rows r0 .. r1 - 1
        pad_all[1:m + 1, 1:-1, 1:-1, 1:-1] = attn.clamp_min(1e-8)  # Ŝ, the authors' clamp
        if last:
            pad_all[m + 1].zero_()  # attention row hs: off the map
        # E rows r0 .. e1 - 1 (the last block also row hs) from attention rows r0 - 1 .. e1 - 1; ∂values += Eᵀ ∂R
        e1 = hs + 1 if last else r1
        e = _e_rows(pad_all[None, :e1 - r0 + 1], work)[0]
        part = grad_r[r0 * (ws + 1):e1 * (ws + 1)]
        if e.dtype == grad_values.dtype:
            grad_values.addmm_(e.t(), part)
        else:
            grad_values += torch.mm(e.t(), part)
        del e
        # ∂E rows h0 .. r1 -> H[t, u, k, v] = ∂E[t, u, k, v] + ∂E[t, u + 1, k, v + 1] (H row r0 is carried)
        h0 = r0 + 1 if r0 > 0 else r0
        grad_e = torch.mm(grad_r[h0 * (ws + 1):(r1 + 1) * (ws + 1)], values.t()).view(r1 + 1 - h0, ws + 1, hs + 1, ws + 1)
        torch.add(grad_e[:, :ws, :, :ws], grad_e[:, 1:, :, 1:], out=h_rows[h0 - r0:m + 1])
        del grad_e
        # ∂Ŝ[iy, ix, jy, jx] = H[iy, ix, jy, jx] + H[iy + 1, ix, jy + 1, jx], then the clamp and the softmax
        grad_attn = torch.add(h_rows[:m, :, :hs], h_rows[1:m + 1, :, 1:]).float().view(m * ws, n)
        attn, score = attn.view(m * ws, n), score.view(m * ws, n)
        # the clamp: its effect stays below float32 rounding in every test case (the softmax backward
        # multiplies by P < 1e-8 there anyway); kept so that this is the derivative of what runs
        grad_attn.masked_fill_(attn < 1e-8, 0.0)
        grad_attn -= (grad_attn * attn).sum(dim=-1, keepdim=True)
        grad_attn *= attn  # ∂ of the logits
        grad_scale += (grad_attn * score).sum(dim=0)  # ∂ of 10/‖f_j‖: × S^{i,j}, summed over the queries i
        grad_score[2:m + 2] = grad_attn.mul_(scale).view(m, ws, hs, ws)  # ∂S
        del grad_attn
        # ∂G for padded rows r0 .. g1 - 1 (the last block also hs, hs + 1): ∂S at the nine shifts, the
        # three along y from ∂S rows a - 2 .. a, then the three along x
        g1 = hs + 2 if last else r1
        grad_along_x = padded.new_zeros(g1 - r0, ws, hs + 2, ws)
        for o in range(3):
            lo, hi = max(r0, o), min(g1, hs + o)
            grad_along_x[lo - r0:hi - r0, :, o:o + hs] += grad_score[lo - o - r0 + 2:hi - o - r0 + 2]
        grad_gram = padded.new_zeros(g1 - r0, ws + 2, hs + 2, ws + 2)
        for o in range(3):
            grad_gram[:, o:o + ws, :, o:o + ws] += grad_along_x
        del grad_along_x
        grad_gram = grad_gram.view(-1, lp)
        a0, a1 = r0 * (ws + 2), g1 * (ws + 2)
        grad_padded.addmm_(f[:, a0:a1], grad_gram)  # F ∂G, these rows of ∂G
        grad_padded[:, a0:a1].addmm_(f, grad_gram.t())  # F ∂Gᵀ, these columns
        del grad_gram
    grad_values = grad_values.view(hs + 1, ws + 1, 4, c)
    grad_x = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for py in (0, 1):
        for px in (0, 1):
            grad_x[:, py::2, px::2] = grad_values[py:py + hs, px:px + ws, 2 * py + px].permute(2, 0, 1)
    # scale_j = 10 / sqrt(n2_j) with n2 = box3(Σ_c small²) (_key_scale); no gradient where the 1e-4 floor holds
    norm2 = norm2[0]
    grad_norm2 = torch.where(norm2.sqrt() > 1e-4, grad_scale * scale[0] / (-2.0 * norm2), 0.0)
    grad_small = 2.0 * small * _box3(grad_norm2.view(1, 1, hs, ws))[0]
    grad_small += grad_padded.view(c, hs + 2, ws + 2)[:, 1:-1, 1:-1]
    return grad_x, grad_small


def region_affinity_reference(x: torch.Tensor, softmax_scale: float = 10.0, rate: int = 2) -> torch.Tensor:
    """The authors' RAL, literally (spec §1.5): per sample, the scores are a convolution of the ×½ map
    with its own L2-normalised 3×3 patches and the output a transposed convolution of the attention
    with the 4×4 full-resolution patches. For tests and benchmarks; (B, C, H, W) -> (B, C, H, W)."""
    outs = []
    for xi in x.split(1):
        fg = F.interpolate(xi, scale_factor=1 / rate, mode="bilinear", align_corners=True)
        c = xi.shape[1]
        bg = F.unfold(F.pad(xi, (1, 1, 1, 1)), 2 * rate, stride=rate)  # (1, C*16, L)
        bg = bg.transpose(1, 2).reshape(-1, c, 2 * rate, 2 * rate)
        keys = F.unfold(F.pad(fg, (1, 1, 1, 1)), 3).transpose(1, 2).reshape(-1, c, 3, 3)
        norm = keys.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-4)
        score = F.conv2d(fg, keys / norm, padding=1)
        attn = F.softmax(score * softmax_scale, dim=1).clamp(min=1e-8)
        outs.append(F.conv_transpose2d(attn, bg, stride=rate, padding=1) / 4.0)
    return torch.cat(outs)


class MSFA(nn.Module):
    """Multi-scale feature aggregation over dilation rates (Eq. 6-7). Keys: dilated_conv_i, weight_calc."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = (1, 2, 4, 8)):
        super().__init__()
        self.dilations = tuple(dilations)
        for i, d in enumerate(self.dilations):
            conv = nn.Sequential(winograd.Conv2d(channels, channels, 3, padding=d, dilation=d), nn.ReLU())
            self.add_module(f"dilated_conv_{i}", conv)
        self.weight_calc = nn.Sequential(
            winograd.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, len(self.dilations), 1), nn.ReLU(),
            nn.Softmax(dim=1),
        )

    def branch_weights(self, x: torch.Tensor) -> torch.Tensor:
        """W (B, K, H, W), summing to 1 over the K branches."""
        return self.weight_calc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.branch_weights(x)  # Eq. (6): W = Softmax(G_w(F_rec))
        if not torch.is_grad_enabled():  # inference: ReLU in place, each branch multiplied and added in one pass
            out = None
            for i in range(len(self.dilations)):
                conv = getattr(self, f"dilated_conv_{i}")[0]
                branch = F.relu_(conv(x))  # F_rec^k = Conv_k(F_rec)
                w = weights[:, i:i + 1]
                out = branch.mul_(w) if out is None else out.addcmul_(branch, w)  # Eq. (7): Σ_k F_rec^k ⊙ W^k
            return out
        out = 0
        for i in range(len(self.dilations)):
            branch = getattr(self, f"dilated_conv_{i}")(x)  # F_rec^k = Conv_k(F_rec)
            out = out + branch * weights[:, i:i + 1]  # Eq. (7): Σ_k F_rec^k ⊙ W^k
        return out


class CFA(nn.Module):
    """RAL then MSFA. The only parameters are MSFA's (key prefix ``cfa.msfa``)."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = (1, 2, 4, 8), softmax_scale: float = 10.0):
        super().__init__()
        self.softmax_scale = softmax_scale
        self.query_chunk: int | None = None  # set by callers to bound memory on large inputs
        self.msfa = MSFA(channels, dilations)

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); ``reference`` runs RAL in the authors' form."""
        if reference:
            return self.msfa(region_affinity_reference(x, self.softmax_scale))
        return self.msfa(region_affinity(x, self.softmax_scale, query_chunk=self.query_chunk))


class ContextualAttention(nn.Module):
    """DeepFill's contextual attention (Yu et al., CVPR 2018) for the "w/ CA" ablation.

    Differs from RAL in that keys whose 3×3 patch touches a hole are excluded, and the attention
    scores are propagated along the diagonal (fuse kernel 3) before the softmax. No parameters.
    """

    def __init__(self, softmax_scale: float = 10.0, rate: int = 2, fuse_k: int = 3):
        super().__init__()
        self.softmax_scale, self.rate, self.fuse_k = softmax_scale, rate, fuse_k

    def forward(self, x: torch.Tensor, known_mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W); known_mask (B, 1, H, W), 1 = valid."""
        b, c, h, w = x.shape
        r = self.rate
        small = F.interpolate(x, scale_factor=1 / r, mode="bilinear", align_corners=True)
        hs, ws = small.shape[-2:]
        small_mask = -F.max_pool2d(-known_mask, r)  # known only if every covered pixel is known
        patches = F.unfold(small, 3, padding=1)
        keys = patches / patches.norm(dim=1, keepdim=True).clamp_min(1e-4)
        small_hole = 1.0 - small_mask  # zero padding of the hole mask = the border counts as known
        valid_key = (F.unfold(small_hole, 3, padding=1).amax(dim=1) == 0).to(x.dtype)  # (B, L)
        score = torch.bmm(keys.transpose(1, 2), patches)  # (B, L_keys, L_queries)
        if self.fuse_k > 1:  # propagate along the diagonal in both spatial directions
            eye = torch.eye(self.fuse_k, dtype=x.dtype, device=x.device)[None, None]
            pad = self.fuse_k // 2
            n = hs * ws
            s = F.conv2d(score.reshape(b, 1, n, n), eye, padding=pad)
            s = s.reshape(b, hs, ws, hs, ws).permute(0, 2, 1, 4, 3).reshape(b, 1, n, n)
            s = F.conv2d(s, eye, padding=pad)
            score = s.reshape(b, ws, hs, ws, hs).permute(0, 2, 1, 4, 3).reshape(b, n, n)
        score = score * valid_key[:, :, None]
        attn = torch.softmax(score * self.softmax_scale, dim=1) * valid_key[:, :, None]
        attn = attn.clamp_min(1e-8)
        values = F.unfold(x, kernel_size=2 * r, stride=r, padding=1)
        out = torch.bmm(values, attn)
        return F.fold(out, output_size=(h, w), kernel_size=2 * r, stride=r, padding=1) / 4.0
