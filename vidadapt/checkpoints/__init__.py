"""Load pretrained image encoders from OpenAI, open_clip, timm, Hugging Face and DINOv2 files.

    model = load_image_encoder("ViT-B-16.pt")                      # architecture read off the file
    model = create_backbone("vit_b16_clip", pretrained="ViT-B-16.pt")  # checked against a preset

No timm, open_clip or ``clip`` package is needed and no pickled code runs (see ``io``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..backbones.presets import preset_config
from ..backbones.vit import ViT, ViTConfig, resample_pos_embed
from ..errors import CheckpointError
from .convert import CONVERTERS, LAYOUT_DEFAULTS, detect_layout, hf_config_fields, infer_config
from .io import read_hf_config, read_state_dict

__all__ = [
    "Checkpoint",
    "create_backbone",
    "image_encoder_weights",
    "load_image_encoder",
    "load_weights",
    "read_checkpoint",
    "read_state_dict",
]

# ViTConfig fields that the weights determine; create_backbone checks them against the preset.
STRUCTURE_FIELDS = (
    "patch_size",
    "width",
    "depth",
    "mlp_dim",
    "pre_norm",
    "patch_bias",
    "layer_scale",
    "num_registers",
    "embed_dim",
)

# How many key names an error message lists.
_NAMES_SHOWN = 5


@dataclass
class Checkpoint:
    """Everything in a checkpoint, before conversion (the CLIP text tower reads it too)."""

    path: Path  # the file or Hugging Face directory given by the user
    state_dict: dict[str, Tensor]  # every tensor, stored names and dtypes (wrappers removed)
    layout: str  # detected key layout, one of convert.CONVERTERS
    config: dict | None  # config.json of a Hugging Face directory


# Weights shipped inside the package: "builtin:NAME" is vidadapt/assets/NAME.safetensors (an
# image tower) or the Hugging Face folder vidadapt/assets/NAME/ (a CLIP with its tokenizer).
BUILTIN_PREFIX = "builtin:"
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def resolve_source(source: str | Path) -> Path:
    """The path of a checkpoint source, expanding ``builtin:NAME`` to the packaged file."""
    text = str(source)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(source)
    name = text[len(BUILTIN_PREFIX) :]
    for path in (ASSETS / f"{name}.safetensors", ASSETS / name):
        if path.exists():
            return path
    shipped = sorted(p.stem for p in ASSETS.iterdir() if not p.name.startswith(("_", ".")))
    raise CheckpointError(f"{text}: no built-in weights named {name!r}; shipped: {shipped}")


def read_checkpoint(source: str | Path) -> Checkpoint:
    """Read a checkpoint file or Hugging Face directory and detect its key layout."""
    path = resolve_source(source)
    state_dict = read_state_dict(path)
    try:
        layout = detect_layout(state_dict)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    config = read_hf_config(path) if path.is_dir() else None
    return Checkpoint(path, state_dict, layout, config)


def image_encoder_weights(checkpoint: Checkpoint, **stated) -> tuple[dict[str, Tensor], ViTConfig]:
    """The image tower in vidadapt names (float32) and the architecture the file implies.

    ``stated`` fields override what the layout and config.json say (e.g. ``act``, ``heads``).
    """
    fields = dict(LAYOUT_DEFAULTS[checkpoint.layout])
    try:
        if checkpoint.config is not None:
            fields.update(hf_config_fields(checkpoint.config))
        weights = CONVERTERS[checkpoint.layout](checkpoint.state_dict)
        config = infer_config(weights, **{**fields, **stated})
    except CheckpointError as e:
        raise CheckpointError(f"{checkpoint.path}: {e}") from None
    return {k: v.float() for k, v in weights.items()}, config


def load_image_encoder(source: str | Path, **overrides) -> ViT:
    """A ``ViT`` with the image encoder of an OpenAI / open_clip / timm / HF CLIP / DINOv2 file.

    The architecture is read off the tensors; ``overrides`` set any ``ViTConfig`` field (e.g.
    ``image_size=`` resamples the position embedding, ``act=``, ``drop_path=``). Calling the
    model on images ``[B, 3, H, W]`` gives the final-norm class token ``[B, D]``.
    """
    checkpoint = read_checkpoint(source)
    weights, config = image_encoder_weights(checkpoint, **overrides)
    return _build(config, weights, checkpoint.path)


def create_backbone(name: str, pretrained: str | Path | None = None, **overrides) -> ViT:
    """The preset ``name`` (``backbones/presets.py``), with weights from ``pretrained`` if given.

    Raises ``CheckpointError`` when the file's architecture does not fit the preset.
    Activation and LayerNorm eps come from the preset, which the weights cannot contradict.
    """
    config = preset_config(name, **overrides)
    if pretrained is None:
        return ViT(config)
    checkpoint = read_checkpoint(pretrained)
    weights, found = image_encoder_weights(checkpoint, heads=config.heads)
    differences = [
        f"{field} {getattr(config, field)} vs {getattr(found, field)}"
        for field in STRUCTURE_FIELDS
        if getattr(config, field) != getattr(found, field)
    ]
    if differences:
        raise CheckpointError(
            f"{checkpoint.path}: does not fit backbone {name!r} (preset vs file: "
            f"{', '.join(differences)}); choose another preset or override those fields"
        )
    return _build(config, weights, checkpoint.path)


def _build(config: ViTConfig, weights: dict[str, Tensor], path: Path) -> ViT:
    # Built without memory (meta device) and given the file's tensors: a random init of
    # ViT-B's 86M weights, overwritten at once, would cost seconds.
    with torch.device("meta"):
        model = ViT(config)
    # The file's position embedding is laid out for its own resolution; resample it once here.
    weights["pos_embed"] = resample_pos_embed(weights["pos_embed"], (config.grid, config.grid))
    try:
        load_weights(model, weights, assign=True)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model


def load_weights(model: nn.Module, weights: dict[str, Tensor], assign: bool = False) -> None:
    """``load_state_dict`` that fails with one line naming missing, unexpected or misshapen keys."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        problems = [
            f"{label} keys (vidadapt names): {_names(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise CheckpointError("; ".join(problems))
    for key, value in weights.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"shape mismatch for {key}: model expects {list(expected[key].shape)}, "
                f"file has {list(value.shape)}"
            )
    # assign=True adopts the tensors themselves (a model built on the meta device needs it).
    model.load_state_dict(weights, assign=assign)


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_NAMES_SHOWN])
    more = len(keys) - _NAMES_SHOWN
    return f"{shown} (+{more} more)" if more > 0 else shown
