"""``vidadapt pretrain``: self-supervised adaptation on unlabeled clips, by a pretext task.

    vidadapt pretrain configs/synthetic/pretrain.yaml --set ssl.objective=order
    vidadapt train configs/synthetic/st_adapter.yaml --resume-from runs/pretrain/best.safetensors

The method's parts learn from the training split's clips without their labels
(``ssl.objective``: order, arrow or speed; ``engine.pretext``); its checkpoints start
``vidadapt train`` (``--resume-from`` / ``model.init_from``) with a new head.
"""

from __future__ import annotations

import argparse
import json

from ..config import add_override_argument, load_config
from ..engine.distributed import init_distributed, shutdown_distributed
from ..engine.experiment import pretrain_experiment
from ..engine.logs import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML recipe: the method to adapt and the clips "
                                       "(their labels unused), with an ssl section")
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
        summary = pretrain_experiment(cfg, args.resume, dist)
        if dist.is_main:
            print(json.dumps(summary))
    finally:
        shutdown_distributed()
    return 0
