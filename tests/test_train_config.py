"""Training config: every preset loads, typos are rejected by name, overrides and round trips work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctsdg.config import ModelConfig
from ctsdg.train_config import (
    TrainConfig,
    dump_yaml,
    load_train_config,
    train_config_from_dict,
    train_config_to_dict,
)

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_there_are_presets():
    names = {p.stem for p in CONFIGS}
    assert {"celeba", "paris", "places2", "small_cpu"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_preset_loads_and_is_complete(path):
    config = load_train_config(path)
    raw = yaml.safe_load(path.read_text())
    # complete files, no inheritance: every section and every key is written out
    assert raw == train_config_to_dict(config)


@pytest.mark.parametrize("name", ["celeba", "paris", "places2"])
def test_paper_presets_use_the_official_recipe(name):
    c = load_train_config(CONFIGS[[p.stem for p in CONFIGS].index(name)])
    assert c.model == ModelConfig()
    assert (c.optim.batch_size, c.optim.lr, c.optim.discriminator_lr_ratio) == (6, 2e-4, 0.1)
    assert (c.optim.iterations, c.optim.finetune_iterations, c.optim.finetune_lr) == (350_000, 150_000, 5e-5)
    assert c.data.size == 256
    assert c.loss.weights == TrainConfig().loss.weights


def test_typo_is_rejected_with_the_key_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 0.001\n")
    with pytest.raises(KeyError, match=r"optim\.lrr.*did you mean optim\.lr"):
        load_train_config(path)
    path.write_text("optimiser:\n  lr: 0.001\n")
    with pytest.raises(KeyError, match="optimiser"):
        load_train_config(path)


def test_overrides_and_round_trip():
    config = load_train_config(None, ["optim.lr=5e-5", "model.base_width=8", "dataset.mask_ratio=[0.2, 0.4]"])
    assert config.optim.lr == 5e-5 and config.model.base_width == 8
    assert config.dataset.mask_ratio == (0.2, 0.4)
    assert train_config_from_dict(yaml.safe_load(dump_yaml(config))) == config


def test_bad_values_are_explained():
    with pytest.raises(ValueError, match="finetune_bn_freeze"):
        load_train_config(None, ["optim.finetune_bn_freeze=all"])
    with pytest.raises(ValueError, match="scale.amp"):
        load_train_config(None, ["scale.amp=fp8"])
    with pytest.raises(TypeError, match="optim.batch_size"):
        load_train_config(None, ["optim.batch_size=six"])
    for override, message in (("optim.lr=-1", "optim.lr must be > 0"), ("optim.finetune_lr=0", "optim.finetune_lr must"),
                              ("loss.hole=-5", r"loss.hole must be >= 0 \(0 = off\)"), ("loss.ssim=-1", "loss.ssim"),
                              ("run.val_every=-1", "run.val_every must be >= 0"), ("data.sigma=0", "data.sigma")):
        with pytest.raises(ValueError, match=message):  # each would otherwise train on, or fail far from its key
            load_train_config(None, [override])
    assert load_train_config(None, ["loss.style=0", "run.image_every=0"]).loss.style == 0  # 0 = off is fine
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_train_config("no/such/file.yaml")


def test_the_command_prints_a_key_error_without_quotes(tmp_path, capsys):
    from ctsdg.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 0.001\n")
    assert main(["train", "--config", str(path)]) == 1
    assert "error: unknown config key optim.lrr; did you mean optim.lr?\n" in capsys.readouterr().err
