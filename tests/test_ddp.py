"""DDP on two CPU processes (gloo): one step with 2 processes × batch 2 equals 1 process × batch 4.

Batch norm makes this subtle: plain BN in each process normalises with the statistics of its own 2 images,
whereas the single process uses all 4. ``scale.sync_bn`` (ctsdg.distributed.GlobalBatchNorm2d, which works on
CPU unlike torch.nn.SyncBatchNorm) computes the statistics over the global batch, so the two set-ups are the
same computation; the test checks gradients and parameters after one full G + D step, and also checks that
without sync_bn the results *differ* (so the test can fail).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ctsdg import train as T
from ctsdg.config import ModelConfig
from ctsdg.discriminator import Discriminator
from ctsdg.distributed import DistInfo, GlobalBatchNorm2d, convert_batchnorm
from ctsdg.generator import Generator
from ctsdg.train_config import load_train_config

SIZE = 128
WIDTH = 4
BIASES_BEFORE_BN = ("edge_detector.projection.0.bias", "edge_detector.res_layer.0.bias",
                    "edge_detector.res_layer.3.bias")


def _batch(b=4):
    g = torch.Generator().manual_seed(5)
    image = torch.rand(b, 3, SIZE, SIZE, generator=g) * 2 - 1
    known = torch.ones(b, 1, SIZE, SIZE)
    for i in range(b):
        known[i, :, 10 * i:60 + 10 * i, 20:90] = 0.0
    edge = (torch.rand(b, 1, SIZE, SIZE, generator=g) > 0.8).float()
    gray = torch.rand(b, 1, SIZE, SIZE, generator=g)
    return {"image": image, "known_mask": known, "edge": edge, "gray": gray}


def _features():
    torch.manual_seed(123)
    convs = torch.nn.ModuleList([torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)])
    convs.requires_grad_(False)

    def vgg(x):
        feats = []
        for conv in convs:
            x = torch.nn.functional.max_pool2d(torch.relu(conv(x)), 2)
            feats.append(x)
        return feats

    return vgg


def _one_step(rank: int, world: int, sync_bn: bool) -> dict:
    """Build the nets exactly as ``train`` does and make one step on this rank's share of the batch."""
    torch.manual_seed(0)
    g, d = Generator(ModelConfig(base_width=WIDTH)), Discriminator(ModelConfig(base_width=WIDTH))
    if world > 1 and sync_bn:
        convert_batchnorm(g)
        convert_batchnorm(d)
    config = load_train_config(None, [f"model.base_width={WIDTH}"])
    nets = T._build_nets(g, d, _features(), config, DistInfo(rank, world, 0), torch.device("cpu"))
    # SGD keeps "same gradients" and "same parameters" the same statement. (Adam's first step is lr·sign(g)
    # per element, which turns float32 rounding noise in near-zero gradients into ±lr differences.)
    opt = T.Optimizers(torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.01))
    full = _batch(4)
    per = 4 // world
    batch = {k: v[rank * per:(rank + 1) * per] for k, v in full.items()}
    losses = T.train_step(batch, nets, opt)
    return {
        "losses": losses,
        "g": {k: v.clone() for k, v in g.state_dict().items()},
        "d": {k: v.clone() for k, v in d.state_dict().items()},
        "g_grad": {n: p.grad.clone() for n, p in g.named_parameters() if p.grad is not None},
        "d_grad": {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None},
    }


def _worker(rank: int, world: int, port: int, sync_bn: bool, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _one_step(rank, world, sync_bn)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two(tmp_path, sync_bn: bool) -> list[dict]:
    mp.spawn(_worker, args=(2, _free_port(), sync_bn, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    return _one_step(0, 1, sync_bn=True)


def test_two_processes_with_global_bn_equal_one_process(single, tmp_path):
    ranks = _run_two(tmp_path, sync_bn=True)
    for key in ("g", "d", "g_grad", "d_grad"):
        # both ranks hold identical models and gradients after the step
        assert _max_diff(ranks[0][key], ranks[1][key]) == 0.0, key
    assert set(ranks[0]["g_grad"]) == set(single["g_grad"])
    # Conv biases that feed a BN (D's edge detector) have a zero gradient mathematically (BN removes any
    # constant): in both set-ups it is rounding noise, so check that it is tiny rather than compare noise.
    d_scale = max(float(g.abs().max()) for g in single["d_grad"].values())
    for name in BIASES_BEFORE_BN:
        for grads in (single["d_grad"], ranks[0]["d_grad"]):
            assert float(grads[name].abs().max()) <= 1e-3 * d_scale, name
    # everything else equal up to float32 rounding, measured against each tensor's scale
    for key in ("g_grad", "d_grad", "g", "d"):  # gradients; parameters, BN statistics, spectral-norm vectors
        for name, ref in single[key].items():
            if key == "d_grad" and name in BIASES_BEFORE_BN:
                continue
            got, ref = ranks[0][key][name].double(), ref.double()
            assert float((got - ref).abs().max()) <= 1e-3 * float(ref.abs().max()) + 1e-7, (key, name)
    for name, value in single["losses"].items():
        assert ranks[0]["losses"][name] == pytest.approx(value, rel=1e-5), name


def test_without_global_bn_the_processes_train_a_different_model(single, tmp_path):
    """The reason for sync_bn: with per-process BN statistics the step is not the single-process step."""
    ranks = _run_two(tmp_path, sync_bn=False)
    diff = max(float((ranks[0]["g_grad"][n] - g).abs().max()) for n, g in single["g_grad"].items())
    assert diff > 1e-4


def test_global_bn_is_plain_bn_outside_a_process_group():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    bn.weight.data.uniform_(0.5, 1.5)
    mine = GlobalBatchNorm2d(3)
    mine.load_state_dict(bn.state_dict())
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(mine(x), bn(x))
    assert torch.equal(mine.running_var, bn.running_var)


def _signalled_train_worker(rank: int, world: int, port: int, folder: str) -> None:
    """Rank 1 gets SIGTERM during step 2 of a 6-step run; each rank writes the step it stopped at."""
    import signal

    import numpy as np
    from PIL import Image

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK="0")
    torch.set_num_threads(1)
    photos = os.path.join(folder, "photos")
    if rank == 0:
        os.makedirs(photos, exist_ok=True)
        for i in range(4):
            Image.fromarray(np.full((140, 140, 3), 40 * i, np.uint8)).save(os.path.join(photos, f"p{i}.png"))
    config = load_train_config(None, [
        f"model.base_width={WIDTH}", f"data.size={SIZE}", "data.preset=official", f"dataset.train_root={photos}",
        "optim.batch_size=2", "optim.iterations=6", "optim.finetune_iterations=0", "loss.perceptual=0",
        "loss.style=0", f"run.out_dir={os.path.join(folder, 'run')}", "run.checkpoint_every=100",
        "run.checkpoint_minutes=0", "run.val_every=0", "run.tensorboard=false", "scale.device=cpu"])
    real, calls = T.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        if rank == 1 and len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    T.train_step = step
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dist.barrier()  # rank 0 has written the photos
    try:
        result = T.train(config, progress=False)
        torch.save({"step": result.step, "interrupted": result.interrupted}, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """Ranks that stopped a step apart would hang in the next collective; they agree on the stop."""
    mp.spawn(_signalled_train_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["step"] for r in ranks] == [2, 2]
    assert ranks[1]["interrupted"] == "SIGTERM" and ranks[0]["interrupted"] == "signal on another rank"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_0000002.pt"]
