"""Generator: official compatibility (keys, shapes, counts, strict loading), maths invariants, ablations."""

from pathlib import Path

import pytest
import torch

from ctsdg import Generator, ModelConfig
from ctsdg.state_dict import StateDictMismatch

KEYS_FILE = Path(__file__).parent / "data" / "official_state_dict_keys.txt"
TINY = ModelConfig(base_width=4)
D_PREFIXES = ("texture_branch.", "structure_branch.", "edge_detector.")


def official_keys(part: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the authors' generator ("g") or discriminator ("d") state dict."""
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("#") or "\t" not in line:
            continue
        key, shape, _ = line.split("\t")
        if (part == "d") == key.startswith(D_PREFIXES):
            out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def official_state_dict(part: str) -> dict[str, torch.Tensor]:
    """A state dict with the authors' names and shapes and random values (as a checkpoint would hold)."""
    sd = {}
    for key, shape in official_keys(part).items():
        sd[key] = torch.randint(0, 5, shape) if key.endswith("num_batches_tracked") else torch.randn(shape)
    return sd


def meta_generator(config=None):
    with torch.device("meta"):
        return Generator(config)


def make_inputs(b=1, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    edge = (torch.rand(b, 1, size, size, generator=g) > 0.9).float()
    gray = torch.rand(b, 1, size, size, generator=g)
    known = torch.ones(b, 1, size, size)
    known[:, :, size // 4: size // 2, size // 3: 3 * size // 4] = 0
    return image * known, torch.cat((edge, gray), 1) * known, known


def test_keys_and_shapes_match_the_official_generator():
    ours = {k: tuple(v.shape) for k, v in meta_generator().state_dict().items()}
    assert ours == official_keys("g")
    assert len(ours) == 210


def test_parameter_count_matches_the_paper_model():
    assert sum(p.numel() for p in meta_generator().parameters()) == 52_147_789


def test_strict_load_of_an_official_state_dict_and_module_prefix():
    sd = official_state_dict("g")
    g = Generator()
    g.load_state_dict(sd, strict=True)
    assert torch.equal(g.ec_texture_1.conv.weight, sd["ec_texture_1.conv.weight"])
    assert torch.equal(g.cfa.msfa.weight_calc[2].bias, sd["cfa.msfa.weight_calc.2.bias"])
    g.load_state_dict({"module." + k: v for k, v in sd.items()})  # DDP-saved
    assert torch.equal(g.out_layer[0].weight, sd["out_layer.0.weight"])


def test_mismatched_state_dict_names_every_offending_key():
    g = Generator(TINY)
    sd = g.state_dict()
    sd.pop("bigff.texture_gamma")
    sd["extra.weight"] = torch.zeros(1)
    sd["out_layer.0.weight"] = torch.zeros(3, 5, 1, 1)
    with pytest.raises(StateDictMismatch) as err:
        g.load_state_dict(sd)
    msg = str(err.value)
    assert "bigff.texture_gamma" in msg and "extra.weight" in msg and "out_layer.0.weight" in msg
    assert "(3, 5, 1, 1)" in msg and "(3, 12, 1, 1)" in msg


def test_full_width_checkpoint_into_small_model_is_refused_clearly():
    with pytest.raises(StateDictMismatch, match="wrong shapes"):
        Generator(TINY).load_state_dict(official_state_dict("g"))


def test_forward_shapes_and_ranges():
    g = Generator(TINY).eval()
    assert isinstance(g, Generator)  # eval() chains (the official train() returned None)
    with torch.no_grad():
        out = g(*make_inputs(b=2), with_projections=True)
    assert out.output.shape == (2, 3, 128, 128)
    assert out.projected_image.shape == (2, 3, 128, 128)
    assert out.projected_edge.shape == (2, 1, 128, 128)
    assert out.output.abs().max() <= 1 and out.projected_image.abs().max() <= 1
    assert 0 <= out.projected_edge.min() and out.projected_edge.max() <= 1
    with torch.no_grad():
        lean = g(*make_inputs(b=2), with_projections=False)
        default = g(*make_inputs(b=2))  # eval + no_grad: projections skipped by default
    assert lean.projected_image is None and torch.equal(lean.output, out.output)
    assert default.projected_image is None and default.projected_edge is None
    assert torch.equal(default.output, out.output)


def test_the_reference_computation_runs_the_projection_heads_as_the_authors_do():
    """The authors' generator computes P_t and P_s on every call, in eval under no_grad too (official
    generator.py:147-148), so ``reference=True`` (what bench/generator_speed.py times as the authors'
    computation) must run them; the fast path skips them there."""
    g = Generator(TINY).eval()
    with torch.no_grad():
        ref = g(*make_inputs(b=1), reference=True)
        fast = g(*make_inputs(b=1))
        ref_lean = g(*make_inputs(b=1), reference=True, with_projections=False)
    assert ref.projected_image.shape == (1, 3, 128, 128) and ref.projected_edge.shape == (1, 1, 128, 128)
    assert fast.projected_image is None and fast.projected_edge is None
    assert ref_lean.projected_image is None and torch.equal(ref_lean.output, ref.output)


def test_eval_fast_path_without_autograd_runs_under_inference_mode_and_returns_ordinary_tensors():
    """In eval under no_grad the fast path runs inside ``torch.inference_mode()`` (fewer per-op costs,
    docs/speed.md); the authors' computation, training mode and autograd do not. The caller still gets
    ordinary tensors, which it may change in place, with the numbers of the same path run by hand
    under inference mode."""
    g = Generator(TINY).eval()
    seen = []
    g.cfa.register_forward_pre_hook(lambda module, args: seen.append(torch.is_inference_mode_enabled()))
    inputs = make_inputs(b=2)  # 2: training mode's BatchNorm needs more than one value at the bottleneck
    with torch.no_grad():
        out = g(*inputs, with_projections=True)
    with torch.inference_mode():
        by_hand = g(*inputs, with_projections=True)
    with torch.no_grad():
        g(*inputs, reference=True)
    g(*inputs)  # autograd on
    with torch.no_grad():
        g.train()(*inputs)  # (updates BatchNorm's running statistics: last)
    assert seen == [True, True, False, False, False]
    assert not any(t.is_inference() for t in out)
    assert all(torch.equal(a, b) for a, b in zip(out, by_hand, strict=True))
    out.output.clamp_(-0.5, 0.5)  # in place, outside inference mode: fine on an ordinary tensor
    assert not inputs[0].is_inference() and inputs[0]._version == 0  # the caller's inputs untouched


def test_output_is_differentiable_and_all_parameters_get_gradients():
    g = Generator(TINY).train()
    out = g(*make_inputs(b=2))
    (out.output.mean() + out.projected_image.mean() + out.projected_edge.mean()).backward()
    no_grad = [n for n, p in g.named_parameters() if p.grad is None]
    assert no_grad == []


def test_official_initialisation():
    g = Generator()
    w = g.dc_texture_7.conv.weight
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1) < 2e-3 and abs(bn.std().item() - 0.02) < 2e-3
    assert torch.all(g.fusion_layer1[0].bias == 0)
    assert g.bigff.texture_gamma.item() == 0 and g.bigff.structure_gamma.item() == 0


def test_streams_are_cross_coupled_at_the_bottleneck():
    """Zeroing the structure encoder's bottleneck layer changes the texture decoder's output path."""
    g = Generator(TINY).eval()
    inputs = make_inputs()
    feats = {}
    g.dc_texture_7.register_forward_hook(lambda m, i, o: feats.__setitem__("tex_in", i[0]))
    g.ec_structure_7.register_forward_hook(lambda m, i, o: feats.__setitem__("str_bottleneck", o[0]))
    with torch.no_grad():
        g(*inputs)
    c = feats["str_bottleneck"].shape[1]
    upsampled = torch.nn.functional.interpolate(feats["str_bottleneck"], scale_factor=2, mode="bilinear")
    torch.testing.assert_close(feats["tex_in"][:, :c], upsampled)


@pytest.mark.parametrize("size", [(100, 128), (128, 192), (64, 64)])
def test_sizes_not_divisible_by_128_are_refused_with_what_is_needed(size):
    g = Generator(TINY)
    h, w = size
    with pytest.raises(ValueError, match="divisible by 128"):
        g(torch.zeros(1, 3, h, w), torch.zeros(1, 2, h, w), torch.ones(1, 1, h, w))


def test_wrong_channels_and_mismatched_sizes_are_refused():
    g = Generator(TINY)
    img, edge, known = make_inputs()
    with pytest.raises(ValueError, match="input_image must be"):
        g(img[:, :2], edge, known)
    with pytest.raises(ValueError, match="input_edge must be"):
        g(img, edge[:, :1], known)
    with pytest.raises(ValueError, match="known_mask must be"):
        g(img, edge, known.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="must match"):
        g(img, edge, torch.ones(1, 1, 256, 256))


def test_inputs_in_the_wrong_range_or_dtype_are_refused_with_the_conversion():
    g = Generator(TINY).eval()
    img, edge, known = make_inputs()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"known_mask must hold 1 \(known pixel\) and 0 \(hole\), got values "
                                             r"from 0 to 255; .* use 1 - mask / 255"):
            g(img, edge, known * 255)  # a plausible-looking wrong picture before
        with pytest.raises(ValueError, match=r"input_image must be in \[-1, 1\], got values up to .*x / 127.5 - 1"):
            g((img + 1) * 127.5, edge, known)
        with pytest.raises(ValueError, match=r"input_edge must be in \[0, 1\]"):
            g(img, edge * 255, known)
        with pytest.raises(TypeError, match=r"input_image is torch.float64 but the generator's weights are "
                                            r"torch.float32; convert it with .to\(torch.float32\)"):
            g(img.double(), edge, known)  # was: "expected scalar type Double but found Float"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            g(img, edge, known)  # float32 inputs under autocast are right
    g.train()
    img2, edge2, known2 = make_inputs(b=2)  # batch norm in training needs two samples at this size
    g(img2, edge2, known2 * 255)  # ranges are checked in eval only (no sync in a training step)


def test_known_mask_all_zero_still_runs():
    g = Generator(TINY).eval()
    img, edge, _ = make_inputs()
    with torch.no_grad():
        out = g(img * 0, edge * 0, torch.zeros(1, 1, 128, 128)).output
    assert torch.isfinite(out).all()


# --- ablation switches (paper's ablation table) ---------------------------------------------------


def test_ablation_without_structure_priors_ignores_edges():
    g = Generator(ModelConfig(base_width=4, structure_priors=False)).eval()
    assert g.ec_structure_1.conv.weight.shape[1] == 3  # the structure stream sees the image
    img, edge, known = make_inputs()
    with torch.no_grad():
        a = g(img, edge, known).output
        b = g(img, None, known).output
    assert torch.equal(a, b)


def test_with_structure_priors_edges_matter():
    g = Generator(TINY).eval()
    img, edge, known = make_inputs()
    with torch.no_grad():
        a = g(img, edge, known).output
        b = g(img, torch.zeros_like(edge), known).output
    assert not torch.allclose(a, b)


def test_ablation_single_stream():
    g = Generator(ModelConfig(base_width=4, dual_stream=False))
    keys = g.state_dict().keys()
    assert not any(k.startswith(("ec_structure", "dc_structure", "bigff")) for k in keys)
    assert g.ec_texture_1.conv.weight.shape[1] == 5  # Concat(image, edge, gray)
    assert g.out_layer[0].weight.shape[1] == 4 + 4
    out = g.eval()(*make_inputs())
    assert out.output.shape == (1, 3, 128, 128) and out.projected_edge.shape == (1, 1, 128, 128)


def test_ablation_without_bigff_is_plain_concat():
    plain = Generator(ModelConfig(base_width=4, bigff=False)).eval()
    assert not any(k.startswith("bigff") for k in plain.state_dict())
    full = Generator(TINY).eval()
    # with γ = 0 Bi-GFF is the identity-concat, so copying every other weight gives the same output
    full.load_state_dict({**full.state_dict(), **plain.state_dict()})
    with torch.no_grad():
        torch.testing.assert_close(plain(*make_inputs()).output, full(*make_inputs()).output)


def test_ablation_without_cfa():
    g = Generator(ModelConfig(base_width=4, attention="none")).eval()
    assert not any(k.startswith("cfa") for k in g.state_dict())
    assert g.fusion_layer2[0].weight.shape[1] == 4
    assert g(*make_inputs()).output.shape == (1, 3, 128, 128)


def test_ablation_contextual_attention_in_place_of_cfa():
    g = Generator(ModelConfig(base_width=4, attention="contextual")).eval()
    assert not any(k.startswith("cfa") for k in g.state_dict())
    assert hasattr(g, "contextual_attention")
    assert g(*make_inputs()).output.shape == (1, 3, 128, 128)


def test_configurable_width_and_dilations():
    g = Generator(ModelConfig(base_width=8, dilations=(1, 3)))
    assert g.ec_texture_7.conv.weight.shape == (64, 64, 3, 3)
    assert g.cfa.msfa.weight_calc[2].weight.shape == (2, 8, 1, 1)
    assert g.cfa.msfa.dilated_conv_1[0].dilation == (3, 3)


def test_golden_output_slice():
    """Guards against silent drift of the forward pass (values recorded from this implementation)."""
    torch.manual_seed(1234)
    g = Generator(ModelConfig(base_width=8)).eval()
    with torch.no_grad():
        for p in g.parameters():  # γ = 0 and std 0.02 at init would hide most of the network
            p.normal_(0.0, 0.07) if p.ndim > 1 else p.uniform_(0.5, 1.0)
        out = g(*make_inputs(seed=7), with_projections=True)
    got = out.output[0, :, 40, 60:64].flatten()
    expected = torch.tensor(GOLDEN_OUTPUT)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    got_edge = out.projected_edge[0, 0, 40, 60:64]
    torch.testing.assert_close(got_edge, torch.tensor(GOLDEN_EDGE), rtol=0, atol=1e-4)


GOLDEN_OUTPUT = [-0.099853, -0.100961, -0.099357, -0.100039, 0.508448, 0.519089, 0.53418, 0.549809, 0.365542, 0.3588, 0.353456, 0.34822]
GOLDEN_EDGE = [0.631841, 0.635132, 0.637919, 0.640317]
