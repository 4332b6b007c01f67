"""Prefix tuning (Li & Liang, ACL 2021) on the attention of every block.

Every block gets ``l`` learnable key and value vectors prepended to its keys and values: the
tokens attend to them, but they are never output. During training they are reparameterised by
one MLP shared by all blocks, ``Embedding(l, D) → Linear(D, mid) → tanh → Linear(mid, L·2·D)``,
run once per forward by :class:`PrefixEncoder` (an embed site, so it sits outside the blocks'
gradient checkpointing); each block's :class:`PrefixKV` reads its slice from ``layout.extras``.

After training, :func:`freeze_prefixes` stores the MLP's output as plain prefixes
``[L, 2, l, D]`` and drops the MLP: inference skips it, and the adapter checkpoint holds the
prefixes (552,960 numbers for ViT-B, l = 30) instead of the MLP (9.9M). With
``reparameterize: false`` the prefixes are trained directly from the start.

AIM's temporal attention reuses each block's attention module, so in ``prefix+aim`` it sees the
prefixes too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..backbones.vit import TokenLayout, ViT
from ..errors import ConfigError
from .base import Method, MethodParts, Target

if TYPE_CHECKING:
    from ..models import VideoModel


@dataclass
class PrefixConfig:
    length: int = 30  # l, prefix key/value vectors per block (MAM uses 30)
    mid_dim: int = 512  # hidden width of the reparameterisation MLP
    reparameterize: bool = True  # train through the shared MLP; False = train prefixes directly

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ConfigError(f"prefix length must be at least 1, got {self.length}")


class PrefixEncoder(nn.Module):
    """embed site: every block's prefix keys and values, ``[L, 2, l, D]``, computed once per
    forward and left in ``layout.extras[method]``; the tokens pass unchanged."""

    def __init__(
        self, method: str, depth: int, length: int, dim: int, mid_dim: int, reparameterize: bool
    ) -> None:
        super().__init__()
        self.method = method  # the method's name: its key in layout.extras and in spec.options
        self.shape = (depth, 2, length, dim)
        # Default torch inits (standard normal tables), as in the reference implementations.
        if reparameterize:
            self.embedding = nn.Embedding(length, dim)
            self.mlp = nn.Sequential(
                nn.Linear(dim, mid_dim), nn.Tanh(), nn.Linear(mid_dim, depth * 2 * dim)
            )
            self.prefix = None
        else:
            self.embedding = self.mlp = None
            self.prefix = nn.Parameter(torch.randn(self.shape))

    @property
    def reparameterized(self) -> bool:
        return self.mlp is not None

    def prefixes(self) -> Tensor:
        if not self.reparameterized:
            return self.prefix
        L, _, l, D = self.shape
        h = self.mlp(self.embedding.weight)  # [l, L*2*D]
        return h.view(l, L, 2, D).permute(1, 2, 0, 3)  # [L, 2, l, D]

    def forward(self, x: Tensor, vit: ViT, layout: TokenLayout) -> Tensor:
        layout.extras[self.method] = self.prefixes()
        return x

    def freeze(self) -> None:
        """Replace the MLP by the prefixes it computes now."""
        with torch.no_grad():
            prefix = self.prefixes().contiguous()
        self.embedding = self.mlp = None
        self.prefix = nn.Parameter(prefix)


class PrefixKV(nn.Module):
    """kv site of block ``layer``: its ``l`` prefix keys and values go before the tokens'."""

    def __init__(self, method: str, layer: int) -> None:
        super().__init__()
        self.method = method
        self.layer = layer

    def forward(self, k: Tensor, v: Tensor, layout: TokenLayout) -> tuple[Tensor, Tensor]:
        B, H, N, d = k.shape
        prefix = layout.extras[self.method][self.layer]  # [2, l, D]
        prefix = prefix.view(2, 1, -1, H, d).transpose(2, 3)  # [2, 1, H, l, d]
        prefix = prefix.expand(-1, B, -1, -1, -1).to(k.dtype)  # [2, B, H, l, d]
        return torch.cat([prefix[0], k], dim=2), torch.cat([prefix[1], v], dim=2)  # [B, H, l+N, d]


def attach_prefix(vit: ViT, cfg: PrefixConfig, method: str) -> PrefixEncoder:
    """Add one prefix set (encoder + a kv site per block) for ``method``; returns the encoder."""
    encoder = PrefixEncoder(
        method, len(vit.blocks), cfg.length, vit.width, cfg.mid_dim, cfg.reparameterize
    )
    vit.embed_sites.append(encoder)
    for i, block in enumerate(vit.blocks):
        block.attn.kv_sites.append(PrefixKV(method, i))
    return encoder


def freeze_prefixes(model: VideoModel) -> None:
    """After training: store each prefix MLP's output and drop the MLP.

    Outputs do not change. The trainable set (and so ``trainable_state_dict()``) swaps the
    encoder's ``embedding.weight`` and ``mlp.*`` for its ``prefix`` ``[L, 2, l, D]``, and
    ``model.spec`` records ``reparameterize: False``, so a model rebuilt from the spec (or from
    an adapter checkpoint saved afterwards) has exactly these tensors.
    """
    encoders = [m for m in model.modules() if isinstance(m, PrefixEncoder) and m.reparameterized]
    if not encoders:
        raise ValueError("the model has no reparameterised prefixes to freeze")
    params = dict(model.named_parameters())
    parts = {part: [params[n] for n in names] for part, names in model.parts.items()}
    for encoder in encoders:
        dropped = {id(p) for p in encoder.parameters()}
        encoder.freeze()
        kept = [p for p in parts[encoder.method] if id(p) not in dropped]
        parts[encoder.method] = kept + [encoder.prefix]
        if model.spec is not None:
            model.spec.options[encoder.method]["reparameterize"] = False
    model.set_trainable(parts)


def apply_prefix(target: Target, cfg: PrefixConfig) -> MethodParts:
    return MethodParts([attach_prefix(target.backbone, cfg, "prefix")])


METHOD = Method("prefix", PrefixConfig, apply_prefix)
