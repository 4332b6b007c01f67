"""Training-step cost of every method, side by side, as ratios to full fine-tuning.

    python benchmarks/train_step.py --small            # ViT-B/16, 4 frames at 112², a few minutes
    python benchmarks/train_step.py --methods full,aim_stj,aim_stj_ckpt11,evl --batch 1
    python benchmarks/train_step.py --small --json     # one JSON object keyed by variant

Every variant (a method with its options) lives in its own worker process, which builds the
model and AdamW once and then runs one training step (forward, loss, backward, optimizer step)
each time the parent asks. The parent asks the workers in turn, round after round, so slow and
fast moments of a shared machine fall on every variant alike; the first round is a warm-up
(lazy allocations, optimizer state) and the median of the others is reported.

Peak memory is everything the training holds at its high-water mark — weights, gradients,
optimizer state, activations — measured per worker, which is why each has its own process:
on CUDA ``torch.cuda.max_memory_allocated``; on CPU its counterpart, the peak of live tensor
bytes over one more (untimed) step, from the profiler's memory timeline. On CPU the process's
peak resident set is reported too (``getrusage(RUSAGE_SELF).ru_maxrss`` minus its value after
the imports, before the model exists, read before the profiled step): an upper bound that adds
the allocator's slack (glibc keeps freed blocks) and the library code the step touched.

FLOPs are counted by ``torch.utils.flop_counter`` on the meta device (no weights, exact
shapes): per view as ``vidadapt info`` reports them (forward, multiply-add = 2), and per
training step (forward + backward for one batch) — the count that a frozen backbone lowers,
since frozen layers need input gradients only where something upstream trains and never
weight gradients. On CUDA the step runs under bf16 autocast with fused AdamW; on CPU in fp32.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from vidadapt.engine.compiled import (
    CompileMode,
    GraphedForward,
    TrainingForward,
    training_forward,
)
from vidadapt.engine.optim import build_optimizer
from vidadapt.engine.trainer import autocast_dtype, classification_loss
from vidadapt.methods.registry import METHODS
from vidadapt.methods.sparse_tubes import TUBES_8_FRAMES
from vidadapt.models import VideoModel, create_model
from vidadapt.report import measure


@dataclass(frozen=True)
class Variant:
    method: str  # registered method name
    options: dict[str, Any] = field(default_factory=dict)  # the method's config fields
    checkpointing: bool | int = False  # ViT.set_grad_checkpointing
    # Every weight trains, the image model's included: full fine-tuning of the method's video
    # model (the papers' full-fine-tuning baseline is a video transformer, e.g. TimeSformer).
    tune_all: bool = False


VARIANTS = {
    "linear": Variant("linear"),
    "full": Variant("full"),
    "full_aim": Variant("aim", tune_all=True),  # AIM's video model (S+T+J), fully fine-tuned
    "aim_s": Variant("aim", {"temporal": False, "joint": False}),
    "aim_st": Variant("aim", {"joint": False}),
    "aim_stj": Variant("aim"),
    "aim_stj_ckpt": Variant("aim", checkpointing=True),  # every block
    "aim_stj_ckpt11": Variant("aim", checkpointing=11),  # the first 11 of ViT-B's 12 blocks
    "aim_stj_ckpt10": Variant("aim", checkpointing=10),
    "st_adapter": Variant("st_adapter"),
    "vpt": Variant("vpt", {"deep": True}),
    "lora": Variant("lora"),
    "prefix": Variant("prefix"),
    "adapter": Variant("adapter"),
    "mam": Variant("mam"),
    "bitfit": Variant("bitfit"),
    "evl": Variant("evl"),  # the backbone runs without autograd: no backward through it
    "zeroi2v": Variant("zeroi2v"),  # K400 setting: heads 0, 1 look at t - 1, t + 1
    # the synthetic recipe's unit: a quarter of every head's channels looks at t - 1, one at t + 1
    "zeroi2v_channels": Variant("zeroi2v", {"shift_unit": "channels"}),
    "side_network": Variant("side_network"),  # DiST's form; no backward through the backbone
    # 8 frames as they are plus two 2x2 grids of them (10 images, as the paper's 8 + 32/16)
    "dualpath": Variant("dualpath", {"spatial_frames": 8, "grid": 2}),
    # the recipes' setting: RGB differences, 8 prompts per frame before every block
    "motion_prompt": Variant("motion_prompt", {"deep": True, "num_tokens": 8, "width": 128}),
    "sparse_tubes": Variant("sparse_tubes", {"tubes": TUBES_8_FRAMES}),  # 392 tokens per clip
}
REFERENCE = "full"  # ratios are to full fine-tuning


@dataclass(frozen=True)
class Shape:
    backbone: str  # backbone preset
    frames: int  # T
    image_size: int  # H = W
    batch: int  # clips per step
    num_classes: int = 400


def build(variant: Variant, shape: Shape) -> VideoModel:
    model = create_model(variant.method, backbone=shape.backbone, num_classes=shape.num_classes,
                         num_frames=shape.frames, image_size=shape.image_size, **variant.options)
    model.backbone.set_grad_checkpointing(variant.checkpointing)
    if variant.tune_all:
        model.requires_grad_(True)
    return model


def step_flops(variant: Variant, shape: Shape) -> tuple[float, float]:
    """(forward FLOPs of one view, FLOPs of one training step's forward + backward)."""
    with torch.device("meta"):
        model = build(variant, shape)
        per_view = measure(model.eval(), shape.frames, shape.image_size)
        video = torch.empty(shape.batch, shape.frames, model.input_channels, shape.image_size,
                            shape.image_size)
        with FlopCounterMode(display=False) as counter:
            model.train()(video).sum().backward()
    return per_view, counter.get_total_flops()


def rss_peak_bytes(baseline_kb: int) -> int:
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) * 1024  # Linux: KB


def cpu_tensor_peak_bytes(step: Callable[[], None]) -> int:
    """Peak bytes of live CPU tensors during ``step()``, those that existed before included."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # Deprecated for the CUDA-only memory snapshots; nothing replaces it on CPU.
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())  # [times, [bytes per category] per time]
    return max(sum(point) for point in sizes)


def training_step(model: VideoModel, forward: TrainingForward, optimizer: Optimizer,
                  video: Tensor, labels: Tensor) -> Callable[[], Tensor]:
    """One training step on ``video`` and ``labels`` as the trainer takes it (``forward``'s
    autocast and gradient reset, loss, backward, optimizer); the function returns the loss."""

    def step() -> Tensor:
        with forward.autocast():
            logits = forward(video)
        loss = classification_loss(logits, labels, smoothing=0.0)
        loss.backward()
        optimizer.step()
        forward.zero_grad(optimizer)
        return loss.detach()

    return step


def worker(conn, variant: Variant, shape: Shape, device_name: str, mode: CompileMode) -> None:
    """Build once, then one timed training step per "step" message; "done" → report, exit.
    The step is the trainer's: ``train.compile`` ``mode``, its autocast and gradient reset.
    A failure is sent back as ``{"error": traceback}`` and ends the worker."""
    try:
        run_worker(conn, variant, shape, device_name, mode)
    except Exception:
        conn.send({"error": traceback.format_exc()})


def run_worker(conn, variant: Variant, shape: Shape, device_name: str, mode: CompileMode) -> None:
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = build(variant, shape).to(device).train()
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.05)  # fused on CUDA
    amp = autocast_dtype("bf16", device)  # bf16 on CUDA, fp32 on CPU
    forward = training_forward(model, mode, amp, distributed=False)
    video = torch.randn(shape.batch, shape.frames, model.input_channels, shape.image_size,
                        shape.image_size, device=device)
    labels = torch.randint(shape.num_classes, (shape.batch,), device=device)
    per_view, per_step = step_flops(variant, shape)
    counts = model.parameter_counts()
    conn.send({"tunable": counts["tunable"], "total": counts["total"],
               "gflops_per_view": per_view / 1e9, "train_gflops_per_step": per_step / 1e9})

    step = training_step(model, forward, optimizer, video, labels)
    while conn.recv() == "step":
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        conn.send(time.perf_counter() - start)
    if device.type == "cuda":
        report = {"peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
        if isinstance(forward, GraphedForward):
            report["capture_s"] = forward.capture_seconds
        conn.send(report)
    else:
        rss = rss_peak_bytes(baseline_kb)  # before the profiler's own bookkeeping
        conn.send({"peak_mb": cpu_tensor_peak_bytes(step) / 2**20, "rss_mb": rss / 2**20})


def benchmark(names: list[str], shape: Shape, rounds: int, device: str,
              mode: CompileMode = "off") -> dict[str, dict[str, float]]:
    """Per variant: median s/step, peak memory, parameters, FLOPs, and ratios to full.
    A variant that fails reports ``{"error": traceback}`` and leaves the others running."""
    ctx = mp.get_context("spawn")  # a fresh interpreter each: nothing shared, honest peaks
    pipes, procs = {}, []
    for name in names:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(child, VARIANTS[name], shape, device, mode))
        proc.start()
        pipes[name] = parent
        procs.append(proc)
    results = {name: pipe.recv() for name, pipe in pipes.items()}
    live = {name: pipe for name, pipe in pipes.items() if "error" not in results[name]}
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds + 1):  # round 0 is the warm-up
        for name, pipe in list(live.items()):
            pipe.send("step")
            reply = pipe.recv()
            if isinstance(reply, dict):  # the step failed
                results[name].update(reply)
                del live[name]
            else:
                times[name].append(reply)
    for name, pipe in live.items():
        pipe.send("done")
        results[name].update(pipe.recv())
        results[name]["s_per_step"] = statistics.median(times[name][1:])
        results[name]["first_step_s"] = times[name][0]  # with any capture or compilation
    for proc in procs:
        proc.join()
    for name in list(results):
        if "error" in results[name]:
            print(f"{name} failed:\n{results[name]['error']}", file=sys.stderr)
    done = {name: r for name, r in results.items() if "error" not in r}
    for r in done.values():
        r["clips_per_s"] = shape.batch / r["s_per_step"]
        r["achieved_tflops"] = r["train_gflops_per_step"] / r["s_per_step"] / 1e3
    if REFERENCE in done:
        ref = done[REFERENCE]
        for r in done.values():
            for key in ("s_per_step", "peak_mb", "rss_mb", "tunable", "gflops_per_view",
                        "train_gflops_per_step"):
                if key in r and ref[key]:
                    r[f"{key}_x_full"] = r[key] / ref[key]
    return results


def print_table(results: dict[str, dict[str, float]], shape: Shape, device: str) -> None:
    print(f"{shape.backbone}, {shape.frames}x{shape.image_size}², batch {shape.batch}, "
          f"{device} ({torch.get_num_threads()} threads); ratios are × full fine-tuning")
    rss = all("rss_mb" in r for r in results.values())  # CPU
    header = ("variant", "s/step", "×", "peak MiB", "×", *(("RSS MiB", "×") if rss else ()),
              "tunable M", "×", "GFLOPs/view", "step GFLOPs", "×")
    print(("{:<16}{:>9}{:>7}{:>10}{:>7}" + "{:>10}{:>7}" * rss + "{:>11}{:>7}{:>13}{:>13}{:>7}")
          .format(*header))
    for name, r in results.items():
        rss_columns = f"{r['rss_mb']:>10.0f}{r.get('rss_mb_x_full', 0):>7.2f}" if rss else ""
        print(f"{name:<16}{r['s_per_step']:>9.3f}{r.get('s_per_step_x_full', 0):>7.2f}"
              f"{r['peak_mb']:>10.0f}{r.get('peak_mb_x_full', 0):>7.2f}{rss_columns}"
              f"{r['tunable'] / 1e6:>11.2f}{r.get('tunable_x_full', 0):>7.3f}"
              f"{r['gflops_per_view']:>13.1f}{r['train_gflops_per_step']:>13.1f}"
              f"{r.get('train_gflops_per_step_x_full', 0):>7.2f}")
    for name in results:
        plain = unchecked_counterpart(name, list(results))
        if VARIANTS[name].checkpointing and plain:
            r, p = results[name], results[plain]
            print(f"{name}: {r['s_per_step'] / p['s_per_step']:.2f}× the step time and "
                  f"{r['peak_mb'] / p['peak_mb']:.2f}× the peak memory of {plain}")
    video = results.get("full_aim")  # the papers' comparison: the same video model, all trained
    for name, r in results.items():
        if video and VARIANTS[name].method == "aim" and name != "full_aim":
            print(f"{name}: {r['s_per_step'] / video['s_per_step']:.2f}× the step time and "
                  f"{r['peak_mb'] / video['peak_mb']:.2f}× the peak memory of full_aim")


def unchecked_counterpart(name: str, names: list[str]) -> str | None:
    """The variant in ``names`` that is ``name`` without activation checkpointing."""
    unchecked = replace(VARIANTS[name], checkpointing=False)
    return next((n for n in names if VARIANTS[n] == unchecked), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(VARIANTS),
                        help=f"comma-separated variants from: {', '.join(VARIANTS)}")
    parser.add_argument("--small", action="store_true",
                        help="4 frames at 112², batch 2 (default: 8 frames at 224², batch 1)")
    parser.add_argument("--backbone", default="vit_b16_clip")
    parser.add_argument("--frames", type=int, help="override T")
    parser.add_argument("--image-size", type=int, help="override the input side")
    parser.add_argument("--batch", type=int, help="override clips per step")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", default="off", choices=["off", "graphs", "inductor"],
                        help="train.compile mode of every variant (graphs: CUDA only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    names = [n for n in args.methods.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS or VARIANTS[n].method not in METHODS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    small = args.small
    shape = Shape(args.backbone, args.frames or (4 if small else 8),
                  args.image_size or (112 if small else 224), args.batch or (2 if small else 1))
    results = benchmark(names, shape, args.rounds, args.device, args.compile)
    results = {name: r for name, r in results.items() if "error" not in r}
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results, shape, args.device)


if __name__ == "__main__":
    main()
