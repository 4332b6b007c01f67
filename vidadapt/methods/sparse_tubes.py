"""Sparse tubes: a whole clip as one short token sequence for the frozen image model, in the
form of TubeViT (Piergiovanni et al., CVPR 2023).

A frame-wise method spends T × h·w tokens on a clip, most of them on frames that look alike.
TubeViT instead cuts the clip with a few *tube* shapes, each a 3D convolution with its own
kernel (frames × pixels × pixels), stride and offset (docs/methods.md):

* an image tube (1 × p × p, the image model's patch) on a few frames, for appearance;
* longer, sparser tubes (8 × 8 × 8, 16 × 4 × 4, 4 × 12 × 12 with strides of 32 pixels), for how
  things move.

Every tube's tokens get a fixed 3D sin/cos embedding of the tube's centre (frame, row, column;
a third of the channels each), scaled to the size of the image model's own position table (the
frozen model was trained with those values, not unit-sized ones). The class token leads the
sequence, and the frozen image model runs it as it would run one image: for the paper's tubes
on 32 × 224² that is 559 tokens per clip, a third of AIM's 8 × 197 at 8 frames.

Kernels start from the frozen patch embedding: resized to the tube's pixels (keeping its
response to a flat image), repeated over the tube's frames and divided by their number. They
train, with a bias per tube; adapters join by stacking (``sparse_tubes+adapter``,
``sparse_tubes+lora``). Methods that relate the image model's inputs as frames in time (AIM,
ST-Adapter...) cannot stack: there is one sequence per clip, not one per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import TokenLayout, ViT
from ..errors import ConfigError
from .base import Method, MethodParts, Target

# TubeViT's tubes for 32 frames at 224² with a 16-pixel patch: (frames, rows, columns).
TUBEVIT_TUBES = [
    {"kernel": [8, 8, 8], "stride": [16, 32, 32], "offset": [0, 0, 0]},
    {"kernel": [16, 4, 4], "stride": [6, 32, 32], "offset": [4, 8, 8]},
    {"kernel": [4, 12, 12], "stride": [16, 32, 32], "offset": [0, 16, 16]},
    {"kernel": [1, 16, 16], "stride": [32, 16, 16], "offset": [0, 0, 0]},
]

# The same shapes with strides fitted to 8 frames (for comparisons at AIM's 8 frames): 49 + 49
# + 98 + 196 = 392 tokens per clip at 224², against 8 x 196 patches.
TUBES_8_FRAMES = [
    {"kernel": [8, 8, 8], "stride": [16, 32, 32], "offset": [0, 0, 0]},
    {"kernel": [8, 4, 4], "stride": [8, 32, 32], "offset": [0, 8, 8]},
    {"kernel": [4, 12, 12], "stride": [4, 32, 32], "offset": [0, 16, 16]},
    {"kernel": [1, 16, 16], "stride": [8, 16, 16], "offset": [0, 0, 0]},
]


@dataclass
class SparseTubesConfig:
    # Each tube: kernel, stride and offset as [frames, rows, columns] (pixels for rows and
    # columns); the default is TubeViT's, for 32 frames of 224² and a 16-pixel patch.
    tubes: list[dict[str, list[int]]] = field(default_factory=lambda: [
        {key: list(value) for key, value in tube.items()} for tube in TUBEVIT_TUBES])
    kernel_rank: int | None = 16  # rank of each tube kernel's trained update (None: full)
    positions: str = "sincos"  # "sincos": TubeViT's fixed 3D sin/cos of the tube centres;
    # "image": the image model's own position table at the centre, plus sin/cos of the frame

    def __post_init__(self) -> None:
        if not self.tubes:
            raise ConfigError("sparse_tubes.tubes lists no tube")
        if self.kernel_rank is not None and self.kernel_rank < 1:
            raise ConfigError(f"sparse_tubes.kernel_rank must be at least 1 (or null: full "
                              f"kernels), got {self.kernel_rank}")
        if self.positions not in ("sincos", "image"):
            raise ConfigError(f"sparse_tubes.positions must be sincos or image, got "
                              f"{self.positions!r}")
        # Each tube in full: the stride defaults to the kernel (no overlap), the offset to 0.
        self.tubes = [{"kernel": list(tube.get("kernel", ())),
                       "stride": list(tube.get("stride", tube.get("kernel", ()))),
                       "offset": list(tube.get("offset", (0, 0, 0))),
                       **{k: v for k, v in tube.items() if k not in ("kernel", "stride", "offset")}}
                      for tube in self.tubes]
        for i, tube in enumerate(self.tubes):
            if len(tube) != 3 or not tube["kernel"]:
                raise ConfigError(f"sparse_tubes.tubes[{i}] needs kernel (and stride, offset) "
                                  f"as [frames, rows, columns], got {tube}")
            for key, value in tube.items():
                minimum = 0 if key == "offset" else 1
                if len(value) != 3 or min(value) < minimum:
                    raise ConfigError(f"sparse_tubes.tubes[{i}].{key} must be 3 numbers "
                                      f">= {minimum} [frames, rows, columns], got {value}")


@dataclass(frozen=True)
class Tube:
    kernel: tuple[int, int, int]  # (frames, rows, columns)
    stride: tuple[int, int, int]
    offset: tuple[int, int, int]

    @classmethod
    def of(cls, spec: dict[str, list[int]]) -> Tube:
        """From a tube of ``SparseTubesConfig.tubes`` (kernel, stride and offset filled in)."""
        return cls(tuple(spec["kernel"]), tuple(spec["stride"]), tuple(spec["offset"]))

    def positions(self, size: tuple[int, int, int]) -> tuple[int, int, int]:
        """Tubes along each axis of a clip of ``size`` (frames, rows, columns)."""
        axes = zip(size, self.kernel, self.stride, self.offset, strict=True)
        return tuple((n - o - k) // s + 1 if n - o >= k else 0 for n, k, s, o in axes)

    def centres(self, size: tuple[int, int, int], device: torch.device) -> Tensor:
        """``[n, 3]`` (frame, row, column) of each tube's centre, in the order of its tokens."""
        axes = [torch.arange(count, device=device) * s + o + k // 2 for count, k, s, o in
                zip(self.positions(size), self.kernel, self.stride, self.offset, strict=True)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3).float()


def sincos_3d(centres: Tensor, dim: int) -> Tensor:
    """``[n, D]``: a third of the channels per axis (frame, row, column), each half sine and
    half cosine of the coordinate at frequencies 1 / 10000^(j / (D/6)); channels left over by
    the thirds are zero."""
    third = dim // 6 * 2
    half = third // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=centres.device) / half)
    table = torch.zeros(centres.shape[0], dim, device=centres.device)
    for axis in range(3):
        angle = centres[:, axis : axis + 1] * freq  # [n, half]
        table[:, axis * third : axis * third + half] = angle.sin()
        table[:, axis * third + half : (axis + 1) * third] = angle.cos()
    return table


def image_positions(vit: ViT, centres: Tensor, size: tuple[int, int]) -> Tensor:
    """``[n, D]``: the image model's position table read (bilinearly) at each tube's centre."""
    table = vit.pos_embed[:, 1:]  # [1, g*g, D]
    g = int(math.sqrt(table.shape[1]))
    grid = table.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()  # [1, D, g, g]
    rows = 2 * centres[:, 1] / size[0] - 1  # grid_sample's [-1, 1], cell centres as pixels
    cols = 2 * centres[:, 2] / size[1] - 1
    where = torch.stack([cols, rows], dim=-1)[None, None]  # [1, 1, n, 2] as (x, y)
    sampled = F.grid_sample(grid, where, mode="bilinear", align_corners=False,
                            padding_mode="border")  # [1, D, 1, n]
    return sampled[0, :, 0].t()  # [n, D]


def inflate_patch_kernel(weight: Tensor, kernel: tuple[int, int, int]) -> Tensor:
    """The image patch kernel ``[D, 3, p, p]`` as a tube kernel ``[D, 3, t, h, w]``: resized to
    h × w, then scaled and shifted so that a flat image gives the same response (each slice's
    sum kept: a resize alone samples only some of a larger kernel's weights), and averaged over
    t frames."""
    t, h, w = kernel
    D, C, p, q = weight.shape
    weight = weight.float()
    resized = F.interpolate(weight, size=(h, w), mode="bilinear", align_corners=False)
    resized = resized + (weight.mean(dim=(2, 3)) - resized.mean(dim=(2, 3)))[..., None, None]
    resized = resized * (p * q) / (h * w)  # [D, 3, h, w], the same sum as the patch kernel's
    return (resized[:, :, None] / t).expand(D, C, t, h, w).clone()


class TubeKernel(nn.Module):
    """One tube's kernel ``[D, 3, t, h, w]``: the frozen patch kernel inflated to the tube plus
    a trained update, zero at the start: of rank ``rank`` over the D output channels (a few
    space-time filters mixed into every channel), or a full one (``rank`` None)."""

    def __init__(self, tube: Tube, dim: int, channels: int, rank: int | None) -> None:
        super().__init__()
        self.tube = tube
        self.rank = rank
        size = channels * math.prod(tube.kernel)
        if rank is None:
            self.update = nn.Parameter(torch.zeros(dim, size))
        else:  # LoRA's start: the down projection random, the up projection zero
            self.down = nn.Parameter(torch.randn(rank, size) / math.sqrt(size))
            self.up = nn.Parameter(torch.zeros(dim, rank))

    def forward(self, patch_weight: Tensor) -> Tensor:
        base = inflate_patch_kernel(patch_weight, self.tube.kernel)  # [D, 3, t, h, w]
        update = self.update if self.rank is None else self.up @ self.down  # [D, 3*t*h*w]
        return base + update.view_as(base)


class TubeTokenizer(nn.Module):
    """The image model's tokenisation of a whole clip (``ViT.video_tokenizer``): clips ``[B, T,
    3, H, W]`` → ``[B, 1 + N, D]``, the class token then every tube's tokens."""

    def __init__(self, tubes: list[Tube], patch: nn.Conv2d, rank: int | None,
                 positions: str = "sincos") -> None:
        super().__init__()
        self.tubes, self.positions = tubes, positions
        dim, channels = patch.weight.shape[:2]
        self.kernels = nn.ModuleList(TubeKernel(tube, dim, channels, rank) for tube in tubes)
        bias = torch.zeros(dim) if patch.bias is None else patch.bias.detach()
        self.biases = nn.Parameter(bias.float().repeat(len(tubes), 1))  # [tubes, D]

    def count(self, size: tuple[int, int, int]) -> int:
        """Tokens (without the class token) for clips of ``size`` (frames, rows, columns)."""
        return sum(math.prod(tube.positions(size)) for tube in self.tubes)

    def forward(self, video: Tensor, vit: ViT) -> tuple[Tensor, TokenLayout]:
        B, T, C, H, W = video.shape
        x = video.transpose(1, 2)  # [B, 3, T, H, W]
        # A sin/cos table's values have an RMS of 1/sqrt(2); the frozen model knows positions
        # of its own table's size.
        scale = vit.pos_embed[0, 1:].float().pow(2).mean().sqrt() * math.sqrt(2)
        tokens = []
        patch_weight = vit.patch_embed.proj.weight
        for tube, kernel, bias in zip(self.tubes, self.kernels, self.biases, strict=True):
            if 0 in tube.positions((T, H, W)):
                raise ValueError(f"sparse_tubes: tube {tube} does not fit clips of {T} frames "
                                 f"of {H}x{W}; shrink it or its offset")
            t, r, c = tube.offset
            weight = kernel(patch_weight).to(x.dtype)  # [D, 3, t, h, w]
            out = F.conv3d(x[:, :, t:, r:, c:], weight, bias.to(x.dtype),
                           stride=tube.stride)  # [B, D, t', h', w']
            centres = tube.centres((T, H, W), x.device)  # [n, 3]
            positions = sincos_3d(centres, out.shape[1])  # [n, D]
            if self.positions == "image":
                positions[:, positions.shape[1] // 6 * 2:] = 0  # sin/cos of the frame only
                positions = positions + image_positions(vit, centres, (H, W)) / scale
            tokens.append(out.flatten(2).transpose(1, 2) +
                          (scale * positions).to(x.dtype))  # [B, n, D]
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(B, -1, -1)  # [B, 1, D]
        tokens = torch.cat([cls.to(x.dtype), *tokens], dim=1)  # [B, 1 + N, D]
        # One sequence per clip; its "grid" is the row of tube tokens.
        return tokens, TokenLayout(batch=B, frames=1, grid=(1, tokens.shape[1] - 1))


def apply_sparse_tubes(target: Target, cfg: SparseTubesConfig) -> MethodParts:
    vit: ViT = target.backbone
    if len(vit.video_tokenizer):
        raise ConfigError("sparse_tubes: another method already tokenises the clip")
    if vit.cfg.num_registers:
        raise ConfigError("sparse_tubes: backbones with register tokens are not supported")
    tokenizer = TubeTokenizer([Tube.of(t) for t in cfg.tubes], vit.patch_embed.proj,
                              cfg.kernel_rank, cfg.positions)
    vit.video_tokenizer.append(tokenizer)
    return MethodParts([tokenizer], inputs_are_frames=False)


METHOD = Method("sparse_tubes", SparseTubesConfig, apply_sparse_tubes)
