"""VPT: visual prompt tuning (Jia et al., ECCV 2022), applied to every frame of a video.

``p`` learnable prompt tokens are inserted right after the class token, before the register and
patch tokens, with no position embedding: ``[CLS, prompts, registers, patches]``. Shallow VPT
inserts them once, before ``norm_pre``; deep VPT also replaces the previous block's prompt
outputs with a fresh set before every later block. Every frame gets the same prompts, so frames
stay independent (VPT has no temporal modelling). Only the prompts train, plus the head on the
(frame-averaged) class token.

In a stack, embed sites run in stack order: with ``vpt+aim`` AIM's temporal embedding is added
to the prompts too (which makes them frame-specific); with ``aim+vpt`` it is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbones.vit import Block, TokenLayout, ViT
from ..errors import ConfigError
from .base import Method, MethodParts, Target


@dataclass
class VPTConfig:
    num_tokens: int = 5  # prompt tokens p per frame (5 here; 50-100 are common in the paper)
    deep: bool = False  # a fresh prompt set before every block (VPT-deep), not only at the input
    # Dropout on the prompts; None = 0.1 when deep, else 0.0. (Not ``dropout``: that name is
    # create_model's head dropout.)
    prompt_dropout: float | None = None

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ConfigError(f"vpt.num_tokens must be at least 1, got {self.num_tokens}")
        if self.prompt_dropout is None:
            self.prompt_dropout = 0.1 if self.deep else 0.0


def prompt_init_bound(patch_size: int, dim: int) -> float:
    """VPT's uniform init range: Xavier-uniform for a patch-to-token projection,
    ``sqrt(6 / (3 * patch² + D))`` (0.0625 for ViT-B/16)."""
    return math.sqrt(6.0 / (3 * patch_size**2 + dim))


class Prompts(nn.Module):
    """``p`` learnable tokens shared by every frame of every video."""

    def __init__(self, num_tokens: int, dim: int, bound: float, dropout: float) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(1, num_tokens, dim).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    @property
    def num_tokens(self) -> int:
        return self.prompts.shape[1]

    def batch(self, size: int) -> Tensor:
        # Dropout after the expand, as in the official code: each frame gets its own mask.
        return self.dropout(self.prompts.expand(size, -1, -1))  # [B*T, p, D]


class InsertPrompts(Prompts):
    """embed site: ``[CLS, rest...]`` → ``[CLS, prompts, rest...]``."""

    def forward(self, x: Tensor, vit: ViT, layout: TokenLayout) -> Tensor:
        layout.num_prefix += self.num_tokens  # later sites (e.g. ST-Adapter) skip the prompts
        return torch.cat([x[:, :1], self.batch(x.shape[0]), x[:, 1:]], dim=1)  # [B*T, N+p, D]


class ReplacePrompts(Prompts):
    """pre_attn site (deep VPT): the previous block's prompt outputs are dropped for fresh ones."""

    def forward(self, x: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        p = self.num_tokens
        return torch.cat([x[:, :1], self.batch(x.shape[0]), x[:, 1 + p :]], dim=1)  # [B*T, N, D]


def apply_vpt(target: Target, cfg: VPTConfig) -> MethodParts:
    vit: ViT = target.backbone
    bound = prompt_init_bound(vit.cfg.patch_size, vit.width)
    first = InsertPrompts(cfg.num_tokens, vit.width, bound, cfg.prompt_dropout)
    vit.embed_sites.append(first)
    trainable = [first]
    if cfg.deep:
        for block in vit.blocks[1:]:
            fresh = ReplacePrompts(cfg.num_tokens, vit.width, bound, cfg.prompt_dropout)
            block.pre_attn.append(fresh)
            trainable.append(fresh)
    return MethodParts(trainable)


METHOD = Method("vpt", VPTConfig, apply_vpt)
