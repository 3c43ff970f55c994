"""Classical baselines: known pixels pass through, constant and linear images are filled as the maths says."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ctsdg import baselines

# pypatchmatch 2.2.0, the prebuilt one the extras pin, needs Python 3.11 or newer (pyproject.toml)
needs_patchmatch = pytest.mark.skipif(sys.version_info < (3, 11), reason="pypatchmatch 2.2.0 needs Python >= 3.11")


def _hole(h: int = 48, w: int = 64) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[14:30, 20:44] = 255
    return m


@pytest.mark.parametrize("name", [pytest.param(name, marks=needs_patchmatch) if name == "patchmatch" else name
                                  for name in baselines.BASELINES])
def test_known_pixels_pass_through_and_constant_images_stay_constant(name):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    hole = _hole()
    out = baselines.get_baseline(name)(image, hole)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[hole == 0], image[hole == 0])

    flat = np.empty((48, 64, 3), np.uint8)
    flat[:] = (40, 120, 200)
    filled = baselines.get_baseline(name)(flat, hole)
    # every method fills a hole in a constant image with that constant, up to one grey level of rounding;
    # OpenCV's Telea is measured off by up to 3 levels (its fast-marching weights, a known quirk)
    tolerance = 3 if name == "telea" else 1
    assert np.abs(filled.astype(int) - flat.astype(int)).max() <= tolerance


def test_biharmonic_reproduces_a_linear_ramp():
    # a linear function is biharmonic (its bi-Laplacian is 0), so the fill equals the ramp up to rounding
    x = np.linspace(20, 230, 64)
    ramp = np.repeat(np.repeat(x[None, :, None], 48, 0), 3, 2).round().astype(np.uint8)
    out = baselines.biharmonic(ramp, _hole())
    assert np.abs(out.astype(int) - ramp.astype(int)).max() <= 1


@needs_patchmatch
def test_patchmatch_is_deterministic():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    a = baselines.patchmatch(image, _hole())
    b = baselines.patchmatch(image, _hole())
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("version, says", [((3, 10, 13), "needs Python 3.11 or newer"),
                                           ((3, 11, 7), 'pip install "ctsdg\\[eval\\]"')])
def test_without_pypatchmatch_the_baseline_says_what_to_do(monkeypatch, version, says):
    monkeypatch.setitem(sys.modules, "patchmatch", None)  # as if it were not installed
    monkeypatch.setattr(sys, "version_info", version)
    with pytest.raises(ImportError, match=says):
        baselines.patchmatch(np.zeros((48, 64, 3), np.uint8), _hole())


def test_clear_errors():
    image = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="nearest-neighbour"):
        baselines.telea(image, np.zeros((48, 63), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        baselines.telea(image.astype(np.float32), _hole())
    with pytest.raises(ValueError, match="choose from"):
        baselines.get_baseline("lama")
