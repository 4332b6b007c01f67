"""X-CLIP: Expanding Language-Image Pretrained Models for General Video Recognition
(Ni et al., ECCV 2022).

Three modules around CLIP (docs/methods.md):

* cross-frame communication in every image block: each frame's class token → Linear → a
  "message token"; the T messages of a clip attend to each other (LN → MHSA, residual); each
  frame's message is appended to its tokens for the block's attention (``Block.pre_attn``) and
  removed before the MLP (``Block.pre_mlp``);
* a multi-frame integration transformer over the frame embeddings: learned ``[T, E]`` position
  embedding, 1 block with 8 heads, residual, mean over time (the model's temporal stage);
* video-specific prompts: the class-name embeddings (the bare name is the prompt) attend to the
  clip's patch tokens (LN, projected to E, averaged over frames) in 2 cross-attention layers;
  class embedding = text + alpha * decoder(text, visual), alpha per channel, initialised 0.1.

``convert_hf_xclip`` maps a Hugging Face ``XCLIPModel`` state dict to vidadapt names.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import ACTIVATIONS, Attention, TokenLayout
from ..checkpoints.convert import (
    HF_CLIP_RULES,
    OPENAI_RULES,
    convert_hf_clip,
    convert_openai_clip,
    fuse_qkv,
    rename_keys,
)
from ..clip.text import convert_hf_text, convert_openai_text
from ..clip.towers import ClipOptions
from ..errors import ConfigError
from .base import Method, MethodParts, Target
from .efficient_prompt import TemporalTransformer
from .text_head import TextHead

StateDict = dict[str, Tensor]


@dataclass
class XCLIPConfig(ClipOptions):
    mit_layers: int = 1  # multi-frame integration transformer blocks
    mit_heads: int = 8  # their heads (must divide E)
    prompt_layers: int = 2  # video-specific prompt generator layers
    prompt_heads: int = 8  # their cross-attention heads (must divide E)
    prompt_alpha: float = 0.1  # initial per-channel weight of the generated prompt
    message_heads: int | None = None  # message attention heads; None = the image blocks'
    tune_image_encoder: bool = False  # fine-tune the image tower (the official recipe does)
    tune_text_encoder: bool = False  # fine-tune the text tower

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.mit_layers, self.prompt_layers) < 1:
            raise ConfigError(f"mit_layers and prompt_layers must be >= 1; got "
                              f"{self.mit_layers} and {self.prompt_layers}")


class MessageTokens(nn.Module):
    """``Block.pre_attn`` site: appends each frame's message token ``[B*T, 1, D]``, computed
    from the frames' class tokens and exchanged between the frames of a clip."""

    def __init__(self, dim: int, heads: int, norm_eps: float) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads)

    def forward(self, x: Tensor, block: nn.Module, layout: TokenLayout) -> Tensor:
        B, T, D = layout.batch, layout.frames, x.shape[-1]
        message = self.fc(x[:, 0]).view(B, T, D)  # [B, T, D]
        message = message + self.attn(self.norm(message))  # frames talk to each other
        layout.num_suffix += 1
        return torch.cat([x, message.view(B * T, 1, D)], dim=1)  # [B*T, N + 1, D]


class DropMessageTokens(nn.Module):
    """``Block.pre_mlp`` site: removes the message token that ``MessageTokens`` appended."""

    def forward(self, x: Tensor, block: nn.Module, layout: TokenLayout) -> Tensor:
        layout.num_suffix -= 1
        return x[:, :-1]


class VisualContext(nn.Module):
    """Last-block patch tokens ``[B*T, N, D]`` → LN → ``@ proj`` → mean over frames,
    ``[B, P, E]``: what the video-specific prompts attend to."""

    def __init__(self, width: int, embed_dim: int, norm_eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)

    def forward(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        start = layout.num_prefix
        patches = tokens[:, start : start + layout.num_patches]  # [B*T, P, D]
        projected = self.norm(patches) @ self.proj  # [B*T, P, E]
        return projected.view(layout.batch, layout.frames, *projected.shape[1:]).mean(dim=1)


class CrossAttention(nn.Module):
    """Queries attend to other tokens: q, k, v projections without bias, output with bias."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"prompt heads ({heads}) must divide the embedding size {dim}")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        B, C, D = queries.shape
        H = self.heads
        q = self.q(queries).view(B, C, H, D // H).transpose(1, 2)  # [B, H, C, d]
        k = self.k(tokens).view(B, -1, H, D // H).transpose(1, 2)  # [B, H, P, d]
        v = self.v(tokens).view(B, -1, H, D // H).transpose(1, 2)  # [B, H, P, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, C, d]
        return self.proj(out.transpose(1, 2).reshape(B, C, D))


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return ACTIVATIONS["quick_gelu"](x)


class PromptLayer(nn.Module):
    """Class embeddings attend to the visual context (pre-norm, residual), then a 4x MLP."""

    def __init__(self, dim: int, heads: int, norm_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)  # named after the paper's code
        self.mlp = nn.Sequential(OrderedDict(
            fc1=nn.Linear(dim, 4 * dim), act=QuickGELU(), fc2=nn.Linear(4 * dim, dim)))

    def forward(self, text: Tensor, visual: Tensor) -> Tensor:
        text = text + self.cross_attn(self.norm1(text), visual)
        return text + self.mlp(self.norm3(text))


class VideoSpecificPrompts(nn.Module):
    """Class-name embeddings ``[C, E]`` shifted per clip by what the clip shows: ``[B, C, E]``
    = text + alpha * decoder(text, LN(visual context))."""

    def __init__(self, dim: int, cfg: XCLIPConfig, tune_text: bool, norm_eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.layers = nn.ModuleList(PromptLayer(dim, cfg.prompt_heads, norm_eps)
                                    for _ in range(cfg.prompt_layers))
        self.alpha = nn.Parameter(torch.full((dim,), cfg.prompt_alpha))
        self.tune_text = tune_text
        self.register_buffer("tokens", torch.empty(0, dtype=torch.long), persistent=False)
        # Class-name embeddings of the frozen text tower, [C, E]; rebuilt by set_classes.
        self.register_buffer("embeddings", torch.empty(0), persistent=False)

    @torch.no_grad()
    def set_classes(self, head: TextHead, names: Sequence[str]) -> None:
        self.tokens = head.tokenizer(list(names), head.text.cfg.context_length).to(
            head.logit_scale.device)
        self.embeddings = head.text(self.tokens)  # [C, E]

    def forward(self, head: TextHead, visual: Tensor) -> Tensor:
        """``visual``: the visual context tokens ``[B, P, E]``."""
        text = head.text(self.tokens) if self.tune_text else self.embeddings  # [C, E]
        text = text.expand(visual.shape[0], -1, -1)  # [B, C, E]
        visual = self.norm(visual)
        generated = text
        for layer in self.layers:
            generated = layer(generated, visual)
        return text + self.alpha * generated  # [B, C, E]


def apply_xclip(target: Target, cfg: XCLIPConfig) -> MethodParts:
    vit, towers = target.backbone, target.towers
    E = towers.text.output_dim
    eps = vit.cfg.norm_eps
    messages = []
    for block in vit.blocks:
        message = MessageTokens(vit.width, cfg.message_heads or vit.cfg.heads, eps)
        block.pre_attn.append(message)
        block.pre_mlp.append(DropMessageTokens())
        messages.append(message)
    temporal = TemporalTransformer(E, target.num_frames, cfg.mit_layers, cfg.mit_heads,
                                   residual=True, act="quick_gelu", init_std=0.02)
    context = VisualContext(vit.width, E, eps)
    prompts = VideoSpecificPrompts(E, cfg, cfg.tune_text_encoder, eps)
    trainable: list[nn.Module] = [*messages, temporal, context, prompts]
    if cfg.tune_image_encoder:
        trainable.append(vit)
    if cfg.tune_text_encoder:
        trainable.append(towers.text)
    head = TextHead(towers, target.classes, prompts)
    return MethodParts(trainable, temporal=temporal, head=head, context=context)


METHOD = Method("xclip", XCLIPConfig, apply_xclip, across_frames=True)


# ---- Hugging Face XCLIPModel weights -----------------------------------------------------------

_MESSAGE_RULES = [
    (r"\.message_fc\.", ".pre_attn.0.fc."),
    (r"\.message_ln\.", ".pre_attn.0.norm."),
    (r"\.message_attn\.out_proj\.", ".pre_attn.0.attn.proj."),
    (r"\.message_attn\.([qkv])_proj\.", r".pre_attn.0.attn.\1."),
]
_HEAD_RULES = [
    (r"^mit\.position_embedding$", "temporal.temporal_embed"),
    (r"^mit\.encoder\.layers\.", "temporal.blocks."),
    (r"^prompts_visual_layernorm\.", "context.norm."),
    (r"^prompts_visual_projection$", "context.proj"),
    (r"^prompts_generator\.layernorm\.", "head.prompts.norm."),
    (r"^prompts_generator\.decoder\.", "head.prompts.layers."),
    (r"^prompts_generator\.alpha$", "head.prompts.alpha"),
    (r"\.cross_attn\.([qkv])_proj\.", r".cross_attn.\1."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
]


def convert_hf_xclip(state_dict: StateDict) -> tuple[StateDict, StateDict, StateDict]:
    """An HF ``XCLIPModel`` state dict → (image tower with its message modules, text tower,
    the X-CLIP modules of the video model: ``temporal.*``, ``context.*``, ``head.prompts.*``)."""
    vision = {re.sub(r"^vision_model\.pre_layernorm\.", "vision_model.pre_layrnorm.", k): v
              for k, v in state_dict.items()
              if k.startswith("vision_model.") or k == "visual_projection.weight"}
    visual = rename_keys(convert_hf_clip(vision), _MESSAGE_RULES)
    fuse_qkv(visual)
    text = convert_hf_text(state_dict)
    heads = {k: v for k, v in state_dict.items()
             if k.startswith(("mit.", "prompts_visual_", "prompts_generator."))}
    head = rename_keys(heads, _HEAD_RULES + HF_CLIP_RULES)
    head["temporal.temporal_embed"] = head["temporal.temporal_embed"][0]  # [T, E]
    fuse_qkv(head)
    return visual, text, head


# ---- the official release's checkpoints ----------------------------------------------------------

# The X-CLIP repository's model: OpenAI CLIP names (visual.*, the text tower at the top level)
# with message_fc / message_ln / message_attn in every image block, mit.* (blocks in OpenAI's
# names), prompts_visual_ln / prompts_visual_proj and prompts_generator.*.
_RELEASE_MESSAGE_RULES = [
    (r"\.message_fc\.", ".pre_attn.0.fc."),
    (r"\.message_ln\.", ".pre_attn.0.norm."),
    (r"\.message_attn\.in_proj_", ".pre_attn.0.attn.qkv."),
    (r"\.message_attn\.out_proj\.", ".pre_attn.0.attn.proj."),
]
_RELEASE_HEAD_RULES = [
    (r"^mit\.positional_embedding$", "temporal.temporal_embed"),
    (r"^mit\.resblocks\.", "temporal.blocks."),
    (r"^prompts_visual_ln\.", "context.norm."),
    (r"^prompts_visual_proj$", "context.proj"),
    (r"^prompts_generator\.norm\.", "head.prompts.norm."),
    (r"^prompts_generator\.decoder\.", "head.prompts.layers."),
    (r"^prompts_generator\.alpha$", "head.prompts.alpha"),
    (r"\.cross_attn\.([qkv])_proj\.", r".cross_attn.\1."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
]


def convert_xclip_release(
    state_dict: StateDict, num_frames: int | None = None
) -> tuple[StateDict, dict]:
    """An official X-CLIP checkpoint's ``model`` → a vidadapt ``xclip`` model's tensors, and
    what the file says: ``num_frames``, ``mit_layers``, ``prompt_layers``, their heads (E / 64
    in the official code: 8 at ViT-B, 12 at ViT-L), the fine-tuned image tower (its recipe's;
    the text tower stays frozen, as there) and ImageNet normalisation (its data pipeline's).
    The class count comes from the class names."""
    visual = rename_keys(convert_openai_clip(state_dict), _RELEASE_MESSAGE_RULES)
    state = {f"backbone.{k}": v for k, v in visual.items()}
    state.update({f"head.text.{k}": v for k, v in convert_openai_text(state_dict).items()})
    state["head.logit_scale"] = state_dict["logit_scale"]
    video_modules = {k: v for k, v in state_dict.items()
                     if k.startswith(("mit.", "prompts_visual_", "prompts_generator."))}
    state.update(rename_keys(video_modules, _RELEASE_HEAD_RULES + OPENAI_RULES))
    state["temporal.temporal_embed"] = state["temporal.temporal_embed"][0]  # [T, E]
    heads = state["temporal.temporal_embed"].shape[1] // 64  # upstream: E // 64 in both
    facts = {
        **({"mit_heads": heads, "prompt_heads": heads} if heads else {}),
        "num_frames": state["temporal.temporal_embed"].shape[0],
        "mit_layers": len({k.split(".")[2] for k in state if k.startswith("temporal.blocks.")}),
        "prompt_layers": len({k.split(".")[3] for k in state
                              if k.startswith("head.prompts.layers.")}),
        "tune_image_encoder": True,
        "data": {"transform": {"normalize": "imagenet"}},
    }
    return state, facts
