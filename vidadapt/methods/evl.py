"""EVL: frozen CLIP models are efficient video learners (Lin et al., ECCV 2022).

The image backbone stays frozen and runs without autograd (no gradient ever passes through
it). A light Transformer decoder reads the outputs of the last ``num_layers`` blocks: decoder
layer ``i`` reads block ``L - num_layers + i``. Before a layer reads them, that block's frame
tokens get three local temporal terms (docs/methods.md, as in the official code):

* a depthwise Conv1d over time (kernel 3), added to every token;
* a learned temporal position embedding ``[T, D]`` (zero init), added to every token;
* a cross-frame attention term on the patch tokens: frame ``t``'s queries attend to frame
  ``t - 1``'s (and ``t + 1``'s) keys, using the block's own frozen q and k; the head-averaged
  attention weights mix a learned table of vectors indexed by the spatial offset between the
  query and key patches (zero init, one table per direction).

The decoder keeps one learned query token: per layer, ``query += Attn(LN(query), LN(tokens of
all T frames))`` then ``query += MLP(LN(query))`` (4x, QuickGELU, dropout 0.5); the query never
attends to itself. The head is LN → dropout → Linear (the classifier's dropout and head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import Block, TokenLayout, ViT, quick_gelu
from ..checkpoints.convert import rename_keys
from ..errors import CheckpointError, ConfigError
from .base import Method, MethodParts, Target
from .layers import temporal_depthwise_conv

QK_KEY = "evl_qk"  # layout.extras key: block index → (q, k) of that block's patch tokens


@dataclass
class EVLConfig:
    num_layers: int = 4  # decoder layers; layer i reads the output of block L - num_layers + i
    heads: int | None = None  # decoder attention heads; None = the backbone's
    mlp_ratio: float = 4.0  # decoder MLP hidden width = mlp_ratio * D
    mlp_dropout: float = 0.5  # dropout inside the decoder MLP, after the activation
    temporal_conv: bool = True  # depthwise Conv1d (kernel 3) over time, residual, every token
    temporal_embedding: bool = True  # zero-init [T, D] embedding added to every token of a frame
    cross_frame: bool = True  # cross-frame attention term on the patch tokens (t-1 and t+1)

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"evl.num_layers must be at least 1, got {self.num_layers}")


class RecordQK(nn.Module):
    """pre_attn site that leaves ``x`` unchanged and records the block's q and k of the patch
    tokens, ``[B*T, H, P, d]`` each, for the cross-frame attention. It sees what the block's
    attention sees when it comes after the other methods' pre_attn modules (stack EVL last)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        start, end = layout.num_prefix, layout.num_prefix + layout.num_patches
        patches = block.norm1(x[:, start:end])  # [B*T, P, D]
        BT, P, D = patches.shape
        heads = block.attn.heads
        qkv = block.attn.qkv(patches).view(BT, P, 3, heads, D // heads)  # [B*T, P, 3, H, d]
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B*T, H, P, d]
        layout.extras.setdefault(QK_KEY, {})[self.index] = (q, k)
        return x


def relative_offset_index(grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """``[P, P]`` index of the spatial offset (query patch − key patch) into a table of
    ``(2h - 1) * (2w - 1)`` offsets."""
    h, w = grid
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    ys, xs = torch.meshgrid(rows, cols, indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # [P]
    dy = ys[:, None] - ys[None, :] + h - 1  # [P, P], in [0, 2h - 2]
    dx = xs[:, None] - xs[None, :] + w - 1  # [P, P], in [0, 2w - 2]
    return dy * (2 * w - 1) + dx


class CrossFrameAttention(nn.Module):
    """For every patch of frame t: Σ_k a(q_t, k_{t±1})[k] · table[offset(q, k)], where ``a`` is
    the frozen block's softmax attention averaged over heads. Zero at init."""

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        offsets = (2 * grid[0] - 1) * (2 * grid[1] - 1)
        self.previous = nn.Parameter(torch.zeros(offsets, dim))  # frame t reads frame t - 1
        self.next = nn.Parameter(torch.zeros(offsets, dim))  # frame t reads frame t + 1

    @staticmethod
    def mix(q: Tensor, k: Tensor, table: Tensor, offset_index: Tensor) -> Tensor:
        """Queries ``[B, T', H, P, d]`` against keys of other frames (same shape) → ``[B, T', P,
        D]``."""
        weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)  # [B, T', H, P, P]
        weights = weights.mean(dim=2)  # [B, T', P, P]
        # A query's P keys lie at P different offsets, so each weight gets its own slot in
        # [B, T', P, offsets] and one matmul with the table sums weight x table[offset]. Upstream
        # gathers table[offset_index] instead: a [P, P, D] tensor (118 MB in fp32 at ViT-B/16)
        # whose gradient is scatter-added back, a quarter of the whole training step on CPU.
        # The offsets' axis is padded to a multiple of 8 with zero rows: the 729 offsets of a
        # 14 x 14 grid made the matmul fall back to a slow unaligned GPU kernel.
        offsets = -(-table.shape[0] // 8) * 8
        slots = weights.new_zeros(*weights.shape[:-1], offsets)  # [B, T', P, O']
        slots = slots.scatter(-1, offset_index.expand_as(weights), weights)
        return slots @ F.pad(table, (0, 0, 0, offsets - table.shape[0]))  # [B, T', P, D]

    def forward(self, q: Tensor, k: Tensor, layout: TokenLayout) -> Tensor:
        """The term for the patch tokens, ``[B, T, P, D]``, from q and k ``[B*T, H, P, d]``."""
        if tuple(layout.grid) != self.grid:
            raise ValueError(
                f"EVL's cross-frame attention was built for a {self.grid} patch grid, the input "
                f"has {tuple(layout.grid)}: build the model with the input's image size"
            )
        B, T = layout.batch, layout.frames
        q = q.view(B, T, *q.shape[1:])  # [B, T, H, P, d]
        k = k.view(B, T, *k.shape[1:])  # [B, T, H, P, d]
        # Rebuilt per call (P x P integers) rather than kept as a buffer: nothing to restore
        # when a model is built on the meta device and loaded from a file.
        offset_index = relative_offset_index(self.grid, q.device)  # [P, P]
        from_previous = self.mix(q[:, 1:], k[:, :-1], self.previous, offset_index)  # [B, T-1, P, D]
        from_next = self.mix(q[:, :-1], k[:, 1:], self.next, offset_index)  # [B, T-1, P, D]
        # The first frame has no previous frame and the last no next one: their term is 0.
        return F.pad(from_previous, (0, 0, 0, 0, 1, 0)) + F.pad(from_next, (0, 0, 0, 0, 0, 1))


class LocalTemporal(nn.Module):
    """The temporal terms added to one block's frame tokens before a decoder layer reads them."""

    def __init__(self, dim: int, frames: int, grid: tuple[int, int], cfg: EVLConfig) -> None:
        super().__init__()
        self.conv = (
            nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim) if cfg.temporal_conv else None
        )
        self.temporal_embedding = (
            nn.Parameter(torch.zeros(frames, dim)) if cfg.temporal_embedding else None
        )
        self.cross_frame = CrossFrameAttention(dim, grid) if cfg.cross_frame else None

    def forward(self, x: Tensor, qk: tuple[Tensor, Tensor] | None, layout: TokenLayout) -> Tensor:
        """Tokens ``[B, T, N, D]`` → the same with the temporal terms added."""
        out = x
        if self.conv is not None:  # the Conv1d over each token's frames, in this layout
            out = out + temporal_depthwise_conv(x, self.conv.weight, self.conv.bias)
        if self.temporal_embedding is not None:
            out = out + self.temporal_embedding[: x.shape[1], None, :]
        if self.cross_frame is not None:
            start, end = layout.num_prefix, layout.num_prefix + layout.num_patches
            patches = out[:, :, start:end] + self.cross_frame(*qk, layout)  # [B, T, P, D]
            out = torch.cat([out[:, :, :start], patches, out[:, :, end:]], dim=2)  # [B, T, N, D]
        return out


class DecoderLayer(nn.Module):
    """query += Attn(LN(query), LN(tokens)); query += MLP(LN(query)). No self-attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, mlp_dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm_query = nn.LayerNorm(dim)
        self.norm_tokens = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = round(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(mlp_dropout)
        self.fc2 = nn.Linear(hidden, dim)
        for linear in (self.q, self.k, self.v, self.proj):  # as the official code
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        for linear in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def split_heads(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        return x.view(B, L, self.heads, D // self.heads).transpose(1, 2)  # [B, H, L, d]

    def forward(self, query: Tensor, tokens: Tensor) -> Tensor:
        """Query ``[B, 1, D]``, tokens ``[B, T*N, D]`` → updated query ``[B, 1, D]``."""
        h = self.norm_tokens(tokens)
        q = self.split_heads(self.q(self.norm_query(query)))  # [B, H, 1, d]
        k, v = self.split_heads(self.k(h)), self.split_heads(self.v(h))  # [B, H, T*N, d]
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, H, 1, d]
        query = query + self.proj(attended.transpose(1, 2).flatten(2))  # [B, 1, D]
        hidden = self.dropout(quick_gelu(self.fc1(self.norm_mlp(query))))
        return query + self.fc2(hidden)


class EVLHead(nn.Module):
    """The model's readout (``MethodParts.readout``): block outputs → temporal terms →
    decoder → LN."""

    def __init__(self, vit: ViT, frames: int, cfg: EVLConfig) -> None:
        super().__init__()
        depth, dim = len(vit.blocks), vit.width
        self.layers = tuple(range(depth - cfg.num_layers, depth))  # blocks the decoder reads
        grid = (vit.cfg.grid, vit.cfg.grid)
        heads = cfg.heads or vit.cfg.heads
        self.temporal = nn.ModuleList(
            LocalTemporal(dim, frames, grid, cfg) for _ in self.layers
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(dim, heads, cfg.mlp_ratio, cfg.mlp_dropout) for _ in self.layers
        )
        self.query_embedding = nn.Parameter(torch.empty(dim))  # the one decoder query token
        nn.init.normal_(self.query_embedding, std=0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, block_outputs: list[Tensor], layout: TokenLayout, video: Tensor) -> Tensor:
        """Outputs ``[B*T, N, D]`` of the blocks in ``self.layers`` → clip feature ``[B, D]``
        (the pixels, ``video``, are not read)."""
        B, T = layout.batch, layout.frames
        recorded = layout.extras.get(QK_KEY, {})
        query = self.query_embedding.expand(B, 1, -1)  # [B, 1, D]
        for index, x, temporal, layer in zip(
            self.layers, block_outputs, self.temporal, self.decoder, strict=True
        ):
            x = x.view(B, T, *x.shape[1:])  # [B, T, N, D]
            x = temporal(x, recorded.get(index), layout)
            query = layer(query, x.flatten(1, 2))  # reads [B, T*N, D]
        return self.norm(query[:, 0])  # [B, D]


def apply_evl(target: Target, cfg: EVLConfig) -> MethodParts:
    vit: ViT = target.backbone
    if cfg.num_layers > len(vit.blocks):
        raise ConfigError(f"evl.num_layers is {cfg.num_layers} but the backbone has only "
                          f"{len(vit.blocks)} blocks")
    if cfg.heads and vit.width % cfg.heads:
        raise ConfigError(f"evl.heads ({cfg.heads}) must divide the backbone width {vit.width}")
    head = EVLHead(vit, target.num_frames, cfg)
    if cfg.cross_frame:
        for index in head.layers:
            vit.blocks[index].pre_attn.append(RecordQK(index))
    return MethodParts([head], readout=head)


METHOD = Method("evl", EVLConfig, apply_evl, across_frames=True)


# ---- the official release's checkpoints ----------------------------------------------------------

# The EVL repository saves the decoder and the head (the frozen backbone is not registered):
# decoder.{cls_token, decoder_layers.i, temporal_conv.i, temporal_pos_embed.i, cross_attention.i}
# and proj = LayerNorm, Dropout, Linear.
_RELEASE_NAMES = [
    (r"^decoder\.cls_token$", "readout.query_embedding"),
    (r"^decoder\.decoder_layers\.", "readout.decoder."),
    (r"\.attn\.([qkv])_proj\.", r".\1."),
    (r"\.attn\.out_proj\.", ".proj."),
    (r"\.norm1\.", ".norm_query."),
    (r"\.norm2\.", ".norm_mlp."),
    (r"\.norm3\.", ".norm_tokens."),
    (r"\.mlp\.fc([12])\.", r".fc\1."),
    (r"^decoder\.temporal_conv\.(\d+)\.", r"readout.temporal.\1.conv."),
    (r"^decoder\.temporal_pos_embed\.(\d+)$", r"readout.temporal.\1.temporal_embedding"),
    (r"^decoder\.cross_attention\.(\d+)\.w1$", r"readout.temporal.\1.cross_frame.previous"),
    (r"^decoder\.cross_attention\.(\d+)\.w2$", r"readout.temporal.\1.cross_frame.next"),
    (r"^proj\.0\.", "readout.norm."),
    (r"^proj\.2\.", "head."),
]


def convert_evl_release(
    state_dict: dict[str, Tensor], num_frames: int | None = None
) -> tuple[dict[str, Tensor], dict]:
    """An official EVL checkpoint's ``model`` → a vidadapt ``evl`` model's tensors, and what
    the file says: ``num_layers``, ``mlp_ratio``, which temporal terms, ``num_frames`` (from
    the temporal embedding), ``grid`` (the patch grid's side ``g``: the cross-frame offset table
    has ``(2g - 1)²`` rows), ``num_classes``."""
    if any(k.startswith("backbone.") for k in state_dict):
        raise CheckpointError("the release fine-tuned its backbone (--finetune_backbone); "
                              "vidadapt's evl keeps the image model frozen")
    state = rename_keys(state_dict, _RELEASE_NAMES)
    layers = {int(k.split(".")[2]) for k in state if k.startswith("readout.decoder.")}
    width = state["readout.query_embedding"].shape[0]
    facts: dict = {
        "num_layers": len(layers),
        "mlp_ratio": state["readout.decoder.0.fc1.weight"].shape[0] / width,
        "temporal_conv": "readout.temporal.0.conv.weight" in state,
        "temporal_embedding": "readout.temporal.0.temporal_embedding" in state,
        "cross_frame": "readout.temporal.0.cross_frame.previous" in state,
        "num_classes": state["head.weight"].shape[0],
    }
    if facts["temporal_embedding"]:
        facts["num_frames"] = state["readout.temporal.0.temporal_embedding"].shape[0]
    if facts["cross_frame"]:
        offsets = state["readout.temporal.0.cross_frame.previous"].shape[0]  # (2g - 1)²
        facts["grid"] = (math.isqrt(offsets) + 1) // 2
    return state, facts
