"""Poisson blending (ctsdg/blend.py): the discrete Laplace system, exact recovery of a fill that is off by
a constant or a ramp, the fill's Laplacian kept, known pixels untouched, the degenerate holes."""

import numpy as np
import pytest
import torch

from ctsdg.blend import harmonic_correction, poisson_blend


def holes():
    """A 24x31 hole mask with a blob, a thin stroke, one lone pixel and a region touching two borders."""
    hole = np.zeros((24, 31), bool)
    yy, xx = np.mgrid[:24, :31]
    hole |= (yy - 10) ** 2 + (xx - 12) ** 2 <= 20
    hole[3, 2:28] = True
    hole[20, 5] = True
    hole[17:, 25:] = True
    return hole


def laplacian(x: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian at interior pixels (border rows/columns left 0)."""
    out = np.zeros_like(x)
    out[1:-1, 1:-1] = (x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:] - 4 * x[1:-1, 1:-1])
    return out


def test_harmonic_correction_solves_the_dense_laplace_system():
    hole = holes()
    rng = np.random.default_rng(0)
    boundary = rng.standard_normal((*hole.shape, 2))
    ours = harmonic_correction(boundary, hole)
    # the same system written densely, one equation per hole pixel: degree*h - sum(neighbours) = 0
    cells = list(zip(*np.nonzero(hole), strict=True))
    at = {c: i for i, c in enumerate(cells)}
    a = np.zeros((len(cells), len(cells)))
    b = np.zeros((len(cells), 2))
    for i, (y, x) in enumerate(cells):
        for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            if 0 <= ny < hole.shape[0] and 0 <= nx < hole.shape[1]:
                a[i, i] += 1
                if (ny, nx) in at:
                    a[i, at[ny, nx]] -= 1
                else:
                    b[i] += boundary[ny, nx]
    dense = np.linalg.solve(a, b)
    assert np.abs(ours[hole] - dense).max() < 1e-10
    assert np.array_equal(ours[~hole], boundary[~hole])


@pytest.mark.parametrize("offset", ["constant", "ramp"])
def test_a_fill_off_by_a_constant_or_a_ramp_is_put_right_exactly(offset):
    hole = holes()
    if offset == "ramp":  # a ramp is harmonic, but not flat across the picture's edge (no condition there)
        hole[17:, 25:] = False
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.random((3, *hole.shape)).astype(np.float32))
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(31.0), indexing="ij")
    shift = torch.full((24, 31), 0.2) if offset == "constant" else 0.01 * xx - 0.02 * yy + 0.1
    fill = image + shift  # the right picture at the wrong level: a seam under a plain paste
    hole_t = torch.from_numpy(hole)[None].float()
    out = poisson_blend(image, fill, hole_t)
    assert (out - image).abs().max() < 1e-5
    pasted = image * (1 - hole_t) + fill * hole_t
    assert (pasted - image).abs().max() > 0.05  # the plain paste keeps the offset


def test_the_fill_keeps_its_laplacian_and_known_pixels_stay_bit_exact():
    hole = holes()
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.random((3, *hole.shape)).astype(np.float32))
    fill = torch.from_numpy(rng.random((3, *hole.shape)).astype(np.float32))  # unrelated texture
    out = poisson_blend(image, fill, torch.from_numpy(hole)[None])
    known = torch.from_numpy(~hole)
    assert torch.equal(out[:, known], image[:, known])
    interior = np.zeros_like(hole)  # hole pixels whose four neighbours are hole pixels too
    interior[1:-1, 1:-1] = hole[1:-1, 1:-1] & hole[:-2, 1:-1] & hole[2:, 1:-1] & hole[1:-1, :-2] & hole[1:-1, 2:]
    assert interior.sum() > 20
    for c in range(3):
        diff = laplacian(out[c].double().numpy()) - laplacian(fill[c].double().numpy())
        assert np.abs(diff[interior]).max() < 1e-5


def test_degenerate_holes():
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.random((3, 8, 9)).astype(np.float32))
    fill = image + 0.3
    everything = torch.ones(1, 8, 9)
    assert torch.equal(poisson_blend(image, fill, everything), fill)  # no known pixel: nothing to level to
    assert torch.equal(poisson_blend(image, fill, torch.zeros(1, 8, 9)), image)
    with pytest.raises(ValueError, match="boundary must be"):
        harmonic_correction(np.zeros((8, 9)), np.zeros((8, 9), bool))
