"""The CLIP vision-language side: text tower, tokenizer, prompt templates; both towers
(``clip.towers``, ``vidadapt.load_clip``) and the text head that classifies with them
(``methods.text_head``)."""

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
