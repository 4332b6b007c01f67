"""LoRA: low-rank adaptation (Hu et al., ICLR 2022) of the image model's linear layers.

A selected ``nn.Linear`` is wrapped in place by :class:`LoRALinear` (peft-style: the frozen layer
lives on as ``.base``) computing ``W x + b + (B A x) * alpha / r`` with ``A`` [r, in]
kaiming-uniform(a=√5) and ``B`` [out, r] zero, so the model starts as the image model. On a fused
``attn.qkv`` only the chosen q/k/v output slices get an update, each with its own ``A`` and ``B``
(as separate q and v projections would). Only ``lora_A`` / ``lora_B`` train and are saved.

For inference, :func:`merge_lora` folds ``B A * scale`` into every base weight (the forward then
is the plain linear layer: no extra compute); :func:`unmerge_lora` takes it out again to resume
training. ``LoRALinear`` is a ``folding.FoldableLinear``: ``folding.merged_state_dict`` returns
plain weights with LoRA folded in, leaving the model as it is (what ``vidadapt export``
writes). Merging changes frozen weights, so save adapter checkpoints from an unmerged model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import ViT
from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .folding import FoldableLinear

QKV_SLICES = ("q", "k", "v")  # order of the slices in a fused attn.qkv output


@dataclass
class LoRAConfig:
    rank: int = 8  # r, width of the low-rank update
    alpha: float = 8.0  # the update is scaled by alpha / rank
    lora_dropout: float = 0.0  # dropout on the input of the low-rank branch (peft's name)
    # "q", "k", "v": that output slice of every fused attn.qkv. Any other entry is a regex searched
    # in the names of the image model's nn.Linear layers, adapted whole ("attn.proj", "mlp.fc1").
    targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be at least 1, got {self.rank}")
        if not self.targets:
            raise ConfigError("lora.targets is empty; e.g. targets: [q, v] or [attn.proj]")


class LoRALinear(FoldableLinear):
    """A frozen ``nn.Linear`` plus a low-rank update on some of its output slices.

    The output features are split into ``groups`` equal slices; the slices listed in ``slots``
    are adapted (``groups=1, slots=[0]``: the whole layer; ``groups=3, slots=[0, 2]``: q and v
    of a fused qkv). ``lora_A`` is ``[S, r, in]`` and ``lora_B`` is ``[S, out/groups, r]`` for
    the ``S`` adapted slices.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        groups: int = 1,
        slots: Sequence[int] = (0,),
    ) -> None:
        super().__init__()
        self.base = base
        self.groups = groups
        self.scale = alpha / rank
        self.merged = False
        width = base.out_features // groups
        self.lora_A = nn.Parameter(base.weight.new_empty(len(slots), rank, base.in_features))
        self.lora_B = nn.Parameter(base.weight.new_zeros(len(slots), width, rank))
        for a in self.lora_A:  # per slice, as nn.Linear(in, r) would be initialised
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)
        slots = torch.tensor(list(slots), device=base.weight.device)
        self.register_buffer("slots", slots, persistent=False)  # an index: not in state_dict

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            if self.training:
                raise RuntimeError(
                    "LoRA weights are merged into the base layers; call "
                    "vidadapt.methods.lora.unmerge_lora(model) before training"
                )
            return self.base(x)
        out = self.base(x)  # [..., out]
        z = F.linear(self.lora_dropout(x), self.lora_A.flatten(0, 1))  # [..., S*r]
        # One matmul adds every slice's update to the frozen output in place of a per-slice
        # product and a scatter: addmm's epilogue does the add, no [..., out] copy is made.
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), z.reshape(-1, z.shape[-1]),
                           self.update_matrix().t(), alpha=self.scale)  # [tokens, out]
        return flat.view(out.shape)

    def update_matrix(self) -> Tensor:
        """Every slice's ``B`` in one ``[out, S*r]`` matrix: slice ``s``'s ``B`` sits in the
        rows of its output slot and the columns of its rank block; the rest is zero."""
        S, w, r = self.lora_B.shape
        blocks = torch.block_diag(*self.lora_B)  # [S*w, S*r]
        if S == self.groups:  # every slot adapted (slots are in increasing order)
            return blocks
        full = blocks.new_zeros(self.groups, w, S * r)  # [groups, w, S*r]
        return full.index_copy(0, self.slots, blocks.view(S, w, S * r)).flatten(0, 1)

    def delta_weight(self) -> Tensor:
        """``B A * scale`` of every adapted slice, ``[S, w, in]``."""
        return (self.lora_B @ self.lora_A) * self.scale

    def folded_weight(self, sign: int = 1) -> Tensor:
        """A new tensor: the base weight with the update added (``sign=-1``: removed)."""
        weight = self.base.weight.detach()
        delta = sign * self.delta_weight().detach().to(weight.dtype)
        grouped = weight.unflatten(0, (self.groups, -1))  # [groups, w, in]
        return grouped.index_add(0, self.slots, delta).flatten(0, 1)  # [out, in]

    def folded(self) -> tuple[Tensor, Tensor | None]:
        weight = self.base.weight.detach().clone() if self.merged else self.folded_weight()
        bias = self.base.bias
        return weight, None if bias is None else bias.detach().clone()

    def merge(self) -> None:
        if self.merged:
            raise RuntimeError("LoRA weights are already merged; a second merge adds them twice")
        with torch.no_grad():
            self.base.weight.copy_(self.folded_weight())
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError("LoRA weights are not merged; there is nothing to unmerge")
        with torch.no_grad():
            self.base.weight.copy_(self.folded_weight(sign=-1))
        self.merged = False


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` in ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _layers_or_raise(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers")
    return layers


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight, for inference without extra compute."""
    for layer in _layers_or_raise(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora` (up to float rounding), so training can continue."""
    for layer in _layers_or_raise(model).values():
        layer.unmerge()


def _select_layers(vit: ViT, cfg: LoRAConfig) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Linear layers to wrap → (groups, adapted slots), checking every target matches."""
    slices = tuple(QKV_SLICES.index(t) for t in QKV_SLICES if t in cfg.targets)
    patterns = [t for t in cfg.targets if t not in QKV_SLICES]
    # A layer another method wrapped (``attn.qkv.base`` inside ZeroI2V's adapter) is matched
    # by the wrapper's name; LoRA wraps the frozen layer itself.
    linears = {n: m for n, m in vit.named_image_modules() if isinstance(m, nn.Linear)}
    shown = {n: n.removesuffix(".base") for n in linears}
    selected = {}
    if slices:
        for name in linears:
            if shown[name].endswith("attn.qkv"):
                selected[name] = (len(QKV_SLICES), slices)
    for pattern in patterns:
        try:
            matches = [n for n in linears if re.search(pattern, shown[n])]
        except re.error as err:
            raise ConfigError(f"lora.targets: {pattern!r} is not a valid regex ({err})") from err
        if not matches:
            raise ConfigError(
                f"lora.targets: {pattern!r} matches no linear layer of the image model "
                "(names look like 'blocks.0.attn.proj', 'blocks.0.mlp.fc1')"
            )
        for name in matches:
            if name in selected and selected[name] != (1, (0,)):
                raise ConfigError(
                    f"lora.targets: {name} is selected both by q/k/v slices and by {pattern!r}; "
                    "use one or the other"
                )
            selected[name] = (1, (0,))
    return selected


def apply_lora(target: Target, cfg: LoRAConfig) -> MethodParts:
    vit: ViT = target.backbone
    trainable = []
    for name, (groups, slots) in _select_layers(vit, cfg).items():
        parent_name, _, attr = name.rpartition(".")
        parent = vit.get_submodule(parent_name)
        base = getattr(parent, attr)
        layer = LoRALinear(base, cfg.rank, cfg.alpha, cfg.lora_dropout, groups, slots)
        setattr(parent, attr, layer)
        trainable += [layer.lora_A, layer.lora_B]
    return MethodParts(trainable)


METHOD = Method("lora", LoRAConfig, apply_lora, export_as=lambda cfg: None)
