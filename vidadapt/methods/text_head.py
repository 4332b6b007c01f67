"""The text head: a clip embedding is classified against one text embedding per class.

    logits = exp(logit_scale) * cos(adapter(clip embedding), class embedding) [+ cache logits]

Where the class embeddings come from is the head's ``prompts`` module, which a CLIP method
gives (``methods.base.MethodParts.head``):

``TemplatePrompts``   hand-written templates, ensembled, computed once (zero-shot, CLIP-Adapter,
                      Tip-Adapter)
``CoOpPrompts``       learned context vectors through the frozen text tower (``methods.coop``)
``CoCoOpPrompts``     the same, shifted per clip by a meta-network (``methods.cocoop``)

Every prompts module has ``forward(head, condition) -> [C, E] or [B, C, E]`` and
``set_classes(head, names)``, which builds it for class names (``TextHead.set_classes`` passes
them through ``readable``). The head also holds the text tower, the tokenizer and the logit
scale, and, for Tip-Adapter, the state fitted from training features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clip.prompts import resolve_templates
from ..clip.towers import Clip, ClipOptions, readable
from ..errors import ConfigError
from .base import Head

logger = logging.getLogger("vidadapt")

TEXT_BATCH = 256  # prompts per text-tower forward when embedding class names


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


class TextHead(Head):
    """Clip embeddings ``[B, E]`` → logits ``[B, C]`` against text embeddings of ``classes``.

    ``prompts`` gives the class embeddings; ``adapter`` maps the clip embedding first
    (CLIP-Adapter); ``cache`` adds logits from the normalised clip embedding (Tip-Adapter);
    ``logit_scale`` replaces the towers' (a log, as CLIP stores it). The prompts see the
    normalised clip embedding, or the model's ``context`` tokens when it has a context stage
    (X-CLIP's video-specific prompts).
    """

    def __init__(
        self, towers: Clip, classes: Sequence[str], prompts: nn.Module,
        adapter: nn.Module | None = None, cache: nn.Module | None = None,
        logit_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.text = towers.text
        self.tokenizer = towers.tokenizer
        scale = towers.logit_scale if logit_scale is None else logit_scale
        self.logit_scale = nn.Parameter(torch.tensor(scale), requires_grad=False)
        self.prompts = prompts
        self.adapter = adapter or nn.Identity()
        self.cache = cache
        self.classes: list[str] = []
        self.set_classes(classes)

    @property
    def embed_dim(self) -> int:
        return self.text.output_dim

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Joint-space embeddings ``[N, E]`` of texts (unnormalised), in batches."""
        device = self.logit_scale.device
        parts = []
        for start in range(0, len(texts), TEXT_BATCH):
            tokens = self.tokenizer(texts[start : start + TEXT_BATCH],
                                    self.text.cfg.context_length)
            parts.append(self.text(tokens.to(device)))
        return torch.cat(parts)

    @property
    def names_new_classes(self) -> bool:
        return self.cache is None  # a Tip-Adapter cache holds its own classes' labels

    @property
    def logits_are_evidence(self) -> bool:
        return False  # exp(logit_scale) * cos: about 20-35, every class's evidence saturated

    def set_classes(self, classes: Sequence[str]) -> None:
        """Classify among ``classes`` from now on (base-to-new evaluation gives the new ones)."""
        if self.cache is not None and self.classes and self.classes != list(classes):
            raise ConfigError("a Tip-Adapter cache holds labels of its own classes; it cannot "
                              "classify other classes")
        self.prompts.set_classes(self, [readable(c) for c in classes])
        self.classes = list(classes)

    def text_logits(self, features: Tensor, context: Tensor | None = None) -> Tensor:
        """``exp(logit_scale) * cos`` between clip embeddings ``[B, E]`` (after the adapter)
        and the class embeddings, ``[B, C]``. Prompts giving K embeddings per class
        (``[1, C, K, E]``) are ensembled as ActionCLIP tests: log of the mean softmax."""
        image = F.normalize(self.adapter(features), dim=-1)  # [B, E]
        condition = image if context is None else context
        text = F.normalize(self.prompts(self, condition), dim=-1)  # [C, E] or [B, C, E]
        if text.ndim == 4:  # [1, C, K, E]: K prompts per class, their softmaxes averaged
            cosine = torch.einsum("be,cke->bkc", image, text[0])  # [B, K, C]
            probs = (self.logit_scale.exp() * cosine).softmax(dim=-1).mean(dim=1)  # [B, C]
            return probs.log()
        if text.ndim == 2:
            cosine = image @ text.T  # [B, C]
        else:
            cosine = torch.einsum("be,bce->bc", image, text)
        return self.logit_scale.exp() * cosine

    def forward(self, features: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits ``[B, C]``: text logits + cache logits."""
        logits = self.text_logits(features, context)
        if self.cache is not None:
            logits = logits + self.cache(F.normalize(features, dim=-1))
        return logits

    # ---- the Tip-Adapter cache, fitted from features (see methods.base.Head) ----------------

    @property
    def needs_training_features(self) -> bool:
        return self.cache is not None

    def fit_features(self, features: Tensor, labels: Tensor) -> None:
        if self.cache is not None:
            self.cache.fit(features, labels)

    @torch.no_grad()
    def select_hparams(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """Tip-Adapter's alpha and beta, grid-searched on validation features ``[M, V, E]``."""
        if self.cache is None or not self.cache.cfg.search:
            return {}
        device = self.logit_scale.device
        features, labels = features.to(device), labels.to(device)
        M, V, _ = features.shape
        text_logits = self.text_logits(features.flatten(0, 1)).view(M, V, -1)  # [M, V, C]
        image = F.normalize(features, dim=-1)  # [M, V, E]
        alpha, beta, top1 = self.cache.search(text_logits, image, labels)
        logger.info("Tip-Adapter: alpha %.3f, beta %.3f (validation top-1 %.2f)", alpha, beta,
                    top1)
        return {"alpha": alpha, "beta": beta, "top1": top1}


class TemplatePrompts(nn.Module):
    """Class embeddings from templates: each filled template is embedded and normalised, the
    templates of a class are averaged and the mean normalised again (CLIP's ensembling)."""

    def __init__(self, templates: str | Sequence[str]) -> None:
        super().__init__()
        self.templates = resolve_templates(templates)
        # Recomputed from the frozen text tower whenever the classes are set: not stored.
        self.register_buffer("embeddings", torch.empty(0), persistent=False)

    @torch.no_grad()
    def set_classes(self, head: TextHead, classes: Sequence[str]) -> None:
        texts = [t.format(c) for c in classes for t in self.templates]
        embedded = F.normalize(head.encode_text(texts), dim=-1)  # [C * K, E]
        per_class = embedded.view(len(classes), len(self.templates), -1)  # [C, K, E]
        self.embeddings = F.normalize(per_class.mean(dim=1), dim=-1)  # [C, E]

    def forward(self, head: TextHead, features: Tensor) -> Tensor:
        return self.embeddings
