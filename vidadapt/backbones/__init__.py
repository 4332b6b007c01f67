from .presets import PRESETS, preset_config
from .vit import Block, TokenLayout, ViT, ViTConfig

__all__ = ["PRESETS", "Block", "TokenLayout", "ViT", "ViTConfig", "preset_config"]
