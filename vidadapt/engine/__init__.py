"""Training and evaluation: configs to models and datasets (``build``), the training loop
(``trainer``), AdamW groups and the schedule (``optim``), data order (``data``), multi-view
metrics (``evaluate``), adapter checkpoints and resume state (``checkpoint``), DDP helpers
(``distributed``) and run logs (``logs``)."""

from .build import build_dataset, build_model
from .checkpoint import load_adapter, read_adapter, save_adapter
from .trainer import Trainer

__all__ = [
    "Trainer", "build_dataset", "build_model", "load_adapter", "read_adapter", "save_adapter",
]
