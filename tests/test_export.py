"""ONNX export (via ``ctsdg export``) matches PyTorch within 1e-4 at several sizes; the onnxruntime backend
in the API and the CLI; TorchScript. One export per session (it takes a while on a small CPU)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctsdg import Generator, ModelConfig
from ctsdg.checkpoint import save_generator
from ctsdg.cli import main
from ctsdg.export import OnnxGenerator, example_inputs, export_torchscript
from ctsdg.inference import Inpainter

pytest.importorskip("onnxruntime", reason="pip install 'ctsdg[export]'")


def lively_generator() -> Generator:
    """Width 4, with weights large enough that outputs span [-1, 1] (at init they are ~0.02),
    so a 1e-4 tolerance means something."""
    torch.manual_seed(0)
    g = Generator(ModelConfig(base_width=4))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="leaky_relu", a=0.2)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1)
        g.bigff.texture_gamma.fill_(0.5)  # exercise Bi-GFF's gates too (they start at 0)
        g.bigff.structure_gamma.fill_(-0.3)
    return g.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    g = lively_generator()
    ckpt = save_generator(folder / "model.safetensors", g, "official")
    assert main(["export", str(ckpt), "--format", "onnx"]) == 0  # writes model.onnx and checks parity
    return g, ckpt, folder / "model.onnx"


def reference(g, inputs):
    with torch.inference_mode():
        return g(*inputs[:3], with_projections=False, structure_known_mask=inputs[3]).output


@pytest.mark.parametrize("size", [(256, 256), (128, 384), (384, 256)])
def test_onnx_matches_pytorch_within_1e4(exported, size):
    g, _, onnx_path = exported
    inputs = example_inputs(*size, seed=5)
    ref = reference(g, inputs)
    assert ref.std() > 0.1  # a real signal, not a near-constant
    got = OnnxGenerator(onnx_path)(*inputs)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4


def test_onnx_batch_and_strokes(exported):
    g, _, onnx_path = exported
    image, edge, known, _ = example_inputs(128, 128, batch=2, seed=2)
    strokes = torch.zeros_like(known)
    strokes[:, :, 40, 40:90] = 1  # inside the hole
    skm = torch.cat((torch.maximum(known, strokes), known), 1)
    edge = edge.clone()
    edge[:, :1] = torch.maximum(edge[:, :1], strokes)
    inputs = (image, edge, known, skm)
    ref = reference(g, inputs)
    assert (OnnxGenerator(onnx_path)(*inputs) - ref).abs().max().item() < 1e-4
    plain = reference(g, (image, edge, known, torch.cat((known, known), 1)))
    assert (ref - plain).abs().max() > 1e-3  # the strokes matter, in both runtimes


def test_onnx_metadata_and_onnxruntime_inpainter(exported):
    g, ckpt, onnx_path = exported
    by_file = Inpainter.from_pretrained(onnx_path)
    by_flag = Inpainter.from_pretrained(ckpt, backend="onnxruntime")
    torch_inp = Inpainter.from_pretrained(ckpt)
    for inp in (by_file, by_flag):
        d = inp.describe()
        assert d["backend"] == "onnxruntime" and d["structure_mode"] == "official"
        assert d["model_config"] == torch_inp.describe()["model_config"]
        assert d["parameters"] == sum(p.numel() for p in g.parameters())
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 517, 3), dtype=np.uint8)
    mask = np.zeros((300, 517), np.uint8)
    mask[120:180, 200:300] = 255
    a = by_file(image, mask, strategy="resize")
    b = torch_inp(image, mask, strategy="resize")
    assert np.array_equal(a[mask == 0], image[mask == 0])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # rounding of a 1e-4 difference at most


def test_cli_onnxruntime_backend(exported, tmp_path):
    _, ckpt, _ = exported
    image = np.random.default_rng(1).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    mask = np.zeros((150, 200), np.uint8)
    mask[50:90, 60:120] = 255
    Image.fromarray(image).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert main(["inpaint", "--image", str(tmp_path / "i.png"), "--mask", str(tmp_path / "m.png"),
                 "--output", str(tmp_path / "o.png"), "--checkpoint", str(ckpt), "--backend", "onnxruntime",
                 "--device", "cpu"]) == 0
    out = np.array(Image.open(tmp_path / "o.png"))
    assert np.array_equal(out[mask == 0], image[mask == 0])


def test_export_refuses_to_overwrite(exported, capsys):
    _, ckpt, _ = exported
    assert main(["export", str(ckpt), "--format", "onnx"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_export_refuses_a_folder_or_a_non_onnx_name_before_exporting(tmp_path, capsys):
    ckpt = save_generator(tmp_path / "model.safetensors", Generator(ModelConfig(base_width=4)))
    for output, expected, fmt in ((tmp_path, "is a folder", "onnx"), (tmp_path / "model.bin", "should end in .onnx", "onnx"),
                                  (tmp_path / "model.onnx", "ends in .onnx, which ctsdg would take", "torchscript")):
        assert main(["export", str(ckpt), "--format", fmt, "--output", str(output), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# torch 2.13 deprecates torch.jit; docs/inference.md says so and recommends ONNX
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_matches_pytorch_at_another_size(tmp_path):
    g = lively_generator()
    path = export_torchscript(g, tmp_path / "g.torchscript.pt", example_size=(256, 256))
    assert all(p.requires_grad for p in g.parameters())  # the caller's generator is left as it was
    loaded = torch.jit.load(str(path))
    inputs = example_inputs(128, 384, seed=3)
    with torch.no_grad():
        got = loaded(*inputs)
    assert (got - reference(g, inputs)).abs().max().item() < 1e-4
    assert torch.equal(loaded(*inputs), got)  # and called as is, autograd on, as `ctsdg export --check` does


def test_onnxruntime_refuses_original_beyond_its_attention_limit(exported):
    _, _, onnx_path = exported
    inp = Inpainter.from_pretrained(onnx_path)
    image = np.zeros((700, 700, 3), np.uint8)
    mask = np.zeros((700, 700), np.uint8)
    mask[300:320, 300:320] = 255
    with pytest.raises(ValueError, match="ONNX graph holds the whole attention matrix"):
        inp(image, mask, strategy="original")
    inp.auto_original_pixels = 1024 * 1024  # as on a GPU: auto still keeps to the ONNX limit
    assert inp.choose_strategy(mask[:600, :600] > 0) != "original"  # 640x640 padded > 512x768
    assert inp.choose_strategy(mask[:500, :500] > 0) == "original"  # 512x512 padded


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_exporting_the_bundled_model_writes_into_the_current_folder_not_the_package(tmp_path, monkeypatch):
    import ctsdg

    package = Path(ctsdg.__file__).resolve().parent
    before = sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    monkeypatch.chdir(tmp_path)
    assert main(["export", "small", "--format", "torchscript", "--no-check"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["ctsdg-small.torchscript.pt"]
    assert sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts) == before
