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
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

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
# Colour: float helpers on [0, 255] values, uint8 ops built on them
# ---------------------------------------------------------------------------------------------


def _blend(image: Tensor, other: Tensor | float, factor: float) -> Tensor:
    """``factor`` · image + (1 − factor) · other, the PIL ImageEnhance interpolation."""
    return (other + factor * (image - other)).clamp(0, 255)


def _grayscale(clip: Tensor) -> Tensor:
    r, g, b = clip.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)  # [T, 1, H, W]


def _to_uint8(clip: Tensor) -> Tensor:
    return clip.round().clamp(0, 255).to(torch.uint8)


def adjust_brightness(clip: Tensor, factor: float) -> Tensor:
    return _to_uint8(_blend(clip.float(), 0.0, factor))


def adjust_contrast(clip: Tensor, factor: float) -> Tensor:
    # The grey level blended towards is the mean of the whole clip, so every frame changes alike.
    clip = clip.float()
    return _to_uint8(_blend(clip, _grayscale(clip).mean(), factor))


def adjust_saturation(clip: Tensor, factor: float) -> Tensor:
    clip = clip.float()
    return _to_uint8(_blend(clip, _grayscale(clip), factor))


def adjust_sharpness(clip: Tensor, factor: float) -> Tensor:
    """Blend with a 3×3 smoothed copy (PIL's SMOOTH kernel); border pixels stay as they are."""
    frames = clip.float().reshape(-1, 1, *clip.shape[-2:])  # [T*3, 1, H, W]
    kernel = torch.ones(1, 1, 3, 3)
    kernel[0, 0, 1, 1] = 5
    smooth = frames.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(frames, kernel / kernel.sum())  # [T*3, 1, H-2, W-2]
    return _to_uint8(_blend(frames, smooth, factor)).reshape(clip.shape)


def adjust_hue(clip: Tensor, shift: float) -> Tensor:
    """Rotate the hue by ``shift`` turns (−0.5 … 0.5) in HSV space."""
    rgb = clip.float() / 255
    r, g, b = rgb.unbind(-3)
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
    hue = (hue + shift) % 1.0
    return _to_uint8(_hsv_to_rgb(hue, saturation, value) * 255)


def _hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    sector = torch.floor(hue * 6)
    fraction = hue * 6 - sector
    sector = sector.long() % 6
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    # Channel values for each of the six hue sectors: [6, 3, ...] then pick one per pixel.
    table = torch.stack(
        [
            torch.stack([value, t, p]),
            torch.stack([q, value, p]),
            torch.stack([p, value, t]),
            torch.stack([p, q, value]),
            torch.stack([t, p, value]),
            torch.stack([value, p, q]),
        ]
    )  # [6, 3, T, H, W]
    index = sector.unsqueeze(0).unsqueeze(0).expand(1, 3, *sector.shape)
    return table.gather(0, index)[0].movedim(0, -3)  # [T, 3, H, W]


def autocontrast(clip: Tensor, _: float = 0.0) -> Tensor:
    """Stretch each channel to 0…255, with one min/max over the whole clip."""
    flat = clip.float().transpose(0, -3).reshape(3, -1)  # [3, T*H*W]
    low = flat.min(1).values.view(3, 1, 1)
    high = flat.max(1).values.view(3, 1, 1)
    scale = torch.where(high > low, 255 / (high - low).clamp_min(1), torch.ones_like(high))
    low = torch.where(high > low, low, torch.zeros_like(low))
    # Truncate like PIL's ImageOps.autocontrast and torchvision.
    return ((clip.float() - low) * scale).floor().clamp(0, 255).to(torch.uint8)


def equalize(clip: Tensor, _: float = 0.0) -> Tensor:
    """Histogram equalisation per channel (PIL's algorithm), one histogram per clip."""
    channels = []
    for channel in clip.unbind(-3):
        histogram = torch.bincount(channel.flatten().long(), minlength=256)
        used = histogram[histogram > 0]
        step = int(used.sum() - used[-1]) // 255
        if step == 0:
            channels.append(channel)
            continue
        lut = (torch.cumsum(histogram, 0) + step // 2) // step
        lut = torch.cat([lut.new_zeros(1), lut[:-1]]).clamp(0, 255).to(torch.uint8)
        channels.append(lut[channel.long()])
    return torch.stack(channels, -3)


def posterize(clip: Tensor, bits: float) -> Tensor:
    """Keep the ``bits`` most significant bits of every value."""
    mask = (0xFF << (8 - int(bits))) & 0xFF
    return clip & mask


def solarize(clip: Tensor, threshold: float) -> Tensor:
    """Invert values at or above ``threshold`` (256 leaves the clip unchanged)."""
    return torch.where(clip >= threshold, 255 - clip, clip)


def affine(clip: Tensor, matrix: Sequence[Sequence[float]], shift=(0.0, 0.0), fill=128) -> Tensor:
    """Warp every frame alike: the output pixel at offset ``p`` from the frame centre reads the
    input at ``matrix @ p + shift`` (pixels), nearest neighbour, ``fill`` outside."""
    height, width = clip.shape[-2:]
    # affine_grid works in [-1, 1] coordinates: convert pixels to those on both sides.
    to_unit = torch.tensor([2 / width, 2 / height])
    linear = torch.tensor(matrix, dtype=torch.float32) * to_unit[:, None] / to_unit[None, :]
    offset = torch.tensor(shift, dtype=torch.float32) * to_unit
    theta = torch.cat([linear, offset[:, None]], 1).expand(clip.shape[0], 2, 3)  # [T, 2, 3]
    grid = F.affine_grid(theta, list(clip.shape), align_corners=False)
    # Shift values so zero padding reads as `fill`; nearest sampling keeps them exact.
    warped = F.grid_sample(clip.float() - fill, grid, mode="nearest", align_corners=False)
    return _to_uint8(warped + fill)


def rotate(clip: Tensor, degrees: float) -> Tensor:
    """Rotate counter-clockwise (as PIL) about the frame centre."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    return affine(clip, [[cos, -sin], [sin, cos]])


def shear_x(clip: Tensor, amount: float) -> Tensor:
    return affine(clip, [[1.0, amount], [0.0, 1.0]])


def shear_y(clip: Tensor, amount: float) -> Tensor:
    return affine(clip, [[1.0, 0.0], [amount, 1.0]])


def translate_x(clip: Tensor, fraction: float) -> Tensor:
    return affine(clip, [[1.0, 0.0], [0.0, 1.0]], shift=(-fraction * clip.shape[-1], 0.0))


def translate_y(clip: Tensor, fraction: float) -> Tensor:
    return affine(clip, [[1.0, 0.0], [0.0, 1.0]], shift=(0.0, -fraction * clip.shape[-2]))


def identity(clip: Tensor, _: float = 0.0) -> Tensor:
    return clip


class ColorJitter(ClipTransform):
    """Random brightness, contrast, saturation and hue, applied in a random order; each factor
    is drawn from ``[1 - x, 1 + x]`` (hue: a shift in ``[-x, x]`` turns), once per clip."""

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {hue}")
        self.strengths = (brightness, contrast, saturation, hue)

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        brightness, contrast, saturation, hue = self.strengths
        ops = [
            (adjust_brightness, _uniform(max(0.0, 1 - brightness), 1 + brightness, generator)),
            (adjust_contrast, _uniform(max(0.0, 1 - contrast), 1 + contrast, generator)),
            (adjust_saturation, _uniform(max(0.0, 1 - saturation), 1 + saturation, generator)),
            (adjust_hue, _uniform(-hue, hue, generator)),
        ]
        for i in torch.randperm(len(ops), generator=generator).tolist():
            if self.strengths[i] > 0:
                op, factor = ops[i]
                clip = op(clip, factor)
        return clip

    def __repr__(self) -> str:
        return "ColorJitter(brightness={}, contrast={}, saturation={}, hue={})".format(
            *self.strengths
        )


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


class RandAugment(ClipTransform):
    """RandAugment (Cubuk et al.): ``num_ops`` ops drawn uniformly (with replacement) from
    :data:`RAND_AUGMENT_OPS`, each at ``magnitude`` / 10 strength, same parameters for every
    frame. AIM's SSv2 recipe uses ``num_ops=4, magnitude=7``."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9):
        if not 0 <= magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE}]")
        self.num_ops, self.magnitude = num_ops, magnitude
        self.op_names = list(RAND_AUGMENT_OPS)

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        for _ in range(self.num_ops):
            name = self.op_names[_randint(len(self.op_names), generator)]
            op, argument, signed = RAND_AUGMENT_OPS[name]
            strength = self.magnitude / MAX_MAGNITUDE
            if signed and _chance(0.5, generator):
                strength = -strength
            clip = op(clip, argument(strength))
        return clip

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude})"


# ---------------------------------------------------------------------------------------------
# Float stage
# ---------------------------------------------------------------------------------------------


class Normalize(ClipTransform):
    """uint8 → float: ``(x / 255 − mean) / std`` with a preset of :data:`NORMALIZATION`."""

    def __init__(self, preset: str = "clip"):
        if preset not in NORMALIZATION:
            raise ConfigError(
                f"unknown normalisation {preset!r}; choose one of {', '.join(NORMALIZATION)}"
            )
        self.preset = preset
        mean, std = NORMALIZATION[preset]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        return (clip.float() / 255 - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize({self.preset!r})"


class RandomErasing(ClipTransform):
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

    def apply(self, clip: Tensor, generator: Generator = None) -> Tensor:
        if not _chance(self.p, generator):
            return clip
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
                clip = clip.clone()
                noise = torch.randn(3, h, w, generator=generator)
                clip[..., top : top + h, left : left + w] = noise
                return clip
        return clip

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


def build_transform(config: TransformConfig, train: bool) -> Compose:
    """The pipeline ``(uint8 clip [T, 3, H, W], label) -> (clip, label)``.

    Training returns one float clip ``[T, 3, size, size]``; testing returns a list of
    ``config.test_crops`` float clips (the spatial views whose scores are averaged).
    """
    config.validate()
    if not train:
        return Compose(
            [
                Resize(config.test_short_side or config.size),
                SpatialViews(config.size, config.test_crops),
                Normalize(config.normalize),
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
    if config.color_jitter is not None:
        steps.append(ColorJitter(*config.color_jitter))
    if config.rand_augment is not None:
        steps.append(RandAugment(*config.rand_augment))
    steps.append(Normalize(config.normalize))
    if config.random_erasing > 0:
        steps.append(RandomErasing(config.random_erasing))
    return Compose(steps)
