"""Epoch time with and without the feature cache, on the synthetic set.

    python benchmarks/cache.py                      # linear probe and CoOp, 3 epochs each
    python benchmarks/cache.py --methods coop --epochs 4 --threads 2

Each method trains through the real ``Trainer`` from its ``configs/synthetic`` recipe, with
``train.feature_cache`` ``off`` (decode and encode every clip every epoch), ``disk`` on an
empty cache (encode once while setting up, write the features) and ``disk`` again (read
them back). The setup column is the Trainer's construction (where the cache is filled or
read); epochs are timed from the end of one epoch's last step to the next's. Validation runs
once, after the last epoch, and is not counted. The runs work in a temporary folder (so the
feature cache starts empty) on the synthetic set in ``.cache/synthetic``, made if missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from vidadapt.config import TrainConfig, load_config
from vidadapt.engine.build import (
    build_dataset,
    build_model,
    read_classes,
    resolve_data,
    synthetic_dir,
)
from vidadapt.engine.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"


def run(method: str, cache: str, epochs: int, synthetic: Path) -> dict:
    """Setup and per-epoch seconds of one training run (in the current folder)."""
    cfg = load_config(CONFIGS / f"{method}.yaml", [
        f"optim.epochs={epochs}", f"train.feature_cache={'off' if cache == 'off' else 'disk'}",
        "train.eval_every=0", f"train.work_dir=runs/{method}", f"data.root={synthetic}",
    ])
    cfg.data = resolve_data(cfg.data)
    train_set = build_dataset(cfg, "train", train=True, classes=read_classes(cfg.data))
    val_set = build_dataset(cfg, "val", train=False, classes=train_set.classes)
    model = build_model(cfg, len(train_set.classes), train_set.classes)
    start = time.perf_counter()
    trainer = Trainer(cfg, model, train_set, val_set, train_set.classes)
    setup = time.perf_counter() - start
    ends = [time.perf_counter()]

    def on_step(step: int) -> None:
        if step % trainer.steps_per_epoch == 0:
            ends.append(time.perf_counter())

    trainer.fit(on_step=on_step)
    return {"setup": setup, "epochs": [b - a for a, b in zip(ends, ends[1:], strict=False)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["linear", "coop"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared "
                        "machine: small ops are slower with more under contention)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(CONFIGS / "linear.yaml")
    synthetic = synthetic_dir(base.data).resolve()
    resolve_data(replace(base.data, root=str(synthetic)))  # make the set if it is missing
    print("| method | feature cache | setup (s) | epoch 1 (s) | later epochs (s) | speed-up |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # .cache/features starts empty here
        for method in args.methods:
            shutil.rmtree(TrainConfig().feature_cache_dir, ignore_errors=True)
            results = {}
            for cache in ("off", "disk, empty", "disk, filled"):
                results[cache] = run(method, cache, args.epochs, synthetic)
            baseline = statistics.mean(results["off"]["epochs"][1:])
            for cache, result in results.items():
                later = statistics.mean(result["epochs"][1:])
                print(f"| {method} | {cache} | {result['setup']:.2f} | "
                      f"{result['epochs'][0]:.2f} | {later:.3f} | {baseline / later:.0f}x |")


if __name__ == "__main__":
    main()
