"""ST-Adapter: spatio-temporal adapters for image-to-video transfer (Pan et al., NeurIPS 2022).

On the residual stream before attention and/or before the MLP, the *patch* tokens (class token
untouched) pass Linear(D, Ca) → depthwise Conv3d over (T, h, w) with kernel (3, 1, 1) →
Linear(Ca, D), added back. No activation (as in the released code). The conv and both biases
start at zero, so the adapter outputs 0 at step 0.

A kernel that is 1 × 1 in space runs as shifted, per-channel scaled copies of the frames in
the tokens' own layout (``layers.temporal_depthwise_conv``): cuDNN's depthwise 3-D convolution
needs two transposes, and its bf16 weight-gradient kernel took 95% of a GPU training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import Block, TokenLayout, ViT
from ..checkpoints.convert import convert_openai_clip, rename_keys
from ..errors import CheckpointError
from .base import Method, MethodParts, Target
from .layers import temporal_depthwise_conv

POSITIONS = ("pre_attn", "pre_mlp")


@dataclass
class STAdapterConfig:
    positions: tuple[str, ...] = ("pre_mlp",)  # "12x384" = pre_mlp; "24x384" = both
    width: int = 384  # bottleneck channels Ca
    kernel: tuple[int, int, int] = (3, 1, 1)  # depthwise Conv3d kernel over (T, h, w)

    def __post_init__(self) -> None:
        self.positions = tuple(self.positions)
        self.kernel = tuple(self.kernel)
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise ValueError(
                f"st_adapter.positions must be a non-empty subset of {POSITIONS}, "
                f"got {self.positions}"
            )
        if len(self.kernel) != 3 or any(k < 1 or k % 2 == 0 for k in self.kernel):
            raise ValueError(
                f"st_adapter.kernel must be three odd sizes (T, h, w), got {self.kernel}"
            )


class STAdapter(nn.Module):
    def __init__(self, dim: int, width: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.down = nn.Linear(dim, width)
        padding = tuple(k // 2 for k in kernel)  # keeps T, h and w
        self.conv = nn.Conv3d(width, width, kernel, padding=padding, groups=width)
        self.up = nn.Linear(width, dim)
        for zeroed in (self.conv.weight, self.conv.bias, self.down.bias, self.up.bias):
            nn.init.zeros_(zeroed)

    def forward(self, x: Tensor, block: Block, layout: TokenLayout) -> Tensor:
        BT, N, D = x.shape
        B, T, (h, w) = layout.batch, layout.frames, layout.grid
        start, end = layout.num_prefix, layout.num_prefix + layout.num_patches
        patches = x[:, start:end]  # [B*T, h*w, D]
        z = self.down(patches)  # [B*T, h*w, Ca]
        C = z.shape[-1]
        if self.conv.kernel_size[1:] == (1, 1):  # temporal only: no cuDNN, no transposes
            z = temporal_depthwise_conv(z.view(B, T, h * w, C), self.conv.weight, self.conv.bias)
            z = z.view(BT, h * w, C)  # [B*T, h*w, Ca]
        else:
            z = z.view(B, T, h, w, C).permute(0, 4, 1, 2, 3)  # [B, Ca, T, h, w]
            z = self.conv(z)
            z = z.permute(0, 2, 3, 4, 1).reshape(BT, h * w, C)  # [B*T, h*w, Ca]
        # Zero rows for the other tokens: one add over the stream, no slice-add and concat.
        update = F.pad(self.up(z), (0, 0, start, N - end))  # [B*T, N, D]
        return x + update


def apply_st_adapter(target: Target, cfg: STAdapterConfig) -> MethodParts:
    vit: ViT = target.backbone
    adapters = []
    for block in vit.blocks:
        for position in cfg.positions:
            adapter = STAdapter(vit.width, cfg.width, cfg.kernel)
            getattr(block, position).append(adapter)
            adapters.append(adapter)
    # Frames are averaged, then the (frozen) final norm, as in the official code.
    return MethodParts(adapters, pool_before_norm=True)


METHOD = Method("st_adapter", STAdapterConfig, apply_st_adapter, across_frames=True)


# ---- the official release's checkpoints ----------------------------------------------------------

# The ST-Adapter repository saves only what trains: per block ``adapter_pre_attn`` and/or
# ``adapter_pre_mlp`` (fc1 → depthwise conv → fc2) on OpenAI CLIP names, and the ``fc`` head.
_RELEASE_NAMES = [
    (r"^transformer\.resblocks\.(\d+)\.adapter_(pre_attn|pre_mlp)\.", r"backbone.blocks.\1.\2.0."),
    (r"\.fc1\.", ".down."),
    (r"\.fc2\.", ".up."),
    (r"^fc\.", "head."),
]


def convert_st_adapter_release(
    state_dict: dict[str, Tensor], num_frames: int | None = None
) -> tuple[dict[str, Tensor], dict]:
    """An official ST-Adapter checkpoint's ``model`` → a vidadapt ``st_adapter`` model's
    tensors, and what the file says: ``positions``, ``width``, ``kernel``, ``num_classes``.
    The frame count is not in the file. A file saved with the frozen CLIP weights too is read
    whole."""
    tuned = {k: v for k, v in state_dict.items() if ".adapter_" in k or k.startswith("fc.")}
    state = rename_keys(tuned, _RELEASE_NAMES)
    frozen = {k: v for k, v in state_dict.items() if k not in tuned}
    if frozen:
        state.update({f"backbone.{k}": v for k, v in convert_openai_clip(frozen).items()})
    sites = {k.split(".")[3] for k in state if ".pre_attn.0." in k or ".pre_mlp.0." in k}
    blocks = {int(k.split(".")[2]) for k in state if ".pre_mlp.0." in k or ".pre_attn.0." in k}
    if blocks and len(blocks) != 1 + max(blocks):
        raise CheckpointError(f"it adapts blocks {sorted(blocks)} only; vidadapt's "
                              "st_adapter adapts every block")
    conv = next((v for k, v in state.items() if k.endswith("0.conv.weight")), None)  # [Ca, 1, *k]
    if conv is None:
        raise CheckpointError("it holds no ST-Adapter adapters")
    facts = {
        "positions": [p for p in POSITIONS if p in sites],
        "width": conv.shape[0],
        "kernel": list(conv.shape[2:]),
        "num_classes": state["head.weight"].shape[0],
    }
    return state, facts
