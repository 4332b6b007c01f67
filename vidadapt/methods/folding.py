"""Trainable parts that fold into the frozen linear layer they wrap, for export.

A :class:`FoldableLinear` wraps a frozen ``nn.Linear`` (kept as ``.base``, peft-style) with
trainable parts whose effect is itself linear (LoRA's low-rank update, ZeroI2V's linear
adapters): the wrapper computes one linear map, which :meth:`FoldableLinear.folded` returns as
a plain weight and bias. :func:`merged_state_dict` writes every wrapper as the plain layer it
folds into, so the exported model has the image model's layers and their cost.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class FoldableLinear(nn.Module):
    """A frozen ``nn.Linear`` (``base``) with trainable parts a linear layer can absorb."""

    base: nn.Linear
    wraps_image_layer = True  # ViT.named_image_modules lists ``base``, not the wrapper's parts

    def folded(self) -> tuple[Tensor, Tensor | None]:
        """The weight ``[out, in]`` and bias ``[out]`` of the one linear layer this wrapper
        computes (dropout off), as new tensors."""
        raise NotImplementedError


def linear_weights(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weight and bias a linear layer computes with: a wrapper's folded ones, so wrappers
    of wrappers fold too (``lora+zeroi2v``)."""
    if isinstance(layer, FoldableLinear):
        return layer.folded()
    return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()


def foldable_layers(model: nn.Module) -> dict[str, FoldableLinear]:
    """Every :class:`FoldableLinear` in ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FoldableLinear)}


def outermost_foldable(model: nn.Module) -> dict[str, FoldableLinear]:
    """The :class:`FoldableLinear` layers not inside another (which folds them with itself)."""
    outer: dict[str, FoldableLinear] = {}
    for name, layer in foldable_layers(model).items():  # parents come before children
        if not any(name.startswith(f"{o}.") for o in outer):
            outer[name] = layer
    return outer


def folded_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every wrapper is the plain ``nn.Linear`` it folds into
    (what ``vidadapt export`` serves, for tracing to ONNX)."""
    model = copy.deepcopy(model)
    for name, layer in outermost_foldable(model).items():
        weight, bias = layer.folded()
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        linear.requires_grad_(False)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, linear)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with every :class:`FoldableLinear` written as a plain linear
    layer (its folded weight and bias under the layer's own name); the model is unchanged.

    ``merged_state_dict(classifier.backbone)`` of a LoRA model loads (strictly) into a plain
    ``ViT``. Modules of methods that do not fold keep their keys.
    """
    replaced: dict[str, Tensor] = {}
    prefixes: list[str] = []
    for name, layer in outermost_foldable(model).items():  # an inner one folds with its outer
        prefix = f"{name}." if name else ""
        prefixes.append(prefix)
        weight, bias = layer.folded()
        replaced[prefix + "weight"] = weight.detach()
        if bias is not None:
            replaced[prefix + "bias"] = bias.detach()
    kept = {key: value for key, value in model.state_dict().items()
            if not any(key.startswith(prefix) for prefix in prefixes)}
    return {**kept, **replaced}
