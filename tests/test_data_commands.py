"""`ctsdg data ...` at its boundary: files an evaluation cannot use, bad arguments, outputs we may not write,
--copy-to inside the mask folder, progress bars, and the photo corpus's note about the user's own files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from ctsdg import cli
from ctsdg.masks import entries_sha256, load_eval_pairs, make_eval_pairs


def save_mask(path, hole: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(hole, 255, 0).astype(np.uint8)).save(path)
    return path


def stripe(k: int) -> np.ndarray:
    """A 10x10 mask with its first k pixels to fill."""
    hole = np.zeros(100, dtype=bool)
    hole[:k] = True
    return hole.reshape(10, 10)


@pytest.fixture
def mixed(tmp_path):
    """Images and masks with good files and every kind of file an evaluation cannot use."""
    images, masks = tmp_path / "mixed", tmp_path / "masks"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(images / f"good{i}.png")
    (images / "notes.png").write_text("a text file named .png")
    good = (images / "good0.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "zero.jpg").write_bytes(b"")
    save_mask(masks / "m10.png", stripe(10))
    save_mask(masks / "m30.png", stripe(30))
    save_mask(masks / "black.png", stripe(0))
    save_mask(masks / "white.png", stripe(100))
    return images, masks


def data(*args) -> int:
    return cli.main(["data", *map(str, args)])


def error_lines(err: str) -> list[str]:
    """The lines of stderr that are not a progress bar's."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "file/s]" not in line]


# --- pairs: files an evaluation cannot use ---------------------------------------------------------------


def test_pairs_leaves_out_unreadable_images_and_masks_without_hole_or_kept_pixels(mixed, tmp_path, capsys):
    """QA: a text file named .png, a truncated PNG, a 0-byte JPEG and an all-black mask went into the list
    ("checksums ok"); only `ctsdg evaluate` refused them later."""
    images, masks = mixed
    out = tmp_path / "pm.json"
    assert data("pairs", "--images", images, "--masks", masks, "--out", out, "--size", 0) == 0
    captured = capsys.readouterr()
    pairs = load_eval_pairs(out)
    assert sorted({p.image.name for p in pairs}) == ["good0.png", "good1.png", "good2.png"] and len(pairs) == 3
    assert {p.mask.name for p in pairs} == {"m10.png", "m30.png"}
    assert "left out 5 unusable files" in captured.out
    note = captured.err
    assert "note: skipped 5 files an evaluation cannot use" in note and "and 2 more" in note
    assert "black.png has no hole pixel" in note and "white.png has no kept pixel" in note

    skipped: dict[str, str] = {}  # the library names every one
    make_eval_pairs(images, masks, out, size=16, overwrite=True, skipped=skipped)
    assert sorted(os.path.basename(p) for p in skipped) == [
        "black.png", "notes.png", "truncated.png", "white.png", "zero.jpg"]
    assert "is empty (0 bytes)" in skipped[str(images / "zero.jpg")]


def test_pairs_refuses_when_no_usable_image_or_mask_remains(mixed, tmp_path, capsys):
    images, masks = mixed
    for i in range(3):
        (images / f"good{i}.png").unlink()
    assert data("pairs", "--images", images, "--masks", masks, "--out", tmp_path / "p.json") == 1
    (err,) = error_lines(capsys.readouterr().err)
    assert "no image in" in err and "ctsdg data check --images" in err
    for name in ("m10.png", "m30.png"):
        (masks / name).unlink()
    assert data("pairs", "--images", images, "--masks", masks, "--out", tmp_path / "p.json") == 1
    assert "no mask in" in capsys.readouterr().err and not (tmp_path / "p.json").exists()


def test_verify_reads_the_listed_files_of_an_older_list(mixed, tmp_path, capsys):
    """A list made before pairs left such files out still passes its checksums; --verify now says so."""
    images, masks = mixed
    out = tmp_path / "old.json"
    payload = make_eval_pairs(images, masks, out, size=None)
    zero = dict(payload["entries"][0], image="zero.jpg",
                image_sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    payload["entries"].append(zero)
    payload["count"], payload["list_sha256"] = len(payload["entries"]), entries_sha256(payload["entries"])
    out.write_text(json.dumps(payload))
    assert data("pairs", "--verify", out) == 1
    (err,) = error_lines(capsys.readouterr().err)
    assert "lists a file an evaluation cannot use" in err and "zero.jpg is empty" in err


# --- one-line errors -------------------------------------------------------------------------------------


def test_verify_of_something_that_is_not_a_pairs_list_is_one_line(tmp_path, capsys):
    """QA: a JSON array gave a traceback (AttributeError), a PNG a bare "'utf-8' codec can't decode"."""
    (tmp_path / "list.json").write_text("[1,2]")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "some.png")
    (tmp_path / "half.json").write_text(json.dumps({"format": "ctsdg-eval-pairs/1", "entries": []}))
    for name, expected in (("list.json", "is not a ctsdg evaluation list (a JSON list, not an object"),
                           ("some.png", "some.png is not a JSON text file"),
                           ("half.json", "half.json is damaged")):
        assert data("pairs", "--verify", tmp_path / name) == 1
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert "ctsdg data pairs" in err  # how to make one


@pytest.mark.parametrize("args, expected", [
    (["masks", "--out", "m", "--size", "0"], "argument --size: must be >= 1, got 0"),
    (["masks", "--out", "m", "--size", "-5"], "argument --size: must be >= 1, got -5"),
    (["masks", "--out", "m", "--count", "0"], "argument --count: must be >= 1, got 0"),
    (["masks", "--out", "m", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["buckets", "m", "--size", "-1"], "argument --size: must be >= 0 (0 = native size), got -1"),
    (["pairs", "--verify", "x.json", "--size", "-3"], "argument --size: must be >= 0 (0 = native), got -3"),
    (["pairs", "--verify", "x.json", "--per-bucket", "0"], "argument --per-bucket: must be >= 1, got 0"),
    (["pairs", "--verify", "x.json", "--count", "-2"], "argument --count: must be >= 1, got -2"),
])
def test_numbers_out_of_range_are_refused_while_reading_the_arguments(args, expected, tmp_path, capsys,
                                                                       monkeypatch):
    """QA: `data masks --size 0` failed with "cannot write empty image", `--size -5` with "negative
    dimensions are not allowed", after making the folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        data(*args)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_is_expected_says_so(mixed, tmp_path, capsys):
    """QA: "image folder X does not exist" though X exists, as a file."""
    images, masks = mixed
    (tmp_path / "list.txt").write_text("good0.png\n")
    (tmp_path / "pairs.json").write_text("{}")
    cases = [
        (["pairs", "--images", tmp_path / "list.txt", "--masks", masks, "--out", tmp_path / "p.json"],
         f"image folder {tmp_path / 'list.txt'} is a file; pass a folder"),
        (["pairs", "--images", images, "--masks", tmp_path / "pairs.json", "--out", tmp_path / "p.json"],
         f"mask folder {tmp_path / 'pairs.json'} is a file; pass a folder"),
        (["buckets", tmp_path / "pairs.json"], f"mask folder {tmp_path / 'pairs.json'} is a file; pass a folder"),
        (["masks", "--out", tmp_path / "list.txt", "--count", "1"], "list.txt is a file; pass a folder"),
    ]
    for args, expected in cases:
        assert data(*args) == 1
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


# --- buckets --copy-to -----------------------------------------------------------------------------------


def test_buckets_refuses_a_copy_to_inside_the_mask_folder(mixed, tmp_path, capsys):
    """QA: `data buckets mk --copy-to mk/by_bucket` twice counted 24 masks instead of 12 and made
    mk/by_bucket/0-20/by_bucket/0-20/..."""
    _, masks = mixed
    for inside in (masks / "by_bucket", masks):
        assert data("buckets", masks, "--size", 0, "--copy-to", inside, "--overwrite") == 1
        err = capsys.readouterr().err
        assert "is inside the mask folder" in err and f"--copy-to {masks}_by_bucket" in err
    assert sorted(p.name for p in masks.iterdir()) == ["black.png", "m10.png", "m30.png", "white.png"]
    assert data("buckets", masks, "--size", 0, "--copy-to", f"{masks}_by_bucket") == 0
    assert "0-20%: 2" in capsys.readouterr().out  # m10 and the all-black mask


# --- outputs we may not write ----------------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path, refuse_writes_in):
    """A folder nobody may write in. Under root (which may write anywhere) the refusal the system gives
    other users is made here (conftest.refuse_writes_in)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        refuse_writes_in(folder)
    yield folder
    folder.chmod(0o755)


def test_outputs_in_a_folder_we_may_not_write_are_refused_first(mixed, read_only, capsys):
    """QA: "[Errno 13] Permission denied: '/tmp/qa_cli/ro/.p.json.72xqesdm.tmp'" after all the work."""
    images, masks = mixed
    for args, flag in (
        (["pairs", "--images", images, "--masks", masks, "--out", read_only / "p.json"], "--out"),
        (["masks", "--out", read_only, "--count", 2, "--size", 16], "--out"),
        (["masks", "--out", read_only / "new" / "deeper", "--count", 2, "--size", 16], "--out"),
        (["buckets", masks, "--out", read_only / "b.json"], "--out"),
        (["buckets", masks, "--copy-to", read_only / "by_bucket"], "--copy-to"),
        (["photos", "--out", read_only / "photos", "--no-debian", "--no-python-photos"], "--out"),
    ):
        assert data(*args) == 1
        captured = capsys.readouterr()
        assert captured.err == (f"ctsdg data: error: cannot write to {read_only}: permission denied; "
                                f"choose another {flag}\n")
        assert "bucket" not in captured.out  # refused before the masks were measured
    assert list(read_only.iterdir()) == []


# --- progress --------------------------------------------------------------------------------------------


def test_long_data_commands_show_a_progress_bar_on_stderr_unless_quiet(mixed, tmp_path, capsys):
    """QA: `data masks --count 1500 --size 512` was silent for 19 s; so were check and buckets."""
    images, masks = mixed
    runs = {  # bar: (arguments, what a second, quiet run adds)
        "writing masks": (["masks", "--out", tmp_path / "gen", "--count", 3, "--size", 16], ["--overwrite"]),
        "reading images": (["check", "--images", images], []),
        "measuring masks": (["buckets", masks, "--size", 0], []),
        "reading masks": (["pairs", "--images", images, "--masks", masks, "--out", tmp_path / "p.json"],
                          ["--overwrite"]),
        "reading files": (["pairs", "--verify", tmp_path / "p.json"], []),
    }
    for desc, (args, again) in runs.items():
        data(*args)
        captured = capsys.readouterr()
        assert f"{desc}: 100%" in captured.err and "100%" not in captured.out, (desc, captured.err)
        data(*args, *again, "--quiet")
        captured = capsys.readouterr()
        assert "%" not in captured.err and "note:" not in captured.err, (desc, captured.err)


# --- photos ----------------------------------------------------------------------------------------------


def test_photos_names_the_users_own_files_it_left_in_place(tmp_path, capsys):
    out = tmp_path / "photos"
    (out / "train").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"photos": []}))
    (out / "train" / "my.jpg").write_bytes(b"mine")
    assert data("photos", "--out", out, "--no-debian", "--no-python-photos") == 0
    captured = capsys.readouterr()
    assert "train: 0 photos" in captured.out
    assert f"note: {out / 'train' / 'my.jpg'} is not in the manifest" in captured.err
    assert (out / "train" / "my.jpg").read_bytes() == b"mine"


def test_buckets_leaves_out_an_unreadable_mask_and_names_it(mixed, tmp_path, capsys):
    """Was: the first unreadable mask stopped the command."""
    _, masks = mixed
    (masks / "broken.png").write_text("not a png")
    assert data("buckets", masks, "--size", 0, "--out", tmp_path / "b.json") == 0
    captured = capsys.readouterr()
    assert "note: skipped 1 unreadable masks" in captured.err and "broken.png" in captured.err
    listed = [m["mask"] for rows in json.loads((tmp_path / "b.json").read_text())["buckets"].values() for m in rows]
    assert sorted(listed) == ["black.png", "m10.png", "m30.png", "white.png"]
