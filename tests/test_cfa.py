"""CFA: RAL equals the official per-sample conv/transposed-conv form; MSFA weights sum to 1."""

import torch
import torch.nn.functional as F

from ctsdg.cfa import CFA, MSFA, ContextualAttention, region_affinity


def official_ral(x, softmax_scale=10.0, rate=2):
    """The authors' RAL written as in their code: a loop over samples, conv2d for the scores and
    conv_transpose2d for the aggregation (spec §1.5)."""
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


def test_region_affinity_matches_the_official_form():
    x = torch.randn(2, 6, 16, 24)
    torch.testing.assert_close(region_affinity(x), official_ral(x), rtol=1e-4, atol=1e-5)


def test_query_chunking_is_exact():
    x = torch.randn(1, 4, 32, 32)
    torch.testing.assert_close(region_affinity(x, query_chunk=37), region_affinity(x), rtol=0, atol=1e-6)


def test_msfa_weights_sum_to_one_and_output_is_their_mixture():
    m = MSFA(8, (1, 2, 4, 8))
    x = torch.randn(2, 8, 32, 32)
    w = m.branch_weights(x)
    assert w.shape == (2, 4, 32, 32)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 32, 32))
    branches = [getattr(m, f"dilated_conv_{i}")(x) for i in range(4)]
    torch.testing.assert_close(m(x), sum(b * w[:, i:i + 1] for i, b in enumerate(branches)))


def test_cfa_is_ral_then_msfa():
    cfa = CFA(8)
    x = torch.randn(1, 8, 16, 16)
    torch.testing.assert_close(cfa(x), cfa.msfa(region_affinity(x)))


def test_contextual_attention_without_holes_and_fusion_is_ral():
    x = torch.randn(1, 4, 16, 16)
    ca = ContextualAttention(fuse_k=1)
    torch.testing.assert_close(ca(x, torch.ones(1, 1, 16, 16)), region_affinity(x), rtol=1e-5, atol=1e-6)


def test_contextual_attention_never_copies_from_holes():
    """Values inside the hole are huge; output built from valid keys only stays small."""
    x = torch.rand(1, 4, 32, 32)
    known = torch.ones(1, 1, 32, 32)
    known[..., 8:24, 8:24] = 0
    x_bad = x.clone()
    x_bad[..., 8:24, 8:24] = 1000.0
    out = ContextualAttention()(x_bad, known)
    assert out.abs().max() < 5.0
    # while plain RAL (no mask) does copy them
    assert region_affinity(x_bad).abs().max() > 100.0
