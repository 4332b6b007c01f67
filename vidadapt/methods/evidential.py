"""Evidential learning for open-set recognition, in the form of DEAR (Bao et al., ICCV 2021).

The head's outputs are read as *evidence* for each class, ``e = exp(clamp(logits, ±10))``, the
parameters of a Dirichlet ``alpha = e + 1`` of strength ``S = sum(alpha)``. A clip with little
evidence for anything has a high uncertainty ``u = K / S`` (1 with none): that is the score
that rejects unknown actions (``vidadapt eval --open-set``'s ``evidential``). The method adds
no module; it replaces the training loss (docs/methods.md), as DEAR's released configs set it:

* the log loss of evidential deep learning: ``sum_k y_k (log S - log alpha_k)``;
* the uncertainty calibration term (AvU): ``lambda · acc · -p log(1 - u) + (1 - lambda) ·
  (1 - acc) · -(1 - p) log(u)``, with p the top class's ``alpha / S`` and acc whether it is
  right, so confident clips are pushed to low uncertainty when right and high when wrong;
  ``lambda`` grows over training as ``a0 ^ (1 - progress)`` (a0 = 0.01), DEAR's exp schedule.

DEAR's KL term towards the flat Dirichlet is off in its configs, and off here; its contrastive
debiasing head is not part of this method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Method, MethodParts, Target

EVIDENCE_CLAMP = 10.0  # logits are clamped before exp: evidence at most e^10 per class
EPS = 1e-10


@dataclass
class EvidentialConfig:
    calibration: bool = True  # add the uncertainty calibration (AvU) term, as DEAR does
    annealing_start: float = 0.01  # a0: the calibration weight lambda = a0^(1 - progress)
    # grows from a0 towards 1 over training


def dirichlet(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha = exp(clamp(logits)) + 1`` ``[B, K]`` and its strength ``S`` ``[B]``."""
    alpha = logits.clamp(-EVIDENCE_CLAMP, EVIDENCE_CLAMP).exp() + 1
    return alpha, alpha.sum(dim=-1)


class EvidentialLoss:
    """``(logits [B, K], labels [B] or soft targets [B, K], progress) -> loss``."""

    def __init__(self, cfg: EvidentialConfig) -> None:
        if not 0 < cfg.annealing_start <= 1:
            raise ConfigError(f"evidential.annealing_start must be in (0, 1], got "
                              f"{cfg.annealing_start}")
        self.cfg = cfg

    def __call__(self, logits: Tensor, labels: Tensor, progress: float) -> Tensor:
        K = logits.shape[-1]
        target = labels if labels.ndim == 2 else torch.nn.functional.one_hot(labels, K).float()
        alpha, strength = dirichlet(logits)
        loss = (target * (strength.log()[:, None] - alpha.log())).sum(dim=-1)  # [B]
        if self.cfg.calibration:
            loss = loss + self.calibration(alpha, strength, target, progress)
        return loss.mean()

    def calibration(self, alpha: Tensor, strength: Tensor, target: Tensor,
                    progress: float) -> Tensor:
        """DEAR's AvU term per clip ``[B]``."""
        confidence, predicted = (alpha / strength[:, None]).max(dim=-1)  # [B], [B]
        uncertainty = alpha.shape[-1] / strength  # [B]
        right = (predicted == target.argmax(dim=-1)).float()
        weight = self.cfg.annealing_start ** (1 - min(max(progress, 0.0), 1.0))
        return (weight * right * -confidence * torch.log(1 - uncertainty + EPS)
                + (1 - weight) * (1 - right) * -(1 - confidence) * torch.log(uncertainty + EPS))


def apply_evidential(target: Target, cfg: EvidentialConfig) -> MethodParts:
    if target.backbone.proj is not None:
        raise ConfigError("evidential reads the linear head's outputs as evidence; it takes no "
                          "text head")
    return MethodParts(loss=EvidentialLoss(cfg))


METHOD = Method("evidential", EvidentialConfig, apply_evidential)
