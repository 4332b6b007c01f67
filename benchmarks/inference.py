"""Inference throughput (clips/s) of every method, and of LoRA and ZeroI2V after export.

    python benchmarks/inference.py --small                   # ViT-B/16, 4 frames at 112²
    python benchmarks/inference.py --batch 8 --peak-tflops 989   # H100 SXM bf16 dense peak

All models live in this one process and are timed in turn, round after round (the first
round warms up); the median forward time of a batch gives clips/s. ``lora_exported`` is the
LoRA model written by ``save_exported`` and read back by ``load_exported``: a plain ViT + head,
so its cost should match ``linear`` (the plain image model) and undercut unmerged ``lora``;
``zeroi2v_exported`` and ``zeroi2v_channels_exported`` likewise (the plain layers plus the
parameter-free frame shift).
FLOPs per clip are counted on the meta device (multiply-add = 2); with ``--peak-tflops``
(the device's dense bf16 peak) the table adds the fraction of it reached. On CUDA the forward
runs under bf16 autocast, on CPU in fp32; always under ``torch.inference_mode``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from train_step import VARIANTS, Shape, build

from vidadapt.engine.trainer import autocast_dtype
from vidadapt.export import load_exported, save_exported
from vidadapt.models import VideoModel, create_model
from vidadapt.report import measure

DEFAULT = "linear,lora,lora_exported,zeroi2v,zeroi2v_exported,aim_stj,st_adapter,vpt,prefix,adapter"
EXPORTED = {"lora_exported": "lora", "zeroi2v_exported": "zeroi2v",  # name → trained variant
            "zeroi2v_channels_exported": "zeroi2v_channels"}


def exported(variant: str, shape: Shape) -> VideoModel:
    """A model of ``variant`` with non-zero updates, through the export file and back."""
    model = build(VARIANTS[variant], shape)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_exported(path, model)
        exported, _ = load_exported(path)
    return exported


def make(name: str, shape: Shape) -> VideoModel:
    return exported(EXPORTED[name], shape) if name in EXPORTED else build(VARIANTS[name], shape)


def forward_flops(model: VideoModel, shape: Shape) -> float:
    """FLOPs of one clip through ``model``'s architecture, rebuilt from its spec on meta."""
    spec = model.spec
    with torch.device("meta"):
        twin = create_model(spec.method, backbone=spec.backbone, num_classes=spec.num_classes,
                            num_frames=spec.num_frames, image_size=spec.image_size,
                            **spec.options)
        return measure(twin.eval(), shape.frames, shape.image_size)


def benchmark(names: list[str], shape: Shape, rounds: int, device: torch.device,
              peak_tflops: float | None) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    models = {name: make(name, shape).to(device).eval() for name in names}
    amp = autocast_dtype("bf16", device)
    video = torch.randn(shape.batch, shape.frames, 3, shape.image_size, shape.image_size,
                        device=device)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for _ in range(rounds + 1):  # round 0 is the warm-up
            for name, model in models.items():
                start = time.perf_counter()
                model(video)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
    results = {}
    for name, model in models.items():
        flops = forward_flops(model, shape)
        seconds = statistics.median(times[name][1:])
        r = {"clips_per_s": shape.batch / seconds, "gflops_per_clip": flops / 1e9,
             "achieved_tflops": shape.batch * flops / seconds / 1e12}
        if peak_tflops:
            r["fraction_of_peak"] = r["achieved_tflops"] / peak_tflops
        results[name] = r
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=DEFAULT,
                        help=f"comma-separated, from: {', '.join([*EXPORTED, *VARIANTS])}")
    parser.add_argument("--small", action="store_true",
                        help="4 frames at 112², batch 2 (default: 8 frames at 224², batch 2)")
    parser.add_argument("--backbone", default="vit_b16_clip")
    parser.add_argument("--batch", type=int, default=2, help="clips per forward")
    parser.add_argument("--rounds", type=int, default=5, help="timed forwards per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's dense bf16 peak, to report the fraction reached")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    names = [n for n in args.methods.split(",") if n]
    unknown = [n for n in names if n not in EXPORTED and n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}")
    shape = Shape(args.backbone, 4 if args.small else 8, 112 if args.small else 224, args.batch)
    device = torch.device(args.device)
    results = benchmark(names, shape, args.rounds, device, args.peak_tflops)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{shape.backbone}, {shape.frames}x{shape.image_size}², batch {shape.batch}, {device} "
          f"({torch.get_num_threads()} threads)")
    width = max(len(name) for name in ["model", *results]) + 2
    print(f"{'model':<{width}}{'clips/s':>10}{'GFLOPs/clip':>13}{'TFLOP/s':>10}{'of peak':>9}")
    for name, r in results.items():
        peak = f"{100 * r['fraction_of_peak']:.0f}%" if "fraction_of_peak" in r else "-"
        print(f"{name:<{width}}{r['clips_per_s']:>10.2f}{r['gflops_per_clip']:>13.1f}"
              f"{r['achieved_tflops']:>10.3f}{peak:>9}")


if __name__ == "__main__":
    main()
