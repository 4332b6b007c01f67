"""Map image-encoder weights from each source layout to vidadapt's (timm-style) names.

Every converter is a plain ``state_dict -> state_dict`` function: it keeps the image tower,
renames it, drops the rest (text tower, classifier heads, training-only tokens) and leaves keys it
does not know under their own name, so loading reports them as unexpected. ``infer_config`` then
reads the architecture off the converted tensors. docs/methods.md has the key map.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import Tensor

from ..backbones.vit import ACTIVATIONS, ViTConfig
from ..errors import CheckpointError

StateDict = dict[str, Tensor]

# One line per supported layout, for the "unknown layout" error.
SUPPORTED = (
    "OpenAI / open_clip CLIP (visual.conv1.weight, ...)",
    "Hugging Face CLIP (vision_model.embeddings.patch_embedding.weight, ...)",
    "timm ViT, augreg or CLIP-derived (patch_embed.proj.weight, ...)",
    "DINOv2 facebookresearch (patch_embed.proj.weight + mask_token, ...)",
)


def detect_layout(state_dict: StateDict) -> str:
    """Which source layout the keys follow: one of ``CONVERTERS``."""
    keys = state_dict.keys()
    hf_prefixed = any(k.startswith("vision_model.") for k in keys)
    if hf_prefixed or "embeddings.patch_embedding.weight" in keys:
        return "hf_clip"
    if "visual.conv1.weight" in keys or "conv1.weight" in keys:
        return "openai_clip"
    if "patch_embed.proj.weight" in keys:
        if "mask_token" in keys or "register_tokens" in keys:
            return "dinov2"
        return "timm_clip" if "norm_pre.weight" in keys else "timm_vit"
    sample = ", ".join(list(keys)[:3])
    raise CheckpointError(
        f"unknown checkpoint layout (keys such as {sample}); supported: {'; '.join(SUPPORTED)}"
    )


def rename_keys(state_dict: StateDict, rules: list[tuple[str, str]]) -> StateDict:
    """Apply the regex ``(pattern, replacement)`` rules, in order, to every key."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def _submodule(state_dict: StateDict, prefix: str) -> StateDict:
    """Keys under ``prefix``, prefix removed; all keys when none has it (a tower saved alone)."""
    if not any(k.startswith(prefix) for k in state_dict):
        return dict(state_dict)
    return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}


def _pop(state_dict: StateDict, key: str) -> Tensor:
    if key not in state_dict:
        raise CheckpointError(f"missing key {key}")
    return state_dict.pop(key)


OPENAI_RULES = [
    (r"^conv1\.", "patch_embed.proj."),
    (r"^ln_pre\.", "norm_pre."),
    (r"^ln_post\.", "norm."),
    (r"^transformer\.resblocks\.", "blocks."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.attn\.in_proj_", ".attn.qkv."),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
]


def convert_openai_clip(state_dict: StateDict) -> StateDict:
    """OpenAI / open_clip ``visual.*`` (or a visual tower saved alone) to vidadapt names."""
    out = rename_keys(_submodule(state_dict, "visual."), OPENAI_RULES)
    out["cls_token"] = _pop(out, "class_embedding").reshape(1, 1, -1)  # [1, 1, D]
    out["pos_embed"] = _pop(out, "positional_embedding").unsqueeze(0)  # [1, N+1, D]
    return out


HF_CLIP_RULES = [
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^pre_layrnorm\.", "norm_pre."),  # sic: HF's spelling
    (r"^post_layernorm\.", "norm."),
    (r"^encoder\.layers\.", "blocks."),
    (r"\.layer_norm1\.", ".norm1."),
    (r"\.layer_norm2\.", ".norm2."),
    (r"\.self_attn\.out_proj\.", ".attn.proj."),
    (r"\.self_attn\.([qkv])_proj\.", r".attn.\1."),
]


def convert_hf_clip(state_dict: StateDict) -> StateDict:
    """HF ``CLIPModel`` / ``CLIPVisionModel`` (``vision_model.*`` or unprefixed) to our names."""
    vision = _submodule(state_dict, "vision_model.")
    vision.pop("visual_projection.weight", None)  # outside the tower; read below
    vision.pop("embeddings.position_ids", None)  # token indices 0..N, not a weight
    out = rename_keys(vision, HF_CLIP_RULES)
    out["cls_token"] = _pop(out, "embeddings.class_embedding").reshape(1, 1, -1)  # [1, 1, D]
    out["pos_embed"] = _pop(out, "embeddings.position_embedding.weight").unsqueeze(0)  # [1, N+1, D]
    fuse_qkv(out)
    if "visual_projection.weight" in state_dict:  # nn.Linear weight [out, D]; we apply x @ proj
        out["proj"] = state_dict["visual_projection.weight"].T  # [D, out]
    return out


def fuse_qkv(state_dict: StateDict) -> None:
    """Replace separate ``attn.q/k/v`` projections by one ``attn.qkv`` (q; k; v stacked)."""
    for q_key in [k for k in state_dict if ".attn.q." in k]:
        parts = [_pop(state_dict, q_key.replace(".attn.q.", f".attn.{p}.")) for p in "qkv"]
        state_dict[q_key.replace(".attn.q.", ".attn.qkv.")] = torch.cat(parts)  # [3D, ...]


def convert_timm(state_dict: StateDict) -> StateDict:
    """timm ``VisionTransformer`` (augreg, CLIP-derived, DINOv2 ports): names already match.

    timm stores CLIP's projection as a linear ``head`` with an all-zero bias; any other head is an
    ImageNet classifier and is dropped, since every vidadapt method brings its own head.
    """
    out = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    head_weight, head_bias = state_dict.get("head.weight"), state_dict.get("head.bias")
    if head_weight is not None and (head_bias is None or not head_bias.any()):
        out["proj"] = head_weight.T  # [D, out]
    return out


def convert_dinov2(state_dict: StateDict) -> StateDict:
    """facebookresearch DINOv2 to vidadapt names (the blocks already use timm's names)."""
    out = {k: v for k, v in state_dict.items() if k != "mask_token"}  # masked-image training only
    return rename_keys(out, [(r"^register_tokens$", "reg_token")])


CONVERTERS: dict[str, Callable[[StateDict], StateDict]] = {
    "openai_clip": convert_openai_clip,
    "hf_clip": convert_hf_clip,
    "timm_clip": convert_timm,
    "timm_vit": convert_timm,
    "dinov2": convert_dinov2,
}

# What the weights cannot show, per layout (docs/methods.md). timm's CLIP ports default to
# QuickGELU because OpenAI's are the CLIP weights the video methods were published with; pass
# act="gelu" for LAION / DataComp weights. DINOv2 is trained at 518 px but used at 224 px.
LAYOUT_DEFAULTS: dict[str, dict] = {
    "openai_clip": dict(act="quick_gelu", norm_eps=1e-5),
    "hf_clip": dict(act="quick_gelu", norm_eps=1e-5),  # CLIPVisionConfig defaults
    "timm_clip": dict(act="quick_gelu", norm_eps=1e-5),
    "timm_vit": dict(act="gelu", norm_eps=1e-6),
    "dinov2": dict(act="gelu", norm_eps=1e-6, image_size=224),
}

# Hugging Face config.json field -> ViTConfig field.
_HF_CONFIG_FIELDS = {
    "hidden_act": "act",
    "layer_norm_eps": "norm_eps",
    "num_attention_heads": "heads",
}


def hf_config_fields(config: dict) -> dict:
    """ViTConfig fields stated by a Hugging Face ``config.json`` (CLIPModel or vision-only)."""
    vision = config.get("vision_config", config)
    fields = {ours: vision[key] for key, ours in _HF_CONFIG_FIELDS.items() if key in vision}
    if fields.get("act", "quick_gelu") not in ACTIVATIONS:
        raise CheckpointError(
            f"config.json: hidden_act {fields['act']!r} is not supported "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    return fields


# Tensors infer_config reads; a file without them cannot be a ViT.
_ARCHITECTURE_KEYS = (
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "blocks.0.mlp.fc1.weight",
)

# Head width of CLIP, timm ViT and DINOv2 models; the weights cannot show the head count.
HEAD_DIM = 64


def infer_config(state_dict: StateDict, **stated) -> ViTConfig:
    """The architecture of converted weights; ``stated`` fields (act, heads, ...) take precedence.

    Heads default to ``width / 64``; a width that is not a multiple of 64 needs ``heads=``.
    """
    missing = [k for k in _ARCHITECTURE_KEYS if k not in state_dict]
    if missing:
        raise CheckpointError(f"missing keys (vidadapt names): {', '.join(missing)}")
    width = state_dict["cls_token"].shape[-1]
    patch = state_dict["patch_embed.proj.weight"].shape[-1]
    positions = state_dict["pos_embed"].shape[1] - 1  # one per patch, after the class token
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise CheckpointError(f"pos_embed has {positions} patch positions, not a square grid")
    if "heads" not in stated and width % HEAD_DIM:
        raise CheckpointError(f"cannot infer the attention heads of width {width}; pass heads=")
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    proj = state_dict.get("proj")
    reg_token = state_dict.get("reg_token")
    inferred = dict(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        depth=max(blocks) + 1,
        heads=width // HEAD_DIM,
        mlp_dim=state_dict["blocks.0.mlp.fc1.weight"].shape[0],
        pre_norm="norm_pre.weight" in state_dict,
        patch_bias="patch_embed.proj.bias" in state_dict,
        layer_scale="blocks.0.ls1.gamma" in state_dict,
        num_registers=reg_token.shape[1] if reg_token is not None else 0,
        embed_dim=proj.shape[1] if proj is not None else None,
    )
    return ViTConfig(**{**inferred, **stated})
