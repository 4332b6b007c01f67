"""CLIP-Adapter (Gao et al., IJCV 2023): a bottleneck MLP on the clip embedding, blended with
the original, against frozen template-built class embeddings (docs/methods.md)::

    f' = ratio * ReLU(W2 ReLU(W1 f)) + (1 - ratio) * f      W1: E → E/reduction, no biases
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .text_head import TemplateOptions, TemplatePrompts, TextHead


@dataclass
class ClipAdapterConfig(TemplateOptions):
    ratio: float = 0.2  # weight of the adapted embedding in the blend (residual ratio)
    reduction: int = 4  # bottleneck width = E / reduction

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ratio <= 1:
            raise ConfigError(f"ratio must be in [0, 1], got {self.ratio}")


class ClipAdapter(nn.Module):
    def __init__(self, dim: int, reduction: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
            nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.ratio * self.fc(features) + (1 - self.ratio) * features


def apply_clip_adapter(target: Target, cfg: ClipAdapterConfig) -> MethodParts:
    adapter = ClipAdapter(target.towers.text.output_dim, cfg.reduction, cfg.ratio)
    head = TextHead(target.towers, target.classes, TemplatePrompts(cfg.templates), adapter)
    return MethodParts([adapter], head=head)


METHOD = Method("clip_adapter", ClipAdapterConfig, apply_clip_adapter)
