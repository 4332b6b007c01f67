"""CLIP for video: both towers, and a video classifier whose class weights come from text.

    clip = load_clip("ViT-B-16.pt")           # towers, tokenizer and logit scale of a CLIP file
    model = create_clip_model("coop", classes, pretrained="ViT-B-16.pt", num_frames=8)
    logits = model(video)                      # [B, T, 3, H, W] -> [B, C]

The image tower embeds every frame (final-norm class token @ projection), a temporal pooling
gives the clip embedding, and the logits are ``exp(logit_scale) * cos(clip, class)`` for one
text embedding per class, produced by the method's prompts module (``clip.heads``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import ViT
from ..checkpoints import (
    Checkpoint,
    create_backbone,
    load_image_encoder,
    load_weights,
    read_checkpoint,
)
from ..errors import CheckpointError, ConfigError
from ..methods import parse_methods
from ..models import ModelSpec, TunableModel
from .heads import ClipOptions, readable
from .text import TextConfig, TextTransformer, text_encoder_weights, text_preset
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
TEXT_BATCH = 256  # prompts per text-tower forward when embedding class names


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


class ClipVideoClassifier(TunableModel):
    """Frames ``[B, T, 3, H, W]`` → logits ``[B, C]`` against text embeddings of the classes.

    Methods fill in the parts: ``prompts`` (required: class embeddings ``[C, E]``, or per clip
    ``[B, C, E]``), ``adapter`` (maps the clip embedding; CLIP-Adapter), ``cache`` (adds
    logits from the normalised clip embedding; Tip-Adapter), ``temporal`` (fuses the frame
    embeddings; Ju et al., ActionCLIP, X-CLIP), ``visual_context`` (patch tokens for the
    prompts; X-CLIP) and ``loss_fn`` (a training loss of its own; ActionCLIP). It has the
    engine's model surface (``forward``, ``video_features``, ``classify``, the tuned-state
    methods, ``spec``).
    """

    def __init__(
        self, clip: Clip, classes: Sequence[str], num_frames: int, temporal_pool: str = "mean"
    ) -> None:
        super().__init__()
        self.backbone = clip.visual  # named like VideoClassifier's: the engine reads it
        self.text = clip.text
        self.tokenizer = clip.tokenizer
        self.logit_scale = nn.Parameter(torch.tensor(clip.logit_scale), requires_grad=False)
        self.classes = list(classes)
        self.num_frames = num_frames
        self.temporal_pool = temporal_pool
        self.prompts: nn.Module | None = None
        self.adapter: nn.Module = nn.Identity()
        self.cache: nn.Module | None = None
        # Frame embeddings [B, T, E] -> clip embedding [B, E], replacing ``temporal_pool``
        # (Ju et al.'s temporal transformer, ActionCLIP's fusion). It may train, so it runs in
        # ``classify``: the features the engine caches are the frozen frame embeddings.
        self.temporal: nn.Module | None = None
        # Training loss ``(logits, labels) -> loss`` replacing the engine's cross-entropy
        # (ActionCLIP's symmetric KL over the batch); None = cross-entropy.
        self.loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
        # The image tower's last tokens -> per-clip visual tokens [B, N, E] that the prompts
        # condition on instead of the clip embedding (X-CLIP's video-specific prompts).
        self.visual_context: nn.Module | None = None

    @property
    def embed_dim(self) -> int:
        return self.text.output_dim

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Joint-space embeddings ``[N, E]`` of texts (unnormalised), in batches."""
        device = self.logit_scale.device
        parts = []
        for start in range(0, len(texts), TEXT_BATCH):
            tokens = self.tokenizer(texts[start : start + TEXT_BATCH],
                                    self.text.cfg.context_length)
            parts.append(self.text(tokens.to(device)))
        return torch.cat(parts)

    def set_classes(self, classes: Sequence[str]) -> None:
        """Classify among ``classes`` from now on: methods call it once they have set
        ``prompts``; base-to-new evaluation calls it with the new classes."""
        if self.cache is not None and self.classes != list(classes):
            raise ConfigError("a Tip-Adapter cache holds labels of its own classes; it cannot "
                              "classify other classes")
        self.prompts.set_classes(self, [readable(c) for c in classes])
        self.classes = list(classes)
        if self.spec is not None:
            self.spec.num_classes = len(classes)

    def video_features(self, video: Tensor) -> Tensor:
        """Clip embedding ``[B, E]``: frame embeddings pooled over time (not normalised); with a
        ``temporal`` module, the frame embeddings flattened, ``[B, T * E]``, followed by the
        visual context tokens, ``[B, (T + N) * E]``, with a ``visual_context`` module."""
        if self.visual_context is None:
            frames = self.backbone.encode(video)  # [B, T, E]
        else:
            tokens, _, layout = self.backbone.forward_tokens(video)
            frames = self.backbone.pool(tokens, layout)  # [B, T, D]
            if self.backbone.proj is not None:  # as ViT.encode does
                frames = frames @ self.backbone.proj  # [B, T, E]
            context = self.visual_context(tokens, layout)  # [B, N, E]
            return torch.cat([frames, context], dim=1).flatten(1)  # [B, (T + N) * E]
        if self.temporal is not None:
            return frames.flatten(1)  # [B, T * E]
        return frames.mean(dim=1) if self.temporal_pool == "mean" else frames.amax(dim=1)

    def text_logits(self, features: Tensor, context: Tensor | None = None) -> Tensor:
        """``exp(logit_scale) * cos`` between clip embeddings ``[B, E]`` (after the adapter)
        and the class embeddings, ``[B, C]``. The prompts see the normalised clip embeddings,
        or the visual context tokens ``[B, N, E]`` when given. Prompts giving K embeddings per
        class (``[1, C, K, E]``) are ensembled as ActionCLIP tests: log of the mean softmax."""
        image = F.normalize(self.adapter(features), dim=-1)  # [B, E]
        condition = image if context is None else context
        text = F.normalize(self.prompts(self, condition), dim=-1)  # [C, E] or [B, C, E]
        if text.ndim == 4:  # [1, C, K, E]: K prompts per class, their softmaxes averaged
            cosine = torch.einsum("be,cke->bkc", image, text[0])  # [B, K, C]
            probs = (self.logit_scale.exp() * cosine).softmax(dim=-1).mean(dim=1)  # [B, C]
            return probs.log()
        if text.ndim == 2:
            cosine = image @ text.T  # [B, C]
        else:
            cosine = torch.einsum("be,bce->bc", image, text)
        return self.logit_scale.exp() * cosine

    def classify(self, features: Tensor) -> Tensor:
        """Logits ``[B, C]`` of ``video_features``: text logits + cache logits."""
        context = None
        if self.visual_context is not None:
            tokens = features.unflatten(1, (-1, self.embed_dim))  # [B, T + N, E]
            T = self.num_frames
            features, context = tokens[:, :T].flatten(1), tokens[:, T:]  # [B, T * E], [B, N, E]
        if self.temporal is not None:
            features = self.temporal(features.unflatten(1, (-1, self.embed_dim)))  # [B, E]
        logits = self.text_logits(features, context)
        if self.cache is not None:
            logits = logits + self.cache(F.normalize(features, dim=-1))
        return logits

    def forward(self, x: Tensor) -> Tensor:
        """Logits of clips ``[B, T, 3, H, W]``, or of clip embeddings ``[B, E]``."""
        return self.classify(x if x.ndim == 2 else self.video_features(x))

    # ---- the Tip-Adapter cache, fitted from features (see TunableModel) ------------------------

    @property
    def needs_training_features(self) -> bool:
        return self.cache is not None

    def fit_features(self, features: Tensor, labels: Tensor) -> None:
        if self.cache is not None:
            self.cache.fit(features, labels)

    @torch.no_grad()
    def select_hparams(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """Tip-Adapter's alpha and beta, grid-searched on validation features ``[M, V, E]``."""
        if self.cache is None or not self.cache.cfg.search:
            return {}
        device = self.logit_scale.device
        features, labels = features.to(device), labels.to(device)
        M, V, _ = features.shape
        text_logits = self.text_logits(features.flatten(0, 1)).view(M, V, -1)  # [M, V, C]
        image = F.normalize(features, dim=-1)  # [M, V, E]
        alpha, beta, top1 = self.cache.search(text_logits, image, labels)
        logger.info("Tip-Adapter: alpha %.3f, beta %.3f (validation top-1 %.2f)", alpha, beta,
                    top1)
        return {"alpha": alpha, "beta": beta, "top1": top1}


# ---- building ---------------------------------------------------------------------------------


def is_clip_method(method: str) -> bool:
    """Whether ``method`` classifies with the text tower (its options extend ClipOptions)."""
    methods = parse_methods(method)
    return len(methods) == 1 and issubclass(methods[0].config_cls, ClipOptions)


def build_clip(
    options: ClipOptions, classes: Sequence[str], backbone: str, pretrained: str | None,
    image_size: int | None = None,
) -> Clip:
    """The towers ``options`` ask for: both from the ``pretrained`` CLIP file, or the image
    tower from ``pretrained`` (or random) with a random text tower (``options.text: random``)."""
    overrides = {} if image_size is None else {"image_size": image_size}
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


def create_clip_model(
    method: str,
    classes: Sequence[str],
    backbone: str | Clip = "vit_b16_clip",
    pretrained: str | None = None,
    num_frames: int = 8,
    image_size: int | None = None,
    **options: Any,
) -> ClipVideoClassifier:
    """A CLIP video classifier for ``classes`` with ``method`` (zero_shot, coop, cocoop,
    clip_adapter, tip_adapter, efficient_prompt, actionclip, xclip) applied; ``options`` are
    the method's config fields (or ``{method: {...}}``, as ``ExperimentConfig.method_options``
    gives them).

    ``backbone`` is a preset name (the towers then come from ``pretrained`` as the options
    say, see ``build_clip``) or ready-made towers (a ``Clip``).
    """
    if not is_clip_method(method):
        raise ConfigError(f"method {method!r} is not a CLIP method; use vidadapt.create_model")
    (spec_method,) = parse_methods(method)
    cfg = spec_method.make_config(options.get(spec_method.name, options))
    if isinstance(backbone, Clip):
        clip, backbone = backbone, "custom"
    else:
        clip = build_clip(cfg, classes, backbone, pretrained, image_size)
    model = ClipVideoClassifier(clip, classes, num_frames, cfg.temporal_pool)
    model.set_trainable({spec_method.name: list(spec_method.apply(model, cfg))})
    model.spec = ModelSpec(
        method=spec_method.name,
        backbone=backbone,
        num_classes=len(classes),
        num_frames=num_frames,
        image_size=clip.visual.cfg.image_size,
        dropout=0.0,
        options={spec_method.name: asdict(cfg)},
    )
    return model
