"""Masks: generator ratio accuracy over many seeds, buckets at their edges, mask folders, eval lists, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ctsdg import cli
from ctsdg.data import read_mask
from ctsdg.masks import (
    BUCKET_SCHEMES,
    IrregularMaskGenerator,
    MaskFolder,
    bucket_masks,
    bucket_of,
    entries_sha256,
    hole_ratio,
    load_eval_pairs,
    make_eval_pairs,
    write_generated_masks,
)


def save_mask(path, hole: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(hole, 255, 0).astype(np.uint8)).save(path)
    return path


def mask_with_pixels(k: int, h: int = 10, w: int = 10) -> np.ndarray:
    hole = np.zeros(h * w, dtype=bool)
    hole[:k] = True
    return hole.reshape(h, w)


# --- generator ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio_range", [(0.2, 0.4), (0.01, 0.1), (0.4, 0.6), (0.3, 0.3)])
def test_generator_hits_the_requested_ratio_within_two_percent_over_many_seeds(ratio_range):
    gen = IrregularMaskGenerator(ratio_range)
    lo, hi = ratio_range
    ratios, misses = [], []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        hole = gen.generate(rng, 128, 128)
        target = np.random.default_rng(seed).uniform(lo, hi)  # the generator's first draw
        ratios.append(hole.mean())
        misses.append(abs(hole.mean() - target))
    assert lo - 0.02 <= min(ratios) and max(ratios) <= hi + 0.02  # the requirement
    assert max(misses) <= gen.tolerance + 1 / 128**2  # the stated tolerance, to the pixel
    if hi - lo >= 2 * gen.tolerance:  # a range with room: every mask lies inside it
        assert lo <= min(ratios) and max(ratios) <= hi


@pytest.mark.parametrize("kinds", [("strokes",), ("blobs",), ("boxes", "strokes")])
def test_each_kind_alone_also_hits_the_ratio(kinds):
    gen = IrregularMaskGenerator((0.25, 0.35), kinds)
    ratios = [gen.generate(np.random.default_rng(s), 96, 160).mean() for s in range(20)]
    assert 0.23 <= min(ratios) and max(ratios) <= 0.37


def test_generator_mean_ratio_follows_the_uniform_draw():
    gen = IrregularMaskGenerator((0.1, 0.5))
    ratios = [gen.generate(np.random.default_rng(s), 64, 64).mean() for s in range(200)]
    assert abs(np.mean(ratios) - 0.3) < 0.03  # mean of U(0.1, 0.5); std of the mean ~ 0.008


def test_generator_is_seeded_and_returns_a_hole_mask_tensor():
    gen = IrregularMaskGenerator((0.2, 0.4))
    a = gen(0, np.random.default_rng(5), 64, 80)
    b = gen(0, np.random.default_rng(5), 64, 80)
    c = gen(0, np.random.default_rng(6), 64, 80)
    assert a.shape == (1, 64, 80) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(torch.unique(a).tolist()) == {0.0, 1.0}


def test_generator_rejects_bad_ranges_and_kinds():
    for bad in [(0.0, 0.2), (0.5, 0.4), (0.2, 1.0)]:
        with pytest.raises(ValueError, match="0 < low <= high < 1"):
            IrregularMaskGenerator(bad)
    with pytest.raises(ValueError, match="kinds"):
        IrregularMaskGenerator((0.1, 0.2), ("circles",))


def test_writing_no_masks_or_a_reversed_range_is_refused_before_any_folder_is_made(tmp_path):
    with pytest.raises(ValueError, match=r"number of masks \(--count\) must be >= 1, got 0"):
        write_generated_masks(tmp_path / "none", 0, (0.2, 0.3))
    with pytest.raises(ValueError, match="0 < low <= high < 1"):
        write_generated_masks(tmp_path / "reversed", 2, (0.6, 0.2))
    assert not (tmp_path / "none").exists() and not (tmp_path / "reversed").exists()


def test_written_masks_read_back_white_is_fill(tmp_path):
    paths = write_generated_masks(tmp_path / "m", 5, (0.2, 0.3), size=64, seed=1)
    for i, p in enumerate(paths):
        arr = np.asarray(Image.open(p))
        assert set(np.unique(arr).tolist()) == {0, 255}
        hole = IrregularMaskGenerator((0.2, 0.3)).generate(np.random.default_rng((1, i)), 64, 64)
        assert np.array_equal(arr == 255, hole)
        assert 0.18 <= hole_ratio(read_mask(p)) <= 0.32


# --- buckets -------------------------------------------------------------------------------------------


def test_paper_buckets_at_their_edges():
    assert bucket_of(0, 100) == "0-20%"
    assert bucket_of(20, 100) == "0-20%"  # (lo, hi]: exactly 20% belongs to 0-20%
    assert bucket_of(21, 100) == "20-40%"
    assert bucket_of(40, 100) == "20-40%" and bucket_of(41, 100) == "40-60%"
    assert bucket_of(60, 100) == "40-60%" and bucket_of(61, 100) is None
    # 20% of 256 x 256 is 13107.2 pixels: 13107 is below the edge, 13108 above
    assert bucket_of(13107, 65536) == "0-20%" and bucket_of(13108, 65536) == "20-40%"


def test_ten_percent_buckets_at_their_edges():
    assert bucket_of(10, 100, "10") == "0-10%" and bucket_of(11, 100, "10") == "10-20%"
    assert bucket_of(30, 100, "10") == "20-30%"  # 3 * 0.1 != 0.3 in floats; integers get it right
    assert bucket_of(31, 100, "10") == "30-40%"
    assert bucket_of(100, 100, "10") == "90-100%"
    assert len(BUCKET_SCHEMES["10"]) == 10
    with pytest.raises(ValueError, match="scheme"):
        bucket_of(1, 2, "quartiles")


def test_bucket_masks_sorts_a_folder_including_the_edges(tmp_path):
    for k in (0, 20, 21, 40, 55, 60, 61, 90):
        save_mask(tmp_path / "m" / f"k{k:02d}.png", mask_with_pixels(k))
    result = bucket_masks(tmp_path / "m", "paper", size=None)
    assert [m for m, _ in result["0-20%"]] == ["k00.png", "k20.png"]
    assert [m for m, _ in result["20-40%"]] == ["k21.png", "k40.png"]
    assert [m for m, _ in result["40-60%"]] == ["k55.png", "k60.png"]
    assert [m for m, _ in result["out of range"]] == ["k61.png", "k90.png"]
    assert dict(result["20-40%"])["k21.png"] == pytest.approx(0.21)


def test_bucket_masks_measures_after_a_nearest_resize(tmp_path):
    # a 4x4 mask with one hole pixel is 6.25%; at 8x8 (nearest) it is still 4 of 64 pixels
    save_mask(tmp_path / "m" / "a.png", mask_with_pixels(1, 4, 4))
    assert bucket_masks(tmp_path / "m", "10", size=8)["0-10%"] == [("a.png", 4 / 64)]


# --- mask folders -------------------------------------------------------------------------------------


@pytest.fixture
def mask_dir(tmp_path):
    root = tmp_path / "masks"
    save_mask(root / "a.png", mask_with_pixels(10, 8, 8))
    save_mask(root / "b.png", mask_with_pixels(20, 8, 8))
    save_mask(root / "sub" / "c.png", mask_with_pixels(30, 8, 8))
    return root


def test_mask_folder_index_mode_is_the_official_test_pairing(mask_dir):
    folder = MaskFolder(mask_dir, match="index")
    counts = [int(folder(i, np.random.default_rng(0), 8, 8, "x.png").sum()) for i in range(4)]
    assert counts == [10, 20, 30, 10]  # mask index % n, in sorted order


def test_mask_folder_name_mode_and_resize(mask_dir):
    folder = MaskFolder(mask_dir, match="name")
    assert int(folder(0, np.random.default_rng(0), 8, 8, "sub/c.jpg").sum()) == 30
    assert int(folder(0, np.random.default_rng(0), 8, 8, "other/b.jpg").sum()) == 20  # by stem
    assert int(folder(0, np.random.default_rng(0), 16, 16, "a.png").sum()) == 40  # nearest x2: 4 px each
    with pytest.raises(ValueError, match="no mask named like image zzz.png .*name the masks like the images"):
        folder(0, np.random.default_rng(0), 8, 8, "zzz.png")


def test_mask_folder_sample_mode_is_seeded_and_skips_bad_masks(mask_dir):
    save_mask(mask_dir / "aa_black.png", np.zeros((8, 8), bool))
    folder = MaskFolder(mask_dir, match="sample")
    draws = [int(folder(0, np.random.default_rng(s), 8, 8, "x").sum()) for s in range(30)]
    assert set(draws) == {10, 20, 30}  # the all-black mask is never returned
    assert list(folder.bad_files) == [str(mask_dir / "aa_black.png")]
    again = [int(MaskFolder(mask_dir)(0, np.random.default_rng(s), 8, 8, "x").sum()) for s in range(30)]
    assert draws == again


# --- evaluation lists ----------------------------------------------------------------------------------


@pytest.fixture
def eval_data(tmp_path):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(images / f"im{i}.png")
    masks = tmp_path / "data" / "masks"
    for k in (10, 30, 50, 70, 90):  # 10x10 masks: 10%, 30%, 50%, 70%, 90%
        save_mask(masks / f"m{k}.png", mask_with_pixels(k))
    return images, masks, tmp_path / "data" / "lists" / "pairs.json"


def test_eval_pairs_round_trip_with_the_official_pairing(eval_data):
    images, masks, out = eval_data
    payload = make_eval_pairs(images, masks, out, size=None)
    assert payload["format"] == "ctsdg-eval-pairs/1" and payload["count"] == 5
    assert payload["list_sha256"] == entries_sha256(payload["entries"])
    e = payload["entries"][1]
    assert set(e) == {"image", "mask", "image_sha256", "mask_sha256", "hole_ratio", "bucket"}
    assert (e["image"], e["mask"], e["hole_ratio"], e["bucket"]) == ("im1.png", "m30.png", 0.3, "20-40%")
    pairs = load_eval_pairs(out)
    assert [p.image.name for p in pairs] == [f"im{i}.png" for i in range(5)]
    assert [p.bucket for p in pairs] == ["0-20%", "20-40%", "40-60%", None, None]
    assert pairs[0].mask.resolve() == (masks / "m10.png").resolve()


def test_eval_pairs_per_bucket(eval_data):
    images, masks, out = eval_data
    payload = make_eval_pairs(images, masks, out, scheme="paper", size=None, per_bucket=3)
    assert [e["bucket"] for e in payload["entries"]] == ["0-20%"] * 3 + ["20-40%"] * 3 + ["40-60%"] * 3
    assert [e["image"] for e in payload["entries"][:6]] == [
        "im0.png",
        "im1.png",
        "im2.png",
        "im3.png",
        "im4.png",
        "im0.png",
    ]
    with pytest.raises(ValueError, match=r"no masks .* fall in bucket\(s\) 10-20%, 30-40%"):
        make_eval_pairs(images, masks, out, scheme="10", size=None, per_bucket=1, overwrite=True)
    with pytest.raises(ValueError, match=r"--per-bucket \(pairs\) must be >= 1, got 0"):  # not an empty list
        make_eval_pairs(images, masks, out, size=None, per_bucket=0)
    with pytest.raises(ValueError, match=r"--count \(pairs\) must be >= 1, got -2"):
        make_eval_pairs(images, masks, out, size=None, count=-2)


def test_eval_pairs_detect_changed_files_and_edited_lists(eval_data):
    images, masks, out = eval_data
    make_eval_pairs(images, masks, out, size=None)
    save_mask(masks / "m50.png", mask_with_pixels(51))
    with pytest.raises(ValueError, match=r"m50\.png does not match its sha256"):
        load_eval_pairs(out)
    assert len(load_eval_pairs(out, verify=False)) == 5
    payload = json.loads(out.read_text())
    payload["entries"][0]["hole_ratio"] = 0.5
    out.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="list was edited"):
        load_eval_pairs(out, verify=False)


def test_eval_pairs_survive_moving_the_whole_folder(eval_data, tmp_path):
    images, masks, out = eval_data
    make_eval_pairs(images, masks, out, size=None)
    shutil.move(tmp_path / "data", tmp_path / "moved")
    pairs = load_eval_pairs(tmp_path / "moved" / "lists" / "pairs.json")
    assert pairs[2].image.resolve() == (tmp_path / "moved" / "images" / "im2.png").resolve()


def test_eval_pairs_missing_file_and_wrong_format(eval_data, tmp_path):
    images, masks, out = eval_data
    make_eval_pairs(images, masks, out, size=None)
    (images / "im3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"im3\.png"):
        load_eval_pairs(out)
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="not a ctsdg evaluation list"):
        load_eval_pairs(tmp_path / "other.json")


# --- command line ------------------------------------------------------------------------------------


def test_cli_masks_buckets_and_pairs(eval_data, tmp_path, capsys):
    images, _, _ = eval_data
    gen_dir = tmp_path / "gen"
    for lo, hi in ((0.05, 0.18), (0.22, 0.38), (0.42, 0.58)):
        assert (
            cli.main(
                [
                    "data",
                    "masks",
                    "--out",
                    str(gen_dir),
                    "--count",
                    "2",
                    "--size",
                    "64",
                    "--ratio",
                    str(lo),
                    str(hi),
                    "--prefix",
                    f"r{int(lo * 100):02d}",
                ]
            )
            == 0
        )
    assert cli.main(["data", "buckets", str(gen_dir), "--size", "64", "--out", str(tmp_path / "b.json")]) == 0
    buckets = json.loads((tmp_path / "b.json").read_text())["buckets"]
    assert [len(buckets[k]) for k in ("0-20%", "20-40%", "40-60%", "out of range")] == [2, 2, 2, 0]
    out = tmp_path / "pairs.json"
    assert (
        cli.main(
            [
                "data",
                "pairs",
                "--images",
                str(images),
                "--masks",
                str(gen_dir),
                "--out",
                str(out),
                "--per-bucket",
                "2",
                "--size",
                "64",
            ]
        )
        == 0
    )
    assert cli.main(["data", "pairs", "--verify", str(out)]) == 0
    assert "6 pairs, checksums ok; 0-20%: 2, 20-40%: 2, 40-60%: 2" in capsys.readouterr().out
    assert cli.main(["data", "masks", "--out", str(gen_dir), "--ratio", "0.5", "0.2"]) == 1
    assert "0 < low <= high < 1" in capsys.readouterr().err
    assert cli.main(["data", "pairs", "--images", str(images)]) == 1
    assert "give --images, --masks and --out" in capsys.readouterr().err


def test_cli_data_writers_never_replace_a_file_unasked(eval_data, tmp_path, capsys):
    images, masks, _ = eval_data
    gen = ["data", "masks", "--out", str(tmp_path / "gen"), "--count", "2", "--size", "32"]
    assert cli.main(gen) == 0
    first = (tmp_path / "gen" / "mask_00000.png").read_bytes()
    assert cli.main([*gen, "--seed", "5"]) == 1  # masks a pair list may name by checksum
    assert "mask_00000.png and 1 more already exist; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "gen" / "mask_00000.png").read_bytes() == first
    assert cli.main([*gen, "--seed", "5", "--overwrite"]) == 0
    assert (tmp_path / "gen" / "mask_00000.png").read_bytes() != first

    photo = images / "im0.png"  # a photo given as --out by mistake was replaced by the list's JSON
    before = photo.read_bytes()
    pairs = ["data", "pairs", "--images", str(images), "--masks", str(masks), "--size", "0"]
    assert cli.main([*pairs, "--out", str(photo)]) == 1
    assert "should end in .json" in capsys.readouterr().err and photo.read_bytes() == before
    assert cli.main([*pairs, "--out", str(tmp_path / "l.json")]) == 0
    assert cli.main([*pairs, "--out", str(tmp_path / "l.json"), "--count", "2"]) == 1
    assert "l.json already exists; pass --overwrite" in capsys.readouterr().err
    assert cli.main([*pairs, "--out", str(tmp_path / "l.json"), "--count", "2", "--overwrite"]) == 0
    assert json.loads((tmp_path / "l.json").read_text())["count"] == 2

    buckets = ["data", "buckets", str(tmp_path / "gen"), "--size", "32"]
    assert cli.main([*buckets, "--out", str(photo)]) == 1 and photo.read_bytes() == before
    assert cli.main([*buckets, "--copy-to", str(tmp_path / "by_bucket")]) == 0
    assert cli.main([*buckets, "--copy-to", str(tmp_path / "by_bucket")]) == 1
    assert "already exists; pass --overwrite to replace the copies" in capsys.readouterr().err
    assert cli.main([*buckets, "--copy-to", str(tmp_path / "by_bucket"), "--overwrite"]) == 0


def test_cli_check_lists_bad_files(tmp_path, capsys):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "zero.jpg").write_bytes(b"")
    save_mask(tmp_path / "m" / "black.png", np.zeros((4, 4), bool))
    assert cli.main(["data", "check", "--images", str(tmp_path), "--masks", str(tmp_path / "m")]) == 1
    out = capsys.readouterr().out
    # --images is recursive, so m/black.png is read as an image too (a black picture is a fine image)
    assert "zero.jpg" in out and "black.png" in out and "images: 2 good, 1 bad of 3" in out
    assert cli.main(["data", "check", "--images", str(tmp_path / "m")]) == 0
