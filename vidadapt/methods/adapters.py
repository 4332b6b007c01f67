"""Bottleneck adapters in the unified view of He et al. (ICLR 2022), and their MAM adapter.

An adapter is ``down → ReLU → up`` with the "lora" init: ``down`` kaiming-uniform(a=√5) and
``up`` (and both biases) zero, so every adapter outputs 0 at step 0 and the model starts as the
image model. Where it sits on a sub-layer (attention and/or MLP):

* ``sequential`` (Houlsby): on the sub-layer's output, ``a + s·adapter(a)``, before the
  residual add (sites ``post_attn`` / ``post_mlp``).
* ``parallel``: reads the sub-layer's (normed) input and adds ``s·adapter(h)`` to its output
  (sites ``parallel_attn`` / ``parallel_mlp``).

The scale ``s`` is 1 for the plain adapters and e.g. 4 for the *scaled* parallel adapter.
MAM = prefix tuning on the attention (l = 30) + a scaled parallel adapter on the MLP
(bottleneck 512, s = 4), built from :mod:`.prefix` and the pieces here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from ..backbones.vit import Block, TokenLayout, ViT
from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .layers import Bottleneck
from .prefix import PrefixConfig, attach_prefix

STYLES = ("sequential", "parallel")
SUBLAYERS = ("attn", "mlp")


@dataclass
class AdapterConfig:
    style: str = "sequential"  # "sequential" (Houlsby) or "parallel"
    positions: tuple[str, ...] = ("attn", "mlp")  # sub-layers that get an adapter
    bottleneck: int = 64  # hidden width of each adapter
    scale: float = 1.0  # s multiplying the adapter output; 4 = scaled parallel adapter

    def __post_init__(self) -> None:
        self.positions = tuple(self.positions)
        if self.bottleneck < 1:
            raise ConfigError(f"adapter.bottleneck must be at least 1, got {self.bottleneck}")
        if self.style not in STYLES:
            raise ConfigError(f"adapter.style must be one of {STYLES}, got {self.style!r}")
        if not self.positions or not set(self.positions) <= set(SUBLAYERS):
            raise ConfigError(
                f"adapter.positions must be a non-empty subset of {SUBLAYERS}, got {self.positions}"
            )


class ScaledAdapter(nn.Module):
    """``s · up(relu(down(x)))`` with the "lora" init (zero output at step 0)."""

    def __init__(self, dim: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.adapter = Bottleneck(dim, bottleneck, act=nn.ReLU, zero_up=True)
        nn.init.kaiming_uniform_(self.adapter.down.weight, a=math.sqrt(5))

    def branch(self, x: Tensor) -> Tensor:
        return self.scale * self.adapter(x)


class SequentialAdapter(ScaledAdapter):
    """post_attn / post_mlp site: ``a + s·adapter(a)`` on the sub-layer output ``a``."""

    def forward(self, a: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        return a + self.branch(a)


class ParallelAdapter(ScaledAdapter):
    """parallel_attn / parallel_mlp site: ``s·adapter(h)`` on the sub-layer input ``h``."""

    def forward(self, h: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        return self.branch(h)


def attach_adapters(vit: ViT, cfg: AdapterConfig) -> list[ScaledAdapter]:
    """One adapter per block and position, at the sites ``cfg.style`` calls for."""
    kind = SequentialAdapter if cfg.style == "sequential" else ParallelAdapter
    prefix = "post" if cfg.style == "sequential" else "parallel"
    adapters = []
    for block in vit.blocks:
        for position in cfg.positions:
            adapter = kind(vit.width, cfg.bottleneck, cfg.scale)
            getattr(block, f"{prefix}_{position}").append(adapter)
            adapters.append(adapter)
    return adapters


def apply_adapter(target: Target, cfg: AdapterConfig) -> MethodParts:
    return MethodParts(attach_adapters(target.backbone, cfg))


ADAPTER = Method("adapter", AdapterConfig, apply_adapter)


@dataclass
class MAMConfig:
    prefix_length: int = 30  # l, prefix vectors per block on the attention
    mid_dim: int = 512  # hidden width of the prefix reparameterisation MLP
    reparameterize: bool = True  # prefixes through the MLP while training (see prefix.py)
    bottleneck: int = 512  # hidden width of the parallel MLP adapter
    scale: float = 4.0  # s of the scaled parallel MLP adapter


def apply_mam(target: Target, cfg: MAMConfig) -> MethodParts:
    vit: ViT = target.backbone
    prefix = PrefixConfig(cfg.prefix_length, cfg.mid_dim, cfg.reparameterize)
    adapter = AdapterConfig("parallel", ("mlp",), cfg.bottleneck, cfg.scale)
    return MethodParts([attach_prefix(vit, prefix, "mam"), *attach_adapters(vit, adapter)])


MAM = Method("mam", MAMConfig, apply_mam)
