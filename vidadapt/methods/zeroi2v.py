"""ZeroI2V: zero-cost adaptation of a frozen image transformer to video (Li et al., ECCV 2024).

Two parts, both free at inference (docs/methods.md):

1. **Frame shift** of keys and values: in every block, part ``i`` of the keys and values of
   frame ``t`` is taken from frame ``t + shift_offsets[i]`` of the same clip (an edge frame
   with no such neighbour keeps its own). Part ``i`` is attention head ``i`` (``shift_unit:
   heads``, the paper's spatial-temporal dual-head attention: the other heads stay spatial) or
   channels ``[i c, (i + 1) c)`` of every head, ``c = head_dim // shift_div`` (``channels``,
   the temporal channel shift of the released code's ablations: every head mixes its own
   frame with its neighbours'). Queries never move. No parameters, no FLOPs: a ``kv_sites``
   module that only re-indexes K and V.
2. **Linear adapters**: ``x + s · up(dropout(down(x)))`` with no activation, four per block
   — before the fused qkv projection, after the attention's output projection, before the
   MLP's first layer, after its second — each wrapping that frozen ``nn.Linear``
   (:class:`AdaptedLinear`). Being linear, each folds into the layer it wraps:
   ``vidadapt export`` writes the plain layers (``folding.merged_state_dict``) and a model
   with ``folded: true``, which has the image model's layers and cost plus the frame shift.

A zero temporal embedding is added to every token and ``ln_post`` (the final norm) trains, as
in the official code; up projections start at zero, so training starts at the image model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..backbones.vit import TokenLayout, ViT
from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .folding import FoldableLinear, linear_weights
from .layers import TemporalEmbedding


@dataclass
class ZeroI2VConfig:
    shift_offsets: tuple[int, ...] = (-1, 1)  # frame offset of shifted part 0, 1, ...: K400
    # (-1, 1) (one part looks back, one ahead); SSv2 (-1, 1, -2, 2); the rest stays in its frame
    shift_unit: str = "heads"  # what a part is: "heads" (head i: the paper's; the other heads
    # stay spatial) or "channels" (channel slice i of every head, head_dim // shift_div wide)
    shift_div: int = 4  # channels only: a part is head_dim // shift_div of each head's channels
    adapters: bool = True  # four linear adapters per block (folded into the layers by export)
    bottleneck_ratio: float = 0.25  # adapter hidden width = ratio * D
    adapter_scale: float = 0.5  # s: 0.5 for K400, 1.0 for SSv2
    adapter_dropout: float = 0.1  # inside each adapter: 0.1 for K400, 0.0 for SSv2
    temporal_embedding: bool = True  # zero-init [1, T, D] embedding added to every token
    folded: bool = False  # the exported form: the adapters already folded into the frozen
    # layers, so none are built (set by `vidadapt export`, not by hand)

    def __post_init__(self) -> None:
        self.shift_offsets = tuple(int(o) for o in self.shift_offsets)
        if 0 in self.shift_offsets:
            raise ConfigError("zeroi2v.shift_offsets: 0 is the frame itself; list the "
                              "offsets of the shifted parts only, e.g. [-1, 1]")
        if self.shift_unit not in ("heads", "channels"):
            raise ConfigError(f"zeroi2v.shift_unit: {self.shift_unit!r}; use heads or channels")
        if isinstance(self.shift_div, bool) or not isinstance(self.shift_div, int):
            raise ConfigError(f"zeroi2v.shift_div: {self.shift_div!r}; use a whole number")


class FrameShift(nn.Module):
    """kv site: part ``i`` of the keys and values of frame ``t`` comes from frame
    ``t + offsets[i]``: head ``i`` (``channels=None``) or channels ``[i c, (i + 1) c)`` of
    every head (``channels=c``)."""

    spatial_only = True  # shifts frames of the per-frame attention; not for attention across T

    def __init__(self, offsets: tuple[int, ...], channels: int | None = None) -> None:
        super().__init__()
        self.offsets, self.channels = offsets, channels

    def forward(self, k: Tensor, v: Tensor, layout: TokenLayout) -> tuple[Tensor, Tensor]:
        return self.shift(k, layout), self.shift(v, layout)

    def shift(self, x: Tensor, layout: TokenLayout) -> Tensor:
        BT, H, N, d = x.shape
        T = layout.frames
        frames = x.view(BT // T, T, H, N, d)  # [B, T, H, N, d]
        out = frames.clone()
        for part, offset in enumerate(self.offsets):
            # Frames t with t + offset inside the clip read it; the others keep their own.
            source = slice(max(offset, 0), T + min(offset, 0))
            dest = slice(max(-offset, 0), T + min(-offset, 0))
            if self.channels is None:  # the whole head
                out[:, dest, part] = frames[:, source, part]
            else:  # one slice of every head's channels
                width = slice(part * self.channels, (part + 1) * self.channels)
                out[:, dest, ..., width] = frames[:, source, ..., width]
        return out.view(BT, H, N, d)

    def extra_repr(self) -> str:
        unit = "heads" if self.channels is None else f"{self.channels} channels of each head"
        return f"offsets={self.offsets}, parts={unit}"


def frame_shift(cfg: ZeroI2VConfig, heads: int, head_dim: int) -> FrameShift:
    """The shift ``cfg`` asks for, refused in one line where no part would stay in its frame."""
    parts = len(cfg.shift_offsets)
    if cfg.shift_unit == "heads":
        if parts >= heads:
            raise ConfigError(f"zeroi2v.shift_offsets: {parts} temporal heads leave none of "
                              f"the {heads} heads spatial")
        return FrameShift(cfg.shift_offsets)
    if not 1 <= cfg.shift_div <= head_dim:
        raise ConfigError(f"zeroi2v.shift_div {cfg.shift_div}: a part is head_dim // shift_div "
                          f"channels; use 1 to {head_dim}")
    channels = head_dim // cfg.shift_div
    if parts * channels >= head_dim:
        raise ConfigError(f"zeroi2v.shift_div {cfg.shift_div}: {parts} offsets x {channels} "
                          f"channels leave none of a head's {head_dim} in its own frame; "
                          f"raise shift_div above {parts}")
    return FrameShift(cfg.shift_offsets, channels)


class LinearAdapter(nn.Module):
    """``x + scale · up(dropout(down(x)))``: a residual bottleneck with no activation, so the
    whole map is the affine ``M x + c`` (:meth:`affine`)."""

    def __init__(self, dim: int, hidden: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, dim)
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # the identity at the start
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.scale * self.up(self.dropout(self.down(x)))

    def affine(self) -> tuple[Tensor, Tensor]:
        """``M = I + s · W_up W_down`` ``[D, D]`` and ``c = s · (W_up b_down + b_up)`` ``[D]``."""
        up, down = self.up, self.down
        eye = torch.eye(up.out_features, dtype=up.weight.dtype, device=up.weight.device)
        matrix = eye + self.scale * up.weight @ down.weight
        offset = self.scale * (up.weight @ down.bias + up.bias)
        return matrix, offset


class AdaptedLinear(FoldableLinear):
    """A frozen ``nn.Linear`` with a :class:`LinearAdapter` on its input (``before=True``:
    ``base(adapter(x))``) or on its output (``adapter(base(x))``)."""

    def __init__(self, base: nn.Linear, adapter: LinearAdapter, before: bool) -> None:
        super().__init__()
        self.base, self.adapter, self.before = base, adapter, before

    def forward(self, x: Tensor) -> Tensor:
        return self.base(self.adapter(x)) if self.before else self.adapter(self.base(x))

    def folded(self) -> tuple[Tensor, Tensor | None]:
        matrix, offset = (t.detach() for t in self.adapter.affine())
        weight, bias = linear_weights(self.base)  # a LoRA layer below folds first
        bias = torch.zeros_like(weight[:, 0]) if bias is None else bias
        if self.before:  # W (M x + c) + b
            return weight @ matrix, weight @ offset + bias
        return matrix @ weight, matrix @ bias + offset  # M (W x + b) + c


# Where the four adapters go: (the wrapped layer under a block, adapter on its input?).
ADAPTED_LAYERS = (("attn.qkv", True), ("attn.proj", False), ("mlp.fc1", True),
                  ("mlp.fc2", False))


def apply_zeroi2v(target: Target, cfg: ZeroI2VConfig) -> MethodParts:
    vit: ViT = target.backbone
    heads = vit.blocks[0].attn.heads
    if max(abs(o) for o in cfg.shift_offsets) >= target.num_frames:
        raise ConfigError(f"zeroi2v.shift_offsets {list(cfg.shift_offsets)} reach past the "
                          f"{target.num_frames} frames of a clip")
    dim = vit.width
    trainable: list[nn.Module] = [vit.norm]  # ln_post trains, as in the official code
    if cfg.temporal_embedding:
        embedding = TemporalEmbedding(target.num_frames, dim)
        vit.embed_sites.append(embedding)
        trainable.append(embedding)
    for block in vit.blocks:
        block.attn.kv_sites.append(frame_shift(cfg, heads, vit.width // heads))
        if not cfg.adapters or cfg.folded:
            continue
        for path, before in ADAPTED_LAYERS:
            parent_path, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            adapter = LinearAdapter(dim, int(dim * cfg.bottleneck_ratio), cfg.adapter_scale,
                                    cfg.adapter_dropout)
            setattr(parent, name, AdaptedLinear(getattr(parent, name), adapter, before))
            trainable.append(adapter)
    return MethodParts(trainable)


METHOD = Method("zeroi2v", ZeroI2VConfig, apply_zeroi2v, across_frames=True,
                export_as=lambda cfg: replace(cfg, folded=True))
