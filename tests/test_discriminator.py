"""Discriminator: official keys (with the duplicate ``features`` alias), counts, loading, forward semantics."""

import torch
from test_generator import official_keys, official_state_dict

from ctsdg import Discriminator, ModelConfig


def test_keys_shapes_and_parameter_count_match_the_official_discriminator():
    with torch.device("meta"):
        d = Discriminator()
    assert {k: tuple(v.shape) for k, v in d.state_dict().items()} == official_keys("d")
    assert sum(p.numel() for p in d.parameters()) == 5_531_729


def test_strict_load_of_official_names_with_and_without_the_alias_and_new_spectral_norm_names():
    sd = official_state_dict("d")
    sd["texture_branch.features.0.weight_orig"] = sd["texture_branch.conv1.0.weight_orig"]
    d = Discriminator()
    d.load_state_dict(sd)
    assert torch.equal(d.texture_branch.conv1[0].weight_orig, sd["texture_branch.conv1.0.weight_orig"])
    dropped = {k: v for k, v in sd.items() if ".features." not in k}
    Discriminator().load_state_dict(dropped)
    renamed = {}
    for k, v in sd.items():
        k = k.replace("weight_orig", "parametrizations.weight.original")
        k = k.replace("weight_u", "parametrizations.weight.0._u").replace("weight_v", "parametrizations.weight.0._v")
        renamed["module." + k] = v
    d2 = Discriminator()
    d2.load_state_dict(renamed)
    assert torch.equal(d2.structure_branch.conv3[0].weight_orig, sd["structure_branch.conv3.0.weight_orig"])


def test_forward_semantics():
    d = Discriminator(ModelConfig(base_width=8)).eval()
    image = torch.rand(2, 3, 128, 128) * 2 - 1
    gray, edge = torch.rand(2, 1, 128, 128), (torch.rand(2, 1, 128, 128) > 0.8).float()
    real = d(image, gray, edge, is_real=True)
    fake = d(image, gray, edge, is_real=False)
    assert real.prediction.shape == (2, 2, 14, 14)  # 256 input gives 30x30
    assert real.fake_edge.shape == (2, 1, 128, 128)
    assert torch.equal(real.prediction[:, :1], fake.prediction[:, :1])  # texture branch: same image
    assert not torch.equal(real.prediction[:, 1:], fake.prediction[:, 1:])  # structure: real vs detected edges
    expected = d.structure_branch(torch.cat((fake.fake_edge, gray), 1))
    torch.testing.assert_close(fake.prediction[:, 1:], expected)
    assert 0 <= real.prediction.min() and real.prediction.max() <= 1


def test_256_input_gives_30x30_patches():
    d = Discriminator(ModelConfig(base_width=4)).eval()
    out = d(torch.zeros(1, 3, 256, 256), torch.zeros(1, 1, 256, 256), torch.zeros(1, 1, 256, 256), True)
    assert out.prediction.shape == (1, 2, 30, 30)
