"""Named backbone architectures; weights come from ``pretrained=PATH`` (see checkpoints)."""

from __future__ import annotations

from dataclasses import replace

from .vit import ViTConfig

_CLIP = dict(act="quick_gelu", norm_eps=1e-5, pre_norm=True, patch_bias=False)
_TIMM = dict(act="gelu", norm_eps=1e-6, pre_norm=False, patch_bias=True)
_BASE = dict(width=768, depth=12, heads=12, mlp_dim=3072)

PRESETS: dict[str, ViTConfig] = {
    "vit_b16_clip": ViTConfig(patch_size=16, embed_dim=512, **_BASE, **_CLIP),
    "vit_b32_clip": ViTConfig(patch_size=32, embed_dim=512, **_BASE, **_CLIP),
    "vit_l14_clip": ViTConfig(
        patch_size=14, width=1024, depth=24, heads=16, mlp_dim=4096, embed_dim=768, **_CLIP
    ),
    "vit_b16_in21k": ViTConfig(patch_size=16, **_BASE, **_TIMM),
    # DINOv2 is trained at 518 px; its position embedding is resampled to image_size on load.
    "vit_b14_dinov2": ViTConfig(patch_size=14, layer_scale=True, **_BASE, **_TIMM),
    # Small CLIP-flavoured ViT for the synthetic demo (pre-trained by vidadapt/demo/pretrain.py).
    "vit_tiny": ViTConfig(
        image_size=32, patch_size=8, width=128, depth=4, heads=4, mlp_dim=512, **_CLIP
    ),
    # Its image tower inside the synthetic CLIP (vidadapt/demo/pretrain_clip.py): the same ViT
    # with a projection to the 128-d image-text space.
    "vit_tiny_clip": ViTConfig(
        image_size=32, patch_size=8, width=128, depth=4, heads=4, mlp_dim=512, embed_dim=128,
        **_CLIP,
    ),
}


def preset_config(name: str, **overrides) -> ViTConfig:
    """The architecture called ``name``, with dataclass fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[name], **overrides)
