"""CLIP's two towers, and the options every CLIP method shares to get them.

    clip = load_clip("ViT-B-16.pt")     # towers, tokenizer and logit scale of a CLIP file
    model = create_model("coop", pretrained="ViT-B-16.pt", classes=classes, num_frames=8)

A method whose config extends :class:`ClipOptions` classifies with a text head
(``methods.text_head.TextHead``); ``create_model`` then builds the towers with :func:`build_clip`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backbones import ViT
from ..checkpoints import (
    Checkpoint,
    create_backbone,
    load_image_encoder,
    load_weights,
    read_checkpoint,
)
from ..errors import CheckpointError, ConfigError
from .text import TEXT_PRESETS, TextConfig, TextTransformer, text_encoder_weights, text_preset
from .tokenizer import ClipTokenizer

logger = logging.getLogger("vidadapt")

# exp(logit_scale) of every released CLIP: training clamps the scale at 100.
DEFAULT_LOGIT_SCALE = math.log(100.0)
# Random text towers for the image presets (a real CLIP file brings its own).
TEXT_PRESET_FOR_BACKBONE = {
    "vit_b16_clip": "clip_text_b",
    "vit_b32_clip": "clip_text_b",
    "vit_l14_clip": "clip_text_l",
}
FALLBACK_TEXT_PRESET = "clip_text_tiny"
TEMPORAL_POOLS = ("mean", "max")
TEXT_SOURCES = ("pretrained", "random")


@dataclass
class ClipOptions:
    """Options of every CLIP method (their configs extend this class): where the towers come
    from, and how the frame embeddings become the clip embedding."""

    temporal_pool: str = "mean"  # frame embeddings → clip embedding: "mean" or "max"
    text: str = "pretrained"  # text tower: "pretrained" (from model.pretrained, a CLIP file) or
    # "random" (random weights from text_preset: tests and demos only, zero-shot is chance)
    text_preset: str | None = None  # random text tower's preset; None = the one for the backbone
    tokenizer: str | None = None  # vocab.json + merges.txt folder or OpenAI's bpe .gz; None =
    # beside model.pretrained, or (random text tower) a vocabulary learned from the class names

    def __post_init__(self) -> None:
        if self.temporal_pool not in TEMPORAL_POOLS:
            raise ConfigError(f"temporal_pool {self.temporal_pool!r}: use one of {TEMPORAL_POOLS}")
        if self.text not in TEXT_SOURCES:
            raise ConfigError(f"text {self.text!r}: use one of {TEXT_SOURCES}")
        if self.text_preset is not None and self.text_preset not in TEXT_PRESETS:
            raise ConfigError(f"text_preset {self.text_preset!r}: use one of "
                              f"{', '.join(TEXT_PRESETS)}")

    def vocabulary_texts(self) -> list[str]:
        """Texts besides the class names that a learned vocabulary must cover."""
        return []


def readable(name: str) -> str:
    """A class name as prompt text ("playing_guitar" → "playing guitar")."""
    return name.replace("_", " ")


@dataclass
class Clip:
    """The parts of a CLIP model."""

    visual: ViT  # image tower; ``visual.encode(x)`` gives joint-space embeddings
    text: TextTransformer  # text tower; ``text(tokens)`` gives joint-space embeddings
    tokenizer: ClipTokenizer  # text → ids for ``text``
    logit_scale: float  # log of the scale applied to cosine similarities (ln 100 when trained)


def load_clip(
    source: str | Path, tokenizer: str | Path | None = None, backbone: str | None = None,
    **image_overrides: Any,
) -> Clip:
    """Both towers, the tokenizer and the logit scale of an OpenAI / open_clip ``.pt`` or
    safetensors file, or of a Hugging Face ``CLIPModel`` folder.

    ``tokenizer`` is a folder with ``vocab.json`` + ``merges.txt`` or OpenAI's
    ``bpe_simple_vocab_16e6.txt.gz``; by default those files are looked for beside ``source``.
    ``backbone`` checks the image tower against a preset; ``image_overrides`` set ViTConfig
    fields (e.g. ``image_size=``).
    """
    checkpoint = read_checkpoint(source)
    if backbone is not None:
        visual = create_backbone(backbone, pretrained=source, **image_overrides)
    else:
        visual = load_image_encoder(source, **image_overrides)
    if visual.proj is None:
        raise CheckpointError(f"{checkpoint.path}: the image tower has no projection to the "
                              "text embedding space (visual.proj / visual_projection)")
    return Clip(visual, load_text_encoder(checkpoint), find_tokenizer(checkpoint.path, tokenizer),
                logit_scale_of(checkpoint))


def load_text_encoder(checkpoint: Checkpoint, **overrides: Any) -> TextTransformer:
    """The text tower of a read checkpoint (``read_checkpoint``)."""
    weights, config = text_encoder_weights(checkpoint, **overrides)
    text = TextTransformer(config)
    try:
        load_weights(text, weights)
    except CheckpointError as e:
        raise CheckpointError(f"{checkpoint.path}: text tower: {e}") from None
    return text


def logit_scale_of(checkpoint: Checkpoint) -> float:
    scale = checkpoint.state_dict.get("logit_scale")
    return DEFAULT_LOGIT_SCALE if scale is None else float(scale.float())


def find_tokenizer(checkpoint_path: Path, tokenizer: str | Path | None) -> ClipTokenizer:
    """The tokenizer at ``tokenizer``, else beside the checkpoint (in its folder)."""
    if tokenizer is not None:
        return ClipTokenizer.from_path(tokenizer)
    folder = checkpoint_path if checkpoint_path.is_dir() else checkpoint_path.parent
    try:
        return ClipTokenizer.from_path(folder)
    except CheckpointError:
        raise CheckpointError(
            f"{checkpoint_path}: no tokenizer beside the checkpoint; pass the folder of "
            "vocab.json + merges.txt (Hugging Face) or OpenAI's bpe_simple_vocab_16e6.txt.gz "
            "(method option `tokenizer`)"
        ) from None


def random_text_tower(
    visual: ViT, tokenizer: ClipTokenizer, preset: str | None = None, backbone: str = ""
) -> TextTransformer:
    """A randomly initialised text tower that fits ``visual`` (same joint dimension) and the
    tokenizer's vocabulary; the preset defaults to the backbone's (``TEXT_PRESET_FOR_BACKBONE``)."""
    name = preset or TEXT_PRESET_FOR_BACKBONE.get(backbone, FALLBACK_TEXT_PRESET)
    joint_dim = visual.proj.shape[1] if visual.proj is not None else visual.width
    config: TextConfig = text_preset(name, vocab_size=tokenizer.vocab_size, embed_dim=joint_dim)
    return TextTransformer(config)


# ---- building ---------------------------------------------------------------------------------


def build_clip(
    options: ClipOptions, classes: Sequence[str], backbone: str, pretrained: str | None,
    **overrides: Any,
) -> Clip:
    """The towers ``options`` ask for: both from the ``pretrained`` CLIP file, or the image
    tower from ``pretrained`` (or random) with a random text tower (``options.text: random``).
    ``overrides`` set the image tower's ViTConfig fields (``image_size``, ``drop_path``)."""
    if options.text == "pretrained":
        if pretrained is None:
            raise ConfigError(
                "CLIP methods need a CLIP file with a text tower: set model.pretrained (or "
                "method.text: random for a random text tower, which only tests the pipeline)"
            )
        return load_clip(pretrained, options.tokenizer, backbone, **overrides)
    visual = create_backbone(backbone, pretrained=pretrained, **overrides)
    if options.tokenizer is not None:
        tokenizer = ClipTokenizer.from_path(options.tokenizer)
    else:
        texts = [readable(c) for c in classes] + options.vocabulary_texts()
        tokenizer = ClipTokenizer.learn(texts)
    logger.warning("the CLIP text tower has random weights (method.text: random): class "
                   "embeddings carry no meaning until trained, zero-shot accuracy is chance")
    text = random_text_tower(visual, tokenizer, options.text_preset, backbone)
    return Clip(visual, text, tokenizer, DEFAULT_LOGIT_SCALE)
