"""CoOp: Learning to Prompt for Vision-Language Models (Zhou et al., IJCV 2022).

The words around the class name become learned vectors: a prompt is ``[SOT] [ctx_1..ctx_n]
[class name] . [EOT]`` in the token-embedding space, passed through the frozen text tower and
read at the end token. The context is shared by all classes or one per class (CSC), starts
from the embeddings of words (``ctx_init``) or N(0, 0.02), and the class name goes at the end,
in the middle or at the front. Only the context trains (docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..clip.text import end_positions
from ..clip.towers import Clip, ClipOptions
from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .text_head import TextHead

CLASS_POSITIONS = ("end", "middle", "front")
PLACEHOLDER = "X"  # stands for one context vector when the prompt is tokenized (one token)


@dataclass
class CoOpConfig(ClipOptions):
    n_ctx: int = 16  # context vectors; with ctx_init, the number of tokens of ctx_init instead
    ctx_init: str | None = None  # start from these words' embeddings ("a photo of a"); None =
    # random N(0, 0.02)
    class_specific: bool = False  # one context per class (CSC) instead of one shared by all
    class_position: str = "end"  # class name after ("end"), inside ("middle") or before
    # ("front") the context

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_position not in CLASS_POSITIONS:
            raise ConfigError(f"class_position {self.class_position!r}: use one of "
                              f"{CLASS_POSITIONS}")
        if self.ctx_init is None and self.n_ctx < 1:
            raise ConfigError(f"n_ctx must be >= 1, got {self.n_ctx}")

    def vocabulary_texts(self) -> list[str]:
        return [self.ctx_init] if self.ctx_init else []


class CoOpPrompts(nn.Module):
    """Learned context + class-name embeddings → class embeddings ``[C, E]``."""

    def __init__(
        self, towers: Clip, num_classes: int, n_ctx: int, ctx_init: str | None,
        class_specific: bool, class_position: str, middle_split: int | None = None,
    ) -> None:
        """``middle_split``: context vectors before the class name when ``class_position`` is
        "middle" (default half of them)."""
        super().__init__()
        D = towers.text.width
        if ctx_init:
            ids = towers.tokenizer.encode(ctx_init)
            ctx = towers.text.token_embed.weight[ids].detach().clone()  # [n_ctx, D]
            self.context_text = ctx_init
        else:
            ctx = torch.randn(n_ctx, D) * 0.02
            self.context_text = " ".join([PLACEHOLDER] * n_ctx)
        if class_specific:
            ctx = ctx.expand(num_classes, -1, -1).clone()  # [C, n_ctx, D]
        self.ctx = nn.Parameter(ctx)
        self.n_ctx = ctx.shape[-2]
        self.class_specific = class_specific
        self.class_position = class_position
        self.middle_split = self.n_ctx // 2 if middle_split is None else middle_split
        # Embeddings of the fixed tokens, rebuilt by set_classes (the text tower is frozen).
        self.register_buffer("token_prefix", torch.empty(0), persistent=False)  # [C, 1, D] SOT
        self.register_buffer("token_suffix", torch.empty(0), persistent=False)  # [C, L-1-n, D]
        self.register_buffer("eot", torch.empty(0, dtype=torch.long), persistent=False)  # [C]
        self.name_lengths: list[int] = []  # tokens of every class name

    @torch.no_grad()
    def set_classes(self, head: TextHead, names: Sequence[str]) -> None:
        if self.class_specific and self.ctx.shape[0] != len(names):
            raise ConfigError(
                f"class-specific contexts were learned for {self.ctx.shape[0]} classes and cannot "
                f"classify {len(names)} others; use a shared context (class_specific: false)"
            )
        prompts = [f"{self.context_text} {name}." for name in names]
        context_length = head.text.cfg.context_length
        longest = max(prompts, key=lambda p: len(head.tokenizer.encode(p)))
        if len(head.tokenizer.encode(longest)) + 2 > context_length:  # + start and end tokens
            raise ConfigError(
                f"the prompt {longest!r} ({self.n_ctx} learned vectors and the class name) does "
                f"not fit the text tower's {context_length} tokens; learn fewer vectors"
            )
        tokens = head.tokenizer(prompts, context_length).to(self.ctx.device)
        embedded = head.text.token_embed(tokens)  # [C, L, D]
        self.token_prefix = embedded[:, :1]  # [C, 1, D]
        self.token_suffix = embedded[:, 1 + self.n_ctx :]  # [C, L-1-n_ctx, D]
        self.eot = end_positions(tokens)  # [C]
        self.name_lengths = [len(head.tokenizer.encode(name)) for name in names]

    def assemble(self, ctx: Tensor) -> Tensor:
        """Prompt embeddings ``[C, L, D]`` from per-class contexts ``ctx`` ``[C, n_ctx, D]``."""
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.class_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        split = self.middle_split
        rows = []
        for i, length in enumerate(self.name_lengths):
            start, context = prefix[i : i + 1], ctx[i : i + 1]  # [1, 1, D], [1, n_ctx, D]
            name, rest = suffix[i : i + 1, :length], suffix[i : i + 1, length:]
            if self.class_position == "middle":
                parts = [start, context[:, :split], name, context[:, split:], rest]
            else:  # front
                parts = [start, name, context, rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows)  # [C, L, D]

    def class_contexts(self, ctx: Tensor) -> Tensor:
        """``ctx`` ``[n_ctx, D]`` (shared) or ``[C, n_ctx, D]`` → ``[C, n_ctx, D]``."""
        return ctx if ctx.ndim == 3 else ctx.expand(len(self.eot), -1, -1)

    def forward(self, head: TextHead, features: Tensor) -> Tensor:
        prompts = self.assemble(self.class_contexts(self.ctx))  # [C, L, D]
        return head.text.encode_embeddings(prompts, self.eot)  # [C, E]


def apply_coop(target: Target, cfg: CoOpConfig) -> MethodParts:
    prompts = CoOpPrompts(target.towers, len(target.classes), cfg.n_ctx, cfg.ctx_init,
                          cfg.class_specific, cfg.class_position)
    return MethodParts([prompts], head=TextHead(target.towers, target.classes, prompts))


METHOD = Method("coop", CoOpConfig, apply_coop)
