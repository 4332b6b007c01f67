"""Side network: a light spatio-temporal network beside the frozen image model, in the form of
DiST (Qing et al., ICCV 2023). Nothing backpropagates through the image model.

Three parts, all trained, none inside the image model (docs/methods.md):

1. **Temporal encoder** on the pixels: a 3D patch convolution (``stem_frames`` × p × p, stride
   1 × p × p, so one token per patch and frame at ``temporal_width`` channels), then one block
   per image-model block: LayerNorm → temporal convolution (kernel ``kernel_size``) →
   QuickGELU → 3×3 spatial convolution, added back, then GELU.
2. **Integration branch** at ``integration_ratio`` · D, one layer per image-model block ``l``:
   it adds the block's output tokens (class token and patches, projected), the temporal
   encoder's features (projected; a learned vector stands in at the class token), feeds its
   patch tokens back into the temporal encoder, and refines itself with an MLP plus a
   temporal-convolution MLP. Every fusion is an addition.
3. **Pooling**: ``pool_layers`` layers in which a query per frame attends to that frame's
   integration tokens and a video query attends to the frame queries (plus a learned
   per-frame position); the video query plus the projected mean of the frames' final class
   tokens, normalised and projected to D, is the clip's feature for the linear head.

The image model runs once, without autograd: its block outputs are inputs to the side network,
so training memory is the side network's. With ``frame_stride`` k (DiST's "8+16": 2) the
image model sees every k-th frame and the temporal encoder all of them. Deviations from DiST:
a LayerNorm on the block tokens before their projection (as Side4Video), and a linear head
(DiST compares with CLIP's text embeddings of the class names).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import TokenLayout, ViT, quick_gelu
from ..errors import ConfigError
from .base import Method, MethodParts, Target


@dataclass
class SideNetworkConfig:
    temporal_width: int = 96  # channels of the temporal encoder (DiST: 96)
    integration_ratio: float = 0.5  # integration branch width = ratio * D (384 for ViT-B)
    stem_frames: int = 5  # temporal extent of the pixel stem's 3D patch convolution
    kernel_size: int = 3  # temporal convolutions in the encoder and the integration MLP
    pool_layers: int = 4  # pooling layers: 4 for K400, 2 for SSv2
    pool_heads: int | None = None  # pooling attention heads; None = integration width / 64
    frame_stride: int = 1  # the image model sees every k-th frame, the temporal encoder all of
    # them (DiST's "8+16" setting: 2)

    def __post_init__(self) -> None:
        if self.kernel_size % 2 == 0 or self.stem_frames % 2 == 0:
            raise ConfigError("side_network: kernel_size and stem_frames must be odd (the "
                              "convolutions keep every frame)")
        if self.pool_layers < 1:
            raise ConfigError(f"side_network.pool_layers must be at least 1, got "
                              f"{self.pool_layers}")
        if self.frame_stride < 1:
            raise ConfigError(f"side_network.frame_stride must be at least 1, got "
                              f"{self.frame_stride}")


def channels_last(x: Tensor) -> Tensor:
    """``[B, C, T, h, w]`` → ``[B, T, h*w, C]``."""
    return x.flatten(3).permute(0, 2, 3, 1)


def channels_first(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, T, h*w, C]`` → ``[B, C, T, h, w]``."""
    return x.permute(0, 3, 1, 2).unflatten(3, grid)


class TemporalBlock(nn.Module):
    """``GELU(x + conv_s(QuickGELU(conv_t(LN(x)))))`` on ``[B, C, T, h, w]``."""

    def __init__(self, width: int, kernel: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.temporal = nn.Conv3d(width, width, (kernel, 1, 1), padding=(kernel // 2, 0, 0))
        self.spatial = nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)  # LN over channels
        return F.gelu(x + self.spatial(quick_gelu(self.temporal(h))))


class TemporalMlp(nn.Module):
    """Integration tokens ``[B, T, N, Ci]`` → down to the temporal width, a temporal
    convolution, GELU, back up."""

    def __init__(self, width: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)
        self.up = nn.Linear(hidden, width)

    def forward(self, z: Tensor) -> Tensor:
        B, T, N, _ = z.shape
        h = self.down(z).permute(0, 2, 3, 1).flatten(0, 1)  # [B*N, C, T]
        h = F.gelu(self.conv(h)).view(B, N, -1, T).permute(0, 3, 1, 2)  # [B, T, N, C]
        return self.up(h)


class IntegrationLayer(nn.Module):
    """One layer of the integration branch, beside image-model block ``l``; all but the last
    feed their patch tokens back to the temporal encoder (``feeds_back``). With ``stride`` k
    the temporal encoder has k frames per image-model frame: k consecutive ones enter
    together (a temporal convolution of kernel and stride k) and the feedback repeats k times
    (nearest in time)."""

    def __init__(self, dim: int, width: int, temporal_width: int, kernel: int,
                 feeds_back: bool, stride: int) -> None:
        super().__init__()
        self.stride = stride
        # The frozen residual stream has channels of very different scale: normalised before
        # the projection (as Side4Video does), the block's tokens cannot drown the rest.
        self.from_block = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        self.from_temporal = nn.Linear(stride * temporal_width, width)
        self.class_token = nn.Parameter(torch.zeros(width))  # the temporal side has no class
        self.to_temporal = nn.Linear(width, temporal_width) if feeds_back else None
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.temporal_mlp = TemporalMlp(width, temporal_width, kernel)

    def forward(self, z: Tensor | None, block: Tensor, temporal: Tensor) -> tuple[Tensor, Tensor]:
        """``z`` ``[B, T, 1+P, Ci]`` (None before the first layer), the block's class and patch
        tokens ``[B, T, 1+P, D]`` and the temporal features ``[B, k*T, P, Ct]`` → both
        updated."""
        B, T = block.shape[:2]
        grouped = temporal.unflatten(1, (T, self.stride)).transpose(2, 3)  # [B, T, P, k, Ct]
        from_temporal = torch.cat([self.class_token.expand(B, T, 1, -1),
                                   self.from_temporal(grouped.flatten(3))], dim=2)  # [B,T,1+P,Ci]
        update = self.from_block(block) + from_temporal
        z = update if z is None else z + update
        if self.to_temporal is not None:
            back = self.to_temporal(z[:, :, 1:])  # [B, T, P, Ct]
            temporal = temporal + back.repeat_interleave(self.stride, dim=1)  # [B, k*T, P, Ct]
        h = self.norm(z)
        z = z + self.mlp(h) + self.temporal_mlp(h)
        return z, temporal


class CrossAttentionLayer(nn.Module):
    """``q += Attn(LN(q), LN(kv))``, then ``q += MLP(LN(q))`` (4x, GELU)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = (nn.LayerNorm(width) for _ in range(3))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        kv = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class SideNetwork(nn.Module):
    """The model's readout (``MethodParts.readout``): pixels and every block's output → clip
    feature ``[B, D]``."""

    def __init__(self, vit: ViT, frames: int, cfg: SideNetworkConfig) -> None:
        """``frames``: the image model's frames per clip (the clip's / ``frame_stride``)."""
        super().__init__()
        dim, depth, patch = vit.width, len(vit.blocks), vit.cfg.patch_size
        width = int(dim * cfg.integration_ratio)
        heads = cfg.pool_heads or max(width // 64, 1)
        if width % heads:
            raise ConfigError(f"side_network: integration width {width} is not divisible by "
                              f"pool_heads {heads}")
        self.layers = tuple(range(depth))  # the integration branch reads every block
        self.stem = nn.Conv3d(3, cfg.temporal_width, (cfg.stem_frames, patch, patch),
                              stride=(1, patch, patch), padding=(cfg.stem_frames // 2, 0, 0))
        self.temporal = nn.ModuleList(TemporalBlock(cfg.temporal_width, cfg.kernel_size)
                                      for _ in self.layers)
        self.integration = nn.ModuleList(
            IntegrationLayer(dim, width, cfg.temporal_width, cfg.kernel_size, i < depth - 1,
                             cfg.frame_stride)
            for i in self.layers)
        self.frame_query = nn.Parameter(torch.zeros(width))
        self.video_query = nn.Parameter(torch.zeros(width))
        self.frame_position = nn.Parameter(torch.zeros(frames, width))
        self.frame_pool = nn.ModuleList(CrossAttentionLayer(width, heads)
                                        for _ in range(cfg.pool_layers))
        self.video_pool = nn.ModuleList(CrossAttentionLayer(width, heads)
                                        for _ in range(cfg.pool_layers))
        self.from_class = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        for query in (self.frame_query, self.video_query):
            nn.init.normal_(query, std=0.02)

    def forward(self, block_outputs: list[Tensor], layout: TokenLayout, video: Tensor) -> Tensor:
        B, T, grid = layout.batch, layout.frames, layout.grid
        start, end = layout.num_prefix, layout.num_prefix + layout.num_patches
        temporal = self.stem(video.transpose(1, 2))  # [B, Ct, k*T, h, w]
        if temporal.shape[-2:] != grid:
            raise ValueError(f"the pixel stem gives a {tuple(temporal.shape[-2:])} grid, the "
                             f"image model {grid}")
        z = None
        for block_out, encoder, integration in zip(block_outputs, self.temporal,
                                                   self.integration, strict=True):
            temporal = channels_last(encoder(temporal))  # [B, k*T, P, Ct]
            tokens = class_and_patches(block_out.view(B, T, *block_out.shape[1:]), start, end)
            z, temporal = integration(z, tokens, temporal)
            temporal = channels_first(temporal, grid)  # [B, Ct, k*T, h, w]
        frames = z.flatten(0, 1)  # [B*T, 1+P, Ci]
        frame_q = self.frame_query.expand(B * T, 1, -1)  # [B*T, 1, Ci]
        video_q = self.video_query.expand(B, 1, -1)  # [B, 1, Ci]
        for frame_layer, video_layer in zip(self.frame_pool, self.video_pool, strict=True):
            frame_q = frame_layer(frame_q, frames)
            per_frame = frame_q.view(B, T, -1) + self.frame_position[:T]  # [B, T, Ci]
            video_q = video_layer(video_q, per_frame)
        last = block_outputs[-1].view(B, T, *block_outputs[-1].shape[1:])[:, :, 0]  # [B, T, D]
        summary = self.from_class(last).mean(dim=1)  # [B, Ci]
        return self.out(self.norm(video_q[:, 0] + summary))  # [B, D]


def class_and_patches(tokens: Tensor, start: int, end: int) -> Tensor:
    """The class token and the patches ``[B, T, 1+P, D]`` of a block's tokens ``[B, T, N, D]``
    whose patches are ``start:end``. With nothing between them (CLIP, timm) a view: the
    integration layer's norm then keeps the block's own output for its backward instead of a
    copy (12 blocks x 8 frames x 197 x 768 floats, 58 MB per ViT-B clip)."""
    if start == 1:
        return tokens[:, :, :end]
    return torch.cat([tokens[:, :, :1], tokens[:, :, start:end]], dim=2)  # registers, prompts


class EveryKthFrame(nn.Module):
    """Inputs stage: the image model sees frames 0, k, 2k, ... of the clip."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, video: Tensor) -> Tensor:
        return video[:, :: self.stride]  # [B, T/k, 3, H, W]


def apply_side_network(target: Target, cfg: SideNetworkConfig) -> MethodParts:
    if target.num_frames % cfg.frame_stride:
        raise ConfigError(f"side_network.frame_stride {cfg.frame_stride} does not divide the "
                          f"clip's {target.num_frames} frames")
    side = SideNetwork(target.backbone, target.num_frames // cfg.frame_stride, cfg)
    inputs = EveryKthFrame(cfg.frame_stride) if cfg.frame_stride > 1 else None
    return MethodParts(trainable=[side], readout=side, inputs=inputs)


METHOD = Method("side_network", SideNetworkConfig, apply_side_network,
                across_frames=True)
