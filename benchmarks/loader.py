"""What loader workers deliver: clips/s of the K400 and SSv2 training pipelines, this code
against a baseline commit in the same run, and where one worker's time goes.

    python benchmarks/loader.py                          # 8 clips per set, 0 and 2 workers
    python benchmarks/loader.py --clips 24 --workers 1,4,8 --json

Each pipeline is its recipe's sampler and training transform in a ``VideoDataset``, read
through a DataLoader as training reads it:

- K400 (``configs/aim/k400_vit_b16_8x16.yaml``: 8x16 dense frames, short side 256,
  RandomResizedCrop to 224, flip) on K400-like clips: 454x340, 10 s at 30 fps, H.264, a
  keyframe every 250 frames.
- SSv2 (``configs/aim/ssv2_vit_b16_8.yaml``: 8 uniform frames, RandAugment (4, 7), random
  erasing) on SSv2-like clips: 427x240, 4 s at 12 fps, VP9 in WebM.

Variants, each in its own process with its own copy of the package: ``baseline`` (the code at
``--baseline``, default the commit before the loader work), ``current`` (this code, the whole
transform in the worker) and ``gpu_augment`` (this code with ``data.gpu_augment``: the worker
decodes, crops and flips in uint8 and draws the rest, which the training step then runs
batched on the device; its worker time is what is measured here). Variants alternate round by
round, so a busy moment of the machine hits all of them alike; the best round counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = {  # recipe, clip kind
    "k400": ("aim/k400_vit_b16_8x16.yaml", "k400"),
    "ssv2": ("aim/ssv2_vit_b16_8.yaml", "ssv2"),
}
CLIP_KINDS = {  # decode.make_clip arguments
    "k400": {"suffix": ".mp4", "seconds": 10.0, "width": 454, "height": 340, "fps": 30,
             "gop": 250, "codec": "libx264"},
    "ssv2": {"suffix": ".webm", "seconds": 4.0, "width": 427, "height": 240, "fps": 12,
             "gop": 128, "codec": "libvpx-vp9"},
}
BASELINE = "a59b488"  # the commit before the loader work: float resize, float colour ops


# ---- one measurement, in a child process that imports the variant's package ----------------


def measure(root: str, pipeline: str, paths: list[str], workers: int, gpu_augment: bool) -> dict:
    """Clips/s through a DataLoader with ``workers`` processes (0: in this process) after a
    warm-up pass, and one worker's decode and transform milliseconds per clip."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from vidadapt.config import load_config
    from vidadapt.data import transforms
    from vidadapt.data.annotations import Annotation, VideoRecord
    from vidadapt.data.dataset import VideoDataset, collate_samples
    from vidadapt.data.decode import PyAVReader
    from vidadapt.engine.build import frame_sampler

    torch.set_num_threads(1)  # as in a loader worker
    cfg = load_config(Path(root) / "configs" / PIPELINES[pipeline][0])
    annotation = Annotation([VideoRecord(p, 0) for p in paths], ["a"], "benchmark")
    transform = (transforms.build_transform(cfg.data.transform, train=True, defer=True)
                 if gpu_augment else transforms.build_transform(cfg.data.transform, train=True))
    data = VideoDataset(annotation, frame_sampler(cfg, 1), transform, PyAVReader(), train=True)

    decode_ms, transform_ms = [], []
    for index, record in enumerate(data.records):
        rng = np.random.default_rng([0, index])
        start = time.perf_counter()
        (clip,) = data.sampler.sample(data.reader.num_frames(record.path), True, rng)
        frames = data.reader.read(record.path, list(clip)).permute(0, 3, 1, 2)
        decoded = time.perf_counter()
        data.transform(frames, 0, torch.Generator().manual_seed(index))
        decode_ms.append((decoded - start) * 1e3)
        transform_ms.append((time.perf_counter() - decoded) * 1e3)

    # Workers come from a fresh forkserver: this process has decoded video (PyAV's threads),
    # and a child forked from it can deadlock on a lock one of them held.
    loader = DataLoader(data, batch_size=1, num_workers=workers, collate_fn=collate_samples,
                        persistent_workers=workers > 0,
                        multiprocessing_context="forkserver" if workers else None)
    rates = []
    for epoch in range(2):
        data.set_epoch(epoch)
        start = time.perf_counter()
        count = sum(len(batch["index"]) for batch in loader)
        if epoch:  # pass 0 starts the workers
            rates.append(count / (time.perf_counter() - start))
    return {"clips_per_s": rates[0], "decode_ms": statistics.median(decode_ms),
            "transform_ms": statistics.median(transform_ms),
            "package": str(Path(transforms.__file__).parents[2])}


# ---- the driver --------------------------------------------------------------------------------


def make_clips(folder: str, kind: str, count: int) -> list[str]:
    sys.path.insert(0, str(Path(__file__).parent))
    import decode

    spec = dict(CLIP_KINDS[kind])
    suffix = spec.pop("suffix")
    paths = [os.path.join(folder, f"{kind}{i}{suffix}") for i in range(count)]
    for seed, path in enumerate(paths):
        decode.make_clip(path, seed=seed, **spec)
    return paths


def baseline_package(revision: str, folder: str) -> str:
    """The ``vidadapt`` package and recipes of ``revision``, unpacked under ``folder``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "vidadapt", "configs"],
                             check=True, capture_output=True).stdout
    os.makedirs(folder)
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def run_variant(package_root: str, pipeline: str, paths: list[str], workers: int,
                gpu_augment: bool) -> dict:
    """``measure`` in a child process whose ``vidadapt`` is the one under ``package_root``."""
    env = {**os.environ, "PYTHONPATH": package_root, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, __file__, "--measure", json.dumps(
        {"pipeline": pipeline, "paths": paths, "workers": workers, "gpu_augment": gpu_augment,
         "root": package_root})]
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if Path(result["package"]).resolve() != Path(package_root).resolve():
        raise RuntimeError(f"measured {result['package']}, not {package_root}")
    return result


def run(num_clips: int, workers: list[int], rounds: int, baseline: str) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_package(baseline, os.path.join(tmp, "baseline"))
        variants = {"baseline": (old, False), "current": (str(ROOT), False),
                    "gpu_augment": (str(ROOT), True)}
        for pipeline, (_, kind) in PIPELINES.items():
            paths = make_clips(tmp, kind, num_clips)
            rows: dict = {name: {} for name in variants}
            for n in workers:
                for _ in range(rounds):
                    for name, (root, defer) in variants.items():
                        r = run_variant(root, pipeline, paths, n, defer)
                        row = rows[name]
                        row[f"workers_{n}"] = max(row.get(f"workers_{n}", 0.0),
                                                  r["clips_per_s"])
                        for key in ("decode_ms", "transform_ms"):
                            row[key] = min(row.get(key, float("inf")), r[key])
            results[pipeline] = rows
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8, help="clips per set")
    parser.add_argument("--workers", default="0,2", help="worker counts; 0 = one worker in "
                                                         "this process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # a child's one measurement
    args = parser.parse_args()
    if args.measure:
        spec = json.loads(args.measure)
        sys.path.insert(0, spec["root"])
        print(json.dumps(measure(**spec)))
        return
    workers = [int(w) for w in args.workers.split(",")]
    results = run(args.clips, workers, args.rounds, args.baseline)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.clips} clips per set, clips/s (best of {args.rounds} rounds); ms per clip of "
          f"one worker; baseline = {args.baseline}")
    columns = [f"workers_{n}" for n in workers]
    print(f"{'pipeline':<10}{'code':<13}{'decode ms':>10}{'transform ms':>13}"
          + "".join(f"{c:>12}" for c in columns) + f"{'x baseline':>12}")
    for pipeline, rows in results.items():
        for name, r in rows.items():
            speedup = r[columns[0]] / rows["baseline"][columns[0]]
            print(f"{pipeline:<10}{name:<13}{r['decode_ms']:>10.1f}{r['transform_ms']:>13.1f}"
                  + "".join(f"{r[c]:>12.2f}" for c in columns) + f"{speedup:>11.2f}x")


if __name__ == "__main__":
    main()
