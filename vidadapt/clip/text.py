"""The CLIP text encoder, built from the ViT's own pre-norm block with causal attention.

Parameter names follow the ViT's (timm-style): ``token_embed`` (OpenAI ``token_embedding``),
``pos_embed`` ``[L, D]`` (``positional_embedding``), ``blocks.i.*`` (``transformer.resblocks.i``),
``norm`` (``ln_final``) and ``proj`` ``[D, E]`` (``text_projection``, applied as ``x @ proj``).
``text_encoder_weights`` converts OpenAI / open_clip and Hugging Face CLIP files (docs/methods.md).

The sentence feature is the final-norm token at the end-of-text position, which is the largest
token id of a sequence (OpenAI's convention; it has the largest id in CLIP's vocabulary).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..backbones.vit import ACTIVATIONS, Block, TokenLayout, ViTConfig
from ..checkpoints import Checkpoint

# The image tower's converters already rename CLIP's blocks; the text tower's are identical.
from ..checkpoints.convert import HF_CLIP_RULES, OPENAI_RULES, fuse_qkv, rename_keys
from ..errors import CheckpointError
from .tokenizer import CONTEXT_LENGTH

StateDict = dict[str, Tensor]

# Head width of every CLIP text tower; the weights cannot show the head count.
HEAD_DIM = 64


@dataclass
class TextConfig:
    vocab_size: int = 49408  # rows of the token embedding (the tokenizer's vocabulary)
    context_length: int = CONTEXT_LENGTH  # positions of the position embedding
    width: int = 512  # token dimension D
    depth: int = 12  # transformer blocks
    heads: int = 8  # attention heads
    mlp_dim: int = 2048  # hidden width of each block's MLP
    act: str = "quick_gelu"  # MLP activation (QuickGELU for OpenAI weights)
    norm_eps: float = 1e-5  # LayerNorm eps
    embed_dim: int | None = 512  # output of the text projection; None = no projection

    def block_config(self) -> ViTConfig:
        """The block fields of ``ViTConfig`` (the ViT's blocks are reused as they are)."""
        return ViTConfig(width=self.width, depth=self.depth, heads=self.heads,
                         mlp_dim=self.mlp_dim, act=self.act, norm_eps=self.norm_eps)


TEXT_PRESETS: dict[str, TextConfig] = {
    "clip_text_b": TextConfig(),  # CLIP ViT-B/16 and B/32
    "clip_text_l": TextConfig(width=768, heads=12, mlp_dim=3072, embed_dim=768),  # ViT-L/14
    # For randomly initialised tiny CLIPs (tests, the synthetic demo); the vocabulary size comes
    # from the tokenizer and the projection size from the image tower.
    "clip_text_tiny": TextConfig(width=64, depth=2, heads=2, mlp_dim=256, embed_dim=None),
}


def text_preset(name: str, **overrides) -> TextConfig:
    if name not in TEXT_PRESETS:
        raise ValueError(f"unknown text preset {name!r}; choose one of: {', '.join(TEXT_PRESETS)}")
    return replace(TEXT_PRESETS[name], **overrides)


class TextTransformer(nn.Module):
    """Token ids ``[N, L]`` → sentence features ``[N, E]`` (``[N, D]`` without projection)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.token_embed = nn.Embedding(cfg.vocab_size, D)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.context_length, D))
        block = cfg.block_config()
        self.blocks = nn.ModuleList(Block(block, causal=True) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.proj = nn.Parameter(torch.zeros(D, cfg.embed_dim)) if cfg.embed_dim else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OpenAI CLIP's random init; real runs overwrite it with pretrained weights."""
        D, depth = self.cfg.width, self.cfg.depth
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=D**-0.5)
            nn.init.normal_(block.attn.proj.weight, std=D**-0.5 * (2 * depth) ** -0.5)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * D) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=D**-0.5 * (2 * depth) ** -0.5)
        if self.proj is not None:
            nn.init.normal_(self.proj, std=D**-0.5)

    @property
    def width(self) -> int:
        return self.cfg.width

    @property
    def output_dim(self) -> int:
        return self.cfg.embed_dim or self.cfg.width

    def forward(self, tokens: Tensor) -> Tensor:
        return self.encode_embeddings(self.token_embed(tokens), end_positions(tokens))

    def encode_embeddings(self, x: Tensor, eot: Tensor) -> Tensor:
        """Features of sequences given as input embeddings ``[N, L, D]`` (prompt learning puts
        learned vectors among the token embeddings), read at positions ``eot`` ``[N]``."""
        N, L, _ = x.shape
        if not eot.is_meta:  # (the meta device has shapes, no values: all L positions run)
            # Attention is causal and features are read at the end tokens: the positions after
            # the last end token cannot change them, so they are not computed (prompts are short).
            L = int(eot.max()) + 1
        x = x[:, :L] + self.pos_embed[:L]  # [N, L, D]
        layout = TokenLayout(batch=N, frames=1, grid=(0, 0), num_prefix=L)  # no patch grid
        for block in self.blocks:
            x = block(x, layout)
        x = self.norm(x[torch.arange(N, device=x.device), eot])  # [N, D]
        return x @ self.proj if self.proj is not None else x


def end_positions(tokens: Tensor) -> Tensor:
    """Index of the end-of-text token in each row of ``[N, L]`` ids: the largest id."""
    return tokens.argmax(dim=-1)


# ---- converters -------------------------------------------------------------------------------

_TEXT_NAMES = [
    (r"^token_embedding\.", "token_embed."),
    (r"^positional_embedding$", "pos_embed"),
    (r"^ln_final\.", "norm."),
    (r"^text_projection$", "proj"),
]


def convert_openai_text(state_dict: StateDict) -> StateDict:
    """OpenAI / open_clip text tower (top-level ``token_embedding``, ``transformer.*``,
    ``ln_final``, ``text_projection``) to vidadapt names."""
    names = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
             "text_projection")
    # TorchScript archives also hold every block's causal mask, a constant, not a weight.
    text = {k: v for k, v in state_dict.items()
            if k.startswith(names) and not k.endswith(".attn_mask")}
    return rename_keys(text, OPENAI_RULES + _TEXT_NAMES)


_HF_TEXT_NAMES = [
    (r"^embeddings\.token_embedding\.", "token_embed."),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^final_layer_norm\.", "norm."),
]


def convert_hf_text(state_dict: StateDict) -> StateDict:
    """HF ``CLIPModel`` / ``CLIPTextModelWithProjection`` (``text_model.*``) to vidadapt names."""
    text = {k.removeprefix("text_model."): v for k, v in state_dict.items()
            if k.startswith("text_model.")}
    text.pop("embeddings.position_ids", None)  # token indices 0..L-1, not a weight
    out = rename_keys(text, HF_CLIP_RULES + _HF_TEXT_NAMES)
    fuse_qkv(out)
    if "text_projection.weight" in state_dict:  # nn.Linear weight [E, D]; we apply x @ proj
        out["proj"] = state_dict["text_projection.weight"].T  # [D, E]
    return out


TEXT_CONVERTERS = {"openai_clip": convert_openai_text, "hf_clip": convert_hf_text}

# Hugging Face text_config field -> TextConfig field.
_HF_CONFIG_FIELDS = {"hidden_act": "act", "layer_norm_eps": "norm_eps",
                     "num_attention_heads": "heads"}


def text_encoder_weights(checkpoint: Checkpoint, **stated) -> tuple[StateDict, TextConfig]:
    """The text tower of a CLIP checkpoint in vidadapt names (float32) and its architecture.

    ``stated`` fields override what the weights and config.json say (e.g. ``heads=``).
    """
    if checkpoint.layout not in TEXT_CONVERTERS:
        raise CheckpointError(
            f"{checkpoint.path}: a {checkpoint.layout} file holds no CLIP text tower; use an "
            "OpenAI, open_clip or Hugging Face CLIPModel file"
        )
    weights = TEXT_CONVERTERS[checkpoint.layout](checkpoint.state_dict)
    fields = {}
    if checkpoint.config is not None:
        text_config = checkpoint.config.get("text_config", {})
        fields = {ours: text_config[key] for key, ours in _HF_CONFIG_FIELDS.items()
                  if key in text_config}
    try:
        config = infer_text_config(weights, **{**fields, **stated})
    except CheckpointError as e:
        raise CheckpointError(f"{checkpoint.path}: {e}") from None
    return {k: v.float() for k, v in weights.items()}, config


def infer_text_config(weights: StateDict, **stated) -> TextConfig:
    """The architecture of converted text weights; ``stated`` fields take precedence."""
    missing = [k for k in ("token_embed.weight", "pos_embed", "blocks.0.mlp.fc1.weight")
               if k not in weights]
    if missing:
        raise CheckpointError(f"no CLIP text tower: missing {', '.join(missing)} (vidadapt names)")
    vocab_size, width = weights["token_embed.weight"].shape
    if "heads" not in stated and width % HEAD_DIM:
        raise CheckpointError(f"cannot infer the text tower's heads (width {width}); pass heads=")
    blocks = {int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))}
    proj = weights.get("proj")
    inferred = dict(
        vocab_size=vocab_size,
        context_length=weights["pos_embed"].shape[0],
        width=width,
        depth=max(blocks) + 1,
        heads=width // HEAD_DIM,
        mlp_dim=weights["blocks.0.mlp.fc1.weight"].shape[0],
        embed_dim=proj.shape[1] if proj is not None else None,
    )
    config = TextConfig(**{**inferred, **stated})
    if config.act not in ACTIVATIONS:
        raise CheckpointError(f"text activation {config.act!r} is not supported "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    return config
