"""Motion prompts: each frame's motion map becomes prompt tokens for that frame.

A frame-wise method on a frozen image model cannot tell "moving left" from "moving right": no
single frame shows the difference. Motion prompts give every frame what happens next to it,
as tokens the frozen model attends to (docs/methods.md):

1. The data pipeline adds each sampled frame's motion map to the clip (``data.motion``: the RGB
   difference to the next sampled frame, or the optical flow to it; ``data/motion.py``).
2. A light trainable **motion encoder** turns a map ``[M, H, W]`` into ``num_tokens`` features:
   a patch convolution at the image model's patch size, a 3×3 convolution with GELU as a
   residual, learned positions, then ``num_tokens`` learned queries attend over the patches
   (each token can gather motion where it happens).
3. Each token is projected to the image model's width and added to a learned prompt (VPT's
   initialisation), and the tokens join that frame's tokens right before its patches, with no
   position embedding. ``deep``: every later block gets fresh prompts from its own projection
   of the same features, replacing the previous block's prompt outputs (as VPT-deep).

The image model stays frozen; gradients pass through it to the prompts. Frames stay independent
in the image model: what relates them in time is in the maps. Composes with other frame-wise
methods (``motion_prompt+vpt``), with temporal ones (``motion_prompt+aim``) and with a text head
(``motion_prompt+coop``); not with methods that give the image model other images than the
clip's frames (DualPath, sparse tubes, a side network's frame stride), which no map matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import Block, TokenLayout, ViT, resample_pos_embed
from ..data.motion import MOTION_CHANNELS, channels_for
from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .vpt import prompt_init_bound

EXTRAS_KEY = "motion_prompt"  # layout.extras: the motion encoder's features for deep prompts


@dataclass
class MotionPromptConfig:
    motion: str = "rgb_diff"  # the maps prompts are made from: "rgb_diff" or "flow" (the data
    # pipeline adds them to the clips, data.motion)
    num_tokens: int = 4  # prompt tokens per frame
    deep: bool = False  # fresh prompts before every block, not only at the input
    width: int = 64  # channels of the motion encoder
    prompt_dropout: float = 0.0  # dropout on the prompt tokens

    def __post_init__(self) -> None:
        if self.motion not in MOTION_CHANNELS:
            raise ConfigError(f"motion_prompt.motion must be one of "
                              f"{', '.join(MOTION_CHANNELS)}, got {self.motion!r}")
        if self.num_tokens < 1 or self.width < 1:
            raise ConfigError("motion_prompt.num_tokens and width must be at least 1")


class MotionEncoder(nn.Module):
    """Motion maps ``[N, M, H, W]`` → ``num_tokens`` features ``[N, K, C]``."""

    def __init__(self, channels: int, width: int, patch_size: int, grid: int,
                 num_tokens: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, width, patch_size, stride=patch_size)
        self.mix = nn.Conv2d(width, width, 3, padding=1)
        self.position = nn.Parameter(torch.zeros(1, grid * grid, width))
        self.norm = nn.LayerNorm(width)
        self.queries = nn.Parameter(torch.randn(num_tokens, width) * width**-0.5)
        self.out_norm = nn.LayerNorm(width)
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, motion: Tensor) -> Tensor:
        x = self.stem(motion)  # [N, C, h, w]
        x = x + self.mix(F.gelu(x))  # [N, C, h, w]
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # [N, h*w, C]
        x = self.norm(x + resample_pos_embed(self.position, grid, num_prefix=0))
        weights = torch.softmax(self.queries @ x.transpose(1, 2) / math.sqrt(x.shape[-1]),
                                dim=-1)  # [N, K, h*w]
        return self.out_norm(weights @ x)  # [N, K, C]


class PromptProjection(nn.Module):
    """Encoder features ``[N, K, C]`` → prompts ``[N, K, D]``: a learned prompt per token plus
    the projected features (small at the start, so training begins near plain prompts)."""

    def __init__(self, width: int, dim: int, num_tokens: int, bound: float,
                 dropout: float) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(num_tokens, dim).uniform_(-bound, bound))
        self.proj = nn.Linear(width, dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.dropout(self.prompts + self.proj(features))  # [N, K, D]


def _features(layout: TokenLayout) -> Tensor:
    if layout.motion is None:
        raise ValueError("motion_prompt reads the clips' motion channels, and these clips have "
                         "none: set data.motion: auto")
    return layout.motion


class InsertMotionPrompts(nn.Module):
    """Embed site: encodes each image's motion map and inserts its prompts right before the
    patches: ``[CLS, prefix..., patches]`` → ``[CLS, prefix..., prompts, patches]``."""

    def __init__(self, encoder: MotionEncoder, projection: PromptProjection, deep: bool):
        super().__init__()
        self.encoder, self.projection, self.deep = encoder, projection, deep

    def forward(self, x: Tensor, vit: ViT, layout: TokenLayout) -> Tensor:
        features = self.encoder(_features(layout).to(x.dtype))  # [B*T, K, C]
        if self.deep:
            layout.extras[EXTRAS_KEY] = features
        start = layout.num_prefix
        layout.num_prefix += features.shape[1]
        prompts = self.projection(features).to(x.dtype)  # [B*T, K, D]
        return torch.cat([x[:, :start], prompts, x[:, start:]], dim=1)  # [B*T, N+K, D]


class ReplaceMotionPrompts(nn.Module):
    """pre_attn site (deep): the previous block's prompt outputs give way to fresh prompts. The
    prompts are the last prefix tokens: later insertions (VPT's) go right after the class
    token, so they stay right before the patches."""

    def __init__(self, projection: PromptProjection) -> None:
        super().__init__()
        self.projection = projection

    def forward(self, x: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        prompts = self.projection(layout.extras[EXTRAS_KEY]).to(x.dtype)  # [B*T, K, D]
        end = layout.num_prefix
        return torch.cat([x[:, : end - prompts.shape[1]], prompts, x[:, end:]], dim=1)


def apply_motion_prompt(target: Target, cfg: MotionPromptConfig) -> MethodParts:
    vit: ViT = target.backbone
    bound = prompt_init_bound(vit.cfg.patch_size, vit.width)

    def projection() -> PromptProjection:
        return PromptProjection(cfg.width, vit.width, cfg.num_tokens, bound, cfg.prompt_dropout)

    encoder = MotionEncoder(channels_for(cfg.motion), cfg.width, vit.cfg.patch_size,
                            vit.cfg.grid, cfg.num_tokens)
    first = InsertMotionPrompts(encoder, projection(), cfg.deep)
    vit.embed_sites.append(first)
    trainable: list[nn.Module] = [first]
    if cfg.deep:
        for block in vit.blocks[1:]:
            fresh = ReplaceMotionPrompts(projection())
            block.pre_attn.append(fresh)
            trainable.append(fresh)
    return MethodParts(trainable)


METHOD = Method("motion_prompt", MotionPromptConfig, apply_motion_prompt,
                reads_motion=lambda cfg: cfg.motion)
