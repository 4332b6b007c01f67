"""Video transforms in plain torch (no torchvision), on uint8 clips ``[T, 3, H, W]``.

Every transform is called as ``transform(clip, label, generator) -> (clip, label)``: the label
passes through, except for a horizontal flip with a label map (SSv2's "left to right" becomes
"right to left" when mirrored). All random parameters are drawn once per clip from
``generator`` (``None`` = torch's global RNG), so every frame gets the same crop, flip, colour
change and erased box — per-frame parameters would add flicker that no real video has — and a
dataset that seeds the generator per sample gets reproducible augmentation.

Geometric and colour transforms keep uint8; :class:`Normalize` turns the clip into floats and
:class:`RandomErasing` runs on those. :func:`build_transform` assembles the standard pipelines
from a :class:`TransformConfig`.

The appearance steps (colour jitter, RandAugment, normalisation, erasing) are
:class:`BatchTransform` steps: their ops take a batch ``[B, T, 3, H, W]`` with one amount per
clip, and drawing the parameters is apart from applying them. With ``data.gpu_augment`` the
worker only draws them (:class:`DrawPlans`) and the training step applies them to the batch on
the device (:class:`DeviceAugment`): the same code on the same draws as the worker path.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .motion import MOTION_SCALE, MOTION_ZERO, MotionMaps, channels_for

Generator = torch.Generator | None

NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # timm augreg ViTs
}

# ---------------------------------------------------------------------------------------------
# Random draws, all from one generator
# ---------------------------------------------------------------------------------------------


def _uniform(low: float, high: float, generator: Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(high: int, generator: Generator) -> int:
    """A random integer in ``[0, high)``."""
    return int(torch.randint(high, (), generator=generator))


def _chance(p: float, generator: Generator) -> bool:
    return torch.rand((), generator=generator).item() < p


# ---------------------------------------------------------------------------------------------
# Base classes and composition
# ---------------------------------------------------------------------------------------------


class ClipTransform(ABC):
    """A transform that does not look at the label; subclasses implement :meth:`apply`."""

    @abstractmethod
    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        """Transform ``clip`` (``[T, 3, H, W]``), drawing random parameters from ``generator``."""

    def __call__(self, clip: Tensor, label: int, generator: Generator = None):
        return self.apply(clip, generator), label


class BatchTransform(ClipTransform):
    """A transform whose random parameters are drawn apart from their use, so that it can also
    run on a batch of clips on the accelerator (``data.gpu_augment``): the loader worker draws
    each clip's parameters (``draw``), the training step applies them to the whole batch
    (``apply_batch``). Both ways run the same code on the same draws, so they follow the same
    distributions and are as reproducible as each other."""

    @abstractmethod
    def draw(self, clip: Tensor, generator: Generator = None) -> Any:
        """The random parameters for ``clip`` (only its size is read)."""

    @abstractmethod
    def apply_batch(self, clips: Tensor, plans: Sequence) -> Tensor:
        """Transform ``clips`` (``[B, T, 3, H, W]``), clip ``b`` as ``plans[b]`` says."""

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        return self.apply_batch(clip.unsqueeze(0), [self.draw(clip, generator)])[0]


class Compose:
    """Apply transforms in order, threading the clip and the label through."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, clip: Tensor, label: int, generator: Generator = None):
        for transform in self.transforms:
            clip, label = transform(clip, label, generator)
        return clip, label

    def __repr__(self) -> str:
        inner = "".join(f"\n  {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def resize(clip: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of a uint8 ``[..., 3, H, W]`` clip, antialiased when shrinking.

    On a CPU the uint8 frames are resized as they are (PyTorch's uint8 kernel, the one
    torchvision uses): 4-5x faster than a round trip through float, within one grey level.
    """
    if clip.shape[-2:] == (height, width):
        return clip
    leading = clip.shape[:-3]
    frames = clip.reshape(-1, *clip.shape[-3:])  # [N, 3, H, W]
    in_uint8 = frames.dtype == torch.uint8 and frames.device.type == "cpu"
    frames = F.interpolate(
        frames if in_uint8 else frames.float(), size=(height, width), mode="bilinear",
        antialias=True, align_corners=False,
    )
    if not in_uint8:
        frames = frames.round_().clamp_(0, 255).to(torch.uint8)
    return frames.reshape(*leading, 3, height, width)


def crop(clip: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    return clip[..., top : top + height, left : left + width]


class Resize(ClipTransform):
    """Resize so that the short side is ``short_side``, keeping the aspect ratio."""

    def __init__(self, short_side: int):
        self.short_side = short_side

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        height, width = clip.shape[-2:]
        scale = self.short_side / min(height, width)
        return resize(clip, int(height * scale + 0.5), int(width * scale + 0.5))

    def __repr__(self) -> str:
        return f"Resize(short_side={self.short_side})"


def random_resized_crop_box(
    height: int,
    width: int,
    area: tuple[float, float],
    aspect_ratio: tuple[float, float],
    generator: Generator = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a crop covering a random fraction ``area`` of the frame with a
    log-uniform aspect ratio; after 10 failed tries, the largest central crop whose aspect ratio
    is within range (the Inception / torchvision algorithm)."""
    log_ratio = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
    for _ in range(10):
        target_area = height * width * _uniform(*area, generator)
        ratio = math.exp(_uniform(*log_ratio, generator))
        w = round(math.sqrt(target_area * ratio))
        h = round(math.sqrt(target_area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return _randint(height - h + 1, generator), _randint(width - w + 1, generator), h, w
    frame_ratio = width / height
    if frame_ratio < aspect_ratio[0]:
        w, h = width, round(width / aspect_ratio[0])
    elif frame_ratio > aspect_ratio[1]:
        w, h = round(height * aspect_ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RandomResizedCrop(ClipTransform):
    """Crop a random area and aspect ratio (same box for every frame), resize to ``size``²."""

    def __init__(
        self,
        size: int,
        area: tuple[float, float] = (0.08, 1.0),
        aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ):
        self.size, self.area, self.aspect_ratio = size, tuple(area), tuple(aspect_ratio)

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        box = random_resized_crop_box(*clip.shape[-2:], self.area, self.aspect_ratio, generator)
        return resize(crop(clip, *box), self.size, self.size)

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, area={self.area}, ratio={self.aspect_ratio})"


def multi_scale_crop_box(
    height: int,
    width: int,
    size: int,
    scales: Sequence[float] = (1, 0.875, 0.75, 0.66),
    max_wh_scale_gap: int = 1,
    generator: Generator = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` as mmaction2's ``MultiScaleCrop`` with fixed offsets (TSN).

    Width and height are picked from ``scales`` × the short side, at most ``max_wh_scale_gap``
    scale levels apart; the box sits at one of five places (four corners or centre)."""
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    # Sides within 3 px of the output size snap to it, saving a resize (as mmaction2).
    sides = [size if abs(side - size) < 3 else side for side in sides]
    pairs = [
        (h, w)
        for i, h in enumerate(sides)
        for j, w in enumerate(sides)
        if abs(i - j) <= max_wh_scale_gap
    ]
    h, w = pairs[_randint(len(pairs), generator)]
    h_step, w_step = (height - h) // 4, (width - w) // 4
    offsets = [(0, 0), (0, 4 * w_step), (4 * h_step, 0), (4 * h_step, 4 * w_step)]
    offsets.append((2 * h_step, 2 * w_step))
    top, left = offsets[_randint(len(offsets), generator)]
    return top, left, h, w


class MultiScaleCrop(ClipTransform):
    """TSN-style corner / centre crop at one of several scales, resized to ``size``²."""

    def __init__(
        self, size: int, scales: Sequence[float] = (1, 0.875, 0.75, 0.66), max_wh_scale_gap=1
    ):
        self.size, self.scales, self.max_wh_scale_gap = size, tuple(scales), max_wh_scale_gap

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        box = multi_scale_crop_box(
            *clip.shape[-2:], self.size, self.scales, self.max_wh_scale_gap, generator
        )
        return resize(crop(clip, *box), self.size, self.size)

    def __repr__(self) -> str:
        return f"MultiScaleCrop({self.size}, scales={self.scales})"


def view_boxes(height: int, width: int, size: int, num_views: int) -> list[tuple[int, int]]:
    """``(top, left)`` of the test crops: the centre, or for three views the start, centre and
    end of the long side (left/centre/right or top/centre/bottom), centred on the short side."""
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the frame {height}x{width}")
    centre = ((height - size) // 2, (width - size) // 2)
    if num_views == 1:
        return [centre]
    if num_views != 3:
        raise ValueError(f"test crops must be 1 or 3, got {num_views}")
    if width >= height:
        return [(centre[0], 0), centre, (centre[0], width - size)]
    return [(0, centre[1]), centre, (height - size, centre[1])]


class CenterCrop(ClipTransform):
    """The central ``size``² square of every frame."""

    def __init__(self, size: int):
        self.size = size

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        top, left = view_boxes(*clip.shape[-2:], self.size, 1)[0]
        return crop(clip, top, left, self.size, self.size)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class SpatialViews(ClipTransform):
    """Test-time views: 1 centre crop or 3 crops along the long side, stacked
    ``[V, T, 3, size, size]``."""

    def __init__(self, size: int, num_views: int):
        self.size, self.num_views = size, num_views

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        boxes = view_boxes(*clip.shape[-2:], self.size, self.num_views)
        return torch.stack([crop(clip, top, left, self.size, self.size) for top, left in boxes])

    def __repr__(self) -> str:
        return f"SpatialViews({self.size}, num_views={self.num_views})"


class RandomHorizontalFlip:
    """Mirror the clip with probability ``p``; a mirrored clip's label goes through
    ``label_map`` (e.g. "moving left" ↔ "moving right"), labels not in it are kept."""

    def __init__(self, p: float = 0.5, label_map: dict[int, int] | None = None):
        self.p, self.label_map = p, dict(label_map or {})

    def __call__(self, clip: Tensor, label: int, generator: Generator = None):
        if not _chance(self.p, generator):
            return clip, label
        return clip.flip(-1), self.label_map.get(label, label)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, label_map={self.label_map})"


_MIRROR_WORDS = {
    "left": "right",
    "right": "left",
    "clockwise": "counter-clockwise",
    "counter-clockwise": "clockwise",
}


def mirror_label_map(classes: Sequence[str]) -> dict[int, int]:
    """The labels a horizontal flip turns into each other, from the class names: a class maps
    to the class whose name has left/right and clockwise/counter-clockwise swapped (SSv2's
    "Pushing something from left to right" ↔ "... from right to left")."""
    index = {name.lower(): i for i, name in enumerate(classes)}
    swaps = {}
    for i, name in enumerate(classes):
        words = name.lower().split(" ")
        mirrored = " ".join(_MIRROR_WORDS.get(word, word) for word in words)
        if mirrored != name.lower() and mirrored in index:
            swaps[i] = index[mirrored]
    return swaps


# ---------------------------------------------------------------------------------------------
# Appearance ops: a batch of clips [B, T, 3, H, W] and one amount per clip (a float, or a [B]
# tensor). Statistics (a contrast's mean grey, autocontrast's range, equalize's histogram) are
# taken per clip over all its frames, so every frame of a clip changes alike.
# ---------------------------------------------------------------------------------------------


def _per_clip(amount: Tensor | float, clips: Tensor) -> Tensor:
    """``amount`` (a float or one value per clip) shaped to broadcast over ``[B, T, C, H, W]``."""
    return torch.as_tensor(amount, dtype=torch.float32, device=clips.device).reshape(-1, 1, 1, 1, 1)


def _blend(image: Tensor, other: Tensor | float, factor: Tensor) -> Tensor:
    """``factor`` · image + (1 − factor) · other, the PIL ImageEnhance interpolation."""
    return (other + factor * (image - other)).clamp_(0, 255)


def _grayscale(clips: Tensor) -> Tensor:
    r, g, b = clips.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)  # [B, T, 1, H, W]


def _to_uint8(clips: Tensor) -> Tensor:
    return clips.round_().clamp_(0, 255).to(torch.uint8)


def adjust_brightness(clips: Tensor, factor: Tensor | float) -> Tensor:
    return _to_uint8(_blend(clips.float(), 0.0, _per_clip(factor, clips)))


def adjust_contrast(clips: Tensor, factor: Tensor | float) -> Tensor:
    # The grey level blended towards is the mean of the whole clip, so every frame changes alike.
    clips = clips.float()
    mean = _grayscale(clips).mean(dim=(1, 2, 3, 4), keepdim=True)  # [B, 1, 1, 1, 1]
    return _to_uint8(_blend(clips, mean, _per_clip(factor, clips)))


def adjust_saturation(clips: Tensor, factor: Tensor | float) -> Tensor:
    clips = clips.float()
    return _to_uint8(_blend(clips, _grayscale(clips), _per_clip(factor, clips)))


def adjust_sharpness(clips: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with a smoothed copy (PIL's SMOOTH kernel: 1s around a 5, over 13); border pixels
    stay as they are."""
    image = clips.float()
    # The kernel is (3x3 sum + 4 · centre) / 13, and the 3x3 sum is separable: two passes of
    # three-term sums over views, 5x faster on a CPU than a one-channel conv2d or avg_pool2d.
    rows = image[..., :-2, :] + image[..., 1:-1, :] + image[..., 2:, :]  # [B, T, 3, H-2, W]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # [B, T, 3, H-2, W-2]
    smooth = image.clone()
    smooth[..., 1:-1, 1:-1] = (box + 4 * image[..., 1:-1, 1:-1]) / 13
    return _to_uint8(_blend(image, smooth, _per_clip(factor, clips)))


def adjust_hue(clips: Tensor, shift: Tensor | float) -> Tensor:
    """Rotate the hue by ``shift`` turns (−0.5 … 0.5) in HSV space."""
    rgb = clips.float() / 255
    r, g, b = rgb.unbind(-3)  # each [B, T, H, W]
    value, _ = rgb.max(-3)
    chroma = value - rgb.min(-3).values
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    hue = torch.where(
        value == r,
        (g - b) / safe_chroma,
        torch.where(value == g, 2 + (b - r) / safe_chroma, 4 + (r - g) / safe_chroma),
    )
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + _per_clip(shift, clips)[..., 0]) % 1.0  # per-clip shift over [B, T, H, W]
    return _to_uint8(_hsv_to_rgb(hue, saturation, value) * 255)


def _hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """HSV ``[B, T, H, W]`` each → RGB ``[B, T, 3, H, W]`` by the closed form: channel ``n``
    (5, 3, 1 for R, G, B) is ``v − v·s·clamp(min(k, 4 − k), 0, 1)`` with ``k = (n + 6h) mod 6``.
    One channel at a time: a GPU batch never holds more than the output."""
    channels = []
    for n in (5, 3, 1):
        k = (n + hue * 6) % 6
        channels.append(value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(channels, -3)


def autocontrast(clips: Tensor, _: Tensor | float = 0.0) -> Tensor:
    """Stretch each channel to 0…255, with one min/max per channel over the whole clip."""
    flat = clips.transpose(1, 2).flatten(2)  # [B, 3, T*H*W]
    low = flat.amin(2).float().view(-1, 1, 3, 1, 1)
    high = flat.amax(2).float().view(-1, 1, 3, 1, 1)
    scale = torch.where(high > low, 255 / (high - low).clamp_min(1), torch.ones_like(high))
    low = torch.where(high > low, low, torch.zeros_like(low))
    # Truncate as torchvision does (PIL's float64 scale and offset can round one level apart).
    return ((clips.float() - low) * scale).floor_().clamp_(0, 255).to(torch.uint8)


def equalize(clips: Tensor, _: Tensor | float = 0.0) -> Tensor:
    """Histogram equalisation per channel (PIL's algorithm), one histogram per clip."""
    B = clips.shape[0]
    values = clips.transpose(1, 2).reshape(B * 3, -1).long()  # [B*3, T*H*W]
    offsets = 256 * torch.arange(B * 3, device=clips.device).unsqueeze(1)
    histogram = torch.bincount((values + offsets).flatten(), minlength=B * 3 * 256)
    histogram = histogram.view(B * 3, 256)
    # PIL leaves out the count of the highest value present from the step.
    highest = 255 - (histogram > 0).flip(1).int().argmax(1, keepdim=True)  # [B*3, 1]
    step = (histogram.sum(1, keepdim=True) - histogram.gather(1, highest)) // 255
    lut = (torch.cumsum(histogram, 1) + step // 2) // step.clamp_min(1)
    lut = torch.cat([lut.new_zeros(B * 3, 1), lut[:, :-1]], 1).clamp_(0, 255)
    identity = torch.arange(256, device=clips.device).expand(B * 3, 256)
    lut = torch.where(step == 0, identity, lut)  # a flat channel stays as it is
    out = lut.gather(1, values).to(torch.uint8)  # [B*3, T*H*W]
    return out.view(B, 3, *clips.shape[1:2], *clips.shape[3:]).transpose(1, 2)


def posterize(clips: Tensor, bits: Tensor | float) -> Tensor:
    """Keep the ``bits`` most significant bits of every value."""
    kept = _per_clip(bits, clips).to(torch.int32)
    return clips & ((0xFF << (8 - kept)) & 0xFF).to(torch.uint8)


def solarize(clips: Tensor, threshold: Tensor | float) -> Tensor:
    """Invert values at or above ``threshold`` (256 leaves the clip unchanged)."""
    return torch.where(clips >= _per_clip(threshold, clips), 255 - clips, clips)


def affine(clips: Tensor, matrices: Tensor, shifts: Tensor, fill: int = 128) -> Tensor:
    """Warp every frame of clip ``b`` alike: the output pixel at offset ``p`` from the frame
    centre reads the input at ``matrices[b] @ p + shifts[b]`` (pixels; ``[B, 2, 2]`` and
    ``[B, 2]``), nearest neighbour, ``fill`` outside."""
    B, T, C, H, W = clips.shape
    # affine_grid works in [-1, 1] coordinates: convert pixels to those on both sides.
    to_unit = torch.tensor([2 / W, 2 / H], device=clips.device)
    linear = matrices * to_unit[:, None] / to_unit[None, :]
    offset = shifts * to_unit
    theta = torch.cat([linear, offset[..., None]], -1)  # [B, 2, 3]
    theta = theta.repeat_interleave(T, 0)  # [B*T, 2, 3]
    frames = clips.flatten(0, 1).float() - fill  # [B*T, 3, H, W]
    grid = F.affine_grid(theta, list(frames.shape), align_corners=False)
    # Shift values so zero padding reads as `fill`; nearest sampling keeps them exact.
    warped = F.grid_sample(frames, grid, mode="nearest", align_corners=False)
    return _to_uint8(warped + fill).view(B, T, C, H, W)


def _amounts(amount: Tensor | float, clips: Tensor) -> Tensor:
    """One float per clip: ``[B]``."""
    return _per_clip(amount, clips).flatten().expand(clips.shape[0])


def rotate(clips: Tensor, degrees: Tensor | float) -> Tensor:
    """Rotate counter-clockwise (as PIL) about the frame centre."""
    angle = torch.deg2rad(_amounts(degrees, clips))
    cos, sin = angle.cos(), angle.sin()
    matrices = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return affine(clips, matrices, torch.zeros_like(matrices[..., 0]))


def _shear(clips: Tensor, amount: Tensor | float, row: int) -> Tensor:
    matrices = torch.eye(2, device=clips.device).repeat(clips.shape[0], 1, 1)  # [B, 2, 2]
    matrices[:, row, 1 - row] = _amounts(amount, clips)
    return affine(clips, matrices, torch.zeros_like(matrices[..., 0]))


def shear_x(clips: Tensor, amount: Tensor | float) -> Tensor:
    return _shear(clips, amount, 0)


def shear_y(clips: Tensor, amount: Tensor | float) -> Tensor:
    return _shear(clips, amount, 1)


def _translate(clips: Tensor, fraction: Tensor | float, axis: int) -> Tensor:
    matrices = torch.eye(2, device=clips.device).repeat(clips.shape[0], 1, 1)  # [B, 2, 2]
    shifts = torch.zeros(clips.shape[0], 2, device=clips.device)
    shifts[:, axis] = -_amounts(fraction, clips) * clips.shape[-1 - axis]  # pixels
    return affine(clips, matrices, shifts)


def translate_x(clips: Tensor, fraction: Tensor | float) -> Tensor:
    return _translate(clips, fraction, 0)


def translate_y(clips: Tensor, fraction: Tensor | float) -> Tensor:
    return _translate(clips, fraction, 1)


def identity(clips: Tensor, _: Tensor | float = 0.0) -> Tensor:
    return clips


class ColorJitter(BatchTransform):
    """Random brightness, contrast, saturation and hue, applied in a random order; each factor
    is drawn from ``[1 - x, 1 + x]`` (hue: a shift in ``[-x, x]`` turns), once per clip."""

    OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {hue}")
        self.strengths = (brightness, contrast, saturation, hue)

    def draw(self, clip: Tensor, generator: Generator = None) -> tuple[list[int], list[float]]:
        """``(order of the four ops, their factors)``."""
        brightness, contrast, saturation, hue = self.strengths
        factors = [
            _uniform(max(0.0, 1 - brightness), 1 + brightness, generator),
            _uniform(max(0.0, 1 - contrast), 1 + contrast, generator),
            _uniform(max(0.0, 1 - saturation), 1 + saturation, generator),
            _uniform(-hue, hue, generator),
        ]
        return torch.randperm(len(factors), generator=generator).tolist(), factors

    def apply_batch(self, clips: Tensor, plans: Sequence) -> Tensor:
        for position in range(len(self.OPS)):
            ops = [order[position] for order, _ in plans]
            factors = [factor[op] for op, (_, factor) in zip(ops, plans, strict=True)]
            clips = _apply_grouped(clips, ops, factors, self._op)
        return clips

    def _op(self, index: int):
        return self.OPS[index] if self.strengths[index] > 0 else None

    def __repr__(self) -> str:
        return "ColorJitter(brightness={}, contrast={}, saturation={}, hue={})".format(
            *self.strengths
        )


def _apply_grouped(clips: Tensor, keys: list, amounts: list[float], op_of) -> Tensor:
    """Apply to each clip ``b`` the op ``op_of(keys[b])`` (None: leave it) with ``amounts[b]``,
    one call per distinct op over all the clips that drew it."""
    out = None
    for key in dict.fromkeys(keys):  # distinct, in order of first appearance
        op = op_of(key)
        if op is None:
            continue
        chosen = [b for b, k in enumerate(keys) if k == key]
        amount = torch.tensor([amounts[b] for b in chosen])
        if len(chosen) == len(keys):  # the whole batch (the only key): no gather and scatter
            return op(clips, amount)
        if out is None:
            out = clips.clone()
        index = torch.tensor(chosen, device=clips.device)
        out[index] = op(clips[index], amount)
    return clips if out is None else out


MAX_MAGNITUDE = 10  # RandAugment magnitudes run from 0 (no change) to 10 (strongest)

# op, its argument as a function of the strength s = magnitude / 10, and whether the direction
# is random (s is then negated half of the time). Ranges as torchvision's RandAugment.
RAND_AUGMENT_OPS = {
    "identity": (identity, lambda s: 0.0, False),
    "autocontrast": (autocontrast, lambda s: 0.0, False),
    "equalize": (equalize, lambda s: 0.0, False),
    "rotate": (rotate, lambda s: 30.0 * s, True),  # degrees
    "solarize": (solarize, lambda s: 256.0 * (1 - s), False),  # threshold
    "color": (adjust_saturation, lambda s: 1 + 0.9 * s, True),
    "posterize": (posterize, lambda s: 8 - int(4 * s), False),  # bits kept
    "contrast": (adjust_contrast, lambda s: 1 + 0.9 * s, True),
    "brightness": (adjust_brightness, lambda s: 1 + 0.9 * s, True),
    "sharpness": (adjust_sharpness, lambda s: 1 + 0.9 * s, True),
    "shear_x": (shear_x, lambda s: 0.3 * s, True),
    "shear_y": (shear_y, lambda s: 0.3 * s, True),
    "translate_x": (translate_x, lambda s: 0.45 * s, True),  # fraction of the width
    "translate_y": (translate_y, lambda s: 0.45 * s, True),
}


class RandAugment(BatchTransform):
    """RandAugment (Cubuk et al.): ``num_ops`` ops drawn uniformly (with replacement) from
    :data:`RAND_AUGMENT_OPS`, each at ``magnitude`` / 10 strength, same parameters for every
    frame. AIM's SSv2 recipe uses ``num_ops=4, magnitude=7``."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9):
        if not 0 <= magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE}]")
        self.num_ops, self.magnitude = num_ops, magnitude
        self.op_names = list(RAND_AUGMENT_OPS)

    def draw(self, clip: Tensor, generator: Generator = None) -> list[tuple[str, float]]:
        """``num_ops`` pairs ``(op name, its argument)``."""
        plan = []
        for _ in range(self.num_ops):
            name = self.op_names[_randint(len(self.op_names), generator)]
            _, argument, signed = RAND_AUGMENT_OPS[name]
            strength = self.magnitude / MAX_MAGNITUDE
            if signed and _chance(0.5, generator):
                strength = -strength
            plan.append((name, float(argument(strength))))
        return plan

    def apply_batch(self, clips: Tensor, plans: Sequence) -> Tensor:
        for step in range(self.num_ops):
            names = [plan[step][0] for plan in plans]
            arguments = [plan[step][1] for plan in plans]
            clips = _apply_grouped(clips, names, arguments, self._op)
        return clips

    @staticmethod
    def _op(name: str):
        return None if name == "identity" else RAND_AUGMENT_OPS[name][0]

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude})"


# ---------------------------------------------------------------------------------------------
# Float stage
# ---------------------------------------------------------------------------------------------


class Normalize(BatchTransform):
    """uint8 → float: ``(x / 255 − mean) / std`` with a preset of :data:`NORMALIZATION`, and
    ``(x − 128) / 127.5`` on the ``motion_channels`` after RGB (``data.motion``)."""

    def __init__(self, preset: str = "clip", motion_channels: int = 0):
        if preset not in NORMALIZATION:
            raise ConfigError(
                f"unknown normalisation {preset!r}; choose one of {', '.join(NORMALIZATION)}"
            )
        self.preset, self.motion_channels = preset, motion_channels
        mean, std = NORMALIZATION[preset]
        mean = torch.tensor([*mean, *[MOTION_ZERO / 255] * motion_channels])
        std = torch.tensor([*std, *[MOTION_SCALE / 255] * motion_channels])
        # As one multiply-add per value: x · 1/(255 std) − mean/std.
        self.scale = 1 / (255 * std).view(-1, 1, 1)
        self.shift = -(mean / std).view(-1, 1, 1)

    def draw(self, clip: Tensor, generator: Generator = None) -> None:
        return None

    def apply_batch(self, clips: Tensor, plans: Sequence) -> Tensor:
        scale, shift = self.scale.to(clips.device), self.shift.to(clips.device)
        return torch.addcmul(shift, clips.float(), scale)

    def __repr__(self) -> str:
        motion = f", motion_channels={self.motion_channels}" if self.motion_channels else ""
        return f"Normalize({self.preset!r}{motion})"


class RGBOnly(BatchTransform):
    """Runs ``step`` on the RGB channels of clips that carry motion channels after them
    (``data.motion``) and passes those through: colour changes, RandAugment and erasing alter
    the frames, not their motion maps, which stay those of the cropped and flipped frames."""

    def __init__(self, step: BatchTransform):
        self.step = step

    def draw(self, clip: Tensor, generator: Generator = None) -> Any:
        return self.step.draw(clip[..., :3, :, :], generator)

    def apply_batch(self, clips: Tensor, plans: Sequence) -> Tensor:
        rgb = self.step.apply_batch(clips[..., :3, :, :], plans)
        return torch.cat([rgb, clips[..., 3:, :, :].to(rgb.dtype)], dim=-3)

    def __repr__(self) -> str:
        return f"RGBOnly({self.step!r})"


class RandomErasing(BatchTransform):
    """With probability ``p``, replace one box (area fraction ``area``, log-uniform aspect
    ratio) by standard normal noise, as timm's ``mode='pixel'``; the box and its noise are the
    same in every frame. Runs on normalised clips."""

    def __init__(
        self,
        p: float = 0.25,
        area: tuple[float, float] = (0.02, 1 / 3),
        aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
    ):
        self.p, self.area, self.aspect_ratio = p, tuple(area), tuple(aspect_ratio)

    def draw(self, clip: Tensor, generator: Generator = None) -> tuple[int, ...] | None:
        """``(top, left, h, w, noise seed)`` of the box for a clip of ``clip``'s size, or None."""
        if not _chance(self.p, generator):
            return None
        height, width = clip.shape[-2:]
        log_ratio = (math.log(self.aspect_ratio[0]), math.log(self.aspect_ratio[1]))
        for _ in range(10):
            target_area = height * width * _uniform(*self.area, generator)
            ratio = math.exp(_uniform(*log_ratio, generator))
            h = round(math.sqrt(target_area * ratio))
            w = round(math.sqrt(target_area / ratio))
            if h < height and w < width:
                top = _randint(height - h + 1, generator)
                left = _randint(width - w + 1, generator)
                return top, left, h, w, _randint(2**62, generator)
        return None

    def apply_batch(self, clips: Tensor, plans: Sequence) -> Tensor:
        boxes = [(b, plan) for b, plan in enumerate(plans) if plan is not None]
        if not boxes:
            return clips
        clips = clips.clone()
        for b, (top, left, h, w, seed) in boxes:
            # The noise comes from the clip's own seed on the clip's device: the same
            # distribution wherever it runs, reproducible given the seed.
            generator = torch.Generator(clips.device).manual_seed(seed)
            noise = torch.randn(3, h, w, generator=generator, device=clips.device)
            clips[b, ..., top : top + h, left : left + w] = noise  # every frame alike
        return clips

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, area={self.area})"


class SplitViews:
    """Test-time views stacked ``[V, T, 3, H, W]`` → a list of ``V`` clips."""

    def __call__(self, views: Tensor, label: int, generator: Generator = None):
        return list(views.unbind(0)), label

    def __repr__(self) -> str:
        return "SplitViews()"


# ---------------------------------------------------------------------------------------------
# Standard pipelines
# ---------------------------------------------------------------------------------------------

TRAIN_CROPS = ("random_resized", "multiscale", "center")


@dataclass
class TransformConfig:
    """Spatial pipeline of a recipe (``data.transform`` in the YAML config). Defaults: AIM."""

    size: int = 224  # side of the square crops the model sees
    short_side: int = 256  # training: the short side is resized to this before cropping
    test_short_side: int | None = None  # testing: short side before the crops; None = size
    crop: str = "random_resized"  # training crop: "random_resized", "multiscale" or "center"
    area: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop: range of the crop's area share
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop: w/h range
    flip: bool = True  # random horizontal flip in training (off for SSv2 unless labels swap)
    label_swap: dict[int, int] | None = None  # label of a flipped clip (see mirror_label_map)
    color_jitter: tuple[float, float, float, float] | None = None  # brightness, contrast,
    # saturation, hue strengths; None = off
    rand_augment: tuple[int, int] | None = None  # (num_ops, magnitude 0-10); SSv2: (4, 7)
    random_erasing: float = 0.0  # probability of erasing one box per clip; SSv2: 0.25
    test_crops: int = 1  # test views per clip: 1 (centre) or 3 (along the long side)
    normalize: str = "clip"  # "clip", "imagenet" or "half" (0.5 / 0.5), see NORMALIZATION

    def validate(self) -> None:
        """Raise ConfigError naming the first field that cannot work."""
        test_short_side = self.test_short_side or self.size
        if self.crop not in TRAIN_CROPS:
            raise ConfigError(
                f"data.transform.crop: unknown crop {self.crop!r}; one of {', '.join(TRAIN_CROPS)}"
            )
        if self.normalize not in NORMALIZATION:
            raise ConfigError(
                f"data.transform.normalize: unknown preset {self.normalize!r}; "
                f"one of {', '.join(NORMALIZATION)}"
            )
        if self.test_crops not in (1, 3):
            raise ConfigError(f"data.transform.test_crops must be 1 or 3, got {self.test_crops}")
        if min(self.short_side, test_short_side) < self.size:
            raise ConfigError(
                f"data.transform: short sides ({self.short_side}, {test_short_side}) must be at "
                f"least the crop size {self.size}"
            )
        if not 0 < self.area[0] <= self.area[1] <= 1:
            raise ConfigError(
                f"data.transform.area must satisfy 0 < min <= max <= 1, got {self.area}"
            )


def appearance_steps(config: TransformConfig, motion_channels: int = 0) -> list[BatchTransform]:
    """The training steps after the crop and flip: colour, RandAugment, normalisation, erasing
    (in the worker, or batched on the device with ``data.gpu_augment``). With motion channels
    after RGB, all but the normalisation leave them alone."""
    steps: list[BatchTransform] = []
    if config.color_jitter is not None:
        steps.append(ColorJitter(*config.color_jitter))
    if config.rand_augment is not None:
        steps.append(RandAugment(*config.rand_augment))
    steps.append(Normalize(config.normalize, motion_channels))
    if config.random_erasing > 0:
        steps.append(RandomErasing(config.random_erasing))
    if motion_channels:
        steps = [s if isinstance(s, Normalize) else RGBOnly(s) for s in steps]
    return steps


def build_transform(config: TransformConfig, train: bool, defer: bool = False,
                    motion: MotionMaps | None = None) -> Compose:
    """The pipeline ``(uint8 clip [T, 3, H, W], label) -> (clip, label)``.

    Training returns one float clip ``[T, 3, size, size]``, or with ``defer`` a
    :class:`PlannedClip`: the cropped and flipped uint8 clip and the drawn parameters of the
    :func:`appearance_steps`, which :func:`device_augment` applies to the batch. Testing returns
    a list of ``config.test_crops`` float clips (the spatial views whose scores are averaged).
    With ``motion`` (``data.motion``) every clip gets its motion maps as channels after RGB,
    ``[T, 3 + M, size, size]``, computed from the cropped and flipped frames.
    """
    config.validate()
    added = [] if motion is None else [motion]
    channels = 0 if motion is None else channels_for(motion.kind)
    if not train:
        return Compose(
            [
                Resize(config.test_short_side or config.size),
                SpatialViews(config.size, config.test_crops),
                *added,
                Normalize(config.normalize, channels),
                SplitViews(),
            ]
        )
    crops = {
        "random_resized": RandomResizedCrop(config.size, config.area, config.aspect_ratio),
        "multiscale": MultiScaleCrop(config.size),
        "center": CenterCrop(config.size),
    }
    steps = [Resize(config.short_side), crops[config.crop]]
    if config.flip:
        steps.append(RandomHorizontalFlip(0.5, config.label_swap))
    appearance = appearance_steps(config, channels)
    steps += added + ([DrawPlans(appearance)] if defer else appearance)
    return Compose(steps)


def device_augment(config: TransformConfig, motion_channels: int = 0) -> DeviceAugment:
    """What a training step applies to a deferred batch (``build_transform(defer=True)``)."""
    return DeviceAugment(appearance_steps(config, motion_channels))


# ---------------------------------------------------------------------------------------------
# Augmentation on the device (data.gpu_augment)
# ---------------------------------------------------------------------------------------------


class PlannedClip(NamedTuple):
    """A clip whose last transform steps are deferred to the device: the uint8 frames and the
    parameters each deferred step drew for them."""

    clip: Tensor  # uint8 [T, 3, H, W]
    plans: tuple  # one per step of the DeviceAugment, in its order


class DrawPlans:
    """The last step of a worker's pipeline with ``data.gpu_augment``: draws the parameters of
    ``steps`` for the clip, in the order running them would, and leaves the clip uint8 (a
    quarter of the bytes of a float clip to move to the device)."""

    def __init__(self, steps: Sequence[BatchTransform]):
        self.steps = list(steps)

    def __call__(self, clip: Tensor, label: int, generator: Generator = None):
        return PlannedClip(clip, tuple(step.draw(clip, generator) for step in self.steps)), label

    def __repr__(self) -> str:
        return f"DrawPlans({self.steps!r}, applied on the device)"


class DeviceAugment:
    """``(uint8 clips [B, T, 3, H, W] on the device, each clip's plans) -> float clips``: the
    deferred steps, batched where the device is."""

    def __init__(self, steps: Sequence[BatchTransform]):
        self.steps = list(steps)

    def __call__(self, clips: Tensor, plans: Sequence[tuple]) -> Tensor:
        if len(plans) != clips.shape[0] or any(len(p) != len(self.steps) for p in plans):
            raise ValueError(f"{len(plans)} plans of {self.steps} for {clips.shape[0]} clips")
        for k, step in enumerate(self.steps):
            clips = step.apply_batch(clips, [plan[k] for plan in plans])
        return clips

    def __repr__(self) -> str:
        return f"DeviceAugment({self.steps!r})"
