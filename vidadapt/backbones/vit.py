"""One Vision Transformer for every image backbone vidadapt adapts (CLIP, ImageNet-21k, DINOv2).

Parameter names follow timm's ``VisionTransformer`` so a timm checkpoint loads by a plain key
copy; OpenAI, open_clip, Hugging Face and DINOv2 files are converted by ``vidadapt.checkpoints``.

Extension sites
---------------
Methods never subclass or copy the ViT. They attach small modules to named sites (lists that
are empty by default, so the plain model runs the plain ViT):

``ViT.video_tokenizer``   at most one module that replaces the per-frame patch embedding by a
                          tokenisation of the whole clip: ``tokenizer(video [B, T, 3, H, W],
                          vit) -> (tokens [B, N, D], layout)``, one sequence per clip (sparse
                          tubes).
``ViT.embed_sites``       after patch + position embedding, before ``norm_pre``; may change the
                          token sequence (VPT-shallow prompts, AIM's temporal embedding).
``Block.pre_attn``        on the residual stream before ``norm1`` (ST-Adapter, AIM's temporal
                          attention, VPT-deep, X-CLIP message tokens, temporal shift).
``Block.parallel_attn``   reads ``norm1(x)``, output added to the attention output (parallel
                          adapter).
``Block.post_attn``       maps the attention output before the residual add (AIM S-Adapter,
                          Houlsby adapter).
``Block.pre_mlp``         on the residual stream before ``norm2`` (ST-Adapter pre-MLP, removing
                          tokens that ``pre_attn`` appended).
``Block.parallel_mlp``    reads ``norm2(x)``, output added to the MLP output (AIM joint adapter,
                          scaled parallel adapter of MAM).
``Block.post_mlp``        maps the MLP output before the residual add (Houlsby adapter).
``Attention.kv_sites``    maps ``(k, v)`` head tensors before attention (prefix tuning, ZeroI2V's
                          frame shift; a site with ``spatial_only = True`` is skipped by the
                          attention across frames).
``Attention.qkv / proj``, ``Mlp.fc1 / fc2``  plain ``nn.Linear`` layers that LoRA and ZeroI2V's
                          adapters wrap in place.
``ViT.forward_tokens(..., layers=...)`` returns intermediate block outputs (EVL).
``ViT.named_image_modules()`` lists the image model's own modules, without the site modules
                          and wrappers' own parts (what LoRA wraps and BitFit tunes, whatever
                          else is stacked).

Every site module is called as ``module(x, block, layout)`` (``Attention.kv_sites``:
``module(k, v, layout)``), where ``block`` gives access to the frozen weights (AIM reuses the
block's ``norm1`` and attention for its temporal attention) and ``layout`` describes the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .fused import quick_gelu


@dataclass
class ViTConfig:
    image_size: int = 224  # input side the position embedding is laid out for
    patch_size: int = 16  # side of a square patch (stride of the patch conv)
    width: int = 768  # token dimension D
    depth: int = 12  # number of transformer blocks
    heads: int = 12  # attention heads (head dim = width / heads)
    mlp_dim: int = 3072  # hidden width of each block's MLP
    act: str = "quick_gelu"  # MLP activation: "quick_gelu" (OpenAI CLIP) or "gelu" (timm, DINOv2)
    norm_eps: float = 1e-5  # LayerNorm eps: 1e-5 CLIP, 1e-6 timm augreg and DINOv2
    pre_norm: bool = True  # LayerNorm before the blocks (CLIP's ln_pre)
    patch_bias: bool = False  # patch-embedding conv bias (absent in CLIP)
    layer_scale: bool = False  # per-channel residual scales (DINOv2 ls1 / ls2)
    num_registers: int = 0  # DINOv2 register tokens, placed after the class token
    embed_dim: int | None = None  # output size of the CLIP projection; None = no projection
    drop_path: float = 0.0  # stochastic depth, linear over depth (used when the backbone trains)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TokenLayout:
    """How the current token sequence is laid out; sites read it and may update it.

    Tokens are ``[B*T, N, D]``: every frame is a sequence ``[CLS, extra..., patches...]`` where
    ``extra`` counts register and prompt tokens. Sites that append tokens update ``num_suffix``.
    """

    batch: int  # B, videos (or images) in the batch
    frames: int  # T, frames per video (1 for images)
    grid: tuple[int, int]  # (h, w) patches per frame
    num_prefix: int = 1  # tokens before the patches (CLS + registers + prompts)
    num_suffix: int = 0  # tokens after the patches (e.g. X-CLIP message tokens)
    motion: Tensor | None = None  # [B*T, M, H, W] each image's motion map, when the clips
    # carry motion channels for a method that reads them (``data.motion``, motion prompts)
    extras: dict = field(default_factory=dict)  # per-forward scratch space for methods

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


def linear_schedule(max_rate: float, depth: int) -> list[float]:
    """Drop-path rate per block, rising linearly from 0 to ``max_rate``."""
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample during training.

    ``forward(x, scale)`` returns ``drop_path(scale * x)`` in one pass over ``x``: the scale and
    the 1 / keep rescaling go into the per-sample mask, not into extra elementwise passes. The
    mask is at least fp32, so a bf16 branch is rescaled exactly (a bf16 1 / keep is off by up to
    0.4%) and comes out in fp32, the dtype of the residual stream it is added to.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        if not self.training or self.p == 0.0:
            return x if scale == 1.0 else x * scale
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        dtype = torch.promote_types(x.dtype, torch.float32)
        mask = torch.empty(shape, dtype=dtype, device=x.device).bernoulli_(keep)
        return x * mask.mul_(scale / keep)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and SDPA kernels.

    ``causal`` lets each token attend only to itself and earlier tokens (the CLIP text encoder).
    """

    def __init__(self, dim: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.kv_sites = nn.ModuleList()

    def forward(self, x: Tensor, layout: TokenLayout | None = None) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)  # [B, N, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, d]
        for site in self.kv_sites:
            k, v = site(k, v, layout)  # [B, H, N', d]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # [B, H, N, d]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))

    def forward_frames(self, x: Tensor, layout: TokenLayout) -> Tensor:
        """Attention across frames: token ``n`` of frame ``t`` attends to token ``n`` of every
        frame of its clip (AIM's temporal attention, with this block's weights).

        Tokens stay ``[B*T, N, D]``. The sequences are short (T = 8 to 32), so the scores are
        two small batched matmuls; fused attention kernels tile 64 to 128 queries per
        sequence and waste most of their work on T = 8 (a GPU profile found them, with the
        transposes into ``[B*N, T, D]`` and back, at 41% of an AIM training step).
        """
        BT, N, D = x.shape
        B, T, H = layout.batch, layout.frames, self.heads
        qkv = self.qkv(x).view(B, T, N, 3, H, D // H)  # [B, T, N, 3, H, d]
        q, k, v = qkv.permute(3, 0, 2, 4, 1, 5).unbind(0)  # 3 x [B, N, H, T, d] (views)
        # Sites take [batch, H, L, d]: here one sequence per (clip, token). A site that works
        # on the frames' own sequences (ZeroI2V's frame shift) declares ``spatial_only``.
        sites = [s for s in self.kv_sites if not getattr(s, "spatial_only", False)]
        if sites:
            q, k, v = (t.reshape(B * N, H, T, D // H) for t in (q, k, v))
            for site in sites:
                k, v = site(k, v, layout)  # [B*N, H, T', d]
            out = F.scaled_dot_product_attention(q, k, v).reshape(B, N, H, T, D // H)
        else:
            scores = (q @ k.transpose(-2, -1)) * (D // H) ** -0.5  # [B, N, H, T, T]
            out = scores.softmax(dim=-1) @ v  # [B, N, H, T, d]
        out = out.permute(0, 3, 1, 2, 4).reshape(BT, N, D)  # [B*T, N, D]
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with the extension sites described in the module docstring."""

    SITES = ("pre_attn", "parallel_attn", "post_attn", "pre_mlp", "parallel_mlp", "post_mlp")

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg.width, cfg.heads, causal)
        self.ls1 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.act)
        self.ls2 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path)
        for site in self.SITES:
            setattr(self, site, nn.ModuleList())

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        for site in self.pre_attn:
            x = site(x, self, layout)
        h = self.norm1(x)
        a = self.attn(h, layout)
        for site in self.parallel_attn:
            a = a + site(h, self, layout)
        for site in self.post_attn:
            a = site(a, self, layout)
        x = x + self.drop_path(self.ls1(a))

        for site in self.pre_mlp:
            x = site(x, self, layout)
        h = self.norm2(x)
        # The parallel branches run before the MLP: a frozen fc2 saves nothing for backward, so
        # a checkpointed block's recomputation can then stop after the MLP's activation.
        parallel = [site(h, self, layout) for site in self.parallel_mlp]
        m = self.mlp(h)
        for p in parallel:
            m = m + p
        for site in self.post_mlp:
            m = site(m, self, layout)
        return x + self.drop_path(self.ls2(m))


# Names of the module lists that hold methods' modules (see the module docstring).
EXTENSION_SITES = frozenset({"video_tokenizer", "embed_sites", "kv_sites", *Block.SITES})


def has_site_modules(model: nn.Module) -> bool:
    """Whether any extension site of ``model`` holds a module (the plain model's are empty)."""
    return any(len(getattr(m, site)) for m in model.modules()
               for site in EXTENSION_SITES if isinstance(getattr(m, site, None), nn.ModuleList))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=p, stride=p, bias=cfg.patch_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, h*w, D]


def resample_pos_embed(pos: Tensor, new_grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """Bicubic resampling of a ``[1, prefix + h*w, D]`` position embedding to ``new_grid``."""
    prefix, grid_tokens = pos[:, :num_prefix], pos[:, num_prefix:]
    old = int(math.sqrt(grid_tokens.shape[1]))
    if (old, old) == tuple(new_grid):
        return pos
    D = pos.shape[-1]
    grid = grid_tokens.reshape(1, old, old, D).permute(0, 3, 1, 2)  # [1, D, h, w]
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, -1, D)  # [1, h'*w', D]
    return torch.cat([prefix, grid], dim=1)


class ViT(nn.Module):
    """ViT over images ``[B, 3, H, W]`` or video frames ``[B, T, 3, H, W]``.

    ``forward`` returns the pooled embedding: the final-norm class token, before any projection
    (``[B, D]`` for images, ``[B, T, D]`` for videos). ``encode`` adds the CLIP projection.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        regs = cfg.num_registers
        self.reg_token = nn.Parameter(torch.zeros(1, regs, D)) if regs else None
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, D))
        self.norm_pre = nn.LayerNorm(D, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        rates = linear_schedule(cfg.drop_path, cfg.depth)
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.proj = nn.Parameter(torch.zeros(D, cfg.embed_dim)) if cfg.embed_dim else None
        self.video_tokenizer = nn.ModuleList()  # empty, or the one module tokenising clips
        self.embed_sites = nn.ModuleList()
        self.checkpointed_blocks = 0  # leading blocks recomputed in backward (a runtime setting)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init (timm-style); real runs overwrite it with pretrained weights."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        if self.proj is not None:
            nn.init.normal_(self.proj, std=self.cfg.width**-0.5)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def width(self) -> int:
        return self.cfg.width

    def named_image_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """``named_modules()`` minus the modules methods attached to extension sites and the
        method parts of wrappers: a module that wraps an image layer in place (LoRA's,
        ZeroI2V's adapters) sets ``wraps_image_layer = True`` and keeps the layer as
        ``.base``, which is listed; the wrapper's own parts are not."""
        wrappers = [f"{name}." for name, module in self.named_modules()
                    if getattr(module, "wraps_image_layer", False)]
        for name, module in self.named_modules():
            if not EXTENSION_SITES.isdisjoint(name.split(".")):
                continue
            inside = [w for w in wrappers if name.startswith(w)]
            if all(name[len(w):].split(".")[0] == "base" for w in inside):
                yield name, module

    def set_grad_checkpointing(self, value: bool | int = True) -> None:
        """Recompute blocks' activations in backward instead of keeping them: True = all
        blocks, N = the first N (the last blocks' activations are used first in backward, so
        keeping them adds little to the peak and saves their recomputation), False = none. A
        training-time setting (``train.grad_checkpointing``), not part of the architecture."""
        depth = len(self.blocks)
        if isinstance(value, bool):
            value = depth if value else 0
        elif not isinstance(value, int) or not 0 <= value <= depth:
            raise ConfigError(f"grad_checkpointing is {value!r}; use true, false or a number of "
                              f"blocks from 0 to {depth}")
        self.checkpointed_blocks = value

    def embed(self, frames: Tensor, layout: TokenLayout) -> Tensor:
        """Patch tokens + class/register tokens + position embedding → ``[B*T, N, D]``."""
        x = self.patch_embed(frames)  # [B*T, h*w, D]
        pos = resample_pos_embed(self.pos_embed, layout.grid)
        cls = self.cls_token.expand(x.shape[0], -1, -1) + pos[:, :1]
        x = torch.cat([cls, x + pos[:, 1:]], dim=1)  # [B*T, 1 + h*w, D]
        if self.reg_token is not None:  # registers carry no position embedding (DINOv2)
            regs = self.reg_token.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], regs, x[:, 1:]], dim=1)  # [B*T, 1 + R + h*w, D]
            layout.num_prefix += self.cfg.num_registers
        return x

    def forward_tokens(
        self, x: Tensor, layers: Sequence[int] = (), motion: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor], TokenLayout]:
        """Run the encoder on images or videos (and, for the sites that read it, each image's
        motion map ``[B, T, M, H, W]``, in ``layout.motion``).

        Returns the last block's tokens ``[B*T, N, D]`` (before the final norm), the outputs of
        the blocks listed in ``layers`` (same shape), and the final token layout.
        """
        if x.ndim == 4:
            x = x.unsqueeze(1)  # [B, 1, 3, H, W]
        B, T, C, H, W = x.shape
        p = self.cfg.patch_size
        if len(self.video_tokenizer):  # a method's tokens for the whole clip (sparse tubes)
            tokens, layout = self.video_tokenizer[0](x, self)  # [B, N, D]
        else:
            layout = TokenLayout(batch=B, frames=T, grid=(H // p, W // p))
            tokens = self.embed(x.reshape(B * T, C, H, W), layout)  # [B*T, N, D]
        layout.motion = None if motion is None else motion.flatten(0, 1)
        for site in self.embed_sites:
            tokens = site(tokens, self, layout)
        tokens = self.norm_pre(tokens)
        wanted = {i % len(self.blocks) for i in layers}
        recomputed = self.checkpointed_blocks if torch.is_grad_enabled() else 0
        collected = []
        for i, block in enumerate(self.blocks):
            if i < recomputed:
                tokens = checkpoint(block, tokens, layout, use_reentrant=False)
            else:
                tokens = block(tokens, layout)
            if i in wanted:
                collected.append(tokens)
        return tokens, collected, layout

    def pool(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        """Final-norm class token, ``[B, T, D]``."""
        cls = self.norm(tokens[:, 0])  # [B*T, D]
        return cls.view(layout.batch, layout.frames, -1)

    def forward(self, x: Tensor) -> Tensor:
        tokens, _, layout = self.forward_tokens(x)
        pooled = self.pool(tokens, layout)  # [B, T, D]
        return pooled[:, 0] if x.ndim == 4 else pooled

    def encode(self, x: Tensor) -> Tensor:
        """Pooled embedding followed by the CLIP projection when the model has one."""
        pooled = self(x)
        return pooled @ self.proj if self.proj is not None else pooled
