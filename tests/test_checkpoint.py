"""Checkpoint formats: ours (safetensors, fp32/fp16/bf16), training dicts, official .pt (GPU-saved,
``module.`` prefixes), conversion, and the errors users meet."""

import contextlib
import json
import logging
from fractions import Fraction

import pytest
import torch
from PIL import Image

from ctsdg import Discriminator, Generator, ModelConfig
from ctsdg import checkpoint as ckpt
from ctsdg.state_dict import StateDictMismatch

CFG = ModelConfig(base_width=4)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    g = Generator(CFG)
    with torch.no_grad():  # non-default BN statistics, so that buffers are checked too
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return g.eval()


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, cast=None):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        expected = sa[k] if cast is None or not sa[k].is_floating_point() else sa[k].to(cast).float()
        assert torch.equal(expected, sb[k]), k


_TAG_AS_CUDA = {"on": False}


def _cuda_tagger(obj):
    return "cuda:0" if _TAG_AS_CUDA["on"] else None


def _no_deserializer(obj, location):
    return None


torch.serialization.register_package(1, _cuda_tagger, _no_deserializer)


@contextlib.contextmanager
def tensors_tagged_as_cuda():
    """Make torch.save record every storage as living on 'cuda:0', as a checkpoint saved on a GPU does."""
    _TAG_AS_CUDA["on"] = True
    try:
        yield
    finally:
        _TAG_AS_CUDA["on"] = False


def official_checkpoint(generator, path, prefix="module.", on_gpu=False):
    d = Discriminator(CFG)
    obj = {
        "n_iter": 350000,
        "generator": {prefix + k: v for k, v in generator.state_dict().items()},
        "discriminator": {prefix + k: v for k, v in d.state_dict().items()},
    }
    with tensors_tagged_as_cuda() if on_gpu else contextlib.nullcontext():
        torch.save(obj, path)
    return d


def test_convert_writes_both_files_or_neither(generator, tmp_path, monkeypatch):
    src = tmp_path / "official.pt"
    official_checkpoint(generator, src)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_discriminator_state", full_disk)
    with pytest.raises(OSError, match="No space"):
        ckpt.convert_checkpoint(src, tmp_path / "converted.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official.pt"]  # no generator alone, no temporaries


def test_safetensors_round_trip_keeps_weights_config_and_mode(generator, tmp_path):
    path = ckpt.save_generator(tmp_path / "g.safetensors", generator, "official", meta={"n_iter": 7, "note": "x"})
    loaded = ckpt.load_generator(path)
    assert_same_state(generator, loaded.generator)
    assert loaded.model_config == CFG and loaded.structure_mode == "official"
    assert loaded.meta["source_format"] == "ctsdg-generator"
    assert loaded.meta["note"] == "x" and json.loads(loaded.meta["n_iter"]) == 7
    assert loaded.meta["sha256"] == ckpt.file_sha256(path)
    assert not loaded.generator.training


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_files_store_the_rounded_weights_in_half_the_space(generator, tmp_path, dtype, torch_dtype):
    full = ckpt.save_generator(tmp_path / "full.safetensors", generator)
    half = ckpt.save_generator(tmp_path / f"{dtype}.safetensors", generator, dtype=dtype)
    loaded = ckpt.load_generator(half)
    assert_same_state(generator, loaded.generator, cast=torch_dtype)  # exactly w.to(dtype).float()
    assert loaded.generator.ec_texture_1.conv.weight.dtype == torch.float32
    ratio = half.stat().st_size / full.stat().st_size
    assert 0.45 < ratio < 0.56


def test_official_checkpoint_saved_on_gpu_with_module_prefix(generator, tmp_path, caplog):
    path = tmp_path / "official.pt"
    official_checkpoint(generator, path, on_gpu=True)
    if not torch.cuda.is_available():  # what the authors' test.py does (no map_location) fails here
        with pytest.raises(RuntimeError):
            torch.load(path, weights_only=True)
    with caplog.at_level(logging.WARNING, logger="ctsdg"):
        loaded = ckpt.load_generator(path)
    assert loaded.structure_mode == "official"
    assert loaded.model_config == ModelConfig(base_width=4)  # the paper's architecture at its width
    assert loaded.meta["source_format"] == "official" and loaded.meta["n_iter"] == 350000
    assert_same_state(generator, loaded.generator)
    assert "official" in caplog.text


def test_training_checkpoint_format(generator, tmp_path):
    from ctsdg.config import to_dict

    path = tmp_path / "step.pt"
    torch.save({"format": "ctsdg-train", "generator": generator.state_dict(), "model_config": to_dict(CFG),
                "structure_mode": "standard", "step": 12, "optimizer_g": {}}, path)
    loaded = ckpt.load_generator(path)
    assert loaded.structure_mode == "standard" and loaded.model_config == CFG
    assert loaded.meta["source_format"] == "ctsdg-train" and loaded.meta["step"] == 12
    assert_same_state(generator, loaded.generator)


def test_bare_state_dict_is_read_like_an_official_one(generator, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(generator.state_dict(), path)
    loaded = ckpt.load_generator(path)
    assert loaded.structure_mode == "official"
    assert_same_state(generator, loaded.generator)


class NotAState:  # pickling this needs code execution to load: weights_only must refuse it
    pass


def test_bad_files_give_one_readable_error(generator, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load_generator(tmp_path / "missing.pt")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"cannot read .*notes.txt as a checkpoint \(it is neither a PyTorch file "
                                         r"nor safetensors\)"):
        ckpt.load_generator(text)
    photo = tmp_path / "photo.png"  # a file passed by mistake is named for what it is
    Image.new("RGB", (4, 4)).save(photo)
    with pytest.raises(ValueError, match=r"photo.png as a checkpoint \(it is a PNG image\)"):
        ckpt.load_generator(photo)
    pickled = tmp_path / "object.pt"
    torch.save({"generator": NotAState()}, pickled)
    with pytest.raises(ValueError, match=r"\(it pickles Python objects besides tensors\).*weights_only"):
        ckpt.load_generator(pickled)
    legacy = tmp_path / "legacy.pt"  # torch's old format is a pickle, not a zip: still read as torch's
    torch.save({"generator": NotAState()}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"\(it pickles Python objects besides tensors\)"):
        ckpt.load_generator(legacy)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(ValueError, match="no CTSDG generator"):
        ckpt.load_generator(other)


def test_architecture_mismatch_names_the_keys(generator, tmp_path):
    from ctsdg.config import to_dict

    path = tmp_path / "wrong.pt"
    torch.save({"format": "ctsdg-train", "generator": generator.state_dict(),
                "model_config": to_dict(ModelConfig(base_width=8)), "structure_mode": "standard"}, path)
    with pytest.raises(StateDictMismatch, match="wrong shapes"):
        ckpt.load_generator(path)


def test_bundled_model_missing_says_what_to_do(monkeypatch, tmp_path, generator):
    monkeypatch.setattr(ckpt, "BUNDLED_PATH", tmp_path / "weights" / "ctsdg-small.safetensors")
    with pytest.raises(FileNotFoundError, match="pass a checkpoint"):
        ckpt.load_generator(None)
    (tmp_path / "weights").mkdir()
    ckpt.save_generator(ckpt.BUNDLED_PATH, generator)
    assert ckpt.load_generator("small").model_config == CFG
    assert ckpt.load_generator(None).meta["path"] == str(ckpt.BUNDLED_PATH)


def test_convert_official_keeps_generator_and_discriminator(generator, tmp_path):
    src = tmp_path / "official.pt"
    d = official_checkpoint(generator, src)
    before = src.read_bytes()
    out = tmp_path / "converted.safetensors"
    written = ckpt.convert_checkpoint(src, out)
    assert written == [out, tmp_path / "converted.discriminator.safetensors"]
    assert src.read_bytes() == before
    loaded = ckpt.load_generator(out)
    assert loaded.structure_mode == "official" and loaded.meta["converted_from"] == "official.pt"
    assert_same_state(generator, loaded.generator)
    state, config = ckpt.load_discriminator_state(written[1])
    d2 = Discriminator(config)
    d2.load_state_dict(state)
    for k, v in d.state_dict().items():
        assert torch.equal(v, d2.state_dict()[k]), k
    with pytest.raises(FileExistsError, match="--overwrite"):
        ckpt.convert_checkpoint(src, out)
    with pytest.raises(ValueError, match="discriminator"):
        ckpt.load_generator(written[1])


def test_convert_fp16_halves_the_discriminator_too_and_loads_it_back_as_float32(generator, tmp_path):
    src = tmp_path / "official.pt"
    d = official_checkpoint(generator, src)
    full = ckpt.convert_checkpoint(src, tmp_path / "full.safetensors")
    half = ckpt.convert_checkpoint(src, tmp_path / "half.safetensors", dtype="fp16")
    assert half[1].stat().st_size < 0.6 * full[1].stat().st_size
    state, _ = ckpt.load_discriminator_state(half[1])
    d2 = Discriminator(CFG)
    d2.load_state_dict(state)
    for k, v in d.state_dict().items():
        got = d2.state_dict()[k]
        if v.is_floating_point():
            assert state[k].dtype == torch.float32, k
            assert torch.equal(got, v.half().float()), k  # exactly the rounded weights
        else:
            assert torch.equal(got, v), k


def test_converting_our_safetensors_file_carries_the_discriminator_beside_it(generator, tmp_path, capsys):
    from ctsdg.cli import main

    src = tmp_path / "official.pt"
    d = official_checkpoint(generator, src)
    ours = ckpt.convert_checkpoint(src, tmp_path / "ours.safetensors")  # generator + discriminator beside it
    half = ckpt.convert_checkpoint(ours[0], tmp_path / "half.safetensors", dtype="fp16")
    assert [p.name for p in half] == ["half.safetensors", "half.discriminator.safetensors"]
    state, _ = ckpt.load_discriminator_state(half[1])
    for k, v in d.state_dict().items():
        assert torch.equal(state[k], v.half().float() if v.is_floating_point() else v), k
    assert main(["convert", str(ours[0]), str(tmp_path / "alone.safetensors"), "--no-discriminator"]) == 0
    assert not (tmp_path / "alone.discriminator.safetensors").exists()
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "alone.safetensors"), str(tmp_path / "again.safetensors")]) == 0
    assert "no discriminator in the source (nor beside it)" in capsys.readouterr().err  # said for safetensors too


def test_convert_cli(generator, tmp_path, capsys):
    from ctsdg.cli import main

    src = tmp_path / "official.pt"
    official_checkpoint(generator, src, on_gpu=True)
    assert main(["convert", str(src), str(tmp_path / "g.safetensors"), "--no-discriminator"]) == 0
    assert (tmp_path / "g.safetensors").exists()
    assert not (tmp_path / "g.discriminator.safetensors").exists()
    assert main(["convert", str(src), str(tmp_path / "g.safetensors")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_damaged_files_give_one_readable_error_in_load_and_convert(generator, tmp_path):
    good = ckpt.save_generator(tmp_path / "good.safetensors", generator)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated"):
        ckpt.load_generator(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):  # read for its discriminator first
        ckpt.convert_checkpoint(garbage, tmp_path / "out.safetensors")
    pickled = tmp_path / "pickled.pt"
    torch.save({"generator": generator.state_dict(), "extra": Fraction(1, 3)}, pickled)
    with pytest.raises(ValueError, match="pickles Python objects") as refused:
        ckpt.load_generator(pickled)
    assert "weights_only=False" not in str(refused.value).split(";")[0]  # no advice to run arbitrary code
    pickled.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pt", "good.safetensors", "truncated.safetensors"]
    cut = tmp_path / "cut.safetensors"  # header intact, tensor data cut: what an interrupted copy leaves
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        ckpt.load_generator(cut)
    with pytest.raises(ValueError, match="truncated"):  # as --init-from reads the discriminator file beside it
        ckpt.load_discriminator_state(cut)


def _training_checkpoint(path, generator, discriminator, step):
    from ctsdg.config import to_dict

    torch.save({"format": "ctsdg-train", "generator": generator.state_dict(), "model_config": to_dict(CFG),
                "structure_mode": "standard", "step": step, "discriminator": discriminator.state_dict()}, path)


def _perturbed(module, seed):
    torch.manual_seed(seed)
    module = type(module)(CFG)
    with torch.no_grad():
        for value in module.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn_like(value))
    return module


def test_average_of_checkpoints_is_the_mean_of_every_weight_and_statistic(generator, tmp_path):
    gens = [_perturbed(generator, s) for s in (1, 2, 3)]
    discs = [_perturbed(Discriminator(CFG), s) for s in (4, 5, 6)]
    sources = []
    for i, (g, d) in enumerate(zip(gens, discs, strict=True)):
        sources.append(tmp_path / f"step_{i}.pt")
        _training_checkpoint(sources[-1], g, d, step=100 * (i + 1))
    written = ckpt.average_checkpoints(sources, tmp_path / "avg.safetensors")
    assert [p.name for p in written] == ["avg.safetensors", "avg.discriminator.safetensors"]
    loaded = ckpt.load_generator(written[0])
    assert loaded.model_config == CFG and loaded.meta["step"] == "300"
    assert json.loads(loaded.meta["averaged_from"]) == ["step_0.pt", "step_1.pt", "step_2.pt"]
    for k, v in loaded.generator.state_dict().items():
        states = [g.state_dict()[k] for g in gens]
        if v.is_floating_point():
            assert torch.allclose(v, sum(states) / 3, atol=1e-6), k
            assert not torch.allclose(v, states[-1]), k  # not just the last one
        else:
            assert torch.equal(v, states[-1]), k
    d_state, _ = ckpt.load_discriminator_state(written[1])
    for k, v in discs[0].state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(d_state[k], sum(d.state_dict()[k] for d in discs) / 3, atol=1e-6), k


def test_average_refuses_other_models_one_source_and_writing_over_a_source(generator, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    _training_checkpoint(a, generator, Discriminator(CFG), step=1)
    other = Generator(ModelConfig(base_width=8))
    torch.save({"format": "ctsdg-train", "generator": other.state_dict(), "model_config":
                {"base_width": 8}, "structure_mode": "standard", "step": 2}, b)
    with pytest.raises(ValueError, match="different model"):
        ckpt.average_checkpoints([a, b], tmp_path / "avg.safetensors")
    with pytest.raises(ValueError, match="two or more"):
        ckpt.average_checkpoints([a], tmp_path / "avg.safetensors")
    ckpt.convert_checkpoint(a, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="one of the input"):
        ckpt.average_checkpoints([tmp_path / "a.safetensors", a], tmp_path / "a.safetensors", overwrite=True)
    assert not (tmp_path / "avg.safetensors").exists()


def test_convert_cli_averages_several_sources_in_half_precision(generator, tmp_path, capsys):
    from ctsdg.cli import main

    sources = []
    for i in range(2):
        sources.append(tmp_path / f"step_{i}.pt")
        _training_checkpoint(sources[-1], _perturbed(generator, i), _perturbed(Discriminator(CFG), i), step=i)
    out = tmp_path / "avg.safetensors"
    assert main(["convert", *map(str, sources), str(out), "--dtype", "fp16"]) == 0
    assert "the average of 2 checkpoints" in capsys.readouterr().err
    assert ckpt.load_generator(out).meta["dtype"] == "fp16"
    assert ckpt.discriminator_path_for(out).exists()
    assert main(["convert", *map(str, sources), str(tmp_path / "w.safetensors"), "--widen", "2"]) == 1
    assert "one source" in capsys.readouterr().err


def test_convert_and_average_read_each_torch_file_once(generator, tmp_path, monkeypatch):
    sources = []
    for i in range(3):
        sources.append(tmp_path / f"step_{i}.pt")
        _training_checkpoint(sources[-1], _perturbed(generator, i), _perturbed(Discriminator(CFG), i), step=i)
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(path) or real_load(path, *a, **k))
    written = ckpt.convert_checkpoint(sources[0], tmp_path / "one.safetensors")
    assert len(written) == 2 and reads == [sources[0]]  # generator and discriminator from one read
    reads.clear()
    written = ckpt.average_checkpoints(sources, tmp_path / "avg.safetensors")
    assert len(written) == 2 and sorted(reads) == sorted(sources)


def test_average_of_safetensors_files_averages_the_discriminators_beside_them(generator, tmp_path, caplog):
    gens = [_perturbed(generator, s) for s in (1, 2)]
    discs = [_perturbed(Discriminator(CFG), s) for s in (3, 4)]
    sources = []
    for i, (g, d) in enumerate(zip(gens, discs, strict=True)):
        _training_checkpoint(tmp_path / f"step_{i}.pt", g, d, step=i)
        sources.append(tmp_path / f"step_{i}.safetensors")
        ckpt.convert_checkpoint(tmp_path / f"step_{i}.pt", sources[-1])  # writes the discriminator beside it
    written = ckpt.average_checkpoints(sources, tmp_path / "avg.safetensors")
    assert [p.name for p in written] == ["avg.safetensors", "avg.discriminator.safetensors"]
    d_state, _ = ckpt.load_discriminator_state(written[1])
    for k, v in discs[0].state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(d_state[k], (v + discs[1].state_dict()[k]) / 2, atol=1e-6), k
    # a discriminator of another model beside a source is refused, before anything is written
    other = Discriminator(ModelConfig(base_width=8))
    ckpt.save_discriminator_state(ckpt.discriminator_path_for(sources[1]), other.state_dict(),
                                  ModelConfig(base_width=8))
    with pytest.raises(ValueError, match="discriminator of another model.*--no-discriminator"):
        ckpt.average_checkpoints(sources, tmp_path / "other.safetensors")
    assert not (tmp_path / "other.safetensors").exists()
    # a source without one: the generator alone, and a warning that names that source
    ckpt.discriminator_path_for(sources[1]).unlink()
    with caplog.at_level(logging.WARNING, logger="ctsdg"):
        written = ckpt.average_checkpoints([tmp_path / "step_0.pt", sources[1]], tmp_path / "mixed.safetensors")
    assert [p.name for p in written] == ["mixed.safetensors"]
    assert not ckpt.discriminator_path_for(written[0]).exists()
    assert "no discriminator written" in caplog.text and "step_1.safetensors" in caplog.text
