"""Zero-shot CLIP on video: frame embeddings pooled over time against template-ensembled class
embeddings from the frozen text tower. Nothing trains; ``vidadapt eval CONFIG`` scores it."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method, MethodParts, Target
from .text_head import TemplateOptions, TemplatePrompts, TextHead


@dataclass
class ZeroShotConfig(TemplateOptions):
    """Frozen CLIP; class embeddings from ``templates`` (see ``clip.prompts.TEMPLATES``)."""


def apply_zero_shot(target: Target, cfg: ZeroShotConfig) -> MethodParts:
    return MethodParts(head=TextHead(target.towers, target.classes,
                                     TemplatePrompts(cfg.templates)))


METHOD = Method("zero_shot", ZeroShotConfig, apply_zero_shot)
