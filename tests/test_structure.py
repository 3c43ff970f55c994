"""Structure priors: gray + Canny edges, standard and official (wrapped uint8) modes. Spec §3.3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ctsdg
from ctsdg.conventions import uint8_to_signed
from ctsdg.data import compute_structure, official_uint8, read_image, resize_bilinear

SKIMAGE_DATA = __import__("skimage").__path__[0] + "/data/"


def test_exported_from_package_top_level():
    assert ctsdg.compute_structure is compute_structure


def test_official_wrap_matches_the_measured_values_exactly():
    # spec §3.3, measured with torch and numpy on x86: -1.0->1, -0.75->65, -0.5->129, -0.25->193, 0->0, 0.5->127, 1->255
    values = torch.tensor([-1.0, -0.75, -0.5, -0.25, 0.0, 0.5, 1.0])
    image = values.view(1, 1, 7).expand(3, 1, 7).contiguous()
    assert official_uint8(image)[0, :, 0].tolist() == [1, 65, 129, 193, 0, 127, 255]
    # floor instead of truncation would give 64 for -0.75: the rounding really is toward zero
    assert int(np.floor(-0.75 * 255)) % 256 == 64


def test_official_wrap_is_truncation_mod_256_of_the_float32_product_for_every_level():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    x = uint8_to_signed(levels)
    # the official chain: ToTensor (x / 255) then Normalize(0.5, 0.5): the same float32 values as ours
    official_input = (torch.from_numpy(levels).permute(2, 0, 1).float().div(255) - 0.5) / 0.5
    assert torch.equal(x, official_input)
    # int64 conversion truncates toward zero (well defined, unlike a negative float -> uint8 cast)
    expected = (x.numpy().astype(np.float32) * np.float32(255)).astype(np.int64) % 256
    assert np.array_equal(official_uint8(x).transpose(2, 0, 1), expected)
    # the saw-tooth of the spec, (510 p - 255) mod 256, up to float32 rounding of 255 * x (one level)
    ideal = (2 * np.arange(256) - 255) % 256
    got = official_uint8(x)[..., 0].ravel().astype(int)
    circular = np.minimum(np.abs(got - ideal), 256 - np.abs(got - ideal))
    assert np.all(circular <= 1)
    # level 127: 255 * x = -0.99999994 in float32, truncated to 0 (the ideal saw-tooth would say 255)
    assert got[0] == 1 and got[127] == 0 and got[128] == 1 and got[255] == 255


def test_standard_gray_uses_rgb2gray_weights_and_flat_image_has_no_edges():
    rgb = torch.tensor([0.2, 0.6, 1.0]).view(3, 1, 1).expand(3, 32, 32)
    edge, gray = compute_structure(uint8_to_signed(np.zeros((1, 1, 3), np.uint8)) * 0 + rgb * 2 - 1)
    assert gray.shape == edge.shape == (1, 32, 32)
    assert torch.allclose(gray, torch.full_like(gray, 0.2125 * 0.2 + 0.7154 * 0.6 + 0.0721 * 1.0), atol=1e-6)
    assert edge.sum() == 0


def test_standard_edges_sit_on_a_step_and_are_binary():
    image = -torch.ones(3, 64, 64)
    image[:, :, 32:] = 1.0  # black | white step between columns 31 and 32
    edge, gray = compute_structure(image)
    assert set(torch.unique(edge).tolist()) == {0.0, 1.0}
    columns = torch.nonzero(edge[0].sum(dim=0)).flatten().tolist()
    assert columns and all(c in (31, 32) for c in columns)
    assert gray.min() == 0.0 and gray.max() == 1.0


def test_official_equals_standard_on_the_wrapped_image():
    rng = np.random.default_rng(0)
    pixels = resize_bilinear(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), 64, 64)
    x = uint8_to_signed(pixels)
    wrapped = uint8_to_signed(official_uint8(x))
    official, standard_of_wrapped = compute_structure(x, official=True), compute_structure(wrapped)
    assert torch.allclose(official.gray, standard_of_wrapped.gray, atol=1e-6)
    assert torch.equal(official.edge, standard_of_wrapped.edge)


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"])
def test_official_edges_differ_from_standard_as_the_spec_measured(name):
    # spec §3.3 on these images at 256^2: official edge density 4.3-12.1% vs 1.7-8.9%, IoU 0.12-0.24,
    # mean |delta gray| 0.18-0.29
    x = uint8_to_signed(resize_bilinear(read_image(SKIMAGE_DATA + name), 256, 256))
    std, off = compute_structure(x), compute_structure(x, official=True)
    assert off.edge.mean() > std.edge.mean()  # spurious contours where a channel crosses p = 0.5
    iou = float((std.edge * off.edge).sum() / ((std.edge + off.edge) > 0).sum())
    assert 0.10 <= iou <= 0.26
    assert 0.15 <= float((std.gray - off.gray).abs().mean()) <= 0.32


def test_sigma_controls_edge_density():
    x = uint8_to_signed(resize_bilinear(read_image(SKIMAGE_DATA + "astronaut.png"), 128, 128))
    assert compute_structure(x, sigma=1.0).edge.sum() > compute_structure(x, sigma=3.0).edge.sum()


def test_rejects_batches_and_wrong_channel_counts():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        compute_structure(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        compute_structure(torch.zeros(1, 8, 8))
