"""Write a CLIP (both towers, tokenizer, logit scale) as a Hugging Face ``CLIPModel`` folder.

    save_clip(clip, "my_clip/")           # config.json, model.safetensors, vocab.json, merges.txt
    clip = load_clip("my_clip/")          # the same towers back
    CLIPModel.from_pretrained("my_clip/") # and Hugging Face reads it too

The folder is the most portable of the layouts vidadapt reads (docs/methods.md), so a CLIP
trained with vidadapt (``vidadapt.demo.pretrain_clip`` makes the synthetic one) opens anywhere.
``hf_clip_state_dict`` is the inverse of ``convert_hf_clip`` + ``convert_hf_text``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..backbones.vit import ViTConfig
from ..checkpoints.convert import rename_keys
from .text import TextConfig
from .towers import Clip

StateDict = dict[str, Tensor]

# vidadapt names -> Hugging Face CLIP encoder names (inverse of convert.HF_CLIP_RULES).
_TO_HF_ENCODER = [
    (r"^blocks\.", "encoder.layers."),
    (r"\.norm1\.", ".layer_norm1."),
    (r"\.norm2\.", ".layer_norm2."),
    (r"\.attn\.proj\.", ".self_attn.out_proj."),
]
_TO_HF_VISION = [
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^norm_pre\.", "pre_layrnorm."),  # sic: HF's spelling
    (r"^norm\.", "post_layernorm."),
    *_TO_HF_ENCODER,
]
_TO_HF_TEXT = [
    (r"^token_embed\.", "embeddings.token_embedding."),
    (r"^norm\.", "final_layer_norm."),
    *_TO_HF_ENCODER,
]


def _split_qkv(state_dict: StateDict) -> StateDict:
    """Replace every fused ``attn.qkv`` by HF's ``self_attn.{q,k,v}_proj`` (inverse of
    ``convert.fuse_qkv``)."""
    out = {}
    for key, value in state_dict.items():
        if ".attn.qkv." not in key:
            out[key] = value
            continue
        for name, part in zip("qkv", value.chunk(3), strict=True):  # [D, ...] each
            out[key.replace(".attn.qkv.", f".self_attn.{name}_proj.")] = part
    return out


def hf_clip_state_dict(clip: Clip) -> StateDict:
    """Both towers in Hugging Face ``CLIPModel`` names (float32, contiguous)."""
    if clip.visual.proj is None or clip.text.proj is None:
        raise ValueError("a CLIPModel needs both projections (visual.proj and text.proj)")
    vision = {k: v for k, v in clip.visual.state_dict().items() if k != "proj"}
    vision["embeddings.class_embedding"] = vision.pop("cls_token").reshape(-1)  # [D]
    vision["embeddings.position_embedding.weight"] = vision.pop("pos_embed")[0]  # [N+1, D]
    text = {k: v for k, v in clip.text.state_dict().items() if k != "proj"}
    text["embeddings.position_embedding.weight"] = text.pop("pos_embed")  # [L, D]
    out = {
        **{f"vision_model.{k}": v
           for k, v in _split_qkv(rename_keys(vision, _TO_HF_VISION)).items()},
        **{f"text_model.{k}": v for k, v in _split_qkv(rename_keys(text, _TO_HF_TEXT)).items()},
        "visual_projection.weight": clip.visual.proj.T,  # nn.Linear weight [E, D]
        "text_projection.weight": clip.text.proj.T,  # nn.Linear weight [E, D]
        "logit_scale": torch.tensor(clip.logit_scale),
    }
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def hf_clip_config(clip: Clip) -> dict:
    """``config.json`` of a ``CLIPModel`` with these towers' architectures."""
    vision: ViTConfig = clip.visual.cfg
    text: TextConfig = clip.text.cfg
    tokenizer = clip.tokenizer
    shared = dict(projection_dim=text.embed_dim)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": text.embed_dim,
        "logit_scale_init_value": clip.logit_scale,
        "vision_config": dict(
            hidden_size=vision.width, intermediate_size=vision.mlp_dim,
            num_hidden_layers=vision.depth, num_attention_heads=vision.heads,
            image_size=vision.image_size, patch_size=vision.patch_size, num_channels=3,
            hidden_act=vision.act, layer_norm_eps=vision.norm_eps, **shared,
        ),
        "text_config": dict(
            hidden_size=text.width, intermediate_size=text.mlp_dim, num_hidden_layers=text.depth,
            num_attention_heads=text.heads, max_position_embeddings=text.context_length,
            vocab_size=text.vocab_size, hidden_act=text.act, layer_norm_eps=text.norm_eps,
            bos_token_id=tokenizer.sot_token_id, eos_token_id=tokenizer.eot_token_id,
            pad_token_id=0, **shared,
        ),
    }


def save_clip(
    clip: Clip, folder: str | Path, dtype: torch.dtype = torch.float32,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``clip`` to ``folder`` as a Hugging Face ``CLIPModel`` (weights in ``dtype``)."""
    vision = clip.visual.cfg
    if not (vision.pre_norm and not vision.patch_bias and not vision.layer_scale
            and vision.num_registers == 0):
        raise ValueError("a Hugging Face CLIPModel has CLIP's image tower: ln_pre, no patch bias, "
                         "no layer scale, no registers")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(dtype) for k, v in hf_clip_state_dict(clip).items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt", **(metadata or {})})
    (folder / "config.json").write_text(json.dumps(hf_clip_config(clip), indent=2) + "\n")
    clip.tokenizer.save(folder)
    return folder
