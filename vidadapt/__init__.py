"""vidadapt: parameter-efficient image-to-video transfer learning on one ViT.

The public API below is imported on first use (PEP 562), so ``import vidadapt`` and the
``vidadapt`` command's ``--help`` do not load torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name → the module that defines it
_API = {
    "ViT": ".backbones",
    "ViTConfig": ".backbones",
    "preset_config": ".backbones",
    "create_backbone": ".checkpoints",
    "load_image_encoder": ".checkpoints",
    "create_model": ".models",
    "VideoModel": ".models",
    "ModelSpec": ".models",
    "Method": ".methods.base",
    "MethodParts": ".methods.base",
    "register_method": ".methods.registry",
    "load_clip": ".clip.towers",
    "save_clip": ".clip.save",
    "save_pretrained": ".hub",
    "from_pretrained": ".hub",
    "ExperimentConfig": ".config",
    "load_config": ".config",
    "config_from_dict": ".config",
    "Trainer": ".engine.trainer",
    "train_experiment": ".engine.experiment",
}

__all__ = [  # the names of _API (a test checks they agree)
    "ExperimentConfig", "Method", "MethodParts", "ModelSpec", "Trainer", "ViT", "ViTConfig",
    "VideoModel", "__version__", "config_from_dict", "create_backbone", "create_model",
    "from_pretrained", "load_clip", "load_config", "load_image_encoder", "preset_config",
    "register_method", "save_clip", "save_pretrained", "train_experiment",
]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .backbones import ViT, ViTConfig, preset_config
    from .checkpoints import create_backbone, load_image_encoder
    from .clip.save import save_clip
    from .clip.towers import load_clip
    from .config import ExperimentConfig, config_from_dict, load_config
    from .engine.experiment import train_experiment
    from .engine.trainer import Trainer
    from .hub import from_pretrained, save_pretrained
    from .methods.base import Method, MethodParts
    from .methods.registry import register_method
    from .models import ModelSpec, VideoModel, create_model


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'vidadapt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
