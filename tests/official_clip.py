"""OpenAI CLIP's modules in its own names and order (``visual.conv1``, ``transformer.resblocks``,
``attn.in_proj_weight``...), the base the released video checkpoints build on. The release
tests build the official layouts from these with random weights and run the official forwards
on them; nothing here comes from vidadapt."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict

import torch
from torch import nn

# The shapes of the vit_tiny_clip preset, so the command can read the files too.
WIDTH, DEPTH, HEADS, PATCH, IMAGE, FRAMES, CLASSES = 128, 4, 4, 8, 32, 4, 3
GRID = IMAGE // PATCH


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block on ``[L, N, D]`` (sequence first), optionally with a causal mask."""

    def __init__(self, width: int = WIDTH, heads: int = HEADS, eps: float = 1e-5,
                 mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)),
                                              ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mask = mask

    def attention(self, x):
        return self.attn(x, x, x, need_weights=False, attn_mask=self.mask)[0]

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisualTransformer(nn.Module):
    """``visual.*``: the stem, ``transformer.resblocks`` (blocks given), ``ln_post``, ``proj``."""

    def __init__(self, blocks: list[nn.Module], output_dim: int = WIDTH) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH, PATCH, PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(WIDTH))
        self.positional_embedding = nn.Parameter(torch.randn(GRID * GRID + 1, WIDTH))
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(blocks)
        self.ln_post = nn.LayerNorm(WIDTH)
        self.proj = nn.Parameter(torch.randn(WIDTH, output_dim))

    def embed(self, images):
        """``[N, 3, H, W]`` → tokens with class token and positions, before ``ln_pre``."""
        x = self.conv1(images).flatten(2).transpose(1, 2)  # [N, P, D]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding  # [N, L, D]

    def forward(self, images):
        """CLIP's image embedding: ``ln_post`` of the class token, projected."""
        x = self.ln_pre(self.embed(images)).transpose(0, 1)  # [L, N, D]
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x[0]) @ self.proj


class TextTransformer(nn.Module):
    """The text tower's top-level names: ``token_embedding``, ``positional_embedding``,
    ``transformer.resblocks`` (causal), ``ln_final``, ``text_projection``."""

    def __init__(self, vocab: int, context: int, width: int = WIDTH, depth: int = 2,
                 output_dim: int = WIDTH) -> None:
        super().__init__()
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, width // 64 or 1, mask=mask) for _ in range(depth))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, output_dim))

    def forward(self, tokens):
        x = (self.token_embedding(tokens) + self.positional_embedding).transpose(0, 1)  # [L, N, W]
        for block in self.transformer.resblocks:
            x = block(x)
        x = self.ln_final(x.transpose(0, 1))  # [N, L, W]
        return x[torch.arange(len(tokens)), tokens.argmax(dim=-1)] @ self.text_projection


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every weight drawn N(0, 0.1), so zero inits, LayerNorms and biases all matter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.1)
    return module.eval()



class CfgNode(dict):
    """yacs' config class as X-CLIP's checkpoints pickle it (a dict subclass with attributes)."""

    def __init__(self, init=None):
        super().__init__(init or {})
        self.__dict__["_new_allowed"] = False


def save_with_yacs_config(checkpoint: dict, path, monkeypatch) -> None:
    """``torch.save`` the checkpoint with a ``yacs.config.CfgNode`` beside it, as X-CLIP does;
    afterwards yacs cannot be imported, as on a machine without it."""
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    yacs.config, config.CfgNode = config, CfgNode
    with monkeypatch.context() as patch:
        patch.setattr(CfgNode, "__module__", "yacs.config")
        patch.setitem(sys.modules, "yacs", yacs)
        patch.setitem(sys.modules, "yacs.config", config)
        config_node = CfgNode({"MODEL": CfgNode({"ARCH": "ViT-B/16"}), "DATA": CfgNode()})
        torch.save({**checkpoint, "config": config_node}, path)
