"""DualPath: dual-path adaptation from image to video transformers (Park et al., CVPR 2023).

The frozen image model encodes two kinds of images of a clip in one batch (docs/methods.md):

1. **Spatial path**: ``spatial_frames`` frames spread over the clip (every ``T / Ts``-th), each
   as it is, with *parallel* adapters beside every block's attention and MLP (bottleneck
   ``bottleneck_ratio`` · D, GELU, ``adapter_scale``, up projection zero).
2. **Temporal path**: consecutive frames tiled ``grid`` × ``grid`` into one image of the input
   size (each frame shrunk by ``grid``, averaging ``grid`` × ``grid`` pixels), T / grid² such
   images per clip, with *serial* adapters (before the attention, after it, after the MLP;
   their own, not the spatial path's). Each grid image's patches get a fixed sin/cos embedding
   of their frame's place in the grid and a learned position embedding of their own (zero at
   the start).

Each path's final-norm class tokens are averaged over its images; the two means, side by side,
pass ``Linear(2D → D)`` and GELU before the linear head (the official two-layer head). The
image model's own weights stay frozen; gradients pass through it to the adapters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import Block, TokenLayout, ViT, resample_pos_embed
from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .layers import Bottleneck


@dataclass
class DualPathConfig:
    spatial_frames: int | None = 8  # Ts, frames of the spatial path (every T/Ts-th); None = all
    grid: int = 4  # the temporal path tiles grid x grid consecutive frames into one image
    bottleneck_ratio: float = 0.25  # adapter hidden width = ratio * D
    adapter_scale: float = 1.0  # scale of the spatial path's parallel adapters
    adapter_dropout: float = 0.1  # dropout inside the adapters, after the activation

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ConfigError(f"dualpath.grid must be at least 2 (a 1x1 grid is a frame), got "
                              f"{self.grid}")


@dataclass(frozen=True)
class PathLayout:
    """Which of the ``images`` the image model encodes per clip belong to which path: the
    first ``spatial`` are frames, the rest grid images."""

    spatial: int  # Ts
    grids: int  # Tt

    @property
    def images(self) -> int:
        return self.spatial + self.grids


def path_layout(num_frames: int, cfg: DualPathConfig) -> PathLayout:
    spatial = num_frames if cfg.spatial_frames is None else cfg.spatial_frames
    per_grid = cfg.grid * cfg.grid
    if spatial < 1 or num_frames % spatial:
        raise ConfigError(f"dualpath.spatial_frames={spatial} must divide the clip's "
                          f"{num_frames} frames")
    if num_frames % per_grid:
        raise ConfigError(f"dualpath: the clip's {num_frames} frames do not split into grids "
                          f"of {per_grid} (grid {cfg.grid}); use a multiple of {per_grid}")
    return PathLayout(spatial, num_frames // per_grid)


class DualPathInputs(nn.Module):
    """The model's inputs stage: clips ``[B, T, 3, H, W]`` → ``[B, Ts + Tt, 3, H, W]``."""

    def __init__(self, paths: PathLayout, grid: int) -> None:
        super().__init__()
        self.paths, self.grid = paths, grid

    def forward(self, video: Tensor) -> Tensor:
        B, T, C, H, W = video.shape
        g = self.grid
        frames = video[:, :: T // self.paths.spatial]  # [B, Ts, 3, H, W]
        # Each small pixel is the mean of the g x g it replaces (no aliasing, and it traces to
        # ONNX, which has no antialiased bilinear resize).
        small = F.avg_pool2d(video.flatten(0, 1), g)  # [B*T, 3, H/g, W/g]
        small = small.view(B, self.paths.grids, g, g, C, H // g, W // g)  # [B, Tt, gy, gx, ...]
        tiles = small.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, self.paths.grids, C,
                                                           g * (H // g), g * (W // g))
        if tiles.shape[-2:] != (H, W):  # a side not divisible by the grid
            tiles = F.interpolate(tiles.flatten(0, 1), size=(H, W), mode="bilinear",
                                  align_corners=False).view(B, self.paths.grids, C, H, W)
        return torch.cat([frames, tiles], dim=1)


def grid_cell_embedding(grid: tuple[int, int], cells: int, dim: int,
                        device: torch.device | None = None) -> Tensor:
    """``[h*w, D]``: each patch of a grid image gets the sin/cos embedding of the frame it
    shows (its cell's place in the ``cells`` x ``cells`` grid, row by row)."""
    h, w = grid
    rows = torch.arange(h, device=device) * cells // h
    cols = torch.arange(w, device=device) * cells // w
    frame = (rows[:, None] * cells + cols[None, :]).flatten().float()  # [h*w]
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device).float() / half)
    angle = frame[:, None] * freq[None, :]  # [h*w, D/2]
    table = torch.zeros(h * w, dim, device=device)
    table[:, 0:2 * half:2], table[:, 1:2 * half:2] = angle.sin(), angle.cos()
    return table


class GridPositions(nn.Module):
    """Embed site: adds to the grid images' patch tokens the fixed frame-in-grid embedding and
    a learned position embedding (zero at the start)."""

    def __init__(self, paths: PathLayout, grid: int, patch_grid: tuple[int, int], dim: int):
        super().__init__()
        self.paths, self.grid = paths, grid
        self.position = nn.Parameter(torch.zeros(patch_grid[0] * patch_grid[1], dim))

    def forward(self, x: Tensor, vit: ViT, layout: TokenLayout) -> Tensor:
        x = x.view(layout.batch, layout.frames, *x.shape[1:]).clone()  # [B, T', N, D]
        start, end = layout.num_prefix, layout.num_prefix + layout.num_patches
        # Made here, not kept: a fixed table would be a buffer a meta-device build lacks.
        cells = grid_cell_embedding(layout.grid, self.grid, x.shape[-1], x.device)  # [h*w, D]
        # The learned table is resampled to another patch grid as the image model's own is.
        position = resample_pos_embed(self.position[None], layout.grid, num_prefix=0)[0]
        x[:, self.paths.spatial :, start:end] += cells.to(x.dtype) + position  # [h*w, D]
        return x.flatten(0, 1)


class SpatialParallel(nn.Module):
    """parallel_attn / parallel_mlp site: ``s · adapter(h)`` on the spatial path's frames, zero
    on the grid images."""

    def __init__(self, dim: int, hidden: int, scale: float, dropout: float,
                 paths: PathLayout) -> None:
        super().__init__()
        self.adapter = _adapter(dim, hidden, dropout, skip=False)
        self.scale, self.paths = scale, paths

    def forward(self, h: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        h = h.view(layout.batch, layout.frames, *h.shape[1:])  # [B, T', N, D]
        out = torch.zeros_like(h)
        out[:, : self.paths.spatial] = self.scale * self.adapter(h[:, : self.paths.spatial])
        return out.flatten(0, 1)


class TemporalSerial(nn.Module):
    """pre_attn / post_attn / post_mlp site: ``x + adapter(x)`` on the grid images, the frames
    left as they are."""

    def __init__(self, dim: int, hidden: int, dropout: float, paths: PathLayout) -> None:
        super().__init__()
        self.adapter = _adapter(dim, hidden, dropout, skip=True)
        self.paths = paths

    def forward(self, x: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        x = x.view(layout.batch, layout.frames, *x.shape[1:])  # [B, T', N, D]
        grids = x[:, self.paths.spatial :]
        return torch.cat([x[:, : self.paths.spatial], self.adapter(grids)], dim=1).flatten(0, 1)


def _adapter(dim: int, hidden: int, dropout: float, skip: bool) -> nn.Module:
    adapter = Bottleneck(dim, hidden, skip=skip)  # GELU, up projection zero
    if dropout:
        adapter.act = nn.Sequential(nn.GELU(), nn.Dropout(dropout))
    return adapter


class PathFusion(nn.Module):
    """Temporal stage: frame embeddings ``[B, Ts + Tt, D]`` → mean per path, side by side →
    ``GELU(Linear(2D → D))``, which the linear head reads."""

    def __init__(self, dim: int, paths: PathLayout) -> None:
        super().__init__()
        self.paths = paths
        self.fuse = nn.Linear(2 * dim, dim)

    def forward(self, frames: Tensor) -> Tensor:
        spatial = frames[:, : self.paths.spatial].mean(dim=1)  # [B, D]
        temporal = frames[:, self.paths.spatial :].mean(dim=1)  # [B, D]
        return F.gelu(self.fuse(torch.cat([spatial, temporal], dim=-1)))


def apply_dualpath(target: Target, cfg: DualPathConfig) -> MethodParts:
    vit: ViT = target.backbone
    if vit.proj is not None:
        raise ConfigError("dualpath fuses the two paths before a linear head; it takes no text "
                          "head")
    paths = path_layout(target.num_frames, cfg)
    dim, grid = vit.width, (vit.cfg.grid, vit.cfg.grid)
    hidden = int(dim * cfg.bottleneck_ratio)
    positions = GridPositions(paths, cfg.grid, grid, dim)
    vit.embed_sites.append(positions)
    trainable: list[nn.Module] = [positions]
    for block in vit.blocks:
        new = [("parallel_attn", SpatialParallel(dim, hidden, cfg.adapter_scale,
                                                 cfg.adapter_dropout, paths)),
               ("parallel_mlp", SpatialParallel(dim, hidden, cfg.adapter_scale,
                                                cfg.adapter_dropout, paths))]
        new += [(site, TemporalSerial(dim, hidden, cfg.adapter_dropout, paths))
                for site in ("pre_attn", "post_attn", "post_mlp")]
        for site, module in new:
            getattr(block, site).append(module)
            trainable.append(module)
    fusion = PathFusion(dim, paths)
    return MethodParts(trainable + [fusion], inputs=DualPathInputs(paths, cfg.grid),
                       inputs_are_frames=False, temporal=fusion)


METHOD = Method("dualpath", DualPathConfig, apply_dualpath)
