"""Training step and loop at tiny width: update order, BN freezing, resume equality, checkpoints, errors."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ctsdg import train as T
from ctsdg import train_checkpoint as TC
from ctsdg.config import ModelConfig
from ctsdg.data import EpochSampler
from ctsdg.discriminator import Discriminator
from ctsdg.generator import Generator, GeneratorOutput
from ctsdg.losses import LossWeights, discriminator_loss, generator_loss
from ctsdg.train_config import load_train_config

SIZE = 128


class TinyFeatures(nn.Module):
    """Stand-in for VGG16 pool1..pool3 in tests (random frozen convs; the real one is tested in test_losses)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(123)
        self.convs = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                                    nn.Conv2d(4, 4, 3, padding=1)])
        self.requires_grad_(False)

    def forward(self, x):
        feats = []
        for conv in self.convs:
            x = nn.functional.max_pool2d(torch.relu(conv(x)), 2)
            feats.append(x)
        return feats


def _photos(folder, n=3, size=160):
    """Small synthetic photos with edges (gradients, a disc, a bar), different per file."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32)
        img[..., 0] = xx / size
        img[..., 1] = yy / size
        img[..., 2] = 0.3 + 0.2 * i
        img[(xx - 50 - 20 * i) ** 2 + (yy - 80) ** 2 < 30**2] = (0.9, 0.2, 0.1)
        img[20 + 10 * i:40 + 10 * i, 10:150] = (0.1, 0.1, 0.8)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"photo_{i}.png")
    return folder


def _config(tmp_path, *extra):
    train_root = _photos(tmp_path / "train")
    val_root = _photos(tmp_path / "val", n=2)
    return load_train_config(None, [
        "model.base_width=4",
        f"data.size={SIZE}",
        "data.preset=official",
        f"dataset.train_root={train_root}",
        f"dataset.val_root={val_root}",
        "dataset.val_count=2",
        "optim.batch_size=2",
        "optim.iterations=4",
        "optim.finetune_iterations=0",
        f"run.out_dir={tmp_path / 'run'}",
        "run.checkpoint_every=2",
        "run.log_every=1",
        "run.val_every=2",
        "run.image_every=1000",
        "run.tensorboard=false",
        "scale.device=cpu",
        *extra,
    ])


def _batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, SIZE, SIZE, generator=g) * 2 - 1
    known = torch.ones(b, 1, SIZE, SIZE)
    known[..., 40:90, 30:100] = 0.0
    edge = (torch.rand(b, 1, SIZE, SIZE, generator=g) > 0.8).float()
    gray = torch.rand(b, 1, SIZE, SIZE, generator=g)
    return {"image": image, "known_mask": known, "edge": edge, "gray": gray, "name": ["a"] * b}


def _nets(width=4, seed=0):
    torch.manual_seed(seed)
    g, d = Generator(ModelConfig(base_width=width)), Discriminator(ModelConfig(base_width=width))
    vgg = TinyFeatures()
    nets = T.Nets(g, d, T.DiscriminatorPair(d), vgg)
    opt = T.Optimizers(torch.optim.Adam(g.parameters(), lr=1e-3), torch.optim.Adam(d.parameters(), lr=1e-3))
    return nets, opt


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_optimizers_are_fused_adam_with_the_configured_rates_and_the_plain_update():
    """build_optimizers: Adam, fused on CPU, G at optim.lr and D at lr × ratio; its step is torch's
    default Adam step."""
    from ctsdg.train_config import OptimConfig

    torch.manual_seed(0)
    g, d = Generator(ModelConfig(base_width=4)), Discriminator(ModelConfig(base_width=4))
    plain = copy.deepcopy(g)
    opt = T.build_optimizers(g, d, OptimConfig(lr=1e-3, discriminator_lr_ratio=0.5))
    assert opt.generator.param_groups[0]["fused"] and opt.discriminator.param_groups[0]["fused"]
    assert opt.generator.param_groups[0]["lr"] == 1e-3 and opt.discriminator.param_groups[0]["lr"] == 5e-4
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    for _ in range(3):
        for net, o in ((g, opt.generator), (plain, plain_opt)):
            torch.manual_seed(1)
            for p in net.parameters():
                p.grad = torch.randn_like(p)
            o.step()
    for a, b in zip(g.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_train_step_is_the_official_update_order():
    """Reference written out by hand: G forward, L_G with D frozen, G Adam step, then D on the output of that
    same (pre-update) forward pass, D Adam step."""
    batch = _batch()
    nets, opt = _nets()
    ref_g, ref_d = copy.deepcopy(nets.generator), copy.deepcopy(nets.discriminator)
    ref_opt_g = torch.optim.Adam(ref_g.parameters(), lr=1e-3)
    ref_opt_d = torch.optim.Adam(ref_d.parameters(), lr=1e-3)

    losses = T.train_step(batch, nets, opt)

    image, known, edge, gray = batch["image"], batch["known_mask"], batch["edge"], batch["gray"]
    out = ref_g(image * known, torch.cat((edge * known, gray * known), 1), known)
    ref_d.requires_grad_(False)
    fake_pred, fake_edge = ref_d(out.output, gray, edge, is_real=False)
    loss = generator_loss(out.output, image, known, edge, out.projected_image, out.projected_edge, fake_pred,
                          fake_edge, nets.vgg, LossWeights())
    ref_opt_g.zero_grad()
    loss.total.backward()
    ref_opt_g.step()
    ref_d.requires_grad_(True)
    fake = out.output.detach()
    real_pred, real_edge = ref_d(image, gray, edge, is_real=True)
    fake_pred, fake_edge = ref_d(fake, gray, edge, is_real=False)
    d_loss = discriminator_loss(real_pred, fake_pred, real_edge, fake_edge, edge)
    ref_opt_d.zero_grad()
    d_loss.backward()
    ref_opt_d.step()

    assert losses["generator"] == pytest.approx(loss.total.item(), rel=1e-5)
    assert losses["discriminator"] == pytest.approx(d_loss.item(), rel=1e-5)
    for mine, ref in ((nets.generator, ref_g), (nets.discriminator, ref_d)):
        a, b = _params(mine), _params(ref)
        for key in a:
            assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    # the step leaves D trainable again
    assert all(p.requires_grad for p in nets.discriminator.parameters())


def test_a_batch_with_known_edges_feeds_them_and_keeps_the_full_edges_as_target():
    batch = _batch()
    batch["known_edge"] = torch.zeros_like(batch["edge"])
    b = T.prepare_batch(batch, "cpu")
    assert torch.equal(b.input_edge[:, :1], torch.zeros_like(batch["edge"]))
    assert torch.equal(b.input_edge[:, 1:], batch["gray"] * batch["known_mask"])
    assert torch.equal(b.edge, batch["edge"])
    plain = T.prepare_batch({k: v for k, v in batch.items() if k != "known_edge"}, "cpu")
    assert torch.equal(plain.input_edge[:, :1], batch["edge"] * batch["known_mask"])
    samples = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["image"]))]
    assert set(T.stack_samples(samples)) == {"image", "known_mask", "edge", "gray", "known_edge"}


def test_gradient_accumulation_of_two_halves_equals_one_batch_without_batchnorm_effects():
    """Two micro-batches of 1 accumulate to the mean gradient. With the networks in eval mode (BN on running
    statistics, no spectral-norm power iteration) the update equals one batch of 2; in train mode the BN
    statistics differ per micro-batch (docs/training.md)."""
    batch = _batch(2)
    halves = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(2)]
    results = []
    for data in (batch, halves):
        nets, opt = _nets()
        nets.generator.eval()  # BN on running statistics
        nets.discriminator.eval()  # BN and spectral norm (its power iteration runs once per training forward)
        T.train_step(data, nets, opt)
        results.append((_params(nets.generator), {n: p.grad.clone() for n, p in nets.generator.named_parameters()}))
    (p1, g1), (p2, g2) = results
    for name in g1:
        assert torch.allclose(g1[name], g2[name], rtol=1e-4, atol=1e-7), name
    for key in p1:
        assert torch.allclose(p1[key], p2[key], atol=1e-6), key


def test_non_finite_loss_raises_and_leaves_d_trainable():
    batch = _batch()
    batch["image"][0, 0, 0, 0] = float("nan")
    nets, opt = _nets()
    before = _params(nets.generator)
    with pytest.raises(T.NonFiniteLossError, match="non-finite generator loss"):
        T.train_step(batch, nets, opt)
    assert all(p.requires_grad for p in nets.discriminator.parameters())
    after = _params(nets.generator)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith("num_batches_tracked")
               and "running" not in k)


def test_learning_rates_per_phase(tmp_path):
    c = load_train_config(None, ["optim.iterations=10", "optim.lr=2e-4", "optim.finetune_lr=5e-5"])
    assert T.learning_rates(c, 9) == (2e-4, pytest.approx(2e-5))
    assert T.learning_rates(c, 10) == (5e-5, pytest.approx(5e-6))
    assert not T.in_finetune(c, 9) and T.in_finetune(c, 10)


def _inductor_compiler() -> str | None:
    """The C++ compiler torch.compile's inductor calls on CPU ($CXX, else g++), if it is installed."""
    from torch._inductor import cpp_builder, exc

    try:
        return shutil.which(cpp_builder.get_cpp_compiler())
    except exc.InvalidCxxCompiler:
        return None


@pytest.mark.slow
# torch.compile's own imports use torch.jit.script_method, which torch 2.13 deprecates (14 warnings)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_step_matches_eager():
    """scale.compile: the compiled networks give the eager step's losses (slow: inductor compiles C++)."""
    if _inductor_compiler() is None:  # checked here, not at collection: importing inductor takes a second
        pytest.skip("torch.compile needs a C++ compiler on CPU (g++, or the one $CXX names)")
    results = []
    for compiled in (False, True):
        nets, opt = _nets()
        if compiled:
            nets = nets._replace(generator=torch.compile(nets.generator),
                                 discriminator_pair=torch.compile(nets.discriminator_pair))
        results.append(T.train_step(_batch(), nets, opt))
    for key, value in results[0].items():
        assert results[1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("mode", ["official", "encoder"])
def test_finetune_batchnorm_freezing(mode):
    """official: every BN keeps updating (what the authors' code does); encoder: encoder BN statistics and
    affine parameters stay fixed while decoder BNs still train."""
    nets, opt = _nets()
    g = nets.generator
    T.set_train_mode(g, mode)
    enc = {n for n, m in g.named_modules() if n.startswith("ec_") and isinstance(m, nn.BatchNorm2d)}
    dec = {n for n, m in g.named_modules() if n.startswith("dc_") and isinstance(m, nn.BatchNorm2d)}
    assert len(enc) == 12 and len(dec) == 14
    before = _params(g)
    T.train_step(_batch(), nets, opt)
    after = _params(g)

    def changed(prefix_set, suffix):
        return [not torch.equal(before[f"{n}.{suffix}"], after[f"{n}.{suffix}"]) for n in prefix_set]

    for suffix in ("running_mean", "weight", "bias"):
        assert all(changed(dec, suffix)), suffix
        if mode == "encoder":
            assert not any(changed(enc, suffix)), suffix
        else:
            assert all(changed(enc, suffix)), suffix
    mods = dict(g.named_modules())
    assert all(mods[n].training == (mode == "official") for n in enc)
    # switching back to phase-1 mode makes everything trainable again
    T.set_train_mode(g, None)
    assert all(p.requires_grad for p in g.parameters()) and all(mods[n].training for n in enc)


def test_step_batch_sampler_follows_the_epoch_stream_and_splits_ranks():
    n, seed = 7, 3
    stream = list(iter(EpochSampler(n, seed, num_samples=40)))
    single = T.StepBatchSampler(n, seed, batch_size=4)
    assert [single.batch_indices(s) for s in range(5)] == [stream[4 * s:4 * s + 4] for s in range(5)]
    ranks = [T.StepBatchSampler(n, seed, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for s in range(5):
        assert ranks[0].batch_indices(s) + ranks[1].batch_indices(s) == single.batch_indices(s)
    accum = T.StepBatchSampler(n, seed, batch_size=2, grad_accum=2)
    assert accum.batch_indices(3, 0) + accum.batch_indices(3, 1) == single.batch_indices(3)
    resumed = T.StepBatchSampler(n, seed, batch_size=4, start_step=3, num_steps=2)
    assert list(resumed) == [single.batch_indices(3), single.batch_indices(4)]


def test_two_step_smoke_run_writes_a_loadable_checkpoint(tmp_path):
    config = _config(tmp_path, "optim.iterations=2", "run.val_every=1")
    result = T.train(config, vgg=TinyFeatures(), keep_history=True, progress=False)
    assert result.step == 2 and len(result.history) == 2
    assert all(math.isfinite(v) for h in result.history for v in h.values())
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "step_0000002.pt", map_location="cpu", weights_only=True)
    assert ckpt["format"] == "ctsdg-train" and ckpt["version"] == 1 and ckpt["step"] == 2
    assert ckpt["model_config"]["base_width"] == 4 and ckpt["structure_mode"] == "standard"
    assert set(ckpt) >= {"config", "generator", "discriminator", "optim_g", "optim_d", "rng"}
    assert ckpt["rng"]["data"]["samples_seen"] == 4
    assert (run / "config.yaml").is_file() and (run / "best.safetensors").is_file()
    lines = (run / "log.jsonl").read_text().splitlines()
    assert any('"val/psnr"' in line for line in lines)
    # fine-tuning from our checkpoint: G, D and both Adam states come along, the step starts at 0
    nets, opt = _nets(seed=7)
    TC.load_init_weights(str(run / "checkpoints" / "step_0000002.pt"), config, nets.generator, nets.discriminator,
                         opt)
    assert torch.equal(nets.generator.state_dict()["ec_texture_1.conv.weight"],
                       ckpt["generator"]["ec_texture_1.conv.weight"])
    assert all(int(s["step"]) == 2 for s in opt.generator.state_dict()["state"].values())
    # the inference loader reads our training checkpoints
    from ctsdg.checkpoint import load_generator

    loaded = load_generator(run / "checkpoints" / "step_0000002.pt")
    assert loaded.model_config.base_width == 4 and loaded.meta["source_format"] == "ctsdg-train"
    assert torch.equal(loaded.generator.state_dict()["ec_texture_1.conv.weight"],
                       ckpt["generator"]["ec_texture_1.conv.weight"])


def test_no_image_grids_with_image_every_0(tmp_path):
    config = _config(tmp_path, "optim.iterations=2", "run.val_every=1", "run.image_every=0")
    logged = []
    with mock.patch.object(T._Logger, "image", lambda self, step, *a: logged.append(step)):
        result = T.train(config, vgg=TinyFeatures(), progress=False)  # was: ZeroDivisionError at the first step
    assert result.step == 2 and logged == []
    with mock.patch.object(T._Logger, "image", lambda self, step, *a: logged.append(step)):
        T.train(_config(tmp_path / "again", "optim.iterations=2", "run.val_every=1", "run.image_every=1"),
                vgg=TinyFeatures(), progress=False)
    assert logged == [1, 2]  # the same patch sees the grids when they are on


def test_lpips_loss_option_trains_and_logs_its_term(tmp_path):
    """loss.lpips > 0 builds the offline LPIPS network and adds its term to the generator loss."""
    config = _config(tmp_path, "optim.iterations=1", "loss.lpips=1.0", "loss.lpips_net=alex")
    result = T.train(config, vgg=TinyFeatures(), keep_history=True, progress=False)
    assert result.history[0]["lpips"] > 0
    off = T.train(_config(tmp_path / "off", "optim.iterations=1"), vgg=TinyFeatures(), keep_history=True,
                  progress=False)
    assert off.history[0]["lpips"] == 0
    with pytest.raises(ValueError, match="lpips_net"):
        _config(tmp_path, "loss.lpips_net=squeeze")


def test_ssim_loss_option_trains_and_logs_its_term(tmp_path):
    """loss.ssim > 0 adds 1 − SSIM of the composite to the generator loss and logs it as loss/ssim."""
    result = T.train(_config(tmp_path, "optim.iterations=1", "loss.ssim=5.0"), vgg=TinyFeatures(),
                     keep_history=True, progress=False)
    assert 0 < result.history[0]["ssim"] < 1
    off = T.train(_config(tmp_path / "off", "optim.iterations=1"), vgg=TinyFeatures(), keep_history=True,
                  progress=False)
    assert off.history[0]["ssim"] == 0


def test_a_stop_between_log_records_loses_no_step(tmp_path):
    """Was: with run.log_every=3 a stop after step 2 wrote no record, and a resume from its checkpoint
    logged step 3 as the mean of step 3 alone: steps 1-2 were gone from the log."""
    extra = ("run.val_every=0", "run.log_every=3", "run.checkpoint_every=100", "optim.iterations=5")
    full = T.train(_config(tmp_path / "a", *extra), vgg=TinyFeatures(), keep_history=True, progress=False)
    cfg = _config(tmp_path / "b", *extra)
    T.train(cfg, vgg=TinyFeatures(), progress=False, stop_after=2)  # a stop, as Ctrl-C makes one
    T.train(cfg, vgg=TinyFeatures(), resume=True, progress=False)
    records = [json.loads(line) for line in (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3, 5]  # steps 1-2 at the stop, 3 alone, then 4-5
    holes = [h["hole"] for h in full.history]
    for record, steps in zip(records, ([0, 1], [2], [3, 4]), strict=True):
        assert record["hole"] == pytest.approx(sum(holes[i] for i in steps) / len(steps), rel=1e-6)


def test_kill_and_resume_continues_exactly(tmp_path):
    """Uninterrupted 4 steps == 3 steps, 'killed' (step 3 never checkpointed), resumed from step 2 to 4."""
    full = T.train(_config(tmp_path / "a", "run.val_every=0"), vgg=TinyFeatures(), keep_history=True, progress=False)
    cfg_b = _config(tmp_path / "b", "run.val_every=0")
    killed = T.train(cfg_b, vgg=TinyFeatures(), keep_history=True, progress=False, stop_after=3,
                     checkpoint_at_stop=False)
    assert killed.step == 3 and [s for s, _ in TC.list_checkpoints(tmp_path / "b" / "run")] == [2]
    with pytest.raises(FileExistsError, match="--resume"):
        T.train(cfg_b, vgg=TinyFeatures(), progress=False)
    resumed = T.train(cfg_b, vgg=TinyFeatures(), resume=True, keep_history=True, progress=False)
    assert resumed.step == 4
    assert resumed.history == full.history[2:4]  # same batches, same losses, bit for bit
    # the log of the resumed run drops what the killed one wrote after its checkpoint (step 3 once)
    logs = []
    for run in ("a", "b"):
        records = [json.loads(line) for line in (tmp_path / run / "run" / "log.jsonl").read_text().splitlines()]
        logs.append([{k: v for k, v in r.items() if not k.startswith("speed/")} for r in records])
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    assert logs[0] == logs[1]
    a = torch.load(tmp_path / "a" / "run" / "checkpoints" / "step_0000004.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "run" / "checkpoints" / "step_0000004.pt", weights_only=True)
    for net in ("generator", "discriminator"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)


def test_keep_last_and_atomic_save(tmp_path, monkeypatch):
    config = _config(tmp_path, "run.checkpoint_every=1", "run.keep_last=2", "run.val_every=0", "optim.iterations=3")
    T.train(config, vgg=TinyFeatures(), progress=False)
    run = tmp_path / "run"
    assert [s for s, _ in TC.list_checkpoints(run)] == [2, 3]
    good = run / "checkpoints" / "step_0000003.pt"
    before = good.read_bytes()

    def dying_save(obj, f):
        with open(f, "wb") as handle:  # the temporary file beside the checkpoint
            handle.write(b"partial")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        TC.atomic_torch_save({"x": 1}, good)
    assert good.read_bytes() == before  # the last good checkpoint is untouched
    assert sorted(p.name for p in good.parent.iterdir()) == ["step_0000002.pt", "step_0000003.pt"]


def test_an_unreadable_checkpoint_says_how_to_resume_from_the_one_before(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "step_0000002.pt").write_bytes(b"PK older")
    (folder / "step_0000004.pt").write_bytes(b"PK\x03\x04 cut short")  # e.g. a copy that stopped half-way
    with pytest.raises(ValueError, match=r"move it aside \(mv .*step_0000004.pt .*step_0000004.pt.unreadable\) "
                                         r"and run again: --resume then takes step_0000002.pt"):
        TC.load_training_checkpoint(folder / "step_0000004.pt")
    (folder / "step_0000004.pt").rename(folder / "step_0000004.pt.unreadable")
    assert [p.name for _, p in TC.list_checkpoints(tmp_path / "run")] == ["step_0000002.pt"]  # what it says holds
    with pytest.raises(ValueError) as only:  # the oldest has no one before it: no such advice
        TC.load_training_checkpoint(folder / "step_0000002.pt")
    assert "move it aside" not in str(only.value)


def test_init_from_small_fine_tunes_the_bundled_model_and_its_discriminator(tmp_path):
    from ctsdg.checkpoint import (
        BUNDLED_PATH,
        discriminator_path_for,
        load_discriminator_state,
        load_generator,
    )

    nets, opt = _nets(width=32)  # the bundled model's width
    config = _config(tmp_path, "model.base_width=32")
    TC.load_init_weights("small", config, nets.generator, nets.discriminator, opt)  # was: "small does not exist"
    bundled = load_generator(BUNDLED_PATH).generator.state_dict()
    assert all(torch.equal(v, bundled[k]) for k, v in nets.generator.state_dict().items())
    d_state, _ = load_discriminator_state(discriminator_path_for(BUNDLED_PATH))
    assert all(torch.equal(v, d_state[k]) for k, v in nets.discriminator.state_dict().items())
    for where, says in ((tmp_path / "missing.pt", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(FileNotFoundError, match=f"--init-from: checkpoint .* {says}"):
            TC.load_init_weights(str(where), config, nets.generator, nets.discriminator, opt)
    narrow, opt4 = _nets(width=4)  # another width: the differing key is named, with the --set that fits
    with pytest.raises(ValueError, match=r"another architecture \(model.base_width: checkpoint 32 vs config 4\); "
                                         r".* --set model.base_width=32"):
        TC.load_init_weights("small", _config(tmp_path / "w4"), narrow.generator, narrow.discriminator, opt4)


def test_resume_with_another_architecture_is_a_clear_error(tmp_path):
    config = _config(tmp_path, "optim.iterations=1", "run.val_every=0")
    T.train(config, vgg=TinyFeatures(), progress=False)
    other = _config(tmp_path, "optim.iterations=2", "run.val_every=0", "model.base_width=8")
    with pytest.raises(ValueError, match=r"another architecture.*model.base_width: checkpoint 4 vs config 8"):
        T.train(other, vgg=TinyFeatures(), resume=True, progress=False)
    with pytest.raises(ValueError, match="not a ctsdg training checkpoint"):
        bad = tmp_path / "other.pt"
        torch.save({"n_iter": 1}, bad)
        TC.load_training_checkpoint(bad)


def test_init_from_the_authors_checkpoint_format(tmp_path):
    """An official {'n_iter', 'generator', 'discriminator'} dict with DDP 'module.' prefixes initialises G and D."""
    torch.manual_seed(42)
    g_src, d_src = Generator(ModelConfig(base_width=4)), Discriminator(ModelConfig(base_width=4))
    official = {"n_iter": 350000,
                "generator": {f"module.{k}": v for k, v in g_src.state_dict().items()},
                "discriminator": {f"module.{k}": v for k, v in d_src.state_dict().items()}}
    path = tmp_path / "official.pt"
    torch.save(official, path)
    config = _config(tmp_path)
    nets, opt = _nets(seed=0)
    TC.load_init_weights(str(path), config, nets.generator, nets.discriminator, opt)
    for mine, src in ((nets.generator, g_src), (nets.discriminator, d_src)):
        a, b = mine.state_dict(), src.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    wrong = _config(tmp_path, "model.base_width=8")
    with pytest.raises(ValueError, match="base_width"):
        TC.load_init_weights(str(path), wrong, nets.generator, nets.discriminator, opt)

    # the same weights after `ctsdg convert` (safetensors generator + .discriminator.safetensors beside it)
    from ctsdg.checkpoint import convert_checkpoint

    converted = tmp_path / "converted.safetensors"
    written = convert_checkpoint(path, converted)
    assert len(written) == 2
    nets, opt = _nets(seed=1)
    TC.load_init_weights(str(converted), config, nets.generator, nets.discriminator, opt)
    for mine, src in ((nets.generator, g_src), (nets.discriminator, d_src)):
        a, b = mine.state_dict(), src.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_validate_scores_a_perfect_generator_at_the_psnr_cap(tmp_path):
    class Perfect(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.target = None

        def forward(self, input_image, input_edge, known_mask, with_projections=None):
            return GeneratorOutput(self.target + 0 * self.w, None, None)

    samples = [{k: v[i] for k, v in _batch(2).items()} for i in range(2)]
    val = T.ValidationSet(samples, ["40-60%", "0-20%"])
    model = Perfect()
    model.target = torch.stack([s["image"] for s in samples])
    metrics = T.validate(model, val, batch_size=2)
    assert metrics["val/psnr"] == pytest.approx(100.0)
    assert metrics["val/ssim"] == pytest.approx(1.0)
    assert set(metrics) == {"val/psnr", "val/ssim", "val/psnr/0-20%", "val/ssim/0-20%", "val/psnr/40-60%",
                            "val/ssim/40-60%"}


def test_batch_of_one_at_128_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="batch_size >= 2"):
        T.train(_config(tmp_path, "optim.batch_size=1"), vgg=TinyFeatures(), progress=False)


def test_a_run_folder_that_is_a_file_is_refused_by_its_key(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError, match=r"run.out_dir \(--out-dir\) .*taken is a file"):  # was: [Errno 20]
        T.train(_config(tmp_path, f"run.out_dir={tmp_path / 'taken'}"), vgg=TinyFeatures(), progress=False)


def test_missing_training_folder_says_which_key_to_set(tmp_path):
    config = _config(tmp_path, f"dataset.train_root={tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="dataset.train_root"):
        T.train(config, vgg=TinyFeatures(), progress=False)


def test_training_refuses_to_run_without_real_vgg_weights(tmp_path):
    config = _config(tmp_path, f"loss.vgg_weights={tmp_path / 'missing.pth'}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.train(config, progress=False)


def test_bf16_autocast_step_keeps_fp32_weights_and_finite_losses():
    nets, opt = _nets()
    losses = T.train_step(_batch(), nets, opt, T.StepOptions(amp_dtype=torch.bfloat16))
    assert all(math.isfinite(v) for v in losses.values())
    assert all(p.dtype == torch.float32 for p in nets.generator.parameters())


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 5e-5\n  finetune_lr: 1E-6\n")
    config = load_train_config(path, ["loss.style=2.5e2"])
    assert (config.optim.lr, config.optim.finetune_lr, config.loss.style) == (5e-5, 1e-6, 250.0)


def test_cli_train_refuses_max_steps_below_one(tmp_path, capsys):
    from ctsdg.cli import main

    for steps in ("0", "-1"):  # it trained no step and said "stopped at step 0"
        assert main(["train", "--config", "configs/small_cpu.yaml", "--max-steps", steps,
                     "--out-dir", str(tmp_path / "run")]) == 1
        assert f"--max-steps must be >= 1 (steps of this call), got {steps}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_train_then_resume_with_real_vgg_and_tensorboard(tmp_path, capsys):
    """`ctsdg train` end to end (real offline VGG16, TensorBoard events), then `--resume` one more step."""
    pytest.importorskip("tensorboard")
    from ctsdg.cli import main
    from ctsdg.train_config import dump_yaml

    config = _config(tmp_path, "optim.iterations=2", "run.val_every=1", "run.image_every=1", "run.tensorboard=true")
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config))
    assert main(["train", "--config", str(path), "--max-steps", "1", "--no-progress"]) == 0
    assert "stopped at step 1" in capsys.readouterr().out
    assert main(["train", "--config", str(path), "--resume", "--no-progress"]) == 0
    assert "stopped at step 2" in capsys.readouterr().out
    run = tmp_path / "run"
    assert [s for s, _ in TC.list_checkpoints(run)] == [1, 2]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"loss/{n}" for n in (*T.LOSS_NAMES, "generator", "discriminator")} <= tags
    assert {"val/psnr", "val/ssim", "speed/it_per_s", "lr/generator"} <= tags
    assert events.Tags()["images"]  # the validation grid
    # a run folder alone is enough to continue (its stored config is used; --set still applies)
    assert main(["train", "--resume", str(run), "--set", "optim.iterations=3", "--no-progress"]) == 0
    assert "stopped at step 3" in capsys.readouterr().out
    assert main(["train", "--config", str(path), "--set", "optim.lrr=1", "--print-config"]) == 1
    assert "optim.lrr" in capsys.readouterr().err


def test_loop_switches_to_the_finetune_phase(tmp_path):
    """Step 1 at lr 2e-4, step 2 in the fine-tune phase at 5e-5 with encoder BNs frozen (encoder mode)."""
    config = _config(tmp_path, "optim.iterations=1", "optim.finetune_iterations=1", "optim.finetune_bn_freeze=encoder",
                     "run.checkpoint_every=1", "run.val_every=0")
    T.train(config, vgg=TinyFeatures(), progress=False)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr/generator"], r["lr/discriminator"]) for r in records] == [
        (1, 2e-4, pytest.approx(2e-5)), (2, 5e-5, pytest.approx(5e-6))]
    one, two = (torch.load(run / "checkpoints" / f"step_000000{s}.pt", weights_only=True)["generator"] for s in (1, 2))
    for key in one:
        if ".bn." in key and not key.endswith("num_batches_tracked"):
            frozen = key.startswith("ec_")
            assert torch.equal(one[key], two[key]) == frozen, key


@pytest.fixture
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler for the test. A background job of a non-interactive shell
    (``pytest &`` in a script) starts with SIGINT ignored, and train() rightly leaves it so."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _signal_during_step(monkeypatch, at_step, signals):
    """Make train_step send ``signals`` to this process while it runs step ``at_step`` (1-based)."""
    real = T.train_step
    calls = []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        if len(calls) == at_step:
            for sig in signals:
                os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(T, "train_step", step_then_signal)


def test_sigterm_finishes_the_step_saves_a_checkpoint_and_returns(tmp_path, monkeypatch):
    """A signal must not lose the steps since the last checkpoint (5 minutes by default)."""
    before = signal.getsignal(signal.SIGTERM)
    _signal_during_step(monkeypatch, 3, [signal.SIGTERM])
    config = _config(tmp_path, "run.val_every=0", "run.checkpoint_every=100", "run.checkpoint_minutes=0",
                     "optim.iterations=6")
    result = T.train(config, vgg=TinyFeatures(), progress=False)
    assert result.step == 3 and result.interrupted == "SIGTERM"
    assert [s for s, _ in TC.list_checkpoints(tmp_path / "run")] == [3]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    resumed = T.train(config, vgg=TinyFeatures(), resume=True, progress=False)
    assert resumed.step == 6 and resumed.interrupted is None


def test_an_ignored_sigint_stays_ignored(tmp_path, monkeypatch):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _signal_during_step(monkeypatch, 1, [signal.SIGINT])
        config = _config(tmp_path, "run.val_every=0", "run.checkpoint_every=100", "run.checkpoint_minutes=0",
                         "optim.iterations=2")
        result = T.train(config, vgg=TinyFeatures(), progress=False)
        assert result.step == 2 and result.interrupted is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_second_signal_stops_at_once(tmp_path, monkeypatch, sigint_as_in_a_terminal):
    _signal_during_step(monkeypatch, 1, [signal.SIGINT, signal.SIGINT])
    config = _config(tmp_path, "run.val_every=0", "run.checkpoint_every=100", "run.checkpoint_minutes=0")
    with pytest.raises(KeyboardInterrupt):
        T.train(config, vgg=TinyFeatures(), progress=False)
    assert TC.list_checkpoints(tmp_path / "run") == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_cli_train_interrupted_exits_128_plus_the_signal_and_says_how_to_continue(tmp_path, monkeypatch, capsys,
                                                                                   sigint_as_in_a_terminal):
    from ctsdg.cli import main
    from ctsdg.train_config import dump_yaml

    _signal_during_step(monkeypatch, 1, [signal.SIGINT])
    monkeypatch.setattr(T, "load_vgg16_pools", lambda *a, **k: TinyFeatures())
    config = _config(tmp_path, "run.val_every=0", "run.checkpoint_every=100", "run.checkpoint_minutes=0")
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config))
    assert main(["train", "--config", str(path), "--no-progress"]) == 128 + signal.SIGINT
    assert "stopped at step 1" in capsys.readouterr().out
    assert [s for s, _ in TC.list_checkpoints(tmp_path / "run")] == [1]


def test_validation_pairs_are_the_same_with_training_augmentation_on(tmp_path):
    plain = T.build_validation_set(_config(tmp_path))
    augmented = T.build_validation_set(_config(tmp_path, "data.hflip=true", "data.color_jitter=0.5"))
    assert len(plain.samples) == len(augmented.samples) == 2
    for a, b in zip(plain.samples, augmented.samples, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["known_mask"], b["known_mask"])


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path, caplog):
    """Was: the newer checkpoints stayed, and the next --resume jumped back onto the abandoned line (and its log
    lacked the step whose records the first resume had dropped)."""
    config = _config(tmp_path, "optim.iterations=8", "run.checkpoint_every=1", "run.keep_last=3", "run.val_every=6")
    T.train(config, vgg=TinyFeatures(), progress=False, stop_after=6)
    run = tmp_path / "run"
    assert [s for s, _ in TC.list_checkpoints(run)] == [4, 5, 6]
    old = {name: (run / name).read_bytes() for name in ("checkpoints/step_0000005.pt", "checkpoints/step_0000006.pt",
                                                         "best.safetensors", "log.jsonl")}
    with caplog.at_level("WARNING", logger="ctsdg.train"):
        first = T.train(config, vgg=TinyFeatures(), progress=False, stop_after=1,
                        resume=str(run / "checkpoints" / "step_0000004.pt"))
    assert first.step == 5
    aside = run / "checkpoints" / "abandoned_after_step_4"
    assert [s for s, _ in TC.list_checkpoints(run)] == [4, 5]
    assert sorted(p.name for p in aside.iterdir()) == ["best.safetensors", "log.jsonl", "step_0000005.pt",
                                                        "step_0000006.pt"]
    for name, data in old.items():  # nothing of the other line is lost
        assert (aside / name.split("/")[-1]).read_bytes() == data, name
    assert not (run / "best.safetensors").exists()  # it came from step 6 of the other line
    said = [r.getMessage() for r in caplog.records if "abandoned_after_step_4" in r.getMessage()]
    assert len(said) == 1 and "moved the checkpoints of steps 5, 6, best.safetensors (step 6)" in said[0], said
    second = T.train(config, vgg=TinyFeatures(), progress=False, stop_after=1, resume=True)
    assert second.step == 6  # from this line's step 5, not the other line's step 6
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "generator" in r] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in TC.list_checkpoints(run)] == [4, 5, 6] and (run / "best.safetensors").is_file()
    # a checkpoint of the line set aside: refused with the moves that bring that line back (was: `ctsdg train
    # --resume` took checkpoints/ for the run folder and began a run inside it)
    for given in (aside / "step_0000006.pt", aside):
        with pytest.raises(ValueError, match=r"set the other line of training aside; to go back to it, move the "
                                             r"checkpoints of .*run/checkpoints newer than 4 aside, move the files of "
                                             r".*abandoned_after_step_4 back into .*run/checkpoints"):
            TC.resolve_resume(str(given), None)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    from ctsdg.cli import main

    assert main(["train", "--resume", str(aside / "step_0000006.pt")]) == 1
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_a_fresh_start_refuses_a_folder_with_an_earlier_runs_records(tmp_path):
    """Was: log.jsonl got the new steps 1-2 after the killed run's, and its best.safetensors was kept."""
    config = _config(tmp_path, "run.val_every=1", "run.checkpoint_every=100", "run.checkpoint_minutes=0")
    killed = T.train(config, vgg=TinyFeatures(), progress=False, stop_after=2, checkpoint_at_stop=False)
    run = tmp_path / "run"
    assert killed.step == 2 and TC.list_checkpoints(run) == []
    before = {name: (run / name).read_bytes() for name in ("log.jsonl", "best.safetensors")}
    with pytest.raises(FileExistsError, match=r"run folder .*run holds log.jsonl, best.safetensors of an earlier run "
                                              r"but no checkpoint to resume from.* set run.out_dir \(--out-dir\) to a "
                                              r"new folder, or move the old one away first \(mv .*run .*run.old\)$"):
        T.train(config, vgg=TinyFeatures(), progress=False)
    assert {name: (run / name).read_bytes() for name in before} == before
    # config.yaml and an empty checkpoints/ (a start that failed before its first step) are no records
    fresh = _config(tmp_path / "b", f"dataset.train_root={tmp_path / 'b' / 'nope'}")
    with pytest.raises(FileNotFoundError, match="dataset.train_root"):
        T.train(fresh, vgg=TinyFeatures(), progress=False)
    assert (tmp_path / "b" / "run" / "config.yaml").is_file()
    assert T.train(_config(tmp_path / "b", "run.val_every=0"), vgg=TinyFeatures(), progress=False,
                   stop_after=1).step == 1


def test_the_progress_bar_counts_the_steps_of_this_call(tmp_path, capsys):
    """Was: 0/20000 with --max-steps 3 (the config's total, and an ETA of hours)."""
    config = _config(tmp_path, "run.val_every=0", "optim.iterations=8")
    T.train(config, vgg=TinyFeatures(), stop_after=1, progress=True)
    err = capsys.readouterr().err
    assert "| 1/1 [" in err and "/8" not in err, err
    T.train(config, vgg=TinyFeatures(), resume=True, stop_after=2, progress=True)  # from step 1 to step 3
    err = capsys.readouterr().err
    assert "| 3/3 [" in err and "/8" not in err, err


def test_an_unwritable_run_folder_fails_before_the_first_step(tmp_path, monkeypatch, capsys, refuse_writes_in):
    """Was: a read-only checkpoints/ failed at the first checkpoint (up to 5 minutes of steps lost), and a
    read-only run folder said '[Errno 13] Permission denied: .../.x.tmp', naming a hidden temp file."""
    config = _config(tmp_path, "run.val_every=0")
    T.train(config, vgg=TinyFeatures(), progress=False, stop_after=1)
    steps = []
    real_step = T.train_step
    monkeypatch.setattr(T, "train_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    refuse_writes_in(tmp_path / "run" / "checkpoints")
    with pytest.raises(PermissionError, match=r"^cannot write to .*run/checkpoints: permission denied; choose another "
                                              r"--out-dir$"):
        T.train(config, vgg=TinyFeatures(), progress=False, resume=True)
    assert steps == []

    from ctsdg.cli import main
    from ctsdg.train_config import dump_yaml

    monkeypatch.setattr(T, "load_vgg16_pools", lambda *a, **k: TinyFeatures())
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config))
    ro_run = tmp_path / "ro" / "run"
    refuse_writes_in(ro_run)
    assert main(["train", "--config", str(path), "--out-dir", str(ro_run), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == f"ctsdg train: error: cannot write to {ro_run}: permission denied; choose another --out-dir\n"
    assert steps == []


@pytest.mark.parametrize("size", [64, 192])
def test_a_training_size_the_generator_cannot_take_is_refused_before_the_run_folder(tmp_path, size):
    config = _config(tmp_path, f"data.size={size}")
    with pytest.raises(ValueError, match=rf"data.size={size}: the generator needs sides that are multiples of 128"):
        T.train(config, vgg=TinyFeatures(), progress=False)
    assert not (tmp_path / "run").exists()
