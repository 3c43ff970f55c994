"""Image reading (every bad input of issue 3), mask reading, presets, the dataset, determinism."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ctsdg.conventions import hole_mask_from_uint8, uint8_to_signed
from ctsdg.data import (
    DataConfig,
    EpochSampler,
    InpaintingDataset,
    color_jitter,
    compute_structure,
    list_images,
    preprocess,
    read_file_list,
    read_image,
    read_image_for_crops,
    read_mask,
    sample_rng,
    standard_split,
)
from ctsdg.masks import IrregularMaskGenerator, MaskFolder


def gradient(h: int, w: int) -> np.ndarray:
    """A uint8 (h, w, 3) image whose pixels all differ: R = row, G = column, B = row + column."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y * 255 // max(1, h - 1), x * 255 // max(1, w - 1), (x + y) % 256], axis=2).astype(
        np.uint8
    )


def save(arr: np.ndarray, path, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


# --- read_image: good and bad files ---------------------------------------------------------------


def test_rgb_png_round_trips_exactly(tmp_path):
    arr = gradient(20, 30)
    out = read_image(save(arr, tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.array_equal(out, arr)
    out[0, 0] = 0  # writable


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def test_zero_byte_file_is_refused_by_name(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jpg is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.jpg")


def test_truncated_jpeg_is_refused_by_name(tmp_path):
    path = save(gradient(64, 64), tmp_path / "full.jpg", quality=95)
    data = path.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg is truncated or corrupt"):
        read_image(tmp_path / "cut.jpg")


def test_not_an_image_is_refused_by_name(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture")
    with pytest.raises(ValueError, match=r"notes\.png is not a readable image"):
        read_image(tmp_path / "notes.png")


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 200 + 128]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255, 200]  # round(v / 257)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_palette_image_is_converted_to_its_colours(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2])
    im.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png")[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


def test_palette_with_transparency_and_rgba_keep_colour_drop_alpha(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[0, 255], [128, 255]]
    save(rgba, tmp_path / "alpha.png")
    assert np.array_equal(read_image(tmp_path / "alpha.png"), rgba[..., :3])
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    im.putdata([0, 1])
    im.save(tmp_path / "pal_t.png", transparency=0)
    assert read_image(tmp_path / "pal_t.png")[0].tolist() == [[10, 20, 30], [40, 50, 60]]


def test_grayscale_and_one_bit_become_three_equal_channels(tmp_path):
    gray = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 20).astype(np.uint8)
    save(gray, tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))
    Image.fromarray(gray > 100).save(tmp_path / "b.png")
    assert set(np.unique(read_image(tmp_path / "b.png")).tolist()) == {0, 255}


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, 8:, 0] = 255  # right half: full cyan -> no red
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.jpg", quality=100)
    out = read_image(tmp_path / "c.jpg").astype(int)
    assert out.shape == (16, 16, 3)
    assert np.all(out[:, :6] > 235)  # no ink = white
    assert np.all(out[:, 10:, 0] < 30) and np.all(out[:, 10:, 1:] > 225)  # cyan


def test_exif_rotated_photo_is_turned_upright(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:4, :4] = [255, 0, 0]  # a red block at the stored top-left (a block survives JPEG chroma subsampling)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # orientation 6: the viewer rotates 90 degrees clockwise
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (20, 10, 3)
    # rotating 90 degrees clockwise moves the top-left pixel to the top-right
    assert out[1, -2, 0] > 200 and out[1, 1, 0] < 60 and out[-2, -2, 0] < 60


def test_float_tiff_is_refused_by_name(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"f\.tif holds 32-bit float"):
        read_image(tmp_path / "f.tif")


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert read_image(tmp_path / "a.gif").max() == 0


def test_jpeg_draft_reading_is_bounded_and_close_to_a_full_decode(tmp_path):
    arr = gradient(600, 900)
    path = save(arr, tmp_path / "big.jpg", quality=95)
    small = read_image_for_crops(path, 256)
    assert max(small.shape[:2]) == 256 and small.shape[:2] == (171, 256)
    full = np.array(Image.fromarray(read_image(path)).resize((256, 171), Image.BILINEAR)).astype(int)
    assert np.abs(small.astype(int) - full).mean() < 3


# --- read_mask ---------------------------------------------------------------------------------------


def test_mask_polarity_white_is_fill_binarised_at_127(tmp_path):
    save(np.array([[0, 127, 128, 255]], np.uint8), tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[[0.0, 0.0, 1.0, 1.0]]]


def test_three_channel_and_alpha_masks(tmp_path):
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1] = 255
    rgb[0, 2] = [255, 0, 0]  # any white-ish channel counts (largest channel > 127)
    save(rgb, tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").tolist() == [[[0.0, 1.0, 1.0]]]
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :2, 3] = 255  # brush painted on transparency: alpha marks the hole
    save(rgba, tmp_path / "rgba.png")
    assert read_mask(tmp_path / "rgba.png").tolist() == [[[1.0, 1.0, 0.0]]]


def test_an_rgba_mask_reads_as_it_looks_over_black(tmp_path):
    # a layer filled white, then erased: transparent pixels still store white and must be kept
    erased = np.full((1, 4, 4), 255, np.uint8)
    erased[0, :, 3] = [255, 0, 200, 100]  # opaque, erased, mostly opaque (200), faint (100)
    save(erased, tmp_path / "erased.png")
    assert read_mask(tmp_path / "erased.png").tolist() == [[[1.0, 0.0, 1.0, 0.0]]]
    opaque = np.zeros((1, 2, 4), np.uint8)
    opaque[0, 0] = [255, 255, 255, 255]
    opaque[0, 1, 3] = 255
    save(opaque, tmp_path / "opaque.png")  # an opaque RGBA mask reads as its colour
    assert read_mask(tmp_path / "opaque.png").tolist() == [[[1.0, 0.0]]]
    unused = np.zeros((1, 2, 4), np.uint8)
    unused[0, 0, :3] = 255  # no pixel has any opacity: the alpha carries nothing, the colour is the mask
    assert hole_mask_from_uint8(unused).tolist() == [[[1.0, 0.0]]]
    black = np.zeros((1, 2, 4), np.uint8)
    black[..., 3] = 255  # opaque black everywhere (what a canvas with nothing painted exports): nothing marked
    assert hole_mask_from_uint8(black).tolist() == [[[0.0, 0.0]]]


def test_sixteen_bit_and_one_bit_masks(tmp_path):
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "m16.png")
    assert read_mask(tmp_path / "m16.png").tolist() == [[[0.0, 1.0]]]
    Image.fromarray(np.array([[False, True]])).save(tmp_path / "m1.png")
    assert read_mask(tmp_path / "m1.png").tolist() == [[[0.0, 1.0]]]


def test_zero_one_label_masks_read_as_fill_in_training_and_evaluation(tmp_path):
    """Data sets often store masks as 0/1 labels; read as 8-bit gray they would be all keep (and a
    mask folder would refuse them as empty). 1 = fill, as ``ctsdg inpaint`` reads them."""
    labels = np.zeros((4, 6), np.uint8)
    labels[1:3, 2:5] = 1
    (tmp_path / "masks").mkdir()
    save(labels, tmp_path / "masks" / "label.png")
    assert torch.equal(read_mask(tmp_path / "masks" / "label.png")[0], torch.from_numpy(labels).float())
    folder = MaskFolder(tmp_path / "masks", match="index")
    out = folder(0, np.random.default_rng(0), 8, 12, "a.png")  # resized x2, nearest
    assert out.sum() == 4 * labels.sum() and not folder.bad_files
    save(labels * 100, tmp_path / "faint.png")  # 0..255 scale below the threshold: nothing to fill
    with pytest.raises(ValueError, match="all black"):
        read_mask(tmp_path / "faint.png")


def test_mask_of_the_wrong_size_names_both_sizes(tmp_path):
    save(np.array([[0, 255], [255, 0]], np.uint8), tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"m\.png is 2x2 but the image is 6x4; resize the mask with nearest"):
        read_mask(tmp_path / "m.png", size=(4, 6))


def test_mask_resize_is_nearest_and_stays_binary(tmp_path):
    save(np.array([[0, 255], [255, 0]], np.uint8), tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", size=(4, 4), resize=True)
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(out[0], expected)


def test_all_black_and_all_white_masks_are_refused_unless_allowed(tmp_path):
    save(np.zeros((4, 4), np.uint8), tmp_path / "black.png")
    save(np.full((4, 4), 255, np.uint8), tmp_path / "white.png")
    with pytest.raises(ValueError, match=r"black\.png is all black: nothing to fill"):
        read_mask(tmp_path / "black.png")
    with pytest.raises(ValueError, match=r"white\.png is all white"):
        read_mask(tmp_path / "white.png")
    assert read_mask(tmp_path / "black.png", allow_empty=True).sum() == 0
    assert read_mask(tmp_path / "white.png", allow_full=True).sum() == 16


def test_zero_byte_mask_is_refused_by_name(tmp_path):
    (tmp_path / "m.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"mask .*m\.png is empty"):
        read_mask(tmp_path / "m.png")


# --- presets -----------------------------------------------------------------------------------------


def test_official_preset_is_a_bilinear_resize_ignoring_aspect():
    arr = gradient(50, 80)
    out = preprocess(arr, DataConfig(preset="official", size=32), sample_rng(0, 0))
    assert out.shape == (32, 32, 3)
    assert np.array_equal(out, np.array(Image.fromarray(arr).resize((32, 32), Image.BILINEAR)))


def test_celeba_preset_crops_the_centre_178_then_resizes():
    arr = gradient(218, 178)  # an aligned CelebA face is 178 wide, 218 high: top = round(40 / 2) = 20
    out = preprocess(arr, DataConfig(preset="celeba", size=64), sample_rng(0, 0))
    expected = np.array(Image.fromarray(arr[20:198]).resize((64, 64), Image.BILINEAR))
    assert np.array_equal(out, expected)


def test_celeba_preset_refuses_an_image_smaller_than_the_crop():
    with pytest.raises(ValueError, match=r"photo\.png is 100x120, smaller than the 178x178 centre crop"):
        preprocess(
            gradient(120, 100), DataConfig(preset="celeba", size=64), sample_rng(0, 0), "image photo.png"
        )


def test_random_crop_windows_vary_in_scale_and_position():
    arr = gradient(400, 600)
    config = DataConfig(preset="random_crop", size=32)
    outs = [preprocess(arr, config, sample_rng(0, i)) for i in range(20)]
    assert all(o.shape == (32, 32, 3) for o in outs)
    # R encodes the row and G the column: the spread of each crop tells its window size
    spans = [int(o[..., 1].max()) - int(o[..., 1].min()) for o in outs]
    assert max(spans) > 3 * min(spans)
    assert len({(int(o[0, 0, 0]), int(o[0, 0, 1])) for o in outs}) == 20


def test_random_crop_upscales_an_image_smaller_than_the_crop():
    out = preprocess(gradient(20, 30), DataConfig(preset="random_crop", size=32), sample_rng(0, 0))
    assert out.shape == (32, 32, 3)


def test_hflip_mirrors_columns():
    arr = gradient(32, 32)
    config = DataConfig(preset="official", size=32, hflip=True)
    flipped = [i for i in range(10) if not np.array_equal(preprocess(arr, config, sample_rng(0, i)), arr)]
    assert 0 < len(flipped) < 10
    assert np.array_equal(preprocess(arr, config, sample_rng(0, flipped[0])), arr[:, ::-1])


def test_color_jitter_changes_colours_not_geometry_and_keeps_grays_gray():
    # a gray image with a 2-D ramp: jitter can only map each gray level to another, monotonically,
    # so the same crop with and without jitter has its pixels in the same order of brightness
    ramp = (np.add.outer(np.arange(48), 2 * np.arange(64)) * 255 // 173).astype(np.uint8)
    arr = np.repeat(ramp[..., None], 3, 2)
    plain = DataConfig(preset="random_crop", size=32, seed=5)
    jittered = DataConfig(preset="random_crop", size=32, seed=5, color_jitter=0.5)
    changed = 0
    for i in range(8):
        a, b = preprocess(arr, plain, sample_rng(5, i)), preprocess(arr, jittered, sample_rng(5, i))
        assert a.shape == b.shape == (32, 32, 3)
        assert np.array_equal(b[..., 0], b[..., 1]) and np.array_equal(b[..., 1], b[..., 2])  # grays stay gray
        order = np.argsort(a[..., 0].ravel(), kind="stable")
        assert (np.diff(b[..., 0].ravel()[order].astype(int)) >= 0).all()  # the same crop
        changed += not np.array_equal(a, b)
    assert changed == 8
    hues = {tuple(color_jitter(np.full((4, 4, 3), (200, 60, 30), np.uint8), 1.0,
                               np.random.default_rng(k))[0, 0]) for k in range(10)}
    assert len(hues) == 10  # a colourful pixel gets a different colour each draw


def test_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="preset"):
        DataConfig(preset="center")
    with pytest.raises(ValueError, match="structure_mode"):
        DataConfig(structure_mode="wrapped")
    with pytest.raises(ValueError, match="color_jitter"):
        DataConfig(color_jitter=1.5)


# --- the dataset ---------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        small = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
        big = np.array(Image.fromarray(small).resize((96, 64), Image.BILINEAR))
        save(big, root / ("sub" if i % 2 else ".") / f"img{i}.png")
    return root


def masks_gen():
    return IrregularMaskGenerator((0.2, 0.4))


def test_sample_keys_shapes_ranges_and_known_mask_polarity(folder):
    ds = InpaintingDataset(folder, DataConfig(preset="official", size=64), masks_gen())
    # recursive, sorted by path components, names relative to the folder
    assert [ds.name(i) for i in range(4)] == ["img0.png", "img2.png", "sub/img1.png", "sub/img3.png"]
    s = ds[1]
    assert s["image"].shape == (3, 64, 64) and -1 <= s["image"].min() and s["image"].max() <= 1
    assert s["known_mask"].shape == s["edge"].shape == s["gray"].shape == (1, 64, 64)
    assert set(torch.unique(s["known_mask"]).tolist()) == {0.0, 1.0}
    expected_hole = masks_gen()(1, sample_rng(0, 1), 64, 64)  # the same draws, in the same order
    rng = sample_rng(0, 1)
    preprocess(np.zeros((64, 64, 3), np.uint8), ds.config, rng)  # official preset draws nothing
    assert torch.equal(s["known_mask"], 1 - masks_gen()(1, rng, 64, 64))
    assert 0.18 <= float(expected_hole.mean()) <= 0.42


def test_edges_and_gray_are_of_the_full_unmasked_image(folder):
    for mode in ("standard", "official"):
        ds = InpaintingDataset(
            folder, DataConfig(preset="official", size=64, structure_mode=mode), masks_gen()
        )
        s = ds[0]
        edge, gray = compute_structure(s["image"], official=mode == "official")
        assert torch.equal(s["edge"], edge) and torch.equal(s["gray"], gray)
        hole = s["known_mask"] == 0
        assert s["edge"][hole].sum() > 0  # edges exist inside the hole: nothing was masked yet


def test_input_edges_known_adds_edges_that_ignore_the_hole(folder):
    """data.input_edges: known adds Canny of the known pixels only (what inference feeds the network);
    whatever lies under the hole, they are the same. The paper's default adds nothing."""
    assert "known_edge" not in InpaintingDataset(folder, DataConfig(preset="official", size=64), masks_gen())[0]
    ds = InpaintingDataset(folder, DataConfig(preset="official", size=64, input_edges="known"), masks_gen())
    s = ds[0]
    known = s["known_mask"]
    assert torch.equal(s["known_edge"], compute_structure(s["image"], known=known).edge)
    assert not torch.equal(s["known_edge"] * known, s["edge"] * known)  # the full picture's edges differ
    other = torch.where(known.bool(), s["image"], -s["image"])  # something else under the hole
    assert torch.equal(compute_structure(other, known=known).edge, s["known_edge"])
    with pytest.raises(ValueError, match="input_edges"):
        DataConfig(input_edges="gt")


def test_dataset_reads_a_file_list(folder, tmp_path):
    (tmp_path / "list.txt").write_text("# a comment\nsub/img3.png\n\nimg0.png 7\n")
    ds = InpaintingDataset(tmp_path / "list.txt", DataConfig(size=32), masks_gen(), root=folder)
    assert [ds.name(i) for i in range(2)] == ["sub/img3.png", "img0.png"]
    assert ds[0]["image"].shape == (3, 32, 32)
    assert read_file_list(tmp_path / "list.txt", folder)[1] == folder / "img0.png"
    # an existing absolute path, then a Places2-style line relative to the root
    (tmp_path / "abs.txt").write_text(f"{folder / 'img2.png'}\n/sub/img1.png 0\n")
    assert read_file_list(tmp_path / "abs.txt", folder) == [folder / "img2.png", folder / "sub" / "img1.png"]


def test_same_seed_same_sample_other_index_or_seed_different(folder):
    config = DataConfig(preset="random_crop", size=32, hflip=True, seed=3)
    a, b = InpaintingDataset(folder, config, masks_gen()), InpaintingDataset(folder, config, masks_gen())
    for i in (0, 5):
        assert all(torch.equal(a[i][k], b[i][k]) for k in ("image", "known_mask", "edge", "gray"))
    assert not torch.equal(a[0]["image"], a[4]["image"])  # same file, next epoch: another crop
    other = InpaintingDataset(
        folder, DataConfig(preset="random_crop", size=32, hflip=True, seed=4), masks_gen()
    )
    assert not torch.equal(a[0]["known_mask"], other[0]["known_mask"])


def test_multi_worker_loading_gives_the_same_batches(folder):
    config = DataConfig(preset="random_crop", size=32, seed=1)
    ds = InpaintingDataset(folder, config, masks_gen())

    def batches(workers):
        loader = torch.utils.data.DataLoader(
            ds, batch_size=3, num_workers=workers, sampler=EpochSampler(len(ds), seed=1, num_samples=6)
        )
        return [b for b in loader]

    serial, parallel = batches(0), batches(2)
    assert [b["name"] for b in serial] == [b["name"] for b in parallel]
    for x, y in zip(serial, parallel, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["known_mask"], y["known_mask"])


def test_epoch_sampler_permutes_each_epoch_and_resumes_exactly():
    full = list(EpochSampler(5, seed=2, num_samples=15))
    for e in range(3):
        assert sorted(i - 5 * e for i in full[5 * e : 5 * e + 5]) == list(range(5))
    assert full[:5] != [i - 5 for i in full[5:10]]  # a new order each epoch
    assert list(EpochSampler(5, seed=2, start=7, num_samples=6)) == full[7:13]


def test_bad_files_are_skipped_reported_and_logged(folder, tmp_path, caplog):
    (folder / "img1b.png").write_bytes(b"")  # sorts right after img0.png
    log = tmp_path / "bad.tsv"
    ds = InpaintingDataset(folder, DataConfig(size=32), masks_gen(), bad_files_log=log)
    assert ds.name(1) == "img1b.png"
    with caplog.at_level(logging.WARNING, logger="ctsdg.data"):
        s = ds[1]
    assert s["name"] == "img2.png"  # the next good file
    assert (
        list(ds.bad_files) == [str(folder / "img1b.png")]
        and "empty" in ds.bad_files[str(folder / "img1b.png")]
    )
    assert "img1b.png" in caplog.text
    ds[1 + len(ds)]  # reported once only
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(folder / "img1b.png") + "\t")


def test_bad_file_raises_with_its_name_when_skipping_is_off(folder):
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ds = InpaintingDataset(folder, DataConfig(size=32), masks_gen(), skip_bad=False)
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        ds[0]


def test_all_bad_files_is_a_clear_error(tmp_path):
    for i in range(2):
        (tmp_path / f"x{i}.png").write_bytes(b"")
    ds = InpaintingDataset(tmp_path, DataConfig(size=32), masks_gen())
    with pytest.raises(RuntimeError, match="every one of the 2 images"):
        ds[0]


def test_empty_folder_and_missing_path_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        InpaintingDataset(tmp_path, DataConfig(), masks_gen())
    with pytest.raises(FileNotFoundError, match="neither an image folder nor a file list"):
        InpaintingDataset(tmp_path / "nowhere", DataConfig(), masks_gen())


def test_celeba_standard_split_reads_the_partition_file(tmp_path):
    (tmp_path / "list_eval_partition.txt").write_text(
        "000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n000004.jpg 0\n"
    )
    assert [p.name for p in standard_split("celeba", tmp_path, "train")] == ["000001.jpg", "000004.jpg"]
    assert standard_split("celeba", tmp_path, "test") == [tmp_path / "img_align_celeba" / "000003.jpg"]
    with pytest.raises(FileNotFoundError, match="list_eval_partition"):
        standard_split("celeba", tmp_path / "x", "train")


def test_image_to_signed_matches_the_dataset_image(folder):
    ds = InpaintingDataset(folder, DataConfig(preset="official", size=96), masks_gen())
    arr = read_image(folder / "img0.png")
    resized = np.array(Image.fromarray(arr).resize((96, 96), Image.BILINEAR))
    assert torch.equal(ds[0]["image"], uint8_to_signed(resized))


def test_numpy_signed_conversion_is_bit_identical_to_conventions():
    from ctsdg.data import _uint8_to_signed_numpy

    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    assert torch.equal(_uint8_to_signed_numpy(levels), uint8_to_signed(levels))


def test_places2_and_paris_standard_splits(tmp_path):
    (tmp_path / "places365_train_standard.txt").write_text(
        "/a/airfield/00000001.jpg 0\n/b/bar/00000002.jpg 1\n"
    )
    (tmp_path / "places365_val.txt").write_text("Places365_val_00000001.jpg 165\n")
    assert standard_split("places2", tmp_path, "train") == [
        tmp_path / "data_256/a/airfield/00000001.jpg",
        tmp_path / "data_256/b/bar/00000002.jpg",
    ]
    assert standard_split("places2", tmp_path, "test") == [tmp_path / "val_256/Places365_val_00000001.jpg"]
    for sub in ("paris_train_original", "paris_eval_gt"):
        save(gradient(4, 4), (tmp_path / sub).mkdir() or tmp_path / sub / "001.png")
    assert standard_split("paris", tmp_path, "train") == [tmp_path / "paris_train_original/001.png"]
    assert standard_split("paris", tmp_path, "val") == [tmp_path / "paris_eval_gt/001.png"]
    with pytest.raises(ValueError, match="unknown data set"):
        standard_split("ffhq", tmp_path, "train")


def test_scan_lists_every_bad_file_with_its_reason(tmp_path):
    from ctsdg.data import scan_images

    good = save(gradient(8, 8), tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    black = save(np.zeros((4, 4), np.uint8), tmp_path / "black.png")
    bad = scan_images([good, tmp_path / "empty.png"])
    assert list(bad) == [str(tmp_path / "empty.png")] and "0 bytes" in bad[str(tmp_path / "empty.png")]
    assert list(scan_images([black], masks=True)) == [str(black)]
    assert scan_images([black]) == {}  # a black picture is a fine image


def test_random_crop_cache_is_bounded_and_does_not_change_samples(folder):
    config = DataConfig(preset="random_crop", size=32)
    cached = InpaintingDataset(folder, config, masks_gen(), cache_items=2)
    uncached = InpaintingDataset(folder, config, masks_gen(), cache_items=0)
    for i in range(8):
        assert torch.equal(cached[i]["image"], uncached[i]["image"])
        assert len(cached._cache) <= 2
    assert len(uncached._cache) == 0


def test_an_image_folder_that_is_a_file_says_so(tmp_path):
    (tmp_path / "list.txt").write_text("a.png\n")
    with pytest.raises(NotADirectoryError, match=r"image folder .*list.txt is a file; pass a folder"):
        list_images(tmp_path / "list.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope")
