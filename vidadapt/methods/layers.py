"""Small building blocks shared by several methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import TokenLayout, ViT


class Bottleneck(nn.Module):
    """``up(act(down(x)))``, optionally plus ``x`` (AIM's Adapter; Houlsby/parallel adapters).

    ``zero_up`` zeroes the up projection so the branch outputs 0 at step 0 and the adapted
    model starts exactly as the image model.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        act: type[nn.Module] = nn.GELU,
        skip: bool = False,
        zero_up: bool = True,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.down = nn.Linear(dim, hidden)
        self.act = act()
        self.up = nn.Linear(hidden, dim)
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        if zero_up:
            nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.up(self.act(self.down(x)))
        return x + branch if self.skip else branch


def temporal_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise convolution over time with zero padding, as a depthwise ``nn.Conv1d`` of
    kernel ``k`` (``nn.Conv3d`` of kernel ``(k, 1, 1)``) computes it, on ``x`` ``[B, T, ..., C]``
    with that layer's ``weight`` ``[C, 1, k]`` (``[C, 1, k, 1, 1]``) and ``bias`` ``[C]``.

    ``out[t] = bias + sum_i weight[i] * x[t + i - k // 2]``: ``k`` multiply-adds of shifted
    frames in the tokens' own layout. The convolution layers need the channels before time
    (two transposes) and their depthwise weight-gradient kernels are slow on GPUs (95% of an
    ST-Adapter training step in bf16). The sum is taken in the weight's precision (fp32 under
    autocast, as the convolution accumulates), then cast back to ``x``'s dtype.
    """
    T, C, k = x.shape[1], x.shape[-1], weight.shape[2]
    taps = weight.reshape(C, k)  # [C, k]
    pad = [0, 0] * (x.ndim - 2) + [k // 2, k // 2]  # zeros before and after the frames
    padded = F.pad(x, pad)  # [B, T + k - 1, ..., C]
    first = padded[:, :T]
    out = first * taps[:, 0] if bias is None else torch.addcmul(bias, first, taps[:, 0])
    for i in range(1, k):
        out = torch.addcmul(out, padded[:, i : i + T], taps[:, i])  # [B, T, ..., C]
    return out.to(x.dtype)


class TemporalEmbedding(nn.Module):
    """Adds a learned embedding per frame index to every token of that frame (embed site)."""

    def __init__(self, frames: int, dim: int) -> None:
        super().__init__()
        self.temporal_embedding = nn.Parameter(torch.zeros(1, frames, dim))

    def forward(self, x: Tensor, vit: ViT, layout: TokenLayout) -> Tensor:
        BT, N, D = x.shape
        x = x.view(layout.batch, layout.frames, N, D)  # [B, T, N, D]
        x = x + self.temporal_embedding[:, : layout.frames, None, :]
        return x.view(BT, N, D)
