"""AdamW parameter groups and the per-step warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import nn

# Parameters that are embeddings (learned tokens or positions) take no weight decay, like norms
# and biases: decaying them pulls positions and prompts towards zero (AIM, ViT practice).
NO_DECAY_NAMES = re.compile(r"(pos_embed|cls_token|reg_token|embedding|prompt|position)")


def wants_decay(name: str, param: nn.Parameter) -> bool:
    """Weight decay for matrices and kernels only; not biases, norms (ndim ≤ 1) or embeddings."""
    return param.ndim > 1 and NO_DECAY_NAMES.search(name) is None


def lr_multiplier(name: str, lr_mult: Mapping[str, float]) -> float:
    """The multiplier of the first ``lr_mult`` regex that matches ``name`` (1.0 when none)."""
    for pattern, mult in lr_mult.items():
        if re.search(pattern, name):
            return mult
    return 1.0


def param_groups(
    model: nn.Module, weight_decay: float, lr_mult: Mapping[str, float] | None = None,
    prefix: str = "",
) -> list[dict]:
    """Trainable parameters grouped by (decay, lr multiplier), in a deterministic order.

    Each group carries ``lr_mult``; :func:`set_lr` scales the schedule's lr by it. ``prefix``
    is dropped from the names before the rules see them: a module that holds the video model
    as ``model`` (a self-supervised objective) matches ``lr_mult`` as the model would.
    """
    groups: dict[tuple[bool, float], dict] = {}
    for full_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = full_name.removeprefix(prefix)
        decay = wants_decay(name, param)
        mult = lr_multiplier(name, lr_mult or {})
        new_group = {"params": [], "names": [], "lr_mult": mult,
                     "weight_decay": weight_decay if decay else 0.0}
        group = groups.setdefault((decay, mult), new_group)
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    lr_mult: Mapping[str, float] | None = None,
    prefix: str = "",
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (see :func:`param_groups`)."""
    groups = param_groups(model, weight_decay, lr_mult, prefix)
    # fused kernels exist for CUDA tensors only; the CPU path is the plain for-each one.
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Schedule value at optimizer step ``step`` (0-based): linear warmup, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * group["lr_mult"]``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
