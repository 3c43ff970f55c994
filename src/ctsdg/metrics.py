"""Image-quality metrics for inpainting, with their conventions written down (docs/metrics.md).

Every function takes **RGB float tensors (B, 3, H, W) in [0, 1]** (``pred`` first, ``target`` second)
and returns one value per image, shape (B,), unless it says otherwise. Evaluation feeds them the
*composited* output ``target * known + output * hole`` (conventions.composite), quantised to uint8 levels
by default (what a saved PNG holds; :func:`quantize`).

Two families:

* ``standard`` (default): PSNR per image with data range 1 and a cap of :data:`PSNR_CAP_DB`; SSIM exactly as
  scikit-image's ``structural_similarity(..., channel_axis=-1, data_range=1, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)`` (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
  K2 0.03, statistics only where the window fits, mean over pixels and channels).
* ``lbam``: what the CTSDG authors say they used (spec §4, LBAM's ``pytorch_ssim``): SSIM on 0..255 data
  with the range-1 constants C1 = 0.01², C2 = 0.03², a zero-padded 11x11 window, and PSNR from the mean
  MSE of a whole batch (:func:`psnr_lbam_batch`).

LPIPS (:class:`LPIPS`) is richzhang's v0.1 metric with AlexNet or VGG16 (weights from pretrained.py). FID
(:class:`FIDStatistics`, :class:`InceptionFeatures`, :func:`frechet_distance`) uses the TF Inception-v3 pool3
features of pytorch-fid/clean-fid, with mergeable sufficient statistics so that shards and resumed runs add up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import pretrained

PSNR_CAP_DB = 100.0  # PSNR of identical images (MSE floored at 10**(-PSNR_CAP_DB / 10) for data range 1)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
LBAM_BATCH = 16  # LBAM's default test batch size: its PSNR is computed per batch of this many images
FID_SIZE = 299


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction has shape {tuple(pred.shape)} but target has {tuple(target.shape)}")
    if pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"metrics take RGB batches (B, 3, H, W) in [0, 1]; got shape {tuple(pred.shape)}")


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] values to the 256 uint8 levels and back: what saving and re-reading a PNG does."""
    return x.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image over all pixels and channels, [0, 1] data. Returns (B,)."""
    _check_pair(pred, target)
    return (pred.double() - target.double()).abs().flatten(1).mean(1)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image (float64). Returns (B,)."""
    _check_pair(pred, target)
    return (pred.double() - target.double()).pow(2).flatten(1).mean(1)


def psnr_from_mse(mse_value: torch.Tensor | float, data_range: float = 1.0) -> torch.Tensor:
    """PSNR = 10 log10(R² / MSE) in dB, with MSE floored so identical images give :data:`PSNR_CAP_DB`."""
    mse_value = torch.as_tensor(mse_value, dtype=torch.float64)
    floor = data_range**2 * 10.0 ** (-PSNR_CAP_DB / 10.0)
    return 10.0 * torch.log10(data_range**2 / mse_value.clamp_min(floor))


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB on RGB (no Y channel), capped at :data:`PSNR_CAP_DB`. Returns (B,) float64."""
    return psnr_from_mse(mse(pred, target), data_range)


def psnr_lbam_batch(pred: torch.Tensor, target: torch.Tensor) -> float:
    """LBAM's PSNR: ``10 log10(1 / MSE)`` with the MSE averaged over the whole batch (not per image)."""
    return float(psnr_from_mse(mse(pred, target).mean()))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``exp(-x² / 2σ²)`` for x = -(size//2)..size//2, float64."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, taps: torch.Tensor, padding: int) -> torch.Tensor:
    """Separable depth-wise Gaussian filter of (B, C, H, W)."""
    c = x.shape[1]
    k = taps.numel()
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), padding=(padding, 0), groups=c)
    return F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, padding), groups=c)


def _ssim_map(x: torch.Tensor, y: torch.Tensor, c1: float, c2: float, padding: int) -> torch.Tensor:
    taps = gaussian_window().to(x.device)
    mu_x, mu_y = _filter(x, taps, padding), _filter(y, taps, padding)
    var_x = _filter(x * x, taps, padding) - mu_x**2
    var_y = _filter(y * y, taps, padding) - mu_y**2
    cov = _filter(x * y, taps, padding) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per image, equal to scikit-image's Wang et al. settings (see module docstring). Returns (B,).

    Computed in float64 over the "valid" region (where the 11x11 window fits, as scikit-image crops),
    averaged over pixels, then over the three channels. Needs H, W >= 11.
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(pred.shape[-2:])}")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return _ssim_map(pred.double(), target.double(), c1, c2, padding=0).flatten(1).mean(1)


def ssim_lbam(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM as LBAM's ``pytorch_ssim.ssim(GT * 255, out * 255)``: inputs scaled to 0..255 but the constants
    left at C1 = 0.01², C2 = 0.03² (range 1), zero padding of 5, mean over the whole map. Returns (B,)."""
    _check_pair(pred, target)
    return _ssim_map(pred.double() * 255, target.double() * 255, SSIM_K1**2, SSIM_K2**2, SSIM_WINDOW // 2).flatten(1).mean(1)


LPIPS_NETS = ("alex", "vgg")  # the backbones LPIPS v0.1 has heads for


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity v0.1 (Zhang et al. 2018), lower is more similar.

    ``d(x, y) = Σ_l mean_hw( w_l · (x̂_l − ŷ_l)² )`` where ``x̂_l`` are the backbone's ReLU activations at
    five depths, unit-normalised across channels, and ``w_l >= 0`` the learned linear heads. Images enter
    in [0, 1], are mapped to [-1, 1] and shifted/scaled as LPIPS's ``ScalingLayer`` does.

    Args:
        net: "alex" (the LPIPS default) or "vgg".
        backbone_path, heads_path: optional user weight files (see pretrained.py); default: the packages.
    """

    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, net: str = "alex", backbone_path=None, heads_path=None):
        super().__init__()
        if net == "alex":
            self.features = pretrained.alexnet_features(backbone_path)
            self.taps = pretrained.ALEXNET_LPIPS_TAPS
        elif net == "vgg":
            self.features = pretrained.vgg16_features(backbone_path)
            self.taps = pretrained.VGG16_LPIPS_TAPS
        else:
            raise ValueError(f"unknown LPIPS backbone {net!r}; use 'alex' or 'vgg'")
        self.net = net
        for i, w in enumerate(pretrained.lpips_head_weights(net, heads_path)):
            self.register_buffer(f"head{i}", w, persistent=False)
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:  # a metric: always eval
        return super().train(False)

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x * 2.0 - 1.0) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: (B, 3, H, W) in [0, 1] -> (B,) float64."""
        return self.distance(pred, target).double()

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The same distance in float32, differentiable in ``pred`` (for a training loss; the backbone and
        heads stay frozen). pred, target: (B, 3, H, W) in [0, 1] -> (B,)."""
        _check_pair(pred, target)
        total = pred.new_zeros(pred.shape[0], dtype=torch.float32)
        with torch.no_grad():
            target_acts = self._activations(target.float())
        for i, (a, b) in enumerate(zip(self._activations(pred.float()), target_acts, strict=True)):
            head = getattr(self, f"head{i}")
            total = total + F.conv2d((a - b) ** 2, head).mean((1, 2, 3))
        return total


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features for FID: (B, 3, H, W) in [0, 1] -> (B, 2048) float64.

    Images are resized to 299x299 with bilinear interpolation (``align_corners=False``, as pytorch-fid)
    and mapped to the TF graph's input range ``(255 x - 128) / 128``.
    """

    def __init__(self, weights_path=None):
        super().__init__()
        self.model = pretrained.inception_fid(weights_path)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        x = images.float().clamp(0, 1)
        if x.shape[-2:] != (FID_SIZE, FID_SIZE):
            x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
        return self.model((x * 255.0 - 128.0) / 128.0).double()


FID_KEEP_FEATURES = 2048  # below this many images the features are kept and FID uses the exact low-rank form


@dataclass
class FIDStatistics:
    """Sufficient statistics of a feature set: count, Σf and Σffᵀ (float64). Adding two of them (shards,
    resumed runs) gives exactly the statistics of the union. While the set has at most
    :data:`FID_KEEP_FEATURES` members the features themselves are kept too (see :func:`fid`)."""

    count: int
    total: np.ndarray  # (D,)
    outer: np.ndarray  # (D, D)
    features: np.ndarray | None = None  # (count, D) while count <= FID_KEEP_FEATURES

    @classmethod
    def empty(cls, dim: int = 2048) -> FIDStatistics:
        return cls(0, np.zeros(dim), np.zeros((dim, dim)), np.zeros((0, dim)))

    @classmethod
    def of(cls, features: np.ndarray | torch.Tensor) -> FIDStatistics:
        f = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
        f = f.reshape(-1, f.shape[-1])
        return cls(f.shape[0], f.sum(0), f.T @ f, f if f.shape[0] <= FID_KEEP_FEATURES else None)

    def __add__(self, other: FIDStatistics) -> FIDStatistics:
        count = self.count + other.count
        feats = None
        if self.features is not None and other.features is not None and count <= FID_KEEP_FEATURES:
            feats = np.concatenate([self.features, other.features])
        return FIDStatistics(count, self.total + other.total, self.outer + other.outer, feats)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (``np.cov`` with N - 1), as pytorch-fid computes them."""
        if self.count < 2:
            raise ValueError(f"FID needs at least 2 images, got {self.count}")
        mu = self.total / self.count
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, cov


def _fid_low_rank(f1: np.ndarray, f2: np.ndarray) -> float:
    """Exact FID from the features of two small sets (N < D): with centred features A_i,
    Σ_i = A_iᵀA_i / (n_i − 1), the non-zero eigenvalues of Σ1Σ2 are the squared singular values of
    A1A2ᵀ / sqrt((n1 − 1)(n2 − 1)), so Tr((Σ1Σ2)^½) is that matrix's nuclear norm (n1 x n2, not D x D)."""
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    n1, n2 = f1.shape[0] - 1, f2.shape[0] - 1
    diff = f1.mean(0) - f2.mean(0)
    trace_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / math.sqrt(n1 * n2)
    return float(diff @ diff + (a1 * a1).sum() / n1 + (a2 * a2).sum() / n2 - 2.0 * trace_sqrt)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((Σ1 Σ2)^½)`` for covariance (symmetric PSD) matrices.

    Σ1 Σ2 is similar to the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, so the trace of its square root is the sum of
    the square roots of that matrix's eigenvalues: two symmetric eigendecompositions instead of a general
    matrix square root (``scipy.linalg.sqrtm``, which pytorch-fid uses; same value, several times faster
    and free of its complex round-off at 2048 dimensions).
    """
    lam, vec = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vec * np.sqrt(np.clip(lam, 0, None))) @ vec.T
    mid = root1 @ sigma2 @ root1
    mu = np.linalg.eigvalsh((mid + mid.T) / 2)
    return float(np.sqrt(np.clip(mu, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||μ1 − μ2||² + Tr(Σ1) + Tr(Σ2) − 2 Tr((Σ1 Σ2)^½)`` (Dowson & Landau 1982), the FID formula."""
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid(real: FIDStatistics, fake: FIDStatistics) -> float:
    """FID between two feature sets given as :class:`FIDStatistics`. ``nan`` if either has < 2 images."""
    if real.count < 2 or fake.count < 2:
        return math.nan
    if real.features is not None and fake.features is not None:
        return _fid_low_rank(real.features, fake.features)
    return frechet_distance(*real.mean_cov(), *fake.mean_cov())
