"""CoCoOp: Conditional Prompt Learning for Vision-Language Models (Zhou et al., CVPR 2022).

CoOp's shared context, shifted per clip: a meta-network ``Linear(E, E/16) → ReLU →
Linear(E/16, D)`` maps the normalised clip embedding to one vector added to every context
vector, so every clip gets its own class embeddings ``[B, C, E]``. Context and meta-network
train; the text tower stays frozen (docs/methods.md).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..clip.towers import Clip, ClipOptions
from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .coop import CLASS_POSITIONS, CoOpPrompts
from .text_head import TextHead


@dataclass
class CoCoOpConfig(ClipOptions):
    n_ctx: int = 4  # context vectors; with ctx_init, the number of tokens of ctx_init instead
    ctx_init: str | None = "a photo of a"  # start from these words' embeddings; None = random
    class_position: str = "end"  # class name after ("end"), inside ("middle") or before
    # ("front") the context
    meta_reduction: int = 16  # meta-network hidden width = E / meta_reduction

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_position not in CLASS_POSITIONS:
            raise ConfigError(f"class_position {self.class_position!r}: use one of "
                              f"{CLASS_POSITIONS}")

    def vocabulary_texts(self) -> list[str]:
        return [self.ctx_init] if self.ctx_init else []


class CoCoOpPrompts(CoOpPrompts):
    """CoOp prompts conditioned on the clip: class embeddings ``[B, C, E]``."""

    def __init__(self, towers: Clip, cfg: CoCoOpConfig) -> None:
        super().__init__(towers, 0, cfg.n_ctx, cfg.ctx_init, class_specific=False,
                         class_position=cfg.class_position)
        E = towers.text.output_dim
        hidden = max(E // cfg.meta_reduction, 1)
        self.meta_net = nn.Sequential(OrderedDict(
            linear1=nn.Linear(E, hidden), relu=nn.ReLU(inplace=True),
            linear2=nn.Linear(hidden, towers.text.width),
        ))

    def forward(self, head: TextHead, features: Tensor) -> Tensor:
        """``features``: normalised clip embeddings ``[B, E]``."""
        B, C = features.shape[0], len(self.eot)
        shift = self.meta_net(features)  # [B, D]
        ctx = self.ctx + shift[:, None]  # [B, n_ctx, D]
        prompts = [self.assemble(self.class_contexts(c)) for c in ctx]  # B x [C, L, D]
        text = head.text.encode_embeddings(torch.cat(prompts), self.eot.repeat(B))  # [B*C, E]
        return text.view(B, C, -1)  # [B, C, E]


def apply_cocoop(target: Target, cfg: CoCoOpConfig) -> MethodParts:
    prompts = CoCoOpPrompts(target.towers, cfg)
    return MethodParts([prompts], head=TextHead(target.towers, target.classes, prompts))


METHOD = Method("cocoop", CoCoOpConfig, apply_cocoop)
