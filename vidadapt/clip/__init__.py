"""The CLIP vision-language side: text tower, tokenizer, prompt templates, and (in
``vidadapt.clip.model``, also exported as ``vidadapt.load_clip`` / ``vidadapt.create_clip_model``)
the CLIP video classifier. ``model`` imports the method registry, whose CLIP methods import
this package, so it is not imported here."""

from .prompts import TEMPLATES, resolve_templates
from .text import TEXT_PRESETS, TextConfig, TextTransformer, text_encoder_weights
from .tokenizer import ClipTokenizer, learn_bpe

__all__ = [
    "TEMPLATES",
    "TEXT_PRESETS",
    "ClipTokenizer",
    "TextConfig",
    "TextTransformer",
    "learn_bpe",
    "resolve_templates",
    "text_encoder_weights",
]
