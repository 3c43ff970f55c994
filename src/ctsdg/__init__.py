"""ctsdg: image inpainting with CTSDG (Guo, Yang & Huang, ICCV 2021).

Mask convention everywhere a user touches: white (255) = region to fill, black = keep.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names, imported on first use: `import ctsdg` (and so `ctsdg --help`, `ctsdg --version`) then starts
# without PyTorch, PIL or scikit-image, about 0.9 s less on a 2-core machine.
_LAZY = {
    "ModelConfig": "config",
    "compute_structure": "data",
    "read_image": "data",
    "read_mask": "data",
    "Discriminator": "discriminator",
    "Generator": "generator",
    "GeneratorOutput": "generator",
    "Inpainter": "inference",  # PIL, scikit-image and the checkpoint code
    "EvalConfig": "evaluate",  # evaluation (metrics networks load on first use)
    "run_evaluation": "evaluate",
    "TrainConfig": "train_config",  # training config (docs/training.md)
    "load_train_config": "train_config",
}

if TYPE_CHECKING:  # for type checkers and editors, which do not run __getattr__
    from .config import ModelConfig
    from .data import compute_structure, read_image, read_mask
    from .discriminator import Discriminator
    from .evaluate import EvalConfig, run_evaluation
    from .generator import Generator, GeneratorOutput
    from .inference import Inpainter
    from .train_config import TrainConfig, load_train_config


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ctsdg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Generator",
    "GeneratorOutput",
    "Discriminator",
    "Inpainter",
    "EvalConfig",
    "run_evaluation",
    "TrainConfig",
    "load_train_config",
    "ModelConfig",
    "compute_structure",
    "read_image",
    "read_mask",
    "__version__",
]
