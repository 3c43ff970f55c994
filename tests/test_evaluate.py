"""Evaluation: bucket edges, perfect predictions, shards that merge to the single-process result, resume
from the cache, and the clear errors (missing prediction, size mismatch, checksum mismatch)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from ctsdg import evaluate, masks, metrics

SIZE = 64


def _write_set(root, n_images: int = 3) -> tuple:
    """Smooth colour images and masks with hole ratios 10%, 30%, 50% (exact pixel counts) + a list."""
    img_dir, mask_dir = root / "images", root / "masks"
    img_dir.mkdir()
    mask_dir.mkdir()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for k in range(n_images):
        rgb = np.stack([np.sin(5 * xx + k + c) * np.cos(3 * yy - c) for c in range(3)], -1) * 100 + 128
        Image.fromarray(rgb.round().astype(np.uint8)).save(img_dir / f"img{k}.png")
    for pct in (10, 30, 50):
        m = np.zeros(SIZE * SIZE, np.uint8)
        m[np.random.default_rng(pct).permutation(SIZE * SIZE)[: SIZE * SIZE * pct // 100]] = 255
        Image.fromarray(m.reshape(SIZE, SIZE)).save(mask_dir / f"m{pct:02d}.png")
    list_file = root / "pairs.json"
    masks.make_eval_pairs(img_dir, mask_dir, list_file, scheme="paper", size=SIZE, per_bucket=2)
    return list_file, img_dir, mask_dir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _write_set(tmp_path_factory.mktemp("eval"))


@pytest.fixture(scope="module")
def scorer():
    # Inception (FID) costs ~0.3 s per image on a CPU: only test_perfect_predictions... runs it
    return evaluate.Scorer(evaluate.EvalConfig(size=SIZE, lpips=("alex",), fid=False))


def _hole_with(pixels: int) -> np.ndarray:
    hole = np.zeros(SIZE * SIZE, np.uint8)
    hole[:pixels] = 255
    return hole.reshape(SIZE, SIZE)


def test_bucket_edges_at_evaluation_size():
    n = SIZE * SIZE  # 4096: 20% = 819.2 pixels, so 819 is inside 0-20% and 820 is not
    assert evaluate.buckets_of(_hole_with(0)) == {"paper": "0-20%", "10": "0-10%"}
    assert evaluate.buckets_of(_hole_with(819))["paper"] == "0-20%"
    assert evaluate.buckets_of(_hole_with(820))["paper"] == "20-40%"
    assert evaluate.buckets_of(_hole_with(n * 40 // 100))["paper"] == "20-40%"  # 1638 < 1638.4
    assert evaluate.buckets_of(_hole_with(n * 60 // 100 + 1))["paper"] is None  # above 60%: no paper bucket
    assert evaluate.buckets_of(_hole_with(n * 60 // 100 + 1))["10"] == "60-70%"
    # exactly on an edge (a ratio of exactly 50% on 4096 pixels) belongs to the lower bin
    assert evaluate.buckets_of(_hole_with(n // 2))["10"] == "40-50%"


def test_pairs_land_in_their_buckets_with_n_per_bucket(dataset, scorer):
    list_file, _, _ = dataset
    pairs = masks.load_eval_pairs(list_file)
    config = scorer.config
    result = evaluate.score_shard(pairs, evaluate.baseline_method("telea"), config, scorer)
    summary = evaluate.summarize(result, config)
    assert [summary["paper"][b]["n"] for b in ("0-20%", "20-40%", "40-60%")] == [2, 2, 2]
    assert summary["10"]["0-10%"]["n"] == 2 and summary["10"]["20-30%"]["n"] == 2
    assert summary["all"]["all"]["n"] == 6
    # bigger holes hurt: PSNR decreases bucket by bucket
    psnr = [summary["paper"][b]["psnr"] for b in ("0-20%", "20-40%", "40-60%")]
    assert psnr[0] > psnr[1] > psnr[2]


def test_perfect_predictions_score_the_documented_extremes(dataset, tmp_path):
    list_file, _, _ = dataset
    pairs = masks.load_eval_pairs(list_file)[::2]  # one pair per bucket
    scorer = evaluate.Scorer(evaluate.EvalConfig(size=SIZE, lpips=("alex",), fid=True))
    for i, pair in enumerate(pairs):  # the ground truth itself, saved as predictions
        image, _ = evaluate.load_pair(pair, SIZE)
        Image.fromarray(image).save(tmp_path / f"{i:05d}.png")
    method = evaluate.folder_method(tmp_path, "oracle", pairs=pairs)
    result = evaluate.score_shard(pairs, method, scorer.config, scorer)
    for row in result.rows:
        assert row["psnr"] == metrics.PSNR_CAP_DB and row["l1"] == 0.0 and row["lpips_alex"] == 0.0
        assert row["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert result.fid_real["all"].count == 3
    fid = metrics.fid(result.fid_real["all"], result.fid_fake["all"])
    assert abs(fid) < 1e-3  # identical feature sets: FID 0 up to float32 feature round-off


def test_two_shards_merge_to_the_single_process_result(dataset, scorer):
    list_file, _, _ = dataset
    pairs = masks.load_eval_pairs(list_file)
    method = evaluate.baseline_method("ns")
    whole = evaluate.score_shard(pairs, method, scorer.config, scorer)
    shards = [evaluate.score_shard(pairs, method, scorer.config, scorer, rank=r, world=2) for r in (0, 1)]
    assert [r["index"] for r in shards[0].rows] == [0, 2, 4]
    merged = evaluate.merge_shards(shards)
    assert merged.rows == whole.rows
    # FID statistics of the shards add up to those of the whole (features made up: Inception is slow here)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((6, 16))
    parts = [evaluate.ShardResult([], {"all": metrics.FIDStatistics.of(feats[r::2])}, {}) for r in (0, 1)]
    summed = evaluate.merge_shards(parts).fid_real["all"]
    one = metrics.FIDStatistics.of(feats)
    assert summed.count == 6
    np.testing.assert_allclose(summed.mean_cov()[1], one.mean_cov()[1], atol=1e-12)
    with pytest.raises(ValueError, match="two shards"):
        evaluate.merge_shards([shards[0], shards[0]])


def test_resume_reads_the_cache_without_scoring(dataset, scorer, tmp_path):
    list_file, _, _ = dataset
    pairs = masks.load_eval_pairs(list_file)
    method = evaluate.baseline_method("biharmonic")
    first = evaluate.score_shard(pairs[:3], method, scorer.config, scorer, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 3
    calls = []
    method.predict = lambda *a: calls.append(a)  # must not be called for cached pairs
    again = evaluate.score_shard(pairs[:3], method, scorer.config, None, cache_dir=tmp_path)
    assert calls == [] and again.rows == first.rows


def test_missing_prediction_and_size_mismatch_are_clear_errors(dataset, scorer, tmp_path):
    list_file, _, _ = dataset
    pairs = masks.load_eval_pairs(list_file)
    method = evaluate.folder_method(tmp_path, pairs=pairs)
    with pytest.raises(FileNotFoundError, match="missing prediction .*00000.png"):
        evaluate.score_shard(pairs, method, scorer.config, scorer)
    Image.fromarray(np.zeros((SIZE, SIZE + 8, 3), np.uint8)).save(tmp_path / "00000.png")
    with pytest.raises(ValueError, match="72x64 but the evaluation size is 64x64"):
        evaluate.score_shard(pairs, method, scorer.config, scorer)


def test_checksum_mismatch_is_refused(tmp_path):
    list_file, img_dir, _ = _write_set(tmp_path, n_images=2)
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(img_dir / "img0.png")
    with pytest.raises(ValueError, match="sha256"):
        evaluate.run_evaluation(list_file, ["telea"], tmp_path / "out", evaluate.EvalConfig(size=SIZE, lpips=(), fid=False))


def test_a_limit_below_one_is_refused_not_read_as_a_slice(tmp_path):
    list_file, _, _ = _write_set(tmp_path, n_images=2)
    with pytest.raises(ValueError, match=r"--limit \(the first N pairs\) must be >= 1, got -1"):  # [:-1] dropped one
        evaluate.run_evaluation(list_file, ["telea"], tmp_path / "out", evaluate.EvalConfig(size=SIZE, lpips=(), fid=False),
                                limit=-1)
    with pytest.raises(ValueError, match=r"--examples \(rows in examples.png\) must be >= 0"):  # was: no grid
        evaluate.run_evaluation(list_file, ["telea"], tmp_path / "out", evaluate.EvalConfig(size=SIZE, lpips=(), fid=False),
                                examples=-1)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ValueError, match="--out .*a_file is a file; give a folder"):  # was: [Errno 20] Not a directory
        evaluate.run_evaluation(list_file, ["telea"], tmp_path / "a_file", evaluate.EvalConfig(size=SIZE, lpips=(), fid=False))


def test_run_evaluation_writes_every_report(dataset, tmp_path):
    list_file, _, _ = dataset
    config = evaluate.EvalConfig(size=SIZE, lpips=("alex",), fid=False)
    # PatchMatch where its package installs (Python >= 3.11), else another baseline under the same label
    second = "patchmatch" if sys.version_info >= (3, 11) else "biharmonic"
    payload = evaluate.run_evaluation(list_file, ["telea", f"pm={second}"], tmp_path, config, examples=3, progress=False)
    for name in ("table.md", "summary.csv", "per_pair.csv", "results.json", "metric_vs_hole_ratio.png", "examples.png"):
        assert (tmp_path / name).is_file(), name
    table = (tmp_path / "table.md").read_text()
    assert "| telea |" in table and "| pm |" in table and "N per bucket: 0-20%: 2, 20-40%: 2, 40-60%: 2" in table
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["list_sha256"] == json.loads(list_file.read_text())["list_sha256"]
    assert stored["versions"]["torch"] and stored["weights_sha256"]["alexnet"]
    assert stored["methods"][1]["baseline"] == second
    psnr = payload["summary"]["telea"]["paper"]["0-20%"]["psnr"]
    rows = [r for r in payload["per_pair"]["telea"] if r["bucket"] == "0-20%"]
    assert psnr == pytest.approx(np.mean([r["psnr"] for r in rows]))
    assert "fid" not in payload["summary"]["telea"]["all"]["all"]
    with pytest.raises(ValueError, match="edges must be one of"):  # refused before anything is scored
        evaluate.run_evaluation(list_file, ["telea"], tmp_path / "bad", config, progress=False, edges="gt")
    assert not (tmp_path / "bad").exists()


def test_lbam_style_psnr_uses_batch_mse():
    rows = [{"mse": m, "psnr": 0.0, "ssim": 0.5, "l1": 0.1, "bucket": "0-20%", "bin": "0-10%"} for m in (0.01, 0.04)]
    config = evaluate.EvalConfig(size=SIZE, style="lbam", lpips=(), fid=False)
    result = evaluate.ShardResult(rows, {}, {})
    s = evaluate._summary(rows, result, None, config)
    assert s["psnr"] == pytest.approx(10 * math.log10(1 / 0.025))


def _gather_worker(rank: int, world: int, port: int, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        feats = np.random.default_rng(7).standard_normal((6, 16))
        mine = feats[rank::world]
        rows = [{"index": i} for i in range(rank, 6, world)]
        shard = evaluate.ShardResult(rows, {"all": metrics.FIDStatistics.of(mine)}, {"all": metrics.FIDStatistics.of(mine * 2)})
        merged = evaluate.gather_shard(shard)
        if rank == 0:
            mu, cov = merged.fid_real["all"].mean_cov()
            np.savez(out_file, idx=[r["index"] for r in merged.rows], mu=mu, cov=cov,
                     n=merged.fid_fake["all"].count, kept=merged.fid_real["all"].features is not None)
        else:
            assert merged is None
    finally:
        dist.destroy_process_group()


def test_gather_over_two_gloo_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "merged.npz"
    mp.spawn(_gather_worker, args=(2, port, str(out)), nprocs=2, join=True)
    got = np.load(out)
    feats = np.random.default_rng(7).standard_normal((6, 16))
    assert got["idx"].tolist() == [0, 1, 2, 3, 4, 5] and int(got["n"]) == 6 and bool(got["kept"])
    np.testing.assert_allclose(got["mu"], feats.mean(0), atol=1e-12)
    np.testing.assert_allclose(got["cov"], np.cov(feats, rowvar=False), atol=1e-12)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained width-4 generator saved as ours."""
    import torch

    from ctsdg.checkpoint import save_generator
    from ctsdg.config import ModelConfig
    from ctsdg.generator import Generator

    torch.manual_seed(0)
    return save_generator(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", Generator(ModelConfig(base_width=4)))


def test_checkpoint_predictions_saved_and_rescored_as_a_folder_give_the_same_rows(dataset, scorer, ckpt, tmp_path):
    list_file, _, _ = dataset
    pairs = masks.load_eval_pairs(list_file)[:2]
    method = evaluate.resolve_method(f"tiny={ckpt}", pairs)
    assert method.kind == "checkpoint" and len(method.identity["sha256"]) == 64
    assert method.identity["edges"] == "full"  # the paper's protocol unless asked
    saved = tmp_path / "preds"
    first = evaluate.score_shard(pairs, method, scorer.config, scorer, save_predictions=saved)
    assert sorted(p.name for p in saved.iterdir()) == ["00000.png", "00001.png"]
    again = evaluate.score_shard(pairs, evaluate.resolve_method(str(saved), pairs), scorer.config, scorer)
    assert [{k: v for k, v in r.items() if k != "prediction_sha256"} for r in again.rows] == first.rows
    assert all(r["psnr"] < metrics.PSNR_CAP_DB for r in first.rows)  # an untrained model does change the hole


def test_a_model_spec_may_name_its_blend_and_the_cache_keeps_them_apart(dataset, scorer, ckpt):
    list_file, _, _ = dataset
    pairs = masks.load_eval_pairs(list_file)[:1]
    plain = evaluate.resolve_method(str(ckpt), pairs)  # the paper's composite unless asked
    blended = evaluate.resolve_method(f"seamless={ckpt}@poisson", pairs)
    assert plain.identity["blend"] == "none" and blended.identity["blend"] == "poisson"
    assert blended.name == "seamless"
    assert evaluate.resolve_method(str(ckpt), pairs, blend="poisson").identity["blend"] == "poisson"
    assert evaluate.resolve_method(f"{ckpt}@none", pairs, blend="poisson").identity["blend"] == "none"
    assert plain.key(scorer.config, "x") != blended.key(scorer.config, "x")
    known = evaluate.resolve_method(str(ckpt), pairs, edges="known")
    assert known.identity["edges"] == "known" and known.key(scorer.config, "x") != plain.key(scorer.config, "x")
    image, hole = evaluate.load_pair(pairs[0], SIZE)
    a, b = plain.predict(0, image, hole), blended.predict(0, image, hole)
    assert np.array_equal(a[hole == 0], b[hole == 0]) and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="models only"):
        evaluate.resolve_method("telea@poisson", pairs)
    # without labels the @blend stays in the name, so both fit in one table (they clashed as 'ctsdg-small')
    names = [evaluate.resolve_method(spec, pairs).name for spec in ("small", "small@poisson", f"{ckpt}@poisson")]
    assert names == ["ctsdg-small", "ctsdg-small@poisson", plain.name + "@poisson"]


def test_a_replaced_prediction_file_is_scored_again(dataset, scorer, tmp_path):
    list_file, _, _ = dataset
    pairs = masks.load_eval_pairs(list_file)[:2]
    preds, cache = tmp_path / "preds", tmp_path / "cache"
    preds.mkdir()
    for i, pair in enumerate(pairs):
        image, _ = evaluate.load_pair(pair, SIZE)
        Image.fromarray(image).save(preds / f"{i:05d}.png")
    method = evaluate.folder_method(preds, pairs=pairs)
    first = evaluate.score_shard(pairs, method, scorer.config, scorer, cache_dir=cache)
    assert first.rows[1]["psnr"] == metrics.PSNR_CAP_DB
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(preds / "00001.png")  # a new prediction
    again = evaluate.score_shard(pairs, method, scorer.config, scorer, cache_dir=cache)
    assert again.rows[0] == first.rows[0]  # unchanged file: cached row
    assert again.rows[1]["psnr"] < 40  # replaced file: scored again, not the stale cached row


def test_an_empty_mask_is_refused_not_scored_at_the_psnr_cap(tmp_path):
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp_path / "empty.png")
    pair = masks.EvalPair(tmp_path / "img.png", tmp_path / "empty.png", 0.0, "0-20%")
    with pytest.raises(ValueError, match="no hole pixel"):
        evaluate.load_pair(pair, SIZE)


def test_another_evaluation_in_the_same_out_is_refused_unless_overwrite(tmp_path):
    list_file, _, _ = _write_set(tmp_path, n_images=2)
    config = evaluate.EvalConfig(size=SIZE, lpips=(), fid=False)
    out = tmp_path / "out"
    evaluate.run_evaluation(list_file, ["telea"], out, config, examples=0, progress=False)
    before = (out / "table.md").read_bytes()
    evaluate.run_evaluation(list_file, ["telea"], out, config, examples=0, progress=False)  # the same: resumes
    for methods, limit in ((["ns"], None), (["telea"], 3)):
        with pytest.raises(FileExistsError, match=r"holds another evaluation \(telea; its .* differ\); pass --overwrite"):
            evaluate.run_evaluation(list_file, methods, out, config, examples=0, progress=False, limit=limit)
        assert (out / "table.md").read_bytes() == before
    evaluate.run_evaluation(list_file, ["ns"], out, config, examples=0, progress=False, overwrite=True)
    assert "| ns |" in (out / "table.md").read_text()


def test_a_pattern_with_an_unknown_field_and_a_missing_checkpoint_are_named(dataset, tmp_path):
    list_file, _, _ = dataset
    pairs = masks.load_eval_pairs(list_file)
    with pytest.raises(ValueError, match=r"--pattern '\{idx\}.png' cannot name a prediction .*\{index\}"):
        evaluate.folder_method(tmp_path, pattern="{idx}.png", pairs=pairs)
    with pytest.raises(FileNotFoundError, match=r"nonexist.safetensors does not exist"):
        evaluate.resolve_method("ours=nonexist.safetensors", pairs)
    with pytest.raises(ValueError, match="neither a baseline"):  # a bare word is still read as a misspelt baseline
        evaluate.resolve_method("teela", pairs)


def test_an_out_folder_that_cannot_be_written_is_refused_before_scoring(tmp_path, monkeypatch, refuse_writes_in):
    list_file, _, _ = _write_set(tmp_path, n_images=2)
    locked = tmp_path / "locked"
    locked.mkdir()
    refuse_writes_in(locked)
    scored = []
    monkeypatch.setattr(evaluate, "score_shard", lambda *a, **k: scored.append(1))
    with pytest.raises(PermissionError, match=r"^cannot write to .*locked: permission denied; choose another --out$"):
        evaluate.run_evaluation(list_file, ["telea"], locked / "eval", evaluate.EvalConfig(size=SIZE, lpips=(), fid=False))
    assert not scored and list(locked.iterdir()) == []


def test_every_method_of_a_long_table_gets_its_own_line_style():
    styles = [(s["color"], s["marker"]) for s in evaluate.method_styles(16)]  # baselines + ablations + more
    assert len(set(styles)) == 16
