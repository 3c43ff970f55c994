"""Figure-1 feature maps: the hooks see the real modules, the pictures have the right shapes, the projected
image equals the generator's own P_t output, and the hooks are removed afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctsdg import featuremaps
from ctsdg.config import ModelConfig
from ctsdg.generator import Generator
from ctsdg.inference import Inpainter


@pytest.fixture(scope="module")
def inpainter():
    torch.manual_seed(0)
    return Inpainter(Generator(ModelConfig(base_width=4)), ModelConfig(base_width=4))


def _inputs():
    yy, xx = np.mgrid[0:128, 0:128] / 128
    image = (np.stack([np.sin(6 * xx + c) * np.cos(4 * yy) for c in range(3)], -1) * 100 + 128).astype(np.uint8)
    hole = np.zeros((128, 128), np.uint8)
    hole[40:80, 30:90] = 255
    return image, hole


def test_pictures_shapes_and_projection_consistency(inpainter):
    image, hole = _inputs()
    pics = featuremaps.collect_feature_maps(inpainter, image, hole, size=128)
    assert set(pics) == {"input", "edge", "gray", "texture_mean", "texture_pca", "structure_mean", "structure_pca",
                         "projected_image", "projected_edge", "output", "composite"}
    for name in ("texture_mean", "texture_pca", "structure_mean", "structure_pca", "projected_image", "composite"):
        assert pics[name].shape == (128, 128, 3) and pics[name].dtype == np.uint8, name
    assert pics["projected_edge"].shape == (128, 128)
    # the known pixels of the composite are the input's
    known = hole == 0
    np.testing.assert_array_equal(pics["composite"][known], image[known])
    # the hooked P_t output equals what the generator returns as projected_image
    from ctsdg.data import compute_structure

    unit = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    known_t = torch.from_numpy(known.astype(np.float32))[None]
    edge, gray = compute_structure(unit * 2 - 1)
    with torch.no_grad():
        out = inpainter.generator((unit * 2 - 1)[None] * known_t, torch.cat([edge, gray])[None] * known_t,
                                  known_t[None], with_projections=True)
    expected = ((out.projected_image[0] + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(pics["projected_image"].astype(int) - expected.astype(int)).max() <= 1
    # hooks are gone
    assert all(not getattr(inpainter.generator, m)._forward_hooks for m in featuremaps.HOOKS.values())


def test_pca_picture_separates_two_regions():
    feat = torch.zeros(8, 16, 16)
    feat[:, :, 8:] = torch.arange(8.0)[:, None, None]  # right half differs along one direction
    pic = featuremaps.pca_picture(feat)
    left, right = pic[:, :8, 0].astype(int), pic[:, 8:, 0].astype(int)
    assert abs(left.mean() - right.mean()) > 200  # first component = the split, stretched to 0..255


def test_save_writes_every_picture_and_the_overview(inpainter, tmp_path):
    image, hole = _inputs()
    written = featuremaps.save_feature_maps(featuremaps.collect_feature_maps(inpainter, image, hole, 128), tmp_path)
    names = {p.name for p in written}
    assert "figure1.png" in names and "texture_pca.png" in names and "projected_edge.png" in names
    assert all(p.stat().st_size > 0 for p in written)


def test_existing_pictures_are_kept_unless_overwrite_and_a_file_is_not_a_folder(inpainter, tmp_path):
    image, hole = _inputs()
    pictures = featuremaps.collect_feature_maps(inpainter, image, hole, 128)
    (tmp_path / "input.png").write_bytes(b"the user's own picture")
    with pytest.raises(FileExistsError, match=r"input.png already exists \(1 of the \d+ pictures do\); pass --overwrite"):
        featuremaps.save_feature_maps(pictures, tmp_path)
    assert (tmp_path / "input.png").read_bytes() == b"the user's own picture"
    assert not (tmp_path / "figure1.png").exists()  # nothing written before the refusal
    featuremaps.save_feature_maps(pictures, tmp_path, overwrite=True)
    assert (tmp_path / "input.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="is a file; give a folder"):
        featuremaps.save_feature_maps(pictures, tmp_path / "input.png")


def test_the_command_never_replaces_its_own_photo_or_mask_even_with_overwrite(tmp_path, capsys):
    from PIL import Image

    from ctsdg.checkpoint import save_generator
    from ctsdg.cli import main

    torch.manual_seed(0)
    checkpoint = save_generator(tmp_path / "tiny.safetensors", Generator(ModelConfig(base_width=4)))
    image, hole = _inputs()
    photo, mask = tmp_path / "composite.png", tmp_path / "edge.png"  # the names of two of the pictures
    Image.fromarray(image).save(photo)
    Image.fromarray(hole).save(mask)
    before = photo.read_bytes(), mask.read_bytes()
    for args in ([photo, tmp_path / "m.png"], [tmp_path / "p.png", mask]):
        Image.fromarray(image).save(tmp_path / "p.png")
        Image.fromarray(hole).save(tmp_path / "m.png")
        code = main(["featuremaps", str(checkpoint), *map(str, args), "--out", str(tmp_path), "--size", "128",
                     "--overwrite"])
        assert code == 1
        assert "is one of the input files" in capsys.readouterr().err
        assert (photo.read_bytes(), mask.read_bytes()) == before
        assert not (tmp_path / "figure1.png").exists()


def test_the_command_says_when_the_mask_marks_nothing_or_everything(tmp_path, capsys):
    """An all-black or all-white mask still gives the pictures, with a note that says why they look so."""
    from PIL import Image

    from ctsdg.checkpoint import save_generator
    from ctsdg.cli import main

    torch.manual_seed(0)
    checkpoint = save_generator(tmp_path / "tiny.safetensors", Generator(ModelConfig(base_width=4)))
    image, hole = _inputs()
    Image.fromarray(image).save(tmp_path / "photo.png")
    for name, value, expected in (("black.png", 0, "marks no pixel to fill"), ("white.png", 255, "marks every pixel"),
                                  ("some.png", None, None)):
        Image.fromarray(hole if value is None else np.full_like(hole, value)).save(tmp_path / name)
        code = main(["featuremaps", str(checkpoint), str(tmp_path / "photo.png"), str(tmp_path / name),
                     "--out", str(tmp_path / name[:-4]), "--size", "128"])
        err = capsys.readouterr().err
        assert code == 0 and (tmp_path / name[:-4] / "figure1.png").exists()
        assert (expected in err) if expected else "note:" not in err
