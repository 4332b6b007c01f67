"""ST-Adapter: spatio-temporal adapters for image-to-video transfer (Pan et al., NeurIPS 2022).

On the residual stream before attention and/or before the MLP, the *patch* tokens (class token
untouched) pass Linear(D, Ca) → depthwise Conv3d over (T, h, w) with kernel (3, 1, 1) →
Linear(Ca, D), added back. No activation (as in the released code). The conv and both biases
start at zero, so the adapter outputs 0 at step 0.

A kernel that is 1 × 1 in space is run as shifted, per-channel scaled copies of the frames
(:func:`temporal_depthwise_conv`), in the tokens' own layout. cuDNN's depthwise 3-D
convolution needs two transposes, and its bf16 weight-gradient kernel took 95% of a GPU
training step; the shifted sums cost a few elementwise passes over ``[B, T, h*w, Ca]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import Block, TokenLayout, ViT
from .registry import register_method

POSITIONS = ("pre_attn", "pre_mlp")


@dataclass
class STAdapterConfig:
    positions: tuple[str, ...] = ("pre_mlp",)  # "12x384" = pre_mlp; "24x384" = both
    width: int = 384  # bottleneck channels Ca
    kernel: tuple[int, int, int] = (3, 1, 1)  # depthwise Conv3d kernel over (T, h, w)

    def __post_init__(self) -> None:
        self.positions = tuple(self.positions)
        self.kernel = tuple(self.kernel)
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise ValueError(
                f"st_adapter.positions must be a non-empty subset of {POSITIONS}, "
                f"got {self.positions}"
            )
        if len(self.kernel) != 3 or any(k < 1 or k % 2 == 0 for k in self.kernel):
            raise ValueError(
                f"st_adapter.kernel must be three odd sizes (T, h, w), got {self.kernel}"
            )


def temporal_depthwise_conv(z: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise convolution over time with zero padding, as ``nn.Conv3d`` of kernel
    ``(k, 1, 1)`` and ``groups=C`` computes it (cross-correlation), on ``z`` ``[B, T, P, C]``
    with that layer's ``weight`` ``[C, 1, k, 1, 1]`` and ``bias`` ``[C]``.

    out[t] = bias + sum_i weight[i] * z[t + i - k // 2]. The products and the sum are taken
    in the weight's precision (fp32 under autocast, as the convolution accumulates), then cast
    back to ``z``'s dtype.
    """
    B, T, P, C = z.shape
    k = weight.shape[2]
    taps = weight.view(C, k)  # [C, k]
    padded = F.pad(z, (0, 0, 0, 0, k // 2, k // 2))  # [B, T + k - 1, P, C]
    out = padded[:, :T] * taps[:, 0]  # [B, T, P, C]
    for i in range(1, k):
        out = out + padded[:, i : i + T] * taps[:, i]
    if bias is not None:
        out = out + bias
    return out.to(z.dtype)


class STAdapter(nn.Module):
    def __init__(self, dim: int, width: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.down = nn.Linear(dim, width)
        padding = tuple(k // 2 for k in kernel)  # keeps T, h and w
        self.conv = nn.Conv3d(width, width, kernel, padding=padding, groups=width)
        self.up = nn.Linear(width, dim)
        for zeroed in (self.conv.weight, self.conv.bias, self.down.bias, self.up.bias):
            nn.init.zeros_(zeroed)

    def forward(self, x: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        BT, N, D = x.shape
        B, T, (h, w) = layout.batch, layout.frames, layout.grid
        start, end = layout.num_prefix, layout.num_prefix + layout.num_patches
        patches = x[:, start:end]  # [B*T, h*w, D]
        z = self.down(patches)  # [B*T, h*w, Ca]
        C = z.shape[-1]
        if self.conv.kernel_size[1:] == (1, 1):  # temporal only: no cuDNN, no transposes
            z = temporal_depthwise_conv(z.view(B, T, h * w, C), self.conv.weight, self.conv.bias)
            z = z.view(BT, h * w, C)  # [B*T, h*w, Ca]
        else:
            z = z.view(B, T, h, w, C).permute(0, 4, 1, 2, 3)  # [B, Ca, T, h, w]
            z = self.conv(z)
            z = z.permute(0, 2, 3, 4, 1).reshape(BT, h * w, C)  # [B*T, h*w, Ca]
        patches = patches + self.up(z)
        return torch.cat([x[:, :start], patches, x[:, end:]], dim=1)  # [B*T, N, D]


@register_method("st_adapter", STAdapterConfig)
def apply_st_adapter(model, cfg: STAdapterConfig):
    vit: ViT = model.backbone
    model.norm_before_pool = False  # frames are averaged, then the (frozen) final norm
    adapters = []
    for block in vit.blocks:
        for position in cfg.positions:
            adapter = STAdapter(vit.width, cfg.width, cfg.kernel)
            getattr(block, position).append(adapter)
            adapters.append(adapter)
    return adapters
