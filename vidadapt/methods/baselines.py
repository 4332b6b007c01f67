"""The two reference points of every PETL paper: a linear probe and full fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method, MethodParts, Target


@dataclass
class LinearConfig:
    """Frozen backbone; only the head (on frame-averaged features) trains."""


@dataclass
class FullConfig:
    """Every backbone parameter trains (set ``drop_path`` on the model for regularisation)."""


def apply_linear(target: Target, cfg: LinearConfig) -> MethodParts:
    return MethodParts()


def apply_full(target: Target, cfg: FullConfig) -> MethodParts:
    return MethodParts([target.backbone])


LINEAR = Method("linear", LinearConfig, apply_linear, exclusive=True)
FULL = Method("full", FullConfig, apply_full, exclusive=True)
