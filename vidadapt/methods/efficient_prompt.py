"""Prompting Visual-Language Models for Efficient Video Understanding (Ju et al., ECCV 2022).

CLIP stays frozen. Text side: CoOp's prompt with the class name in the middle,
``[SOT] [p learned vectors] [class name] [q learned vectors] . [EOT]``, through the frozen text
tower. Video side: the frame embeddings plus a learned temporal embedding go through a small
transformer (1-2 of the ViT's own blocks) and are averaged over time. Logits are cosine
similarities divided by a temperature of 0.07, trained with cross-entropy (docs/methods.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbones.vit import Block, TokenLayout, ViTConfig
from ..clip.towers import ClipOptions
from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .coop import CoOpPrompts
from .text_head import TextHead


@dataclass
class EfficientPromptConfig(ClipOptions):
    prefix_len: int = 16  # p: learned vectors before the class name
    suffix_len: int = 16  # q: learned vectors after the class name
    temporal_layers: int = 1  # transformer blocks over the frame embeddings (the paper: 1 or 2)
    temporal_heads: int = 8  # their attention heads (must divide the joint dimension E)
    temperature: float = 0.07  # logits = cosine / temperature

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.prefix_len, self.suffix_len) < 0 or self.prefix_len + self.suffix_len < 1:
            raise ConfigError(f"prefix_len and suffix_len must be >= 0 with at least one learned "
                              f"vector; got {self.prefix_len} and {self.suffix_len}")
        if self.temporal_layers < 1:
            raise ConfigError(f"temporal_layers must be >= 1, got {self.temporal_layers}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


class TemporalTransformer(nn.Module):
    """Frame embeddings ``[B, T, E]`` + a learned temporal embedding (N(0, ``init_std``)) →
    pre-norm transformer blocks (the ViT's, 4x MLP) → mean over time ``[B, E]``. ``residual``
    adds the frame embeddings back before the mean (ActionCLIP's fusion does, Ju et al.'s
    does not); ``norm_eps`` is the LayerNorms' (ActionCLIP's official fusion uses 1e-12)."""

    def __init__(
        self, dim: int, num_frames: int, depth: int, heads: int, residual: bool = False,
        act: str = "gelu", init_std: float = 0.01, norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"temporal heads ({heads}) must divide the embedding size {dim}")
        self.temporal_embed = nn.Parameter(torch.randn(num_frames, dim) * init_std)
        block = ViTConfig(width=dim, heads=heads, mlp_dim=4 * dim, act=act, norm_eps=norm_eps)
        self.blocks = nn.ModuleList(Block(block) for _ in range(depth))
        self.residual = residual

    def forward(self, frames: Tensor) -> Tensor:
        B, T, _ = frames.shape
        x = frames + self.temporal_embed[:T]  # [B, T, E]
        layout = TokenLayout(batch=B, frames=1, grid=(0, 0), num_prefix=T)  # no patch grid
        for block in self.blocks:
            x = block(x, layout)
        if self.residual:
            x = x + frames
        return x.mean(dim=1)  # [B, E]


def apply_efficient_prompt(target: Target, cfg: EfficientPromptConfig) -> MethodParts:
    towers = target.towers
    n_ctx = cfg.prefix_len + cfg.suffix_len
    prompts = CoOpPrompts(towers, len(target.classes), n_ctx, ctx_init=None,
                          class_specific=False, class_position="middle",
                          middle_split=cfg.prefix_len)
    temporal = TemporalTransformer(towers.text.output_dim, target.num_frames,
                                   cfg.temporal_layers, cfg.temporal_heads)
    head = TextHead(towers, target.classes, prompts, logit_scale=math.log(1 / cfg.temperature))
    return MethodParts([prompts, temporal], temporal=temporal, head=head)


METHOD = Method("efficient_prompt", EfficientPromptConfig, apply_efficient_prompt)
