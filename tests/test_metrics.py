"""Metrics against closed forms, scikit-image, and the official LPIPS code."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from ctsdg import metrics, pretrained


def _smooth_pair(seed: int = 0, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1) * 0.4 + 0.5
    a = np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1)
    b = np.clip(base + 0.1 * rng.standard_normal(base.shape), 0, 1)
    return a, b


def _t(x: np.ndarray) -> torch.Tensor:  # (H, W, 3) -> (1, 3, H, W)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]


def test_psnr_of_a_constant_offset_of_0_1_is_20_db():
    target = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 0.9
    # MSE = 0.1² = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    torch.testing.assert_close(metrics.psnr(target + 0.1, target), torch.full((2,), 20.0, dtype=torch.float64))
    assert metrics.psnr_lbam_batch(target + 0.1, target) == pytest.approx(20.0, abs=1e-9)


def test_psnr_of_identical_images_is_the_documented_cap():
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(metrics.psnr(x, x), torch.full((3,), metrics.PSNR_CAP_DB, dtype=torch.float64))
    assert metrics.PSNR_CAP_DB == 100.0


def test_lbam_psnr_averages_mse_over_the_batch_not_psnr():
    target = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01
    pred[1] += 0.2  # MSE 0.04 -> batch MSE 0.025
    assert metrics.psnr_lbam_batch(pred, target) == pytest.approx(10 * math.log10(1 / 0.025), abs=1e-9)
    per_image = metrics.psnr(pred, target)
    assert per_image.tolist() == pytest.approx([20.0, 10 * math.log10(25)], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_equals_scikit_image(seed):
    a, b = _smooth_pair(seed)
    ref = structural_similarity(
        a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    ours = float(metrics.ssim(_t(a), _t(b)))
    assert abs(ours - ref) < 1e-6
    assert float(metrics.ssim(_t(a), _t(a))) == pytest.approx(1.0, abs=1e-12)


def test_ssim_on_uint8_levels_equals_scikit_image_on_uint8():
    a, b = _smooth_pair(5)
    a8, b8 = (a * 255).round().astype(np.uint8), (b * 255).round().astype(np.uint8)
    ref = structural_similarity(
        a8, b8, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    ours = float(metrics.ssim(_t(a8 / 255.0), _t(b8 / 255.0)))
    assert abs(ours - ref) < 1e-6


def test_lbam_ssim_closed_form_for_constant_images():
    # constant images: variances and covariance are 0 away from the zero-padded border, so the SSIM map
    # there is (2 m1 m2 + C1) / (m1² + m2² + C1) with m on the 0..255 scale and C1 = 0.01² (not (0.01*255)²)
    a = torch.full((1, 3, 31, 31), 0.5, dtype=torch.float64)
    b = torch.full((1, 3, 31, 31), 0.25, dtype=torch.float64)
    m1, m2, c1 = 127.5, 63.75, 0.01**2
    expected_interior = (2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1)
    full = metrics._ssim_map(a * 255, b * 255, c1, 0.03**2, padding=5)
    # (E[x²] - E[x]² on a 0..255 scale cancels to ~1e-9, which the tiny C2 = 0.03² does not absorb)
    assert full[..., 5:-5, 5:-5].sub(expected_interior).abs().max() < 1e-8
    assert float(metrics.ssim_lbam(a, b)) == pytest.approx(float(full.mean()), abs=1e-12)
    # and it differs from the standard SSIM, which on these images is the same closed form with C1 = 0.01²
    std = float(metrics.ssim(a, b))
    assert std == pytest.approx((2 * 0.5 * 0.25 + 1e-4) / (0.25 + 0.0625 + 1e-4), abs=1e-12)


def test_l1_closed_form():
    target = torch.zeros(1, 3, 4, 4)
    pred = target.clone()
    pred[0, 0] = 0.3  # one channel of three off by 0.3 -> mean 0.1
    assert float(metrics.l1(pred, target)) == pytest.approx(0.1, abs=1e-7)


def test_quantize_matches_uint8_round_trip():
    x = torch.rand(1, 3, 5, 5)
    expected = torch.from_numpy((x.numpy() * 255).round().astype(np.uint8).astype(np.float32) / 255)
    torch.testing.assert_close(metrics.quantize(x), expected, atol=0, rtol=0)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


@pytest.fixture(scope="module")
def official_lpips():
    """richzhang's lpips package (its own scaling, normalisation, head loading and averaging code), with a
    stand-in ``torchvision.models`` that hands it our ImageNet backbones (torchvision does not import here)."""
    fake_tv = types.ModuleType("torchvision")
    fake_tv.models = types.SimpleNamespace(
        alexnet=lambda **_: types.SimpleNamespace(features=pretrained.alexnet_features()),
        vgg16=lambda **_: types.SimpleNamespace(features=pretrained.vgg16_features()),
    )
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
    sys.modules["torchvision"], sys.modules["torchvision.models"] = fake_tv, fake_tv.models
    try:
        import lpips

        yield lpips
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_official_package(official_lpips, net):
    ref_model = official_lpips.LPIPS(net=net, verbose=False)
    ours = metrics.LPIPS(net)
    a, b = _smooth_pair(3, size=64)
    x, y = _t(a).float(), _t(b).float()
    with torch.no_grad():
        expected = ref_model(x, y, normalize=True).flatten()
    got = ours(x, y)
    assert abs(float(got) - float(expected)) < 1e-5
    assert float(got) > 0.01  # a real distance, not a degenerate zero
    assert float(ours(x, x)) == 0.0


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    # ||mu1-mu2||² + sum(s1 + s2 - 2 sqrt(s1 s2)) = 5 + (1+4-4) + (4+4-8) + (9+1-6) = 10
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(10.0, abs=1e-9)


def test_fid_statistics_merge_equals_numpy_cov_of_the_union():
    rng = np.random.default_rng(0)
    f1, f2 = rng.standard_normal((7, 5)), rng.standard_normal((4, 5)) + 1
    merged = metrics.FIDStatistics.of(f1) + metrics.FIDStatistics.of(f2)
    mu, cov = merged.mean_cov()
    union = np.concatenate([f1, f2])
    np.testing.assert_allclose(mu, union.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(union, rowvar=False), atol=1e-12)
    assert metrics.fid(merged, merged) == pytest.approx(0.0, abs=1e-6)


def test_inception_features_take_unit_range_images():
    feats = metrics.InceptionFeatures()(torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, 2048) and feats.dtype == torch.float64


def test_trace_sqrt_product_equals_scipy_sqrtm():
    import scipy.linalg

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 5)), rng.standard_normal((9, 5))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert metrics.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-9)


def test_low_rank_fid_equals_the_covariance_formula():
    rng = np.random.default_rng(2)
    f1, f2 = rng.standard_normal((5, 8)), rng.standard_normal((4, 8)) * 2 + 0.5
    full = metrics.frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    s1, s2 = metrics.FIDStatistics.of(f1[:2]) + metrics.FIDStatistics.of(f1[2:]), metrics.FIDStatistics.of(f2)
    assert s1.features is not None
    # (rank-deficient covariances: the eigen path takes square roots of ~1e-16 round-off eigenvalues)
    assert metrics.fid(s1, s2) == pytest.approx(full, rel=1e-6)
    s1.features = None  # the sufficient-statistics path gives the same number
    assert metrics.fid(s1, s2) == pytest.approx(full, rel=1e-6)


def test_lpips_distance_is_the_metric_and_differentiable():
    """metrics.LPIPS.distance (the training term) equals the metric and passes gradients to pred only."""
    ours = metrics.LPIPS("alex")
    a, b = _smooth_pair(3, size=64)
    x, y = _t(a).float().requires_grad_(), _t(b).float()
    value = ours.distance(x, y)
    assert value.dtype == torch.float32
    assert abs(value.item() - float(ours(x.detach(), y))) < 1e-6
    value.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in ours.parameters())
