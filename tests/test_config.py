import pytest

from ctsdg.config import ModelConfig, apply_overrides, from_dict, to_dict


def test_default_is_the_official_architecture():
    assert ModelConfig().is_official
    assert ModelConfig().widths == (64, 128, 256, 512, 512, 512, 512)
    assert not ModelConfig(base_width=16).is_official


def test_round_trip_and_typo_rejected_with_suggestion():
    cfg = ModelConfig(base_width=16, dilations=(1, 2))
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(KeyError, match="did you mean base_width"):
        from_dict(ModelConfig, {"base_widht": 16})


def test_bad_values_rejected():
    with pytest.raises(ValueError, match="attention"):
        ModelConfig(attention="ca")
    with pytest.raises(TypeError, match="true or false"):
        from_dict(ModelConfig, {"bigff": "no"})
    with pytest.raises(TypeError, match="integer"):
        from_dict(ModelConfig, {"base_width": 16.5})


def test_overrides():
    data = apply_overrides({"model": {"base_width": 64}}, ["model.base_width=16", "model.dilations=[1,3]"])
    assert from_dict(ModelConfig, data["model"]) == ModelConfig(base_width=16, dilations=(1, 3))
