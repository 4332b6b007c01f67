"""``vidadapt eval``: multi-view accuracy of an adapter checkpoint on the val or test split.

Writes ``eval_<split>.json`` (top-1/top-5, mean class accuracy, per-class accuracy, confusion
matrix) and, with matplotlib, a confusion-matrix heat map and a per-class bar chart.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..config import add_override_argument, config_from_dict, load_config
from ..engine.build import build_dataset, build_model, resolve_data
from ..engine.checkpoint import load_adapter, read_adapter
from ..engine.data import ShardedSampler, make_loader
from ..engine.distributed import init_distributed, shutdown_distributed
from ..engine.evaluate import classification_metrics, predict, write_metrics
from ..engine.logs import setup_logging
from ..engine.trainer import SUMMARY_KEYS, autocast_dtype

NAME = "eval"
HELP = "Evaluate an adapter checkpoint with multi-view testing (clips x crops); metrics + plots."

logger = logging.getLogger("vidadapt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?",
                        help="YAML recipe (default: the config stored in the checkpoint)")
    parser.add_argument("--checkpoint", required=True, help="adapter .safetensors file")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    add_override_argument(parser)
    parser.add_argument("--out", help="folder for metrics and plots (default: the checkpoint's)")


def run(args: argparse.Namespace) -> int:
    dist = init_distributed()
    setup_logging(dist.is_main)
    try:
        checkpoint = read_adapter(args.checkpoint)
        if args.config:
            cfg = load_config(args.config, args.overrides)
        else:
            cfg = config_from_dict(checkpoint.config, args.overrides,
                                   default_origin=f"{args.checkpoint} (stored config)")
        cfg.data = resolve_data(cfg.data, dist)
        views = (cfg.data.test_clips, cfg.data.transform.test_crops)
        dataset = build_dataset(cfg, args.split, train=False, classes=checkpoint.classes,
                                views=views)
        model = build_model(cfg, len(dataset.classes))
        load_adapter(model, checkpoint, args.checkpoint)
        model.to(dist.device)
        sampler = ShardedSampler(len(dataset), shuffle=False, rank=dist.rank,
                                 world_size=dist.world_size)
        loader = make_loader(dataset, sampler, cfg.data.eval_batch_size, cfg.data.num_workers,
                             cfg.train.seed, pin_memory=dist.device.type == "cuda")
        scores = predict(model, loader, dist.device,
                         autocast_dtype(cfg.train.amp, dist.device), dist, progress=dist.is_main)
        metrics = classification_metrics(scores, dataset.classes)
        if dist.is_main:
            metrics["views"] = {"clips": views[0], "crops": views[1]}
            out = Path(args.out) if args.out else Path(args.checkpoint).parent
            files = write_metrics(metrics, out, f"eval_{args.split}")
            print(json.dumps({k: metrics[k] for k in SUMMARY_KEYS}))
            logger.info("wrote %s", ", ".join(str(f) for f in files))
    finally:
        shutdown_distributed()
    return 0
