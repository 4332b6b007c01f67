"""``vidadapt train``: fit a model from a YAML recipe, on one process or one per GPU.

    vidadapt train configs/aim/k400_vit_b16_8x16.yaml --set model.pretrained=ViT-B-16.pt
    torchrun --nproc_per_node 8 -m vidadapt train configs/aim/k400_vit_b16_8x16.yaml ...
"""

from __future__ import annotations

import argparse
import json
import logging

from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import add_override_argument, load_config
from ..engine.build import build_dataset, build_model, check_num_classes, read_classes, resolve_data
from ..engine.distributed import init_distributed, shutdown_distributed
from ..engine.logs import setup_logging
from ..engine.trainer import Trainer

NAME = "train"
HELP = "Train a model from a YAML recipe (GPUs: torchrun --nproc_per_node N -m vidadapt train)."

logger = logging.getLogger("vidadapt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML recipe, e.g. configs/aim/k400_vit_b16_8x16.yaml")
    add_override_argument(parser)
    parser.add_argument("--work-dir", help="outputs (default: train.work_dir or runs/<recipe>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the work dir")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.work_dir:
        cfg.train.work_dir = args.work_dir
    dist = init_distributed()
    setup_logging(dist.is_main)
    try:
        cfg.data = resolve_data(cfg.data, dist)
        train_set = build_dataset(cfg, "train", train=True, classes=read_classes(cfg.data))
        classes = train_set.classes
        val_set = build_dataset(cfg, "val", train=False, classes=classes) if cfg.data.val else None
        model = build_model(cfg, check_num_classes(cfg, classes))
        counts = model.parameter_counts()
        logger.info("%s on %s: %s tunable of %s parameters (%.2f%%)", cfg.model.method,
                    cfg.model.backbone, f"{counts['tunable']:,}", f"{counts['total']:,}",
                    100 * counts["tunable"] / counts["total"])
        with logging_redirect_tqdm([logger]):
            summary = Trainer(cfg, model, train_set, val_set, classes, dist).fit(args.resume)
        if dist.is_main:
            print(json.dumps(summary))
    finally:
        shutdown_distributed()
    return 0
