"""Pieces every CLIP method shares: the common options and the fixed, template-built prompts.

A ``ClipVideoClassifier`` (``vidadapt.clip.model``) scores a clip feature against one text
embedding per class; where those embeddings come from is its ``prompts`` module:

``TemplatePrompts``   hand-written templates, ensembled, computed once (zero-shot, CLIP-Adapter,
                      Tip-Adapter)
``CoOpPrompts``       learned context vectors through the frozen text tower (``methods.coop``)
``CoCoOpPrompts``     the same, shifted per clip by a meta-network (``methods.cocoop``)

Every prompts module has ``forward(model, features) -> [C, E] or [B, C, E]`` and
``set_classes(model, names)``, which builds it for class names (``ClipVideoClassifier.set_classes``
passes them through ``readable``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .prompts import resolve_templates
from .text import TEXT_PRESETS

if TYPE_CHECKING:
    from .model import ClipVideoClassifier

TEMPORAL_POOLS = ("mean", "max")
TEXT_SOURCES = ("pretrained", "random")


@dataclass
class ClipOptions:
    """Options of every CLIP method (their configs extend this class)."""

    temporal_pool: str = "mean"  # frame embeddings → clip embedding: "mean" or "max"
    text: str = "pretrained"  # text tower: "pretrained" (from model.pretrained, a CLIP file) or
    # "random" (random weights from text_preset: tests and demos only, zero-shot is chance)
    text_preset: str | None = None  # random text tower's preset; None = the one for the backbone
    tokenizer: str | None = None  # vocab.json + merges.txt folder or OpenAI's bpe .gz; None =
    # beside model.pretrained, or (random text tower) a vocabulary learned from the class names

    def __post_init__(self) -> None:
        if self.temporal_pool not in TEMPORAL_POOLS:
            raise ConfigError(f"temporal_pool {self.temporal_pool!r}: use one of {TEMPORAL_POOLS}")
        if self.text not in TEXT_SOURCES:
            raise ConfigError(f"text {self.text!r}: use one of {TEXT_SOURCES}")
        if self.text_preset is not None and self.text_preset not in TEXT_PRESETS:
            raise ConfigError(f"text_preset {self.text_preset!r}: use one of "
                              f"{', '.join(TEXT_PRESETS)}")

    def vocabulary_texts(self) -> list[str]:
        """Texts besides the class names that a learned vocabulary must cover."""
        return []


@dataclass
class TemplateOptions(ClipOptions):
    """CLIP options of the methods whose class embeddings come from hand-written templates."""

    templates: str | list[str] = field(default="video")  # a set in clip.prompts.TEMPLATES or a
    # list of templates with one "{}" each; several are ensembled

    def __post_init__(self) -> None:
        super().__post_init__()
        resolve_templates(self.templates)

    def vocabulary_texts(self) -> list[str]:
        return resolve_templates(self.templates)


def readable(name: str) -> str:
    """A class name as prompt text ("playing_guitar" → "playing guitar")."""
    return name.replace("_", " ")


def clip_model_of(model: nn.Module, method: str) -> ClipVideoClassifier:
    """``model`` if it is a ``ClipVideoClassifier``, else a ConfigError naming the method."""
    from .model import ClipVideoClassifier  # the model module imports the method registry

    if not isinstance(model, ClipVideoClassifier):
        raise ConfigError(
            f"method {method!r} classifies with the CLIP text tower: build it with "
            "vidadapt.clip.create_clip_model (configs do so), not create_model"
        )
    return model


class TemplatePrompts(nn.Module):
    """Class embeddings from templates: each filled template is embedded and normalised, the
    templates of a class are averaged and the mean normalised again (CLIP's ensembling)."""

    def __init__(self, templates: str | Sequence[str]) -> None:
        super().__init__()
        self.templates = resolve_templates(templates)
        # Recomputed from the frozen text tower whenever the classes are set: not stored.
        self.register_buffer("embeddings", torch.empty(0), persistent=False)

    @torch.no_grad()
    def set_classes(self, model: ClipVideoClassifier, classes: Sequence[str]) -> None:
        texts = [t.format(c) for c in classes for t in self.templates]
        embedded = F.normalize(model.encode_text(texts), dim=-1)  # [C * K, E]
        per_class = embedded.view(len(classes), len(self.templates), -1)  # [C, K, E]
        self.embeddings = F.normalize(per_class.mean(dim=1), dim=-1)  # [C, E]

    def forward(self, model: ClipVideoClassifier, features: Tensor) -> Tensor:
        return self.embeddings
