"""Inpainter: every strategy on sizes that are not multiples of 128, known pixels bit-exact, input kinds
(numpy, PIL, paths; gray, alpha, 16-bit), EXIF/ICC, user edges, bad input. Tiny random generator (width 4)."""

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ctsdg import Generator, ModelConfig, cpu
from ctsdg.blend import poisson_blend
from ctsdg.conventions import signed_to_uint8
from ctsdg.data import compute_structure
from ctsdg.images import dilate_hole, save_image_atomic
from ctsdg.inference import Box, Inpainter, crop_boxes, padded_shape, working_shape


@pytest.fixture(scope="module")
def inpainter():
    torch.manual_seed(0)
    g = Generator(ModelConfig(base_width=4))
    return Inpainter(g, g.config, device="cpu")


@pytest.fixture(scope="module")
def photo():
    """A real photo (scikit-image's astronaut, public domain) at 517x300: no side a multiple of 128."""
    from skimage import data

    return np.array(Image.fromarray(data.astronaut()).resize((517, 300), Image.BICUBIC))


def blob_mask(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + ((xx - cx) * 0.7) ** 2 <= r * r).astype(np.uint8) * 255


def assert_known_exact(out, image, mask):
    known = mask == 0
    assert out.shape == image.shape and out.dtype == image.dtype
    assert np.array_equal(out[known], image[known])


@pytest.mark.parametrize("strategy", ["original", "resize", "crop"])
def test_every_strategy_keeps_known_pixels_bit_exact_at_300x517(inpainter, photo, strategy):
    mask = blob_mask(300, 517, 140, 250, 40)
    result = inpainter.inpaint(photo, mask, strategy=strategy)
    assert result.strategy == strategy
    assert_known_exact(result.image, photo, mask)
    hole = mask > 0
    assert (result.image[hole] != photo[hole]).any()  # the hole was filled, not copied


@pytest.mark.parametrize("strategy", ["crop", "resize"])
def test_12_megapixel_photo_with_small_mask(inpainter, strategy):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    mask = np.zeros((3000, 4000), np.uint8)
    mask[1000:1120, 2000:2150] = 255
    mask[2900:3000, 0:40] = 255  # a second region in the corner: a clipped box
    out = inpainter(image, mask, strategy=strategy)
    assert_known_exact(out, image, mask)


def test_original_refuses_what_it_cannot_run(inpainter):
    image = np.zeros((3000, 4000, 3), np.uint8)
    mask = np.zeros((3000, 4000), np.uint8)
    mask[10:20, 10:20] = 255
    with pytest.raises(ValueError, match="--strategy crop"):
        inpainter(image, mask, strategy="original")


def test_auto_strategy_by_size(inpainter):
    small = np.zeros((200, 300), bool)
    small[10:20, 10:20] = True
    assert inpainter.choose_strategy(small) == "original"  # pads to 256x384: the CPU limit
    medium = np.zeros((300, 517), bool)
    medium[10:20, 10:20] = True
    assert inpainter.choose_strategy(medium) == "crop"  # pads to 384x640: too slow for "original" on CPU
    gpu_like = Inpainter(inpainter.generator, inpainter.model_config, auto_original_pixels=1024 * 1024)
    assert gpu_like.choose_strategy(medium) == "original"
    big = np.zeros((3000, 4000), bool)
    big[100:200, 100:200] = True
    assert inpainter.choose_strategy(big) == "crop"
    big[:, :2500] = True
    assert inpainter.choose_strategy(big) == "resize"


@pytest.mark.parametrize("blend", ["none", "poisson"])
def test_original_equals_one_generator_call_on_a_multiple_of_128(inpainter, photo, blend):
    """The pipeline's wiring: priors from ctsdg.data, inputs masked, composite of the raw output (pasted,
    or Poisson-blended: the default)."""
    image = photo[:256, :256].copy()
    mask = blob_mask(256, 256, 128, 128, 50)
    model = Inpainter(inpainter.generator, inpainter.model_config, blend=blend)
    out = model(image, mask, strategy="original")
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255 * 2 - 1
    known = torch.from_numpy((mask == 0).astype(np.float32))[None]
    edge, gray = compute_structure(x, sigma=2.0)
    with torch.inference_mode():
        raw = inpainter.generator(
            (x * known)[None], (torch.cat((edge, gray)) * known)[None], known[None], with_projections=False
        ).output[0]
    if blend == "poisson":
        raw = poisson_blend(x, raw, 1 - known).clamp(-1, 1)  # levels are affine: blending in [-1, 1] is the same
    expected = signed_to_uint8(raw)
    hole = mask > 0
    assert np.abs(out[hole].astype(int) - expected[hole].astype(int)).max() <= 1  # float rounding only


@pytest.mark.parametrize("strategy", ["original", "resize", "crop"])
def test_the_fill_never_sees_what_lies_under_the_mask(inpainter, photo, strategy):
    """Two photos that differ only under the mask give the same result, whatever the resizing: the object
    being removed neither bleeds into the ring the fill is blended against and pasted next to, nor
    leaves its outline in the edge map (Canny reads known pixels only)."""
    model = Inpainter(inpainter.generator, inpainter.model_config, working_size=128)
    mask = blob_mask(300, 517, 140, 250, 40)
    red, blue = photo.copy(), photo.copy()
    red[mask > 0] = (255, 0, 0)
    blue[mask > 0] = (0, 0, 255)
    assert np.array_equal(model(red, mask, strategy=strategy), model(blue, mask, strategy=strategy))
    if strategy == "original":  # the paper's protocol reads the whole picture: the hole's content shows
        full = Inpainter(inpainter.generator, inpainter.model_config, edges="full")
        assert not np.array_equal(full(red, mask, strategy=strategy), full(blue, mask, strategy=strategy))


def test_working_shape_and_padding():
    assert working_shape(3000, 4000) == (256, 384)  # short side 256, 4000*256/3000 = 341 -> 384
    assert working_shape(256, 256) == (256, 256)
    assert working_shape(100, 90) == (128, 128)  # never upscaled beyond the next multiple of 128
    assert padded_shape(300, 517) == (384, 640)


def test_crop_boxes_cover_each_region_and_never_overlap():
    hole = np.zeros((2000, 3000), bool)
    hole[100:150, 100:180] = True  # small: box = working size 256
    hole[1000:1400, 2000:2100] = True  # tall: box side = 400 * (1 + 2 * 0.5) = 800
    hole[1100:1110, 2300:2310] = True  # near the tall one: its box overlaps, so they merge
    boxes = crop_boxes(hole, working_size=256, margin=0.5)
    assert len(boxes) == 2
    assert boxes[0] == Box(0, 12, 256, 268)  # centred on (125, 140), pushed inside the top edge
    tall = boxes[1]
    assert tall.bottom - tall.top >= 800 and tall.top <= 1000 and tall.bottom >= 1400
    assert tall.left <= 2000 and tall.right >= 2310
    assert not boxes[0].intersects(boxes[1])
    inside = np.zeros_like(hole)
    for b in boxes:
        inside[b.top:b.bottom, b.left:b.right] = True
    assert inside[hole].all()


def test_dilate_is_a_euclidean_disc():
    hole = np.zeros((21, 21), bool)
    hole[10, 10] = True
    # lattice points with x² + y² <= 9: 1 + 4*3 (axes) + 4*(2 + 2 + 1) (quadrants: x=1: y<=2, x=2: y<=2, x=3 none)
    assert dilate_hole(hole, 3).sum() == 29
    assert dilate_hole(hole, 0).sum() == 1


def test_pil_and_path_inputs_return_pil_with_mode_alpha_icc_and_exif(inpainter, photo, tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgba = np.concatenate([photo, np.linspace(0, 255, 517, dtype=np.uint8)[None, :, None].repeat(300, 0)], 2)
    exif = Image.Exif()
    exif[0x013B] = "A. Photographer"  # Artist
    src = tmp_path / "in.png"
    Image.fromarray(rgba, "RGBA").save(src, icc_profile=icc, exif=exif.tobytes())
    mask = blob_mask(300, 517, 150, 260, 30)
    out = inpainter(str(src), Image.fromarray(mask), strategy="crop")
    assert isinstance(out, Image.Image) and out.mode == "RGBA" and out.size == (517, 300)
    assert_known_exact(np.array(out)[..., :3], photo, mask)
    assert np.array_equal(np.array(out)[..., 3], rgba[..., 3])  # alpha untouched, hole included
    dst = save_image_atomic(out, tmp_path / "out.png")
    back = Image.open(dst)
    assert back.info.get("icc_profile") == icc
    assert back.getexif()[0x013B] == "A. Photographer"


def test_exif_orientation_is_applied(inpainter, tmp_path):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)  # as stored: 256 wide, 128 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    mask = np.zeros((256, 128), np.uint8)  # drawn on the displayed (portrait) picture
    mask[100:140, 40:80] = 255
    out = inpainter(str(path), mask)
    assert out.size == (128, 256)
    displayed = np.rot90(stored, k=-1)
    assert_known_exact(np.array(out), displayed, mask)
    assert 0x0112 not in Image.open(save_image_atomic(out, tmp_path / "o.png")).getexif()


def test_a_device_that_cannot_run_is_refused_with_what_to_use():
    from ctsdg.inference import _resolve_device

    assert _resolve_device("cpu") == torch.device("cpu") and _resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match=r"unknown device 'xyz'; use cpu, cuda, cuda:N or auto"):
        _resolve_device("xyz")
    with pytest.raises(ValueError, match=r"device 'meta' is not supported; use cpu"):
        _resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here; use --device cpu"):
            _resolve_device("cuda:1")
    else:
        with pytest.raises(ValueError, match=f"this machine has {torch.cuda.device_count()} CUDA device"):
            _resolve_device(f"cuda:{torch.cuda.device_count()}")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="no Apple GPU"):
            _resolve_device("mps")


@pytest.mark.parametrize("option, value, message", [
    ("crop_margin", -1.0, r"crop_margin \(--crop-margin\) must be a fraction >= 0"),
    ("crop_margin", float("nan"), "crop_margin"),  # was: "cannot convert float NaN to integer" at the first photo
    ("sigma", 0.0, "sigma .* must be > 0"),
    ("working_size", 17, "multiple of 128"),
])
def test_options_that_cannot_work_are_refused_when_the_inpainter_is_made(inpainter, option, value, message):
    with pytest.raises(ValueError, match=message):
        Inpainter(inpainter.generator, inpainter.model_config, **{option: value})


def test_the_bundled_model_without_an_onnx_export_says_where_to_write_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ctsdg export small --format onnx --output ctsdg-small.onnx, "
                                                r"then --checkpoint ctsdg-small.onnx"):
        Inpainter.from_pretrained("small", backend="onnxruntime")


def test_an_animation_or_a_multi_page_file_says_only_its_first_frame_is_filled(inpainter, tmp_path):
    rng = np.random.default_rng(4)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(3)]
    mask = np.zeros((40, 56), np.uint8)
    mask[10:20, 15:30] = 255
    for name, count in (("anim.gif", 3), ("pages.tif", 2), ("one.png", 1)):
        frames[0].save(tmp_path / name, save_all=count > 1, append_images=frames[1:count])
        notes = inpainter.inpaint(str(tmp_path / name), mask).messages
        said = [n for n in notes if "frames or pages" in n]
        assert said == ([f"the file holds {count} frames or pages; only the first is filled and returned"]
                        if count > 1 else []), (name, notes)


def test_tensors_and_float_masks_are_refused_with_a_conversion_that_works(inpainter):
    image = torch.rand(3, 40, 56)  # (3, H, W) in [0, 1], as torch code holds pictures
    mask = torch.zeros(40, 56)
    mask[10:20, 15:30] = 1.0
    with pytest.raises(TypeError, match=r"image must be .*got Tensor; for a torch tensor") as refused:
        inpainter(image, mask.numpy())
    assert "(t.permute(1, 2, 0) * 255).round().byte().cpu().numpy()" in str(refused.value)
    with pytest.raises(TypeError, match=r"mask must be .*got Tensor; for a torch tensor"):
        inpainter(np.zeros((40, 56, 3), np.uint8), mask)
    with pytest.raises(TypeError, match=r"got float32; for a float mask in \[0, 1\] \(1 = fill\) pass "
                                        r"\(mask > 0.5\).astype\(np.uint8\) \* 255"):
        inpainter(np.zeros((40, 56, 3), np.uint8), mask.numpy())
    t = image  # what the messages say to do works
    out = inpainter((t.permute(1, 2, 0) * 255).round().byte().cpu().numpy(), (mask.numpy() > 0.5).astype(np.uint8) * 255)
    assert out.shape == (40, 56, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_a_mask_drawn_on_the_stored_pixels_of_a_turned_photo_is_turned_with_it(inpainter, tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # as stored: 96 wide, 64 high
    exif = Image.Exif()
    exif[0x0112] = orientation  # each of these turns the picture by 90° to display it
    path = tmp_path / "turned.png"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    stored_mask = np.zeros((64, 96), np.uint8)  # drawn on the stored pixels, off-centre so every turn differs
    stored_mask[5:20, 10:40] = 255
    upright_mask = np.asarray(ImageOps.exif_transpose(_with_orientation(stored_mask, orientation)))
    result = inpainter.inpaint(str(path), stored_mask, blend="none")
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert np.asarray(result.image).shape == upright.shape == (96, 64, 3)
    changed = (np.asarray(result.image) != upright).any(axis=2)
    assert changed.any() and not (changed & (upright_mask == 0)).any()  # filled where the turned mask is
    assert_known_exact(np.asarray(result.image), upright, upright_mask)
    assert any("EXIF orientation" in note and "turned the same way" in note for note in result.messages)
    with pytest.raises(ValueError, match="mask is 64x97 but image is 64x96"):  # any other size is still refused
        inpainter.inpaint(str(path), np.zeros((97, 64), np.uint8))


def _with_orientation(array: np.ndarray, orientation: int) -> Image.Image:
    """``array`` as a PIL image that carries ``orientation`` in its EXIF (what a file would read back as)."""
    image = Image.fromarray(array)
    image.getexif()[0x0112] = orientation
    return image


def test_gray_and_16_bit_inputs(inpainter, photo):
    mask = blob_mask(300, 517, 150, 260, 30)
    gray = photo[..., 1].copy()
    out = inpainter(gray, mask, strategy="crop")
    assert_known_exact(out, gray, mask)
    out_l = inpainter(Image.fromarray(gray), mask, strategy="crop")
    assert out_l.mode == "L" and np.array_equal(np.array(out_l)[mask == 0], gray[mask == 0])
    deep = photo.astype(np.uint16) * 257 + 3  # 16-bit values that are not 8-bit values scaled
    out16 = inpainter(deep, mask, strategy="crop")
    assert_known_exact(out16, deep, mask)
    assert out16[mask > 0].max() > 255  # filled in 16 bits, not 8
    out_i16 = inpainter(Image.fromarray(deep[..., 0]), mask, strategy="crop")
    assert out_i16.mode == "I;16" and np.array_equal(np.array(out_i16)[mask == 0], deep[..., 0][mask == 0])


@pytest.mark.parametrize("colour_type, channels, message", [(2, 3, "16-bit RGB PNG.*16-bit TIFF"),
                                                             (4, 2, "16-bit gray\\+alpha PNG")])
def test_16_bit_colour_and_gray_alpha_pngs_are_refused_clearly(inpainter, tmp_path, colour_type, channels, message):
    import struct
    import zlib

    h, w = 4, 5
    raw = b"".join(b"\x00" + np.full((w, channels), 40000, ">u2").tobytes() for _ in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path = tmp_path / "deep.png"
    path.write_bytes(png)
    assert Image.open(path).mode in ("RGB", "RGBA")  # what Pillow alone gives: 8 bits
    with pytest.raises(ValueError, match=message):
        inpainter(str(path), np.zeros((h, w), np.uint8))


def test_empty_mask_returns_the_input_and_says_so(inpainter, photo, caplog):
    with caplog.at_level(logging.WARNING, logger="ctsdg"):
        result = inpainter.inpaint(photo, np.zeros((300, 517), np.uint8))
    assert result.strategy == "none" and np.array_equal(result.image, photo)
    assert "empty" in result.messages[0] and "empty" in caplog.text


def test_full_mask_runs_and_warns(inpainter, photo):
    image = photo[:128, :200].copy()
    result = inpainter.inpaint(image, np.full((128, 200), 255, np.uint8))
    assert "whole image" in result.messages[0]
    assert result.image.shape == image.shape


def test_label_masks_and_8_bit_masks_in_mode_i_mean_what_they_say():
    from ctsdg.images import hole_from_any

    labels = np.zeros((6, 9), np.uint8)
    labels[2:4, 3:7] = 1  # a 0/1 data-set mask: 1 = fill
    expected = labels.astype(bool)
    assert np.array_equal(hole_from_any(labels, (6, 9)), expected)
    assert np.array_equal(hole_from_any(labels.astype(np.int64), (6, 9)), expected)
    assert np.array_equal(hole_from_any(Image.fromarray(labels), (6, 9)), expected)
    assert np.array_equal(hole_from_any(Image.fromarray(labels * 255).convert("I"), (6, 9)), expected)
    sixteen = Image.fromarray(labels.astype(np.uint16) * 65535)  # mode I;16
    assert np.array_equal(hole_from_any(sixteen, (6, 9)), expected)
    faint = labels * 100  # 0..255 scale and below the threshold: still nothing to fill
    assert not hole_from_any(faint, (6, 9)).any()


def test_mask_size_mismatch(inpainter, photo):
    mask = blob_mask(150, 258, 70, 130, 20)
    with pytest.raises(ValueError, match="resize-mask"):
        inpainter(photo, mask)
    out = inpainter(photo, mask, resize_mask=True, strategy="crop")
    big = np.array(Image.fromarray(mask).resize((517, 300), Image.NEAREST))
    assert_known_exact(out, photo, big)


def test_bad_inputs(inpainter, photo, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        inpainter(str(notes), np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inpainter(str(tmp_path / "nope.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        inpainter(photo.astype(np.float32) / 255, np.zeros((300, 517), np.uint8))
    with pytest.raises(ValueError, match="strategy"):
        inpainter(photo, blob_mask(300, 517, 100, 100, 10), strategy="tile")


def test_failed_write_leaves_nothing_behind(photo, tmp_path):
    img = Image.fromarray(np.concatenate([photo, photo[..., :1]], 2), "RGBA")
    with pytest.raises(ValueError, match="alpha"):
        save_image_atomic(img, tmp_path / "out.jpg")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_image_atomic(img, tmp_path / "missing" / "out.png")


def test_user_edges_reach_the_structure_stream_only_inside_the_hole(inpainter, photo):
    image = photo[:256, :256].copy()
    mask = blob_mask(256, 256, 128, 128, 60)
    base = inpainter.inpaint(image, mask, strategy="original", save_intermediate=True)
    line = np.zeros((256, 256), np.uint8)
    line[128, 60:200] = 255  # a horizontal stroke through the hole
    guided = inpainter.inpaint(image, mask, extra_edges=line, strategy="original", save_intermediate=True)
    assert_known_exact(guided.image, image, mask)
    assert not np.array_equal(guided.image, base.image)
    inside = (line > 0) & (mask > 0)
    assert (guided.intermediates["edge"][inside] == 255).all()
    outside = np.zeros((256, 256), np.uint8)
    outside[10, 10:60] = 255  # entirely in the known region: ignored
    unchanged = inpainter(image, mask, extra_edges=outside, strategy="original")
    assert np.array_equal(unchanged, base.image)


def test_intermediates(inpainter, photo):
    result = inpainter.inpaint(photo, blob_mask(300, 517, 150, 260, 30), strategy="crop", save_intermediate=True)
    assert {"edge", "gray", "masked_input", "projected_edge", "raw_output", "hole_mask"} <= set(result.intermediates)
    assert result.intermediates["raw_output"].shape == (256, 256, 3)
    assert set(np.unique(result.intermediates["edge"])) <= {0, 255}


def test_bf16_keeps_known_pixels_and_stays_close(inpainter, photo, monkeypatch):
    monkeypatch.setenv(cpu.ALLOW_SLOW_BF16, "1")  # runs (slowly) on CPUs without native bf16 too
    g = inpainter.generator
    bf16 = Inpainter(g, g.config, precision="bf16")
    mask = blob_mask(300, 517, 150, 260, 30)
    a = inpainter(photo, mask, strategy="crop")
    b = bf16(photo, mask, strategy="crop")
    assert_known_exact(b, photo, mask)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 4


def test_describe(inpainter):
    d = inpainter.describe()
    assert d["parameters"] == sum(p.numel() for p in inpainter.generator.parameters())
    assert d["mask_convention"].startswith("white (255) = fill")
    assert d["structure_mode"] == "standard" and d["model_config"]["base_width"] == 4
    assert d["backend"] == "torch" and d["precision"] == "fp32" and d["blend"] == "poisson"
    assert d["edges"] == "known"
    assert d["architecture"].endswith("two partial-conv U-Net streams (texture, structure), Bi-GFF, CFA")
    with pytest.raises(ValueError, match="edges must be one of"):
        Inpainter(inpainter.generator, inpainter.model_config, edges="gt")
    ablated = ModelConfig(base_width=4, dual_stream=False, attention="contextual", structure_priors=False)
    text = Inpainter(Generator(ablated), ablated).describe()["architecture"]  # what the checkpoint is
    assert text.startswith("CTSDG generator") and "one partial-conv U-Net stream" in text
    assert "contextual attention instead of CFA" in text and "no structure priors" in text and "Bi-GFF" not in text


def test_blend_none_pastes_the_raw_output_and_poisson_levels_it_to_the_surround(inpainter, photo):
    image = photo[:256, :256].copy()
    mask = blob_mask(256, 256, 128, 128, 50)
    hole = mask > 0
    ring = dilate_hole(hole, 2) & ~hole  # the known pixels around the hole
    edge = dilate_hole(~hole, 2) & hole  # the hole pixels along its border
    jumps = {}
    for blend in ("none", "poisson"):
        model = Inpainter(inpainter.generator, inpainter.model_config, blend=blend)
        out = model(image, mask, strategy="original").astype(float)
        assert_known_exact(out.astype(np.uint8), image, mask)
        jumps[blend] = abs(out[edge].mean() - out[ring].mean())  # the seam: level step across the border
    assert jumps["poisson"] < jumps["none"] / 3  # an untrained model's fill is far off; blending fixes the level
    with pytest.raises(ValueError, match="blend must be one of"):
        Inpainter(inpainter.generator, inpainter.model_config, blend="alpha")
    plain = Inpainter(inpainter.generator, inpainter.model_config, blend="none")
    for strategy in ("original", "crop"):  # a call's blend overrides the inpainter's, in every strategy
        assert np.array_equal(inpainter(image, mask, strategy=strategy, blend="none"),
                              plain(image, mask, strategy=strategy))
        assert np.array_equal(plain(image, mask, strategy=strategy, blend="poisson"),
                              inpainter(image, mask, strategy=strategy))
    with pytest.raises(ValueError, match="blend must be one of"):
        inpainter(image, mask, blend="alpha")


def test_from_pretrained_reads_a_checkpoint_and_refuses_unknown_options(tmp_path):
    from ctsdg.checkpoint import save_generator

    g = Generator(ModelConfig(base_width=4))
    path = save_generator(tmp_path / "g.safetensors", g, "official")
    inp = Inpainter.from_pretrained(path)
    assert inp.structure_mode == "official" and inp.describe()["checkpoint_sha256"]
    with pytest.raises(ValueError, match="precision"):
        Inpainter.from_pretrained(path, precision="int8")
    with pytest.raises(FileNotFoundError, match="ctsdg export"):
        Inpainter.from_pretrained(path, backend="onnxruntime")


def test_jpeg_output_keeps_icc(photo, tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.fromarray(photo)
    img.info["icc_profile"] = icc
    path = save_image_atomic(img, tmp_path / "x.jpg")
    assert Image.open(io.BytesIO(path.read_bytes())).info["icc_profile"] == icc


def test_hole_never_vanishes_when_resized_for_the_network():
    from ctsdg.inference import _resize_hole

    hole = torch.zeros(1, 3000, 900)
    hole[0, 1500, 450] = 1  # one pixel in a 2.7-megapixel mask
    for shape in [(256, 128), (128, 128), (6000, 1800)]:
        small = _resize_hole(hole, shape)
        assert set(small.unique().tolist()) == {0.0, 1.0}
        assert 1 <= small.sum() <= 4


def test_tiny_image(inpainter):
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    mask = np.zeros((5, 7), np.uint8)
    mask[2, 3] = 255
    for strategy in ("original", "resize", "crop"):
        assert_known_exact(inpainter(image, mask, strategy=strategy), image, mask)


def test_official_structure_mode_reaches_the_priors(photo):
    g = Generator(ModelConfig(base_width=4))
    image = photo[:128, :128].copy()
    mask = blob_mask(128, 128, 64, 64, 20)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255 * 2 - 1
    for mode in ("standard", "official"):
        result = Inpainter(g, g.config, mode).inpaint(image, mask, strategy="original", save_intermediate=True)
        _, gray = compute_structure(x, sigma=2.0, official=mode == "official")
        expected = (gray[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(result.intermediates["gray"], expected), mode


def test_bmp_and_webp_refuse_what_they_cannot_store_and_webp_keeps_pixels_exact(photo, tmp_path):
    """Pillow drops BMP alpha and WebP's 16 bits without a word, fails on 16-bit BMP, and writes lossy WebP."""
    rgba = np.concatenate([photo, photo[..., :1]], 2)
    with pytest.raises(ValueError, match="BMP cannot store the alpha"):
        save_image_atomic(Image.fromarray(rgba, "RGBA"), tmp_path / "a.bmp")
    with pytest.raises(ValueError, match="BMP cannot store the alpha"):
        save_image_atomic(Image.fromarray(rgba, "RGBA").convert("LA"), tmp_path / "la.bmp")
    gray16 = Image.fromarray(photo[..., 0].astype(np.uint16) * 257)
    for ext in ("bmp", "webp"):
        with pytest.raises(ValueError, match="16-bit"):
            save_image_atomic(gray16, tmp_path / f"g.{ext}")
    assert list(tmp_path.iterdir()) == []
    rgba[:20, :, 3] = 0  # fully transparent rows: their colour must survive too
    save_image_atomic(Image.fromarray(rgba, "RGBA"), tmp_path / "a.webp")
    assert np.array_equal(np.array(Image.open(tmp_path / "a.webp")), rgba)


def test_inpaint_file_refuses_a_bad_output_name_before_computing(inpainter, photo, tmp_path, monkeypatch):
    Image.fromarray(photo).save(tmp_path / "in.png")
    Image.fromarray(blob_mask(300, 517, 100, 100, 10)).save(tmp_path / "m.png")
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr(inpainter, "inpaint", lambda *a, **k: pytest.fail("computed before checking the output"))
    for out, expected in ((tmp_path / "out.gif", "no image extension"), (tmp_path / "folder", "is a folder")):
        with pytest.raises(ValueError, match=expected):
            inpainter.inpaint_file(tmp_path / "in.png", tmp_path / "m.png", out, overwrite=True)


def test_image_beyond_pillows_size_limit_is_one_line(inpainter, tmp_path, monkeypatch):
    Image.new("RGB", (30, 20)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 600 pixels > 2 x limit: DecompressionBombError
    with pytest.raises(ValueError, match="too large to open safely"):
        inpainter(str(tmp_path / "big.png"), np.zeros((20, 30), np.uint8))


def test_cmyk_file_comes_back_cmyk_with_the_known_inks_untouched(inpainter, photo, tmp_path):
    from ctsdg.images import picture_from_pil

    inks = np.array(Image.fromarray(photo).convert("CMYK"))
    inks[..., 3] = np.linspace(0, 200, 517, dtype=np.uint8)[None, :]  # some black ink, as print files have
    src = tmp_path / "print.tif"
    Image.fromarray(inks, "CMYK").save(src)
    mask = blob_mask(300, 517, 150, 260, 30)
    # without a profile the network sees Pillow's rendering, R = (255 - C)(255 - K) / 255
    assert np.array_equal(picture_from_pil(Image.open(src)).rgb, np.array(Image.open(src).convert("RGB")))
    out = inpainter(str(src), mask, strategy="crop")
    assert out.mode == "CMYK" and out.size == (517, 300)
    filled = np.array(out)
    assert np.array_equal(filled[mask == 0], inks[mask == 0])  # the input's own ink values, bit for bit
    refilled = (filled != inks).any(axis=2)  # hole pixels whose colour the fill changed get new inks
    assert refilled[mask > 0].mean() > 0.5
    assert (filled[refilled][:, 3] == 0).all()  # separated by the inverse formula: no black ink
    back = Image.open(save_image_atomic(out, tmp_path / "out.tif"))
    assert back.mode == "CMYK" and np.array_equal(np.array(back), filled)
    with pytest.raises(ValueError, match=r"PNG cannot store CMYK pixels; write .*out\.tif"):
        save_image_atomic(out, tmp_path / "out.png")
    assert Image.open(save_image_atomic(out, tmp_path / "out.jpg")).mode == "CMYK"
    untouched = inpainter(str(src), np.zeros_like(mask))  # an empty mask: the input's inks, all of them
    assert untouched.mode == "CMYK" and np.array_equal(np.array(untouched), inks)


def test_cmyk_file_with_a_profile_is_seen_and_separated_through_it(inpainter, photo, cmyk_gray_icc, tmp_path):
    from ctsdg.images import cmyk_to_rgb, rgb_to_cmyk

    cyan = Image.fromarray(np.array([[[255, 0, 0, 0], [0, 0, 0, 255]]], np.uint8), "CMYK")
    cyan.info["icc_profile"] = cmyk_gray_icc
    assert np.array_equal(cmyk_to_rgb(cyan), [[[255, 255, 255], [0, 0, 0]]])  # this press prints no cyan
    assert np.array_equal(cmyk_to_rgb(Image.fromarray(np.array(cyan), "CMYK")), [[[0, 255, 255], [0, 0, 0]]])
    assert (rgb_to_cmyk(photo[:4, :4], cmyk_gray_icc)[..., :3] == 0).all()  # its separation: black ink only
    assert np.array_equal(rgb_to_cmyk(photo[:4, :4], None), np.array(Image.fromarray(photo[:4, :4]).convert("CMYK")))

    inks = np.array(Image.fromarray(photo).convert("CMYK"))
    inks[..., 3] = 255 - np.array(Image.fromarray(photo).convert("L"))  # what this press prints: the black
    src = tmp_path / "print.tif"
    Image.fromarray(inks, "CMYK").save(src, icc_profile=cmyk_gray_icc)
    mask = blob_mask(300, 517, 150, 260, 30)
    out = inpainter(str(src), mask, strategy="crop")
    filled = np.array(out)
    assert out.mode == "CMYK" and out.info.get("icc_profile") == cmyk_gray_icc
    assert np.array_equal(filled[mask == 0], inks[mask == 0])
    refilled = (filled != inks).any(axis=2)
    assert refilled[mask > 0].mean() > 0.5
    assert (filled[refilled][:, :3] == 0).all() and filled[refilled][:, 3].any()  # separated by the profile
    assert Image.open(save_image_atomic(out, tmp_path / "out.tif")).info.get("icc_profile") == cmyk_gray_icc


def test_16_bit_rgb_tiff_is_filled_and_written_back_in_16_bits(inpainter, photo, tmp_path):
    import tifffile
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    deep = photo.astype(np.uint16) * 257 + 3  # 16-bit values that are not 8-bit values scaled
    alpha = np.linspace(0, 65535, 517).astype(np.uint16)[None, :].repeat(300, 0)
    mask = blob_mask(300, 517, 150, 260, 30)
    for name, pixels in (("rgb", deep), ("rgba", np.concatenate([deep, alpha[..., None]], axis=2))):
        src = tmp_path / f"{name}.tif"
        tifffile.imwrite(src, pixels, photometric="rgb", iccprofile=icc, resolution=(300.0, 300.0),
                         resolutionunit="INCH", extrasamples=["unassalpha"] if pixels.shape[2] == 4 else None)
        assert Image.open(src).mode.startswith("RGB")  # what Pillow alone would give: 8 bits
        result = inpainter.inpaint_file(src, _mask_file(tmp_path, mask), tmp_path / f"{name}_out.tif", strategy="crop")
        out = result.image  # a path in, yet an array out: PIL has no 16-bit colour mode
        assert isinstance(out, np.ndarray) and out.dtype == np.uint16 and out.shape == pixels.shape
        assert_known_exact(out[..., :3], deep, mask)
        assert (out[..., :3][mask > 0] % 257 != 0).mean() > 0.5  # filled in 16 bits, not 8
        if pixels.shape[2] == 4:
            assert np.array_equal(out[..., 3], alpha)
        back = tifffile.imread(tmp_path / f"{name}_out.tif")
        assert back.dtype == np.uint16 and np.array_equal(back, out)
        reopened = Image.open(tmp_path / f"{name}_out.tif")
        assert reopened.info.get("icc_profile") == icc and tuple(reopened.info["dpi"]) == (300.0, 300.0)


def _mask_file(folder, mask):
    path = folder / "mask.png"
    Image.fromarray(mask).save(path)
    return path


def test_outputs_a_format_cannot_store_are_refused_before_any_compute(inpainter, photo, tmp_path, monkeypatch):
    import tifffile

    mask = _mask_file(tmp_path, blob_mask(300, 517, 150, 260, 30))
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.concatenate([photo, photo[..., :1]], axis=2), "RGBA").save(rgba)
    cmyk = tmp_path / "print.tif"
    Image.fromarray(photo).convert("CMYK").save(cmyk)
    deep = tmp_path / "deep.tif"
    tifffile.imwrite(deep, photo.astype(np.uint16) * 257, photometric="rgb")
    monkeypatch.setattr(inpainter, "inpaint", lambda *a, **k: pytest.fail("computed before refusing"))
    for image, output, message in ((rgba, "o.jpg", "JPEG cannot store the alpha channel"),
                                   (cmyk, "o.png", "PNG cannot store CMYK pixels"),
                                   (deep, "o.png", r"PNG cannot store this 16-bit colour image here; write .*o\.tif"),
                                   (deep, "o.jpg", "JPEG cannot store this 16-bit colour image")):
        with pytest.raises(ValueError, match=message):
            inpainter.inpaint_file(image, mask, tmp_path / output)
        assert not (tmp_path / output).exists()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16_bit_tiff_orientation_turns_the_picture_as_pillow_does(orientation):
    from PIL import ImageOps

    from ctsdg.images import _UPRIGHT

    stored = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    upright = np.array(ImageOps.exif_transpose(img))
    assert np.array_equal(_UPRIGHT.get(orientation, lambda a: a)(stored), upright)


def test_16_bit_lzw_tiff_is_read_in_16_bits_or_refused_with_the_package_to_install():
    """tests/data/rgb16_lzw.tif: 6x7, written by tifffile with LZW, sample (y, x, c) = (21y + 3x + c)·3001 mod 65535."""
    from pathlib import Path

    from ctsdg.images import read_picture

    path = Path(__file__).parent / "data" / "rgb16_lzw.tif"
    expected = (np.arange(6 * 7 * 3).reshape(6, 7, 3) * 3001 % 65535).astype(np.uint16)
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="compressed with LZW.*pip install imagecodecs"):
            read_picture(path)
    else:
        assert np.array_equal(read_picture(path).rgb, expected)


def test_16_bit_tiff_is_decoded_once_by_tifffile_and_a_truncated_one_is_named(photo, tmp_path, monkeypatch):
    import tifffile
    from PIL import TiffImagePlugin

    from ctsdg.images import read_picture

    path = tmp_path / "deep.tif"
    stored = photo[:60, :80].astype(np.uint16) * 257 + 3
    tifffile.imwrite(path, stored, photometric="rgb")
    real_load = TiffImagePlugin.TiffImageFile.load
    loads = []
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "load", lambda im: loads.append(im) or real_load(im))
    assert np.array_equal(read_picture(path).rgb, stored)
    assert loads == []  # Pillow never decodes it to 8 bits first
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"image .*truncated\.tif cannot be read .*is the file truncated"):
        read_picture(truncated)


def test_heic_without_its_plugin_names_the_package_and_folder_mode_writes_png(tmp_path, monkeypatch):
    from ctsdg import images
    from ctsdg.commands.inpaint import _output_name

    heic = tmp_path / "IMG_0001.HEIC"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    monkeypatch.setattr(images, "_register_heif_plugin", lambda: False)  # as without pillow-heif
    with pytest.raises(ValueError, match="HEIC/HEIF photo.*pip install pillow-heif"):
        images.open_image_file(heic)
    other = tmp_path / "noise.heic"
    other.write_bytes(bytes(64))
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        images.open_image_file(other)
    assert _output_name(heic) == "IMG_0001.png" and _output_name(tmp_path / "a.JPG") == "a.JPG"


def test_a_mask_of_what_to_keep_gets_a_note_and_invert_mask_fills_the_black(inpainter, photo):
    photo = photo[:120, :200]
    keep = blob_mask(120, 200, 60, 100, 24)  # white over the subject: a mask of what to keep
    covered = 1 - (keep > 0).mean()
    result = inpainter.inpaint(photo, 255 - keep, strategy="resize")
    assert [m for m in result.messages if f"covers {100 * covered:.0f} % of the image" in m and "--invert-mask" in m]
    inverted = inpainter.inpaint(photo, keep, strategy="resize", invert_mask=True)
    assert np.array_equal(inverted.image, result.image)  # the same hole, the same fill
    assert not [m for m in inverted.messages if "--invert-mask" in m]
    assert not inpainter.inpaint(photo, keep, strategy="resize").messages  # a 10 % hole: no note


def test_16_bit_cmyk_tiff_is_refused_rather_than_reduced_to_8_bits(inpainter, tmp_path):
    import tifffile

    path = tmp_path / "print16.tif"
    tifffile.imwrite(path, np.full((8, 9, 4), 40000, np.uint16), photometric="separated")
    assert Image.open(path).mode == "CMYK"  # what Pillow alone gives: 8 bits
    with pytest.raises(ValueError, match="16-bit CMYK TIFF"):
        inpainter(str(path), np.zeros((8, 9), np.uint8))


def test_xmp_is_carried_into_every_format_that_has_a_place_for_it(inpainter, photo, tmp_path):
    import tifffile

    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description xmp:Rating="5"/></rdf:RDF></x:xmpmeta>'
    exif = Image.Exif()
    exif[0x013B] = "A. Photographer"  # Artist
    photo = photo[:120, :200]
    src = tmp_path / "in.jpg"
    Image.fromarray(photo).save(src, xmp=xmp, exif=exif.tobytes(), quality=95)
    mask = _mask_file(tmp_path, blob_mask(120, 200, 60, 100, 20))
    for suffix in (".jpg", ".png", ".webp", ".tif"):
        inpainter.inpaint_file(src, mask, tmp_path / f"out{suffix}", strategy="crop")
        back = Image.open(tmp_path / f"out{suffix}")
        assert back.info.get("xmp") == xmp, suffix
        assert back.getexif().get(0x013B) == "A. Photographer", suffix  # the EXIF survives beside it
    deep = tmp_path / "deep.tif"
    tifffile.imwrite(deep, photo.astype(np.uint16) * 257, photometric="rgb", extratags=[(700, 1, len(xmp), xmp, True)])
    inpainter.inpaint_file(deep, mask, tmp_path / "deep_out.tif", strategy="crop")
    assert Image.open(tmp_path / "deep_out.tif").info.get("xmp") == xmp


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])  # Pillow's path and tifffile's
def test_a_turned_tiff_is_filled_upright_and_loses_the_xmp_orientation(inpainter, photo, tmp_path, dtype):
    import tifffile

    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6" xmp:Rating="4">'
           b"<tiff:Orientation>6</tiff:Orientation></rdf:Description></rdf:RDF></x:xmpmeta>")
    stored = photo[:120, :200].astype(dtype) * (257 if dtype == np.uint16 else 1)
    src = tmp_path / "turned.tif"
    tifffile.imwrite(src, stored, photometric="rgb", extratags=[(274, "H", 1, 6, True), (700, 1, len(xmp), xmp, True)])
    mask = _mask_file(tmp_path, blob_mask(200, 120, 100, 60, 20))  # the upright picture is 200 high
    inpainter.inpaint_file(src, mask, tmp_path / "out.tif", strategy="crop")
    out = Image.open(tmp_path / "out.tif")
    back = tifffile.imread(tmp_path / "out.tif")
    assert back.dtype == dtype and out.getexif().get(0x0112, 1) == 1
    assert_known_exact(back, np.rot90(stored, -1), np.array(Image.open(mask)))  # turned upright, once
    assert b"Orientation" not in out.info["xmp"] and b'xmp:Rating="4"' in out.info["xmp"]  # the rest is kept


def test_a_tiff_pillow_cannot_open_is_named_as_such(tmp_path):
    import tifffile

    from ctsdg.images import open_image_file

    path = tmp_path / "gray_alpha16.tif"
    tifffile.imwrite(path, np.zeros((6, 7, 2), np.uint16), photometric="minisblack", extrasamples=["unassalpha"])
    with pytest.raises(ValueError, match="TIFF whose layout Pillow cannot open.*16-bit RGB"):
        open_image_file(path)


def test_edges_and_masks_in_other_integer_types_and_0_1_labels_mean_what_they_say(inpainter, photo):
    image = photo[:128, :128].copy()
    mask = blob_mask(128, 128, 64, 64, 30)
    line = np.zeros((128, 128), np.uint8)
    line[64, 20:110] = 255
    guided = inpainter(image, mask, extra_edges=line, strategy="original")
    assert not np.array_equal(guided, inpainter(image, mask, strategy="original"))
    for same in ((line > 0).astype(np.uint8), (line > 0), (line > 0).astype(np.int64) * 255):  # 0/1, bool, int64
        assert np.array_equal(inpainter(image, mask, extra_edges=same, strategy="original"), guided)
    with pytest.raises(TypeError, match=r"extra_edges must be uint8 .* pass \(edges > 0.5\)"):
        inpainter(image, mask, extra_edges=(line > 0).astype(np.float32))
    # RGB and RGBA stroke layers are read as masks are: RGBA as it looks over black, so a layer filled white
    # and then erased, whose colour is white everywhere, marks only its opaque line (its alpha took part
    # in a max over channels before, and marked every pixel)
    rgb = np.repeat(line[..., None], 3, axis=2)
    erased = np.dstack((np.full((128, 128, 3), 255, np.uint8), line))
    painted = np.dstack((rgb, line))
    for same in (rgb, erased, painted):
        assert np.array_equal(inpainter(image, mask, extra_edges=same, strategy="original"), guided)
    with pytest.raises(ValueError, match="extra_edges is 64x128 but the image is 128x128"):
        inpainter(image, mask, extra_edges=rgb[:, :64])
    # (m > 0) * 255 is int64: read as the uint8 mask it holds; an int64 image gets the fix that works
    assert np.array_equal(inpainter(image, (mask > 0) * 255, strategy="original"),
                          inpainter(image, mask, strategy="original"))
    with pytest.raises(TypeError, match=r"got int64; for integers in 0..255 pass x.astype\(np.uint8\)"):
        inpainter(image.astype(np.int64), mask)
    for bad in (-3, 2.5, True):
        with pytest.raises(ValueError, match=r"dilate .* must be a whole number >= 0"):
            inpainter(image, mask, dilate=bad)


def test_the_note_for_a_mask_of_what_to_keep_gives_a_call_that_works(inpainter, photo):
    photo = photo[:120, :200]
    keep = blob_mask(120, 200, 60, 100, 24)
    note = [m for m in inpainter.inpaint(photo, 255 - keep, strategy="resize").messages if "invert" in m][0]
    assert "inpainter(image, mask, invert_mask=True)" in note
    inpainter(photo, 255 - keep, strategy="resize", invert_mask=True)  # the call the note gives runs


def test_intermediates_of_an_earlier_run_are_refused_or_replaced_never_mixed(inpainter, photo, tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(photo).save(src)
    two, one = tmp_path / "two.png", tmp_path / "one.png"
    mask2 = np.maximum(blob_mask(300, 517, 80, 100, 20), blob_mask(300, 517, 220, 420, 20))
    Image.fromarray(mask2).save(two)
    Image.fromarray(blob_mask(300, 517, 80, 100, 20)).save(one)
    out = tmp_path / "y.png"
    inpainter.inpaint_file(src, two, out, strategy="crop", save_intermediate=True)
    folder = tmp_path / "y_intermediate"
    assert (folder / "raw_output_box1.png").is_file()
    # the names earlier_intermediates knows are every name the inpainter writes (two lists of one thing)
    from ctsdg.inference import earlier_intermediates

    assert earlier_intermediates(folder) == sorted(folder.iterdir())
    (folder / "notes.txt").write_text("the user's own file")
    out.unlink()
    with pytest.raises(FileExistsError, match="holds the intermediates of an earlier run .* pass --overwrite"):
        inpainter.inpaint_file(src, one, out, strategy="crop", save_intermediate=True)
    assert not out.exists()
    inpainter.inpaint_file(src, one, out, strategy="crop", save_intermediate=True, overwrite=True)
    names = sorted(p.name for p in folder.iterdir())
    assert "raw_output.png" in names and not [n for n in names if "_box" in n] and "notes.txt" in names
    with pytest.raises(TypeError, match="image_path must be a path, got Image"):
        inpainter.inpaint_file(Image.fromarray(photo), one, tmp_path / "z.png")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_torchscript_export_given_as_a_checkpoint_is_named(tmp_path):
    from ctsdg.checkpoint import load_generator

    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "m.torchscript.pt"))
    with pytest.raises(ValueError, match=r"is a TorchScript export .* pass the checkpoint it was exported from"):
        load_generator(tmp_path / "m.torchscript.pt")


def test_the_generator_names_a_missing_edge_map_and_arrays_that_are_not_tensors():
    g = Generator(ModelConfig(base_width=4)).eval()
    x, m = torch.zeros(1, 3, 128, 128), torch.ones(1, 1, 128, 128)
    with pytest.raises(ValueError, match=r"input_edge is required when structure_priors is on"):
        g(x, None, m)
    with pytest.raises(TypeError, match=r"input_image must be a torch.Tensor, got ndarray"):
        g(x.numpy(), torch.zeros(1, 2, 128, 128), m)
