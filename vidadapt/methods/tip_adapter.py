"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022), on clip embeddings.

A key-value cache of the few-shot training set: keys are the L2-normalised clip embeddings
(each video's augmented views normalised, averaged and normalised again), values their one-hot
labels. Logits add the cache's vote to zero-shot CLIP's (docs/methods.md)::

    logits = exp(logit_scale) f Wᵀ + alpha · exp(-beta (1 - f keysᵀ)) values

alpha and beta are grid-searched on validation features (``data.val``, never the test split)
before every validation. Tip-Adapter-F (``finetune: true``) trains the keys, initialised from
the cache (AdamW lr 1e-3, 20 epochs in the paper). The cache is built by the engine from the
cached training features (``engine.features``), so its size is the training set's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .text_head import TemplateOptions, TemplatePrompts, TextHead


@dataclass
class TipAdapterConfig(TemplateOptions):
    alpha: float = 1.17  # weight of the cache logits, before the search
    beta: float = 1.0  # sharpness of the affinities exp(-beta (1 - cos)), before the search
    finetune: bool = False  # Tip-Adapter-F: the cache keys train
    search: bool = True  # grid-search alpha and beta on the validation features
    alpha_max: float = 3.0  # alpha grid: alpha_steps values from 0.1 up to alpha_max
    alpha_steps: int = 20
    beta_max: float = 7.0  # beta grid: beta_steps values from 0.1 up to beta_max
    beta_steps: int = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha_steps < 1 or self.beta_steps < 1:
            raise ConfigError("alpha_steps and beta_steps must be >= 1")


def search_grid(maximum: float, steps: int) -> list[float]:
    """The official code's grid: ``steps`` values from 0.1, evenly spaced below ``maximum``."""
    return [0.1 + i * (maximum - 0.1) / steps for i in range(steps)]


class TipCache(nn.Module):
    """Cache logits ``[B, C]`` of normalised clip embeddings ``[B, E]``.

    ``keys`` ``[N, E]`` and ``values`` ``[N, C]`` are sized by ``fit``; loading a saved cache
    resizes them to the saved size. All of it is the method's tuned state (saved).
    """

    def __init__(self, dim: int, num_classes: int, cfg: TipAdapterConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cfg = cfg
        # Keys are learned in Tip-Adapter-F, fitted only (a buffer) in Tip-Adapter.
        keys = torch.zeros(0, dim)
        if cfg.finetune:
            self.keys = nn.Parameter(keys)
        else:
            self.register_buffer("keys", keys)
        self.register_buffer("values", torch.zeros(0, num_classes))
        self.register_buffer("alpha", torch.tensor(cfg.alpha))
        self.register_buffer("beta", torch.tensor(cfg.beta))
        self.register_load_state_dict_pre_hook(_take_saved_cache_size)

    @torch.no_grad()
    def fit(self, features: Tensor, labels: Tensor) -> None:
        """Build the cache from training features ``[N, V, E]`` and labels ``[N, V]``."""
        keys = F.normalize(F.normalize(features, dim=-1).mean(dim=1), dim=-1)  # [N, E]
        # The label of a video's first view (a flip may swap labels between views).
        values = F.one_hot(labels[:, 0].long(), self.num_classes).float()  # [N, C]
        # In place: an optimizer may already hold the keys of Tip-Adapter-F.
        self.keys.data = keys.to(self.keys.device)
        self.values.data = values.to(self.values.device)

    def cache_logits(self, image: Tensor, beta: Tensor | float) -> Tensor:
        """``exp(-beta (1 - cos)) @ values`` without alpha, ``[B, C]``."""
        affinity = image @ self.keys.T  # [B, N]
        return torch.exp(-beta * (1 - affinity)) @ self.values

    def forward(self, image: Tensor) -> Tensor:
        if self.keys.shape[0] == 0:
            raise RuntimeError(
                "the Tip-Adapter cache is empty: it is built from cached training features, "
                "which need train.feature_cache disk or memory and mixup/CutMix off"
            )
        return self.alpha * self.cache_logits(image, self.beta)

    @torch.no_grad()
    def search(
        self, text_logits: Tensor, image: Tensor, labels: Tensor
    ) -> tuple[float, float, float]:
        """The (alpha, beta) of the grid with the best top-1 on validation views, and that
        top-1 (%). ``text_logits`` ``[M, V, C]``, normalised embeddings ``image`` ``[M, V, E]``;
        class probabilities are averaged over views as in testing."""
        M, V, C = text_logits.shape
        best = (-1.0, float(self.alpha), float(self.beta))
        for beta in search_grid(self.cfg.beta_max, self.cfg.beta_steps):
            cache = self.cache_logits(image.flatten(0, 1), beta).view(M, V, C)
            for alpha in search_grid(self.cfg.alpha_max, self.cfg.alpha_steps):
                probs = (text_logits + alpha * cache).softmax(dim=-1).mean(dim=1)  # [M, C]
                top1 = float((probs.argmax(dim=-1) == labels).double().mean() * 100)
                if top1 > best[0]:
                    best = (top1, alpha, beta)
        top1, alpha, beta = best
        self.alpha.fill_(alpha)
        self.beta.fill_(beta)
        return alpha, beta, top1


def _take_saved_cache_size(module: TipCache, state_dict, prefix, *args) -> None:
    """Before loading: give ``keys`` and ``values`` the saved cache's shape."""
    for name in ("keys", "values"):
        saved = state_dict.get(prefix + name)
        if saved is not None:
            getattr(module, name).data = torch.empty_like(saved, device=module.alpha.device)


def apply_tip_adapter(target: Target, cfg: TipAdapterConfig) -> MethodParts:
    cache = TipCache(target.towers.text.output_dim, len(target.classes), cfg)
    head = TextHead(target.towers, target.classes, TemplatePrompts(cfg.templates), cache=cache)
    # As a part, the cache's buffers (keys unless they train, values, alpha, beta) are saved.
    return MethodParts([cache], head=head)


METHOD = Method("tip_adapter", TipAdapterConfig, apply_tip_adapter)
