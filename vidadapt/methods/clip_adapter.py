"""CLIP-Adapter (Gao et al., IJCV 2023): a bottleneck MLP on the clip embedding, blended with
the original, against frozen template-built class embeddings (docs/methods.md)::

    f' = ratio * ReLU(W2 ReLU(W1 f)) + (1 - ratio) * f      W1: E → E/reduction, no biases
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..clip.heads import TemplateOptions, TemplatePrompts, clip_model_of
from ..errors import ConfigError
from .registry import Trainable, register_method


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


@register_method("clip_adapter", ClipAdapterConfig, exclusive=True)
def apply_clip_adapter(model, cfg: ClipAdapterConfig) -> Trainable:
    model = clip_model_of(model, "clip_adapter")
    model.prompts = TemplatePrompts(cfg.templates)
    model.set_classes(model.classes)
    model.adapter = ClipAdapter(model.embed_dim, cfg.reduction, cfg.ratio)
    return [model.adapter]
