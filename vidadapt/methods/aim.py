"""AIM: Adapt Image Models for efficient video action recognition (Yang et al., ICLR 2023).

Per block, in this order (docs/methods.md, matching the official code):

1. Temporal (T): attention runs across the T frames separately for every token position,
   through the block's *frozen* ``norm1`` and attention weights (``Attention.forward_frames``);
   the result passes a T-Adapter (no skip) and is added to the residual stream with drop-path.
2. Spatial (S): the block's own attention output passes an S-Adapter (with skip).
3. Joint (J): an MLP-Adapter (no skip) runs parallel to the MLP on ``norm2(x)``, scaled by
   ``adapter_scale``, with drop-path.

A zero temporal position embedding is added to every token before ``norm_pre``. The second
Linear of every adapter starts at zero, so the adapted model starts as the image model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..backbones.vit import Block, DropPath, TokenLayout, ViT, linear_schedule
from ..checkpoints.convert import convert_openai_clip, rename_keys
from .base import Method, MethodParts, Target
from .layers import Bottleneck, TemporalEmbedding


@dataclass
class AIMConfig:
    spatial: bool = True  # S-Adapter on every block's attention output
    temporal: bool = True  # temporal attention (frozen weights) + T-Adapter in every block
    joint: bool = True  # MLP-Adapter parallel to every block's MLP
    num_tadapter: int = 1  # 2 adds an adapter (with skip) before the temporal attention (SSv2)
    bottleneck_ratio: float = 0.25  # adapter hidden width = ratio * D
    adapter_scale: float = 0.5  # MLP-Adapter scale s: 0.5 for K400/K700/Diving-48, 1.0 SSv2
    drop_path: float = 0.2  # max drop-path rate (linear over depth) on T and MLP-Adapter branches
    temporal_embedding: bool = True  # zero-init [1, T, D] embedding added to every token

    def __post_init__(self) -> None:
        if self.num_tadapter not in (1, 2):
            raise ValueError(f"aim.num_tadapter must be 1 or 2, got {self.num_tadapter}")


class TemporalAdaptation(nn.Module):
    """pre_attn site: x + drop_path(T-Adapter(attn(norm1(x) across frames)))."""

    def __init__(self, dim: int, hidden: int, num_tadapter: int, drop_path: float) -> None:
        super().__init__()
        self.adapter_in = Bottleneck(dim, hidden, skip=True) if num_tadapter == 2 else None
        self.adapter = Bottleneck(dim, hidden, skip=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        # The norm and the adapters act per token, so they run in the frame-major layout too:
        # no transposes to [B*N, T, D] and back.
        h = block.norm1(x)  # [B*T, N, D]
        if self.adapter_in is not None:
            h = self.adapter_in(h)
        h = self.adapter(block.attn.forward_frames(h, layout))  # [B*T, N, D]
        return x + self.drop_path(h)


class SpatialAdapter(nn.Module):
    """post_attn site: the attention output through an adapter with skip."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.adapter = Bottleneck(dim, hidden, skip=True)

    def forward(self, a: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        return self.adapter(a)


class JointAdapter(nn.Module):
    """parallel_mlp site: drop_path(s * MLP-Adapter(norm2(x))), added to the MLP output."""

    def __init__(self, dim: int, hidden: int, scale: float, drop_path: float) -> None:
        super().__init__()
        self.scale = scale
        self.adapter = Bottleneck(dim, hidden, skip=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, h: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        return self.drop_path(self.adapter(h), scale=self.scale)


def apply_aim(target: Target, cfg: AIMConfig) -> MethodParts:
    vit: ViT = target.backbone
    dim = vit.width
    hidden = int(dim * cfg.bottleneck_ratio)
    rates = linear_schedule(cfg.drop_path, len(vit.blocks))
    trainable: list[nn.Module] = [vit.norm]  # AIM tunes ln_post
    if cfg.temporal_embedding:
        embedding = TemporalEmbedding(target.num_frames, dim)
        vit.embed_sites.append(embedding)
        trainable.append(embedding)
    for block, rate in zip(vit.blocks, rates, strict=True):
        new = []
        if cfg.temporal:
            new.append(("pre_attn", TemporalAdaptation(dim, hidden, cfg.num_tadapter, rate)))
        if cfg.spatial:
            new.append(("post_attn", SpatialAdapter(dim, hidden)))
        if cfg.joint:
            new.append(("parallel_mlp", JointAdapter(dim, hidden, cfg.adapter_scale, rate)))
        for site, module in new:
            getattr(block, site).append(module)
            trainable.append(module)
    return MethodParts(trainable)


METHOD = Method("aim", AIMConfig, apply_aim, across_frames=True)


# ---- the official release's checkpoints ----------------------------------------------------------

# The AIM repository's mmaction2 model: a ViT_CLIP backbone (OpenAI CLIP names) whose blocks hold
# T_Adapter_in / T_Adapter / S_Adapter / MLP_Adapter (each D_fc1 → GELU → D_fc2), a
# [1, T, D] temporal_embedding, and an I3D head (cls_head.fc_cls).
_RELEASE_ADAPTERS = [
    (r"\.T_Adapter_in\.", ".pre_attn.0.adapter_in."),
    (r"\.T_Adapter\.", ".pre_attn.0.adapter."),
    (r"\.S_Adapter\.", ".post_attn.0.adapter."),
    (r"\.MLP_Adapter\.", ".parallel_mlp.0.adapter."),
    (r"\.D_fc1\.", ".down."),
    (r"\.D_fc2\.", ".up."),
]


def convert_aim_release(
    state_dict: dict[str, Tensor], num_frames: int | None = None
) -> tuple[dict[str, Tensor], dict]:
    """The ``state_dict`` of an official AIM checkpoint → a vidadapt ``aim`` model's state dict,
    and what the file says of the architecture: ``num_frames``, ``num_tadapter``,
    ``num_classes``."""
    backbone = {k.removeprefix("backbone."): v for k, v in state_dict.items()
                if k.startswith("backbone.")}
    temporal = backbone.pop("temporal_embedding")  # [1, T, D]
    backbone.pop("proj", None)  # CLIP's projection: the video head reads the pooled token
    converted = rename_keys(convert_openai_clip(backbone), _RELEASE_ADAPTERS)
    state = {f"backbone.{k}": v for k, v in converted.items()}
    state["backbone.embed_sites.0.temporal_embedding"] = temporal
    state["head.weight"] = state_dict["cls_head.fc_cls.weight"]
    state["head.bias"] = state_dict["cls_head.fc_cls.bias"]
    facts = {
        "num_frames": temporal.shape[1],
        "num_tadapter": 2 if any(".T_Adapter_in." in k for k in state_dict) else 1,
        "num_classes": state["head.weight"].shape[0],
    }
    return state, facts
