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


def test_broken_yaml_is_one_line_naming_the_file_line_and_column(tmp_path, capsys):
    """Was: a traceback ending in yaml.parser.ParserError, for the file and for a --set value alike."""
    from ctsdg.cli import main

    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  base_width: [4\n")
    with pytest.raises(ValueError, match=r"broken.yaml line 3, column 1: expected ',' or '\]', but got '<stream end>' "
                                         r"\(while parsing a flow sequence from line 2, column 15\); fix the YAML$"):
        load_train_config(broken)
    with pytest.raises(ValueError, match=r"^--set optim.betas=\[0.9: not valid YAML at line 1, column 5: .*fix the value"):
        load_train_config(None, ["optim.betas=[0.9"])
    listed = tmp_path / "list.yaml"
    listed.write_text("- model\n- optim\n")
    binary = tmp_path / "photo.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    control = tmp_path / "nul.yaml"
    control.write_bytes(b"optim:\n  lr: \x00\n")
    cases = [
        (["--config", str(broken)], "broken.yaml line 3, column 1: "),
        (["--config", "configs/small_cpu.yaml", "--set", "optim.betas=[0.9", "--print-config"],
         "--set optim.betas=[0.9: not valid YAML at line 1, column 5"),
        (["--config", str(listed)], "list.yaml must hold a mapping of sections (model, data, optim, ...), not a list"),
        (["--config", str(binary)], "photo.yaml is not a UTF-8 text file (byte 0: invalid start byte)"),
        (["--config", str(control)], "nul.yaml: unacceptable character #x0000: special characters are not allowed at "
                                     "position 13; fix the YAML"),
        (["--config", str(tmp_path)], "is a folder; give a YAML file"),
    ]
    for argv, says in cases:
        assert main(["train", *argv]) == 1
        captured = capsys.readouterr()
        assert captured.err.startswith("ctsdg train: error: ") and says in captured.err, captured.err
        assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err, captured.err
