"""BitFit (Ben Zaken et al., ACL 2022): tune only the bias terms, the cheapest baseline.

Every bias of the image model trains (attention, MLP and LayerNorm biases, and the patch
embedding's where it has one), plus the head; all weights stay frozen. Biases of other stacked
methods' modules are theirs to train, not BitFit's.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbones.vit import ViT
from .base import Method, MethodParts, Target


@dataclass
class BitFitConfig:
    """No options: the trainable set is fixed."""


def apply_bitfit(target: Target, cfg: BitFitConfig) -> MethodParts:
    vit: ViT = target.backbone
    return MethodParts([
        module.bias
        for _, module in vit.named_image_modules()
        if isinstance(getattr(module, "bias", None), nn.Parameter)
    ])


METHOD = Method("bitfit", BitFitConfig, apply_bitfit)
