"""Mixup and CutMix on whole clips, and the targets they imply.

Each clip is mixed with the clip at the mirrored batch position (as timm does), using one
mixing weight per batch; CutMix cuts the same box out of every frame so the pasted region moves
as a solid object rather than flickering.
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from torch import Tensor


def soft_targets(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """One-hot ``[B, C]`` targets with label smoothing (``smoothing / C`` on every class)."""
    off = smoothing / num_classes
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + off


def mix_clips(
    video: Tensor,
    labels: Tensor,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    smoothing: float,
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor]:
    """Mix a batch ``[B, T, 3, H, W]``; returns the mixed clips and soft targets ``[B, C]``.

    With both alphas > 0, mixup or CutMix is chosen with equal chance for the batch.
    """
    targets = soft_targets(labels, num_classes, smoothing)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha == 0 or rng.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    partner = video.flip(0)
    if use_cutmix:
        H, W = video.shape[-2:]
        top, left, h, w = _cut_box(H, W, lam, rng)
        video = video.clone()
        video[..., top : top + h, left : left + w] = partner[..., top : top + h, left : left + w]
        lam = 1.0 - h * w / (H * W)  # the share of the clip actually kept
    else:
        video = video * lam + partner * (1.0 - lam)
    return video, targets * lam + targets.flip(0) * (1.0 - lam)


def _cut_box(H: int, W: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a box of about ``1 - lam`` of the frame, centred at random and
    clipped to the frame."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * ratio), int(W * ratio)
    cy, cx = int(rng.integers(H)), int(rng.integers(W))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
    return top, left, bottom - top, right - left
