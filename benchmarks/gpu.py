"""The GPU tables in one command: training step, inference, kernel profile, end-to-end training.

    PYTHONPATH=. python benchmarks/gpu.py --out gpu.json --commit "$(git rev-parse HEAD)"
    PYTHONPATH=. python benchmarks/gpu.py --tiny --device cpu --out tiny.json   # plumbing check

On one CUDA device, ViT-B/16, 8 frames at 224², bf16 autocast, fused AdamW:

1. ``ceiling``: a bf16 8192³ matmul and a device-to-device copy, measured in this run; the
   matmul rate is the denominator of every "fraction of peak". ``fused_check``: the fused
   QuickGELU kernels against float64; ``graphs_check``: four AIM training steps eager and from
   CUDA graphs (losses and weights must be equal).
2. ``train``: the training-step table of ``train_step.py`` (every variant as a ratio to full
   fine-tuning in the same run) at batch 8 and 32, with ``train.compile`` off (eager) and
   graphs (forward and backward replayed as CUDA graphs).
3. ``inference``: ``inference.py``'s clips/s at batch 32, as a fraction of the ceiling;
   ``inference_compiled``: the same under ``torch.compile`` for two models, with the compile
   time (skipped when the other phases took longer than ``--compile-after`` seconds).
4. ``ops`` and ``profile``: each reformulated layer against the form it replaced
   (``ops.py``), and the heaviest CUDA kernels of one eager training step of some variants.
5. ``e2e``: ``vidadapt train`` of the AIM K400 recipe (8x16 frames, batch 16) on generated
   K400-like clips (454x340, 10 s, H.264) with persistent loader workers; per step clips/s and
   the time spent waiting for the loader, against the step alone at the same batch; then
   ``e2e_gpu_augment``, the same with ``data.gpu_augment`` (uint8 batches, normalisation in
   the step).

Markdown tables go to stdout, everything to one JSON. Each phase that fails is recorded in the
JSON's ``errors`` and the others still run. Needs torch with CUDA and PyAV (a wheel will do);
no network, no install of vidadapt (put the repository on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark modules

import inference  # noqa: E402
import ops  # noqa: E402
import train_step  # noqa: E402
from train_step import Shape  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# Variants per batch size: at batch 32 the heaviest ones would not fit on the card together
# (every variant holds its own process and memory), so that table has two groups, each with
# full fine-tuning as its reference.
TRAIN_GROUPS = {
    8: [["full", "full_aim", "aim_stj", "aim_stj_ckpt", "aim_stj_ckpt11", "aim_stj_ckpt10",
         "st_adapter", "evl", "lora", "vpt", "adapter", "prefix"],
        ["full", "aim_stj", "zeroi2v", "side_network", "dualpath", "motion_prompt",
         "sparse_tubes"]],
    32: [["full", "aim_stj", "aim_stj_ckpt", "aim_stj_ckpt10"],
         ["full", "st_adapter", "evl", "lora"],
         ["full", "aim_stj", "zeroi2v", "side_network", "dualpath"]],
}
INFERENCE = ["linear", "lora", "lora_exported", "zeroi2v", "zeroi2v_exported", "aim_stj",
             "st_adapter", "evl", "vpt", "adapter", "prefix"]
PROFILED = ["full", "aim_stj", "st_adapter", "evl", "lora"]
TINY = dict(backbone="vit_tiny", frames=4, image_size=32)


# ---- 1. ceiling ---------------------------------------------------------------------------------


def ceiling(device: torch.device, n: int) -> dict[str, float]:
    """bf16 matmul TFLOP/s on random data (fp32 on CPU) and copy GB/s (read + write)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    matmul = ops.median_seconds(lambda: a @ b, 10, device)
    src = torch.randn(256 * 2**20, device=device)  # 1 GiB of fp32
    dst = torch.empty_like(src)
    copy = ops.median_seconds(lambda: dst.copy_(src), 10, device)
    return {"matmul_n": n, "matmul_tflops": 2 * n**3 / matmul / 1e12,
            "copy_gbs": 2 * src.numel() * 4 / copy / 1e9}


# ---- 2. training step ---------------------------------------------------------------------------


def train_tables(shape_of: dict, device: str, rounds: int, modes: list[str],
                 groups: dict[int, list[list[str]]]) -> dict[str, Any]:
    """``{"b8_off": {variant: result}, ...}``: each group benchmarked in its own processes."""
    tables: dict[str, Any] = {}
    for batch, batch_groups in groups.items():
        for mode in modes:
            table: dict[str, Any] = {}
            for names in batch_groups:
                shape = Shape(**shape_of, batch=batch)
                results = train_step.benchmark(names, shape, rounds, device, mode)
                table.update({n: r for n, r in results.items() if n not in table})
            tables[f"b{batch}_{mode}"] = table
            print_train_table(table, batch, mode)
    return tables


def print_train_table(table: dict[str, Any], batch: int, mode: str) -> None:
    print(f"\n### Training step, batch {batch}, train.compile {mode}\n")
    print("| variant | s/step | × full | peak MiB | × full | clips/s | TFLOP/s | first step s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in table.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error'].strip().splitlines()[-1][:80]} |")
            continue
        print(f"| {name} | {r['s_per_step']:.4f} | {r.get('s_per_step_x_full', 0):.2f} | "
              f"{r['peak_mb']:.0f} | {r.get('peak_mb_x_full', 0):.2f} | {r['clips_per_s']:.1f} | "
              f"{r['achieved_tflops']:.0f} | {r['first_step_s']:.2f} |")


def graphs_match_eager(shape: Shape, device: torch.device, steps: int = 4) -> dict[str, Any]:
    """The same AIM training (drop-path on) eager and from CUDA graphs: losses and weights."""
    from vidadapt.engine.compiled import training_forward
    from vidadapt.engine.optim import build_optimizer
    from vidadapt.engine.trainer import autocast_dtype

    runs = {}
    for mode in ("off", "graphs"):
        torch.manual_seed(0)
        model = train_step.build(train_step.VARIANTS["aim_stj"], shape).to(device).train()
        with torch.no_grad():  # non-zero adapters, so every branch carries signal
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(std=0.02)
        optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
        forward = training_forward(model, mode, autocast_dtype("bf16", device), False)
        data = torch.Generator(device=device).manual_seed(1)
        video = torch.empty(shape.batch, shape.frames, 3, shape.image_size, shape.image_size,
                            device=device)
        labels = torch.empty(shape.batch, dtype=torch.long, device=device)
        step = train_step.training_step(model, forward, optimizer, video, labels)
        losses = []
        for _ in range(steps):  # new data in the same tensors, as a loader would bring
            video.normal_(generator=data)
            labels.random_(shape.num_classes, generator=data)
            losses.append(step().item())
        runs[mode] = (losses, [p.detach().clone() for p in model.parameters() if p.requires_grad])
    (eager_losses, eager_weights), (graph_losses, graph_weights) = runs["off"], runs["graphs"]
    result = {
        "eager_losses": eager_losses, "graph_losses": graph_losses,
        "max_weight_diff": max((a - b).abs().max().item()
                               for a, b in zip(eager_weights, graph_weights, strict=True)),
    }
    print(f"\n### CUDA graphs against eager (AIM, drop-path on, {steps} steps)\n\n{result}")
    return result


def fused_check(device: torch.device) -> dict[str, Any]:
    """The fused QuickGELU against float64, beside the plain expression in the same dtype."""
    from vidadapt.backbones import fused

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b).norm() / b.norm()).item()

    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1 << 20, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn_like(x)
        x64 = x.detach().double().requires_grad_()
        exact = fused.quick_gelu_reference(x64)
        exact_grad = torch.autograd.grad(exact, x64, grad.double())[0]
        row = {}
        for name, fn in (("fused", fused.quick_gelu), ("plain", fused.quick_gelu_reference)):
            out = fn(x)
            row[f"{name}_forward_err"] = relative(out, exact)
            row[f"{name}_backward_err"] = relative(torch.autograd.grad(out, x, grad)[0],
                                                   exact_grad)
        row["kernel"] = fused._kernels.get((fused._FORWARD, dtype)) is not None
        results[str(dtype)] = row
    print(f"\n### Fused QuickGELU, relative error against float64\n\n{results}")
    return results


# ---- 3. inference -------------------------------------------------------------------------------


def inference_table(shape: Shape, device: torch.device, peak_tflops: float,
                    names: list[str]) -> dict[str, Any]:
    results = inference.benchmark(names, shape, rounds=5, device=device, peak_tflops=peak_tflops)
    print(f"\n### Inference, batch {shape.batch} (fraction of the measured "
          f"{peak_tflops:.0f} TFLOP/s)\n")
    print("| model | clips/s | GFLOPs/clip | TFLOP/s | of peak |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['clips_per_s']:.1f} | {r['gflops_per_clip']:.1f} | "
              f"{r['achieved_tflops']:.0f} | {100 * r['fraction_of_peak']:.0f}% |")
    return results


def compiled_inference(shape: Shape, device: torch.device, peak_tflops: float,
                       names: list[str]) -> dict[str, Any]:
    """Inference under ``torch.compile`` (inductor): compile time and clips/s."""
    from vidadapt.engine.trainer import autocast_dtype

    amp = autocast_dtype("bf16", device)
    video = torch.randn(shape.batch, shape.frames, 3, shape.image_size, shape.image_size,
                        device=device)
    results = {}
    for name in names:
        torch.manual_seed(0)
        plain = inference.make(name, shape).to(device).eval()
        model = torch.compile(plain)
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32,
                                                    enabled=amp is not None):
            t0 = time.perf_counter()
            model(video)
            if device.type == "cuda":
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            seconds = ops.median_seconds(lambda m=model: m(video), 5, device)
        flops = inference.forward_flops(plain, shape)
        tflops = shape.batch * flops / seconds / 1e12
        results[name] = {"compile_s": compile_s, "clips_per_s": shape.batch / seconds,
                         "achieved_tflops": tflops, "fraction_of_peak": tflops / peak_tflops}
        print(f"- compiled {name}: {results[name]}")
    return results


# ---- 4. kernel profile --------------------------------------------------------------------------


def profile_step(name: str, shape: Shape, device: torch.device, top: int = 12) -> list[dict]:
    """The ``top`` kernels, and operators, by device time of one eager training step of
    variant ``name``."""
    from torch.profiler import ProfilerActivity, profile

    from vidadapt.engine.compiled import training_forward
    from vidadapt.engine.optim import build_optimizer
    from vidadapt.engine.trainer import autocast_dtype

    torch.manual_seed(0)
    model = train_step.build(train_step.VARIANTS[name], shape).to(device).train()
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.05)
    forward = training_forward(model, "off", autocast_dtype("bf16", device), False)
    video = torch.randn(shape.batch, shape.frames, 3, shape.image_size, shape.image_size,
                        device=device)
    labels = torch.randint(shape.num_classes, (shape.batch,), device=device)
    step = train_step.training_step(model, forward, optimizer, video, labels)

    for _ in range(2):
        step()
    cuda = [ProfilerActivity.CUDA] if device.type == "cuda" else []
    with profile(activities=[ProfilerActivity.CPU, *cuda]) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    if device.type == "cuda":  # kernels only: operators would count their kernels twice
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(getattr(e, key) for e in events)
    cpu_total = sum(e.self_cpu_time_total for e in prof.key_averages())
    operators = [e for e in prof.key_averages()
                 if e.device_type == torch.autograd.DeviceType.CPU and e.self_device_time_total > 0]
    operators = sorted(operators, key=lambda e: e.self_device_time_total, reverse=True)[:top]
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    print(f"\n### Profile of one eager step: {name} (device {total / 1e3:.1f} ms, "
          f"host {cpu_total / 1e3:.1f} ms)\n")
    print("| kernel | ms | share |")
    print("|---|---|---|")
    out = []
    for e in rows:
        ms = getattr(e, key) / 1e3
        print(f"| `{e.key[:90]}` | {ms:.2f} | {100 * getattr(e, key) / total:.0f}% |")
        out.append({"kernel": e.key, "ms": ms, "share": getattr(e, key) / total})
    if operators:
        print("\n| operator | device ms | share |\n|---|---|---|")
    for e in operators:
        ms = e.self_device_time_total / 1e3
        print(f"| `{e.key}` | {ms:.2f} | {100 * e.self_device_time_total / total:.0f}% |")
        out.append({"operator": e.key, "ms": ms, "share": e.self_device_time_total / total})
    return [{"device_ms": total / 1e3, "host_ms": cpu_total / 1e3}, *out]


def ops_table(frames: int, batches: tuple[int, ...], device: torch.device) -> dict[str, Any]:
    """``ops.py``: each reformulated layer against the form it replaced."""
    tables = {}
    for batch in batches:
        tables[f"b{batch}"] = results = ops.run(batch, frames, repeats=20, device=device)
        print(f"\n### Layers, forward + backward, batch {batch}\n")
        print("| layer | before ms | after ms | speed-up |")
        print("|---|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {r['old_ms']:.2f} | {r['new_ms']:.2f} | {r['speedup']:.1f}× |")
    return tables


# ---- 5. end to end ------------------------------------------------------------------------------


def write_clip(args: tuple[str, int]) -> None:
    import decode

    decode.make_clip(*args)


def make_clips(folder: Path, count: int, workers: int, tiny: bool) -> Path:
    """``count`` K400-like clips with random labels of 400 classes; returns the list file."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"clip{i:04d}.mp4"), i) for i in range(count)]
    listing = folder / "list.txt"
    if listing.exists():  # made by an earlier run of this process
        return listing
    with get_context("fork").Pool(workers) as pool:
        if tiny:
            pool.starmap(_tiny_clip, jobs)
        else:
            pool.map(write_clip, jobs)
    labels = np.random.default_rng(0).integers(400, size=count)
    lines = [f"{Path(path).name} {label}\n" for (path, _), label in zip(jobs, labels, strict=True)]
    listing.write_text("".join(lines))
    (folder / "classes.txt").write_text("".join(f"class{c}\n" for c in range(400)))
    return listing


def _tiny_clip(path: str, seed: int) -> None:
    import decode

    decode.make_clip(path, seed, seconds=2.0, width=96, height=72, fps=15)


def end_to_end(work: Path, device: torch.device, clips: int, batch: int, workers: int,
               mode: str, tiny: bool, gpu_augment: bool = False) -> dict[str, Any]:
    from vidadapt.config import load_config
    from vidadapt.engine.distributed import DistInfo
    from vidadapt.engine.experiment import train_experiment

    started = time.perf_counter()
    listing = make_clips(work / "videos", clips, workers, tiny)
    run_dir = work / ("run_gpu_augment" if gpu_augment else "run")
    generated = time.perf_counter() - started
    overrides = [
        "model.pretrained=null", f"data.train={listing}", f"data.val={listing}",
        f"data.classes={listing.parent / 'classes.txt'}",
        f"data.roots={{train: {listing.parent}, val: {listing.parent}}}",
        f"data.batch_size={batch}", f"data.num_workers={workers}", "data.eval_batch_size=8",
        "optim.epochs=3", "optim.warmup_epochs=1", f"train.work_dir={run_dir}",
        f"data.gpu_augment={str(gpu_augment).lower()}",
        "train.log_every=1", "train.eval_every=0", "train.save_every_steps=0",
        f"train.compile={mode}",
    ]
    if tiny:
        overrides += ["model.backbone=vit_tiny", "data.transform.size=32",
                      "data.transform.short_side=40", "data.transform.test_short_side=32",
                      "model.num_frames=4", "data.sampler.interval=2"]
    cfg = load_config(REPO / "configs/aim/k400_vit_b16_8x16.yaml", overrides)
    started = time.perf_counter()
    summary = train_experiment(cfg, dist=DistInfo(device=device))
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    per_epoch = max(1, len(steps) // cfg.optim.epochs)
    firsts = [steps[i] for i in range(0, len(steps), per_epoch)]
    rest = [r for i, r in enumerate(steps) if i % per_epoch]
    median = sorted(r["clips_per_s"] for r in rest)[len(rest) // 2] if rest else None
    result = {
        "clips": clips, "batch": batch, "workers": workers, "mode": mode,
        "gpu_augment": gpu_augment,
        "generate_s": generated, "train_wall_s": wall, "steps": len(steps),
        "median_clips_per_s": median,
        "first_step_of_epoch_data_s": [r["data_s"] for r in firsts],
        "max_data_s_after_first_step": max((r["data_s"] for r in steps[1:]), default=None),
        "mean_data_s_after_first_step": (sum(r["data_s"] for r in steps[1:]) /
                                         max(len(steps) - 1, 1)),
        "val_top1": (summary.get("val") or {}).get("top1"),
    }
    # The training step alone at the same batch and mode, for the share the loader leaves.
    shape = Shape(cfg.model.backbone, cfg.model.num_frames, cfg.data.transform.size, batch)
    alone = train_step.benchmark(["aim_stj"], shape, 5, str(device), mode)["aim_stj"]
    if "error" not in alone and median:
        result["step_only_clips_per_s"] = alone["clips_per_s"]
        result["end_to_end_share"] = median / alone["clips_per_s"]
    print(f"\n### End to end: AIM K400 recipe, batch {batch}, {workers} loader workers, "
          f"train.compile {mode}, data.gpu_augment {gpu_augment}\n")
    for key, value in result.items():
        print(f"- {key}: {value}")
    return result


# ---- main ---------------------------------------------------------------------------------------


def environment(device: torch.device, commit: str | None) -> dict[str, Any]:
    info = {"commit": commit, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    else:
        info["device"] = platform.processor() or "cpu"
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON to write")
    parser.add_argument("--commit", help="the commit measured (recorded in the JSON)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--phases",
                        default="ceiling,fused_check,train,graphs_check,inference,ops,profile,"
                                "e2e,e2e_gpu_augment,inference_compiled")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--clips", type=int, default=96, help="end-to-end clips")
    parser.add_argument("--workers", type=int, default=min(15, (os.cpu_count() or 2) - 1))
    parser.add_argument("--compile-after", type=float, default=240,
                        help="skip the torch.compile inference phase when the others took "
                             "longer than this many seconds")
    parser.add_argument("--tiny", action="store_true",
                        help="vit_tiny, 4 frames at 32², small batches: check the plumbing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    modes = ["off", "graphs"] if device.type == "cuda" else ["off"]
    shape_of = TINY if args.tiny else dict(backbone="vit_b16_clip", frames=8, image_size=224)
    groups = {2: [["full", "aim_stj", "st_adapter"]], 4: [["full", "evl", "lora"]]} \
        if args.tiny else TRAIN_GROUPS
    report: dict[str, Any] = {"environment": environment(device, args.commit), "errors": {}}
    print(json.dumps(report["environment"]))
    phases = args.phases.split(",")
    started = time.perf_counter()

    def run(phase: str, fn) -> None:
        if phase not in phases:
            return
        t0 = time.perf_counter()
        try:
            report[phase] = fn()
        except Exception:  # a broken phase must not cost the others' numbers
            report["errors"][phase] = traceback.format_exc()
            print(f"\n{phase} failed:\n{report['errors'][phase]}", file=sys.stderr)
        report.setdefault("phase_s", {})[phase] = time.perf_counter() - t0
        Path(args.out).write_text(json.dumps(report, indent=1))

    run("ceiling", lambda: ceiling(device, 1024 if args.tiny else 8192))
    peak = report.get("ceiling", {}).get("matmul_tflops")
    run("train", lambda: train_tables(shape_of, args.device, args.rounds, modes, groups))
    if device.type == "cuda":
        run("fused_check", lambda: fused_check(device))
        run("graphs_check", lambda: graphs_match_eager(
            Shape(shape_of["backbone"], 4, 112 if not args.tiny else 32, 2), device))
    run("inference", lambda: inference_table(Shape(**shape_of, batch=4 if args.tiny else 32),
                                             device, peak, INFERENCE))
    run("ops", lambda: ops_table(shape_of["frames"], (2,) if args.tiny else (8, 32), device))
    run("profile", lambda: {n: profile_step(n, Shape(**shape_of, batch=2 if args.tiny else 8),
                                            device) for n in PROFILED})
    with tempfile.TemporaryDirectory() as tmp:
        for gpu_augment in (False, True):
            run("e2e_gpu_augment" if gpu_augment else "e2e", lambda on=gpu_augment: end_to_end(
                Path(tmp), device, args.clips, 4 if args.tiny else 16, args.workers, modes[-1],
                args.tiny, on))
    if time.perf_counter() - started < args.compile_after:  # compiling takes minutes
        run("inference_compiled", lambda: compiled_inference(
            Shape(**shape_of, batch=4 if args.tiny else 32), device, peak, ["linear", "aim_stj"]))
    report["total_s"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\ntotal {report['total_s']:.0f} s; errors in: {', '.join(report['errors']) or 'none'}")


if __name__ == "__main__":
    main()
