"""ctsdg: image inpainting with CTSDG (Guo, Yang & Huang, ICCV 2021).

Mask convention everywhere a user touches: white (255) = region to fill, black = keep.
"""

from .config import ModelConfig
from .data import compute_structure, read_image, read_mask
from .discriminator import Discriminator
from .generator import Generator, GeneratorOutput

__version__ = "0.1.0"


def __getattr__(name: str):
    # Inpainter is imported on first use (it pulls in PIL, scikit-image and the checkpoint code)
    if name == "Inpainter":
        from .inference import Inpainter

        return Inpainter
    if name in ("EvalConfig", "run_evaluation"):  # evaluation (metrics networks load on first use)
        from . import evaluate

        return getattr(evaluate, name)
    if name in ("TrainConfig", "load_train_config"):  # training config (docs/training.md)
        from . import train_config

        return getattr(train_config, name)
    raise AttributeError(f"module 'ctsdg' has no attribute {name!r}")

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
