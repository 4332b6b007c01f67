"""Forward + backward time of the reformulated layers against the forms they replaced.

    python benchmarks/ops.py                 # ViT-B/16 shapes, 8 frames at 224², batch 8
    python benchmarks/ops.py --batch 32 --json

Each pair computes the same function (tests/test_fast_paths.py checks outputs and gradients
to 1e-5); on CUDA under bf16 autocast, timed with CUDA events (median of ``--repeats``):

* ``temporal_attention``: AIM's temporal branch (norm, attention across frames with the
  block's weights, T-Adapter) on tokens transposed to ``[B*N, T, D]`` through the fused
  attention kernel, against ``Attention.forward_frames`` in the tokens' own layout.
* ``temporal_conv``: ST-Adapter's depthwise ``nn.Conv3d`` (kernel 3x1x1) on ``[B, C, T, h, w]``
  against the shifted sums of ``temporal_depthwise_conv`` on ``[B, T, h*w, C]``.
* ``lora_qkv``: LoRA on q and v of a fused qkv as one product per slice scattered into the
  output, against one ``addmm`` with the block-diagonal update matrix.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vidadapt.backbones.vit import Block, TokenLayout, ViTConfig
from vidadapt.methods.aim import TemporalAdaptation
from vidadapt.methods.layers import temporal_depthwise_conv
from vidadapt.methods.lora import LoRALinear


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` after 3 warm-up calls: CUDA events on a GPU, else the clock."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def transposed_temporal(module: TemporalAdaptation, block: Block, x: Tensor,
                        layout: TokenLayout) -> Tensor:
    BT, N, D = x.shape
    B, T = layout.batch, layout.frames
    xt = x.view(B, T, N, D).transpose(1, 2).reshape(B * N, T, D)  # [B*N, T, D]
    h = module.adapter(block.attn(block.norm1(xt), layout))  # [B*N, T, D]
    return x + h.view(B, N, T, D).transpose(1, 2).reshape(BT, N, D)  # [B*T, N, D]


def conv3d_form(conv: nn.Conv3d, z: Tensor) -> Tensor:
    B, T, P, C = z.shape
    out = conv(z.permute(0, 3, 1, 2).unsqueeze(-1))  # [B, C, T, P, 1]
    return out.squeeze(-1).permute(0, 2, 3, 1)  # [B, T, P, C]


def per_slice_lora(layer: LoRALinear, x: Tensor) -> Tensor:
    out = layer.base(x).unflatten(-1, (layer.groups, -1))  # [..., groups, w]
    z = torch.einsum("...i,sri->...sr", x, layer.lora_A)  # [..., S, r]
    delta = torch.einsum("...sr,swr->...sw", z, layer.lora_B) * layer.scale  # [..., S, w]
    return out.index_add(-2, layer.slots, delta.to(out.dtype)).flatten(-2)


def pairs(batch: int, frames: int, device: torch.device) -> dict[str, tuple[Callable, Callable]]:
    """name → (old form, new form), each a closure running forward + backward."""
    cfg = ViTConfig()  # ViT-B/16 at 224²
    D, N, grid = cfg.width, 1 + cfg.grid**2, (cfg.grid, cfg.grid)
    layout = TokenLayout(batch=batch, frames=frames, grid=grid)
    block = Block(cfg).to(device).requires_grad_(False)
    temporal = TemporalAdaptation(D, D // 4, num_tadapter=1, drop_path=0.0).to(device)
    x = torch.randn(batch * frames, N, D, device=device, requires_grad=True)

    conv = nn.Conv3d(384, 384, (3, 1, 1), padding=(1, 0, 0), groups=384).to(device)
    z = torch.randn(batch, frames, N - 1, 384, device=device, requires_grad=True)

    lora = LoRALinear(nn.Linear(D, 3 * D).to(device).requires_grad_(False), rank=8, alpha=8.0,
                      groups=3, slots=(0, 2)).to(device)

    def backward(fn: Callable[[], Tensor]) -> Callable[[], None]:
        return lambda: fn().float().sum().backward()

    return {
        "temporal_attention": (
            backward(lambda: transposed_temporal(temporal, block, x, layout)),
            backward(lambda: temporal(x, block, layout)),
        ),
        "temporal_conv": (
            backward(lambda: conv3d_form(conv, z)),
            backward(lambda: temporal_depthwise_conv(z, conv.weight, conv.bias)),
        ),
        "lora_qkv": (
            backward(lambda: per_slice_lora(lora, x)),
            backward(lambda: lora(x)),
        ),
    }


def run(batch: int, frames: int, repeats: int, device: torch.device) -> dict[str, dict]:
    results = {}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        for name, (old, new) in pairs(batch, frames, device).items():
            old_s = median_seconds(old, repeats, device)
            new_s = median_seconds(new, repeats, device)
            results[name] = {"old_ms": old_s * 1e3, "new_ms": new_s * 1e3,
                             "speedup": old_s / new_s}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.batch, args.frames, args.repeats, torch.device(args.device))
    if args.json:
        print(json.dumps(results))
        return
    print(f"forward + backward, ViT-B/16 shapes, {args.frames} frames, batch {args.batch}, "
          f"{args.device}")
    print(f"{'layer':<20}{'old ms':>10}{'new ms':>10}{'speedup':>9}")
    for name, r in results.items():
        print(f"{name:<20}{r['old_ms']:>10.2f}{r['new_ms']:>10.2f}{r['speedup']:>8.1f}x")


if __name__ == "__main__":
    main()
