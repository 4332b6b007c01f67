"""Zero-shot CLIP on video: frame embeddings pooled over time against template-ensembled class
embeddings from the frozen text tower. Nothing trains; ``vidadapt eval CONFIG`` scores it."""

from __future__ import annotations

from dataclasses import dataclass

from ..clip.heads import TemplateOptions, TemplatePrompts, clip_model_of
from .registry import Trainable, register_method


@dataclass
class ZeroShotConfig(TemplateOptions):
    """Frozen CLIP; class embeddings from ``templates`` (see ``clip.prompts.TEMPLATES``)."""


@register_method("zero_shot", ZeroShotConfig, exclusive=True)
def apply_zero_shot(model, cfg: ZeroShotConfig) -> Trainable:
    model = clip_model_of(model, "zero_shot")
    model.prompts = TemplatePrompts(cfg.templates)
    model.set_classes(model.classes)
    return []
