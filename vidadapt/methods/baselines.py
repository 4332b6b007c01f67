"""The two reference points of every PETL paper: a linear probe and full fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import register_method


@dataclass
class LinearConfig:
    """Frozen backbone; only the head (on frame-averaged features) trains."""


@dataclass
class FullConfig:
    """Every backbone parameter trains (set ``drop_path`` on the model for regularisation)."""


@register_method("linear", LinearConfig, exclusive=True)
def apply_linear(model, cfg: LinearConfig):
    return []


@register_method("full", FullConfig, exclusive=True)
def apply_full(model, cfg: FullConfig):
    return [model.backbone]
