"""``ctsdg inpaint`` end to end: one file, folders, and every bad input (one-line error, exit 1, nothing written)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ctsdg import Generator, ModelConfig
from ctsdg.checkpoint import save_generator
from ctsdg.cli import main
from ctsdg.images import dilate_hole


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return str(save_generator(path, Generator(ModelConfig(base_width=4))))


def write_pair(folder, name="a", size=(200, 150), mask_name=None, hole=True):
    w, h = size
    rng = np.random.default_rng(len(name))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    if hole:
        mask[h // 3: h // 2, w // 3: w // 2] = 255
    (folder / "masks").mkdir(exist_ok=True)
    ip, mp = folder / f"{name}.png", folder / "masks" / f"{mask_name or name}.png"
    Image.fromarray(image).save(ip)
    Image.fromarray(mask).save(mp)
    return ip, mp, image, mask


def run(checkpoint, *args):
    return main(["inpaint", "--checkpoint", checkpoint, "--device", "cpu", *map(str, args)])


def test_one_file(checkpoint, tmp_path, capsys):
    ip, mp, image, mask = write_pair(tmp_path)
    out = tmp_path / "out.png"
    assert run(checkpoint, "--image", ip, "--mask", mp, "--output", out) == 0
    result = np.array(Image.open(out))
    assert np.array_equal(result[mask == 0], image[mask == 0])
    assert "wrote" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_existing_output_needs_overwrite_and_inputs_are_never_overwritten(checkpoint, tmp_path, capsys):
    ip, mp, image, _ = write_pair(tmp_path)
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    assert run(checkpoint, "--image", ip, "--mask", mp, "--output", out) == 1
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert run(checkpoint, "--image", ip, "--mask", mp, "--output", out, "--overwrite") == 0
    before = ip.read_bytes()
    assert run(checkpoint, "--image", ip, "--mask", mp, "--output", ip, "--overwrite") == 1
    assert "input" in capsys.readouterr().err and ip.read_bytes() == before


def test_folders_with_masks_matched_by_name(checkpoint, tmp_path, capsys):
    images, masks, outs = (tmp_path / d for d in ("images", "masks", "out"))
    for d in (images, masks, outs):
        d.mkdir()
    pairs = [write_pair(images, "a"), write_pair(images, "b"), write_pair(images, "c", mask_name="c_mask")]
    for _, mp, _, _ in pairs:
        mp.rename(masks / mp.name)
    assert run(checkpoint, "--image", images, "--mask", masks, "--output", outs, "--dilate", "2") == 0
    for ip, _, image, mask in pairs:
        result = np.array(Image.open(outs / ip.name))
        grown = dilate_hole(mask > 0, 2)
        assert np.array_equal(result[~grown], image[~grown])
    assert "wrote 3 of 3" in capsys.readouterr().err
    assert run(checkpoint, "--image", images, "--mask", masks, "--output", images, "--overwrite") == 1
    assert "input folder" in capsys.readouterr().err
    assert run(checkpoint, "--image", images, "--mask", masks, "--output", masks, "--overwrite") == 1
    assert "is the mask folder" in capsys.readouterr().err  # before any work (it was: 0 of 3 written)


def test_images_in_subfolders_are_named_as_not_filled(checkpoint, tmp_path, capsys):
    images, outs = tmp_path / "images", tmp_path / "out"
    for d in (images / "2025", outs):
        d.mkdir(parents=True)
    _, mask, _, _ = write_pair(images, "a")  # images/a.png, its mask in images/masks/
    write_pair(images / "2025", "b")  # a photo library's year folder
    write_pair(images / "2025", "c")
    assert run(checkpoint, "--image", images, "--mask", mask, "--output", outs) == 0
    err = capsys.readouterr().err
    assert "note: " + str(images / "2025" / "b.png") + " and 4 more are in a subfolder" in err  # c, 3 masks
    assert "run each subfolder as its own --image" in err and sorted(p.name for p in outs.iterdir()) == ["a.png"]
    assert run(checkpoint, "--image", images, "--mask", mask, "--output", outs, "--overwrite", "--quiet") == 0
    assert "subfolder" not in capsys.readouterr().err


def test_a_disk_error_on_one_image_of_a_folder_skips_it_and_goes_on(checkpoint, tmp_path, capsys, monkeypatch):
    import errno

    from ctsdg import images as images_module

    images, masks, outs = (tmp_path / d for d in ("images", "masks", "out"))
    for d in (images, masks, outs):
        d.mkdir()
    for name in ("a", "b", "c"):
        _, mp, _, _ = write_pair(images, name)
        mp.rename(masks / mp.name)
    real_save = images_module.save_image_atomic

    def save(img, path, **kwargs):
        if path.name == "b.png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(img, path, **kwargs)

    monkeypatch.setattr("ctsdg.inference.save_image_atomic", save)
    assert run(checkpoint, "--image", images, "--mask", masks, "--output", outs) == 1
    err = capsys.readouterr().err
    assert "b.png" in err and "No space left" in err and "wrote 2 of 3" in err
    assert sorted(p.name for p in outs.iterdir()) == ["a.png", "c.png"]


def test_folder_with_a_missing_mask_fails_before_writing_anything(checkpoint, tmp_path, capsys):
    images, masks, outs = (tmp_path / d for d in ("images", "masks", "out"))
    for d in (images, masks, outs):
        d.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((150, 200, 3), np.uint8)).save(images / f"{name}.png")
    Image.fromarray(np.zeros((150, 200), np.uint8)).save(masks / "a.png")  # b has no mask
    assert run(checkpoint, "--image", images, "--mask", masks, "--output", outs) == 1
    assert "no mask for b.png" in capsys.readouterr().err
    assert list(outs.iterdir()) == []


def test_bad_inputs_each_get_one_line_and_exit_1(checkpoint, tmp_path, capsys):
    ip, mp, _, _ = write_pair(tmp_path)
    small = tmp_path / "small_mask.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    cases = [
        (("--image", ip, "--mask", small, "--output", tmp_path / "o1.png"), "--resize-mask"),
        (("--image", notes, "--mask", mp, "--output", tmp_path / "o2.png"), "not an image"),
        (("--image", tmp_path / "nope.png", "--mask", mp, "--output", tmp_path / "o3.png"), "does not exist"),
        (("--image", ip, "--mask", mp, "--output", tmp_path / "no_dir" / "o4.png"), "does not exist"),
        (("--image", ip, "--mask", mp, "--output", tmp_path / "masks"), "is a folder; give an output file name"),
        (("--image", ip, "--mask", mp, "--output", tmp_path / "o5.png", "--dilate", "-1"), "--dilate"),
        (("--image", ip, "--mask", mp), "--output"),
    ]
    for args, expected in cases:
        assert run(checkpoint, *args) == 1, args
        err = capsys.readouterr().err
        assert expected in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "masks", "notes.png", "small_mask.png"]
    assert run(checkpoint, "--image", ip, "--mask", small, "--output", tmp_path / "o1.png", "--resize-mask") == 0


def test_a_photo_over_pillows_bomb_warning_opens_quietly_and_twice_that_is_refused(checkpoint, tmp_path, capsys,
                                                                                  monkeypatch):
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; lowered here so that the
    # 200x150 photo (30 000 pixels) stands for a 90 MP one, then for a 180 MP one
    ip, mp, _, _ = write_pair(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(checkpoint, "--image", ip, "--mask", mp, "--output", tmp_path / "out.png") == 0
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    capsys.readouterr()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert run(checkpoint, "--image", ip, "--mask", mp, "--output", tmp_path / "out2.png") == 1
    err = capsys.readouterr().err
    assert "too large to open safely" in err and "under 0.02 MP" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out2.png").exists()


def test_empty_mask_writes_the_input_and_says_so(checkpoint, tmp_path, capsys):
    ip, mp, image, _ = write_pair(tmp_path, hole=False)
    out = tmp_path / "out.png"
    assert run(checkpoint, "--image", ip, "--mask", mp, "--output", out) == 0
    assert np.array_equal(np.array(Image.open(out)), image)
    assert "the mask is empty" in capsys.readouterr().err


def test_a_warning_is_printed_once_by_the_command(tmp_path):
    # In a real process (no pytest log capture) the inpainter's warning would also reach stderr
    # through logging's last-resort handler, beside the command's note.
    photo = tmp_path / "p.png"
    Image.fromarray(np.full((64, 96, 3), 120, np.uint8)).save(photo)
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(tmp_path / "m.png")
    proc = subprocess.run([sys.executable, "-m", "ctsdg.cli", "inpaint", "--image", str(photo),
                           "--mask", str(tmp_path / "m.png"), "--output", str(tmp_path / "o.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("the mask is empty") == 1, proc.stderr


def test_save_intermediate(checkpoint, tmp_path):
    ip, mp, _, _ = write_pair(tmp_path)
    out = tmp_path / "out.png"
    assert run(checkpoint, "--image", ip, "--mask", mp, "--output", out, "--save-intermediate",
               "--strategy", "resize") == 0
    folder = tmp_path / "out_intermediate"
    names = {p.name for p in folder.iterdir()}
    assert {"edge.png", "gray.png", "projected_edge.png", "raw_output.png", "describe.json"} <= names
    assert Image.open(folder / "edge.png").size == (256, 128)  # the working size of a 200x150 image


def test_describe_prints_json(checkpoint, capsys):
    import json

    assert main(["inpaint", "--checkpoint", checkpoint, "--device", "cpu", "--describe"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model_config"]["base_width"] == 4 and len(d["checkpoint_sha256"]) == 64


def test_output_file_gets_ordinary_permissions(tmp_path):
    """The atomic write goes through mkstemp (0600); the saved image must get the umask's usual mode."""
    import os
    import stat

    from PIL import Image

    from ctsdg.images import save_image_atomic

    old = os.umask(0o022)
    try:
        out = save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "out.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644


def test_masks_beside_their_images_in_one_folder(checkpoint, tmp_path, capsys):
    """photo.png + photo_mask.png in one folder: photo.png must not be taken as its own mask, nor the
    mask as an image to fill."""
    folder, outs = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    outs.mkdir()
    ip, mp, image, mask = write_pair(folder, "photo", mask_name="photo_mask")
    mp.rename(folder / mp.name)
    assert run(checkpoint, "--image", folder, "--mask", folder, "--output", outs) == 0
    assert sorted(p.name for p in outs.iterdir()) == ["photo.png"]
    result = np.array(Image.open(outs / "photo.png"))
    assert np.array_equal(result[mask == 0], image[mask == 0])
    assert not np.array_equal(result[mask > 0], image[mask > 0])
    assert run(checkpoint, "--image", ip, "--mask", folder, "--output", outs / "one.png") == 0
    assert np.array_equal(np.array(Image.open(outs / "one.png")), result)


def test_output_equal_to_input_says_so_without_overwrite(checkpoint, tmp_path, capsys):
    ip, mp, _, _ = write_pair(tmp_path)
    before = ip.read_bytes()
    assert run(checkpoint, "--image", ip, "--mask", mp, "--output", ip) == 1
    err = capsys.readouterr().err
    assert "is an input file" in err and "--overwrite" not in err and ip.read_bytes() == before


def test_os_errors_are_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    """A folder we may not write to, a full disk: one line, exit 1, not a traceback."""
    import ctsdg.images

    ip, mp, _, _ = write_pair(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out.png"))

    monkeypatch.setattr(ctsdg.images, "atomic_path", refuse)
    assert run(checkpoint, "--image", ip, "--mask", mp, "--output", tmp_path / "out.png") == 1
    err = capsys.readouterr().err
    assert "Permission denied" in err and len(err.strip().splitlines()) == 1, err


def test_blend_option_reaches_the_model(checkpoint, tmp_path, capsys):
    ip, mp, image, mask = write_pair(tmp_path)
    outs = {}
    for blend in ("none", "poisson"):
        out = tmp_path / f"{blend}.png"
        assert run(checkpoint, "--image", ip, "--mask", mp, "--output", out, "--blend", blend) == 0
        outs[blend] = np.array(Image.open(out))
        assert np.array_equal(outs[blend][mask == 0], image[mask == 0])
    assert not np.array_equal(outs["none"], outs["poisson"])
    assert run(checkpoint, "--describe", "--blend", "none") == 0
    assert '"blend": "none"' in capsys.readouterr().out


def test_an_interrupted_folder_run_says_how_far_it_got_and_skip_existing_finishes_it(checkpoint, tmp_path, capsys,
                                                                                     monkeypatch):
    from ctsdg.inference import Inpainter

    images, masks, outs = (tmp_path / d for d in ("images", "masks", "out"))
    for d in (images, masks, outs):
        d.mkdir()
    for name in "abc":
        _, mp, _, _ = write_pair(images, name)
        mp.rename(masks / mp.name)
    real = Inpainter.inpaint_file
    calls = []

    def ctrl_c_at_the_second(self, image, *args, **kwargs):
        calls.append(image.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(Inpainter, "inpaint_file", ctrl_c_at_the_second)
    assert run(checkpoint, "--image", images, "--mask", masks, "--output", outs) == 130
    assert "wrote 1 of 3 images" in capsys.readouterr().err and [p.name for p in outs.iterdir()] == ["a.png"]
    first = (outs / "a.png").read_bytes()
    monkeypatch.setattr(Inpainter, "inpaint_file", real)
    assert run(checkpoint, "--image", images, "--mask", masks, "--output", outs) == 1
    assert "pass --skip-existing to fill only the others" in capsys.readouterr().err
    assert run(checkpoint, "--image", images, "--mask", masks, "--output", outs, "--skip-existing") == 0
    err = capsys.readouterr().err
    assert "1 of 3 outputs are already there" in err and "wrote 2 of 2 images" in err
    assert sorted(p.name for p in outs.iterdir()) == ["a.png", "b.png", "c.png"]
    assert (outs / "a.png").read_bytes() == first
    assert run(checkpoint, "--image", images, "--mask", masks, "--output", outs, "--skip-existing",
               "--overwrite") == 1
    assert "contradict" in capsys.readouterr().err


def test_the_help_and_the_package_import_start_without_pytorch():
    """`import ctsdg` imports its public names on first use, so `ctsdg --help` (every subcommand's parser) and
    `ctsdg --version` start in a fraction of a second instead of waiting about 0.9 s for PyTorch; the names are
    all there when used."""
    code = ("import sys, ctsdg, ctsdg.cli; ctsdg.cli.build_parser().format_help(); "
            "print('torch' in sys.modules, 'PIL' in sys.modules); "
            "print(all(getattr(ctsdg, n) is not None for n in ctsdg.__all__), 'Generator' in dir(ctsdg))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True", "True"], out
    import ctsdg

    with pytest.raises(AttributeError, match="has no attribute 'Generatr'"):
        ctsdg.Generatr  # noqa: B018
