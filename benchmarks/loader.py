"""What one loader worker delivers: clips/s of the K400 and SSv2 training pipelines, and where a
worker's time goes, with the resize of this code against the earlier one in the same run.

    python benchmarks/loader.py                     # 12 K400-like clips, 1 and 2 workers
    python benchmarks/loader.py --clips 24 --workers 1,4,8 --json

The clips are K400-like (454x340, 10 s at 30 fps, H.264, a keyframe every 250 frames, made by
``decode.make_clip``). Each pipeline is its recipe's sampler and training transform
(``configs/aim/k400_vit_b16_8x16.yaml``: 8x16 dense frames, short side 256, RandomResizedCrop
to 224, flip; ``configs/aim/ssv2_vit_b16_8.yaml``: 8 uniform frames, RandAugment, random
erasing) in a ``VideoDataset``, read through a DataLoader as training reads it. "before" runs the
same with ``transforms.resize`` swapped for the earlier float round trip. The profile splits one
worker's time per clip into decoding and the transform.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))

import decode  # noqa: E402

from vidadapt.config import load_config  # noqa: E402
from vidadapt.data import transforms  # noqa: E402
from vidadapt.data.annotations import Annotation, VideoRecord  # noqa: E402
from vidadapt.data.dataset import VideoDataset, collate_samples  # noqa: E402
from vidadapt.data.decode import PyAVReader  # noqa: E402
from vidadapt.engine.build import frame_sampler  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PIPELINES = {"k400": "aim/k400_vit_b16_8x16.yaml", "ssv2": "aim/ssv2_vit_b16_8.yaml"}


def resize_through_float(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The earlier resize: uint8 → float → interpolate → round → uint8."""
    if clip.shape[-2:] == (height, width):
        return clip
    leading = clip.shape[:-3]
    frames = clip.reshape(-1, *clip.shape[-3:]).float()
    frames = F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True,
                           align_corners=False)
    return frames.round_().clamp_(0, 255).to(torch.uint8).reshape(*leading, 3, height, width)


@contextmanager
def earlier_resize():
    current = transforms.resize
    transforms.resize = resize_through_float
    try:
        yield
    finally:
        transforms.resize = current


def dataset(pipeline: str, paths: list[str]) -> VideoDataset:
    cfg = load_config(CONFIGS / PIPELINES[pipeline])
    records = [VideoRecord(p, 0) for p in paths]
    annotation = Annotation(records, ["a"], "benchmark")
    transform = transforms.build_transform(cfg.data.transform, train=True)
    return VideoDataset(annotation, frame_sampler(cfg, 1), transform, PyAVReader(), train=True)


def clips_per_second(data: VideoDataset, workers: int, rounds: int) -> float:
    """Clips/s through a DataLoader with ``workers`` processes (0: in this process), the best
    of ``rounds`` passes over the set after one warm-up pass (worker start-up excluded)."""
    # Workers come from a fresh forkserver: this process has decoded video (PyAV's threads),
    # and a child forked from it can deadlock on a lock one of them held.
    loader = DataLoader(data, batch_size=1, num_workers=workers, collate_fn=collate_samples,
                        persistent_workers=workers > 0,
                        multiprocessing_context="forkserver" if workers else None)
    best = 0.0
    for epoch in range(rounds + 1):
        data.set_epoch(epoch)
        start = time.perf_counter()
        count = sum(len(batch["index"]) for batch in loader)
        if epoch:  # pass 0 starts the workers
            best = max(best, count / (time.perf_counter() - start))
    return best


def profile(data: VideoDataset) -> dict[str, float]:
    """Milliseconds per clip of one worker: decoding the sampled frames, and the transform."""
    decode_ms, transform_ms = [], []
    for index, record in enumerate(data.records):
        rng = np.random.default_rng([0, index])
        start = time.perf_counter()
        num_frames = data.reader.num_frames(record.path)
        (clip,) = data.sampler.sample(num_frames, True, rng)
        frames = data.reader.read(record.path, list(clip)).permute(0, 3, 1, 2)
        decoded = time.perf_counter()
        data.transform(frames, 0, torch.Generator().manual_seed(index))
        done = time.perf_counter()
        decode_ms.append((decoded - start) * 1e3)
        transform_ms.append((done - decoded) * 1e3)
    return {"decode_ms": statistics.median(decode_ms),
            "transform_ms": statistics.median(transform_ms)}


def run(num_clips: int, workers: list[int], rounds: int) -> dict:
    torch.set_num_threads(1)  # as in a loader worker
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"clip{i}.mp4") for i in range(num_clips)]
        for i, path in enumerate(paths):
            decode.make_clip(path, seed=i)
        results = {}
        for pipeline in PIPELINES:
            data = dataset(pipeline, paths)
            row = {}
            for label, context in (("before", earlier_resize), ("after", _unchanged)):
                with context():
                    row[label] = {"profile": profile(data)} | {
                        f"workers_{n}": clips_per_second(data, n, rounds) for n in workers}
            results[pipeline] = row
    return results


@contextmanager
def _unchanged():
    yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--workers", default="0,2", help="worker counts; 0 = one worker in "
                                                         "this process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    results = run(args.clips, workers, args.rounds)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.clips} K400-like clips, clips/s (best of {args.rounds} passes); "
          "ms per clip of one worker")
    columns = [f"workers_{n}" for n in workers]
    print(f"{'pipeline':<10}{'code':<8}{'decode ms':>10}{'transform ms':>13}"
          + "".join(f"{c:>12}" for c in columns))
    for pipeline, rows in results.items():
        for label, r in rows.items():
            print(f"{pipeline:<10}{label:<8}{r['profile']['decode_ms']:>10.1f}"
                  f"{r['profile']['transform_ms']:>13.1f}"
                  + "".join(f"{r[c]:>12.2f}" for c in columns))


if __name__ == "__main__":
    main()
