"""``vidadapt train``: fit a model from a YAML recipe, on one process or one per GPU.

    vidadapt train configs/aim/k400_vit_b16_8x16.yaml --set model.pretrained=ViT-B-16.pt
    vidadapt train configs/aim/k400_vit_b16_8x16.yaml --resume-from runs/aim/imported.safetensors
    torchrun --nproc_per_node 8 -m vidadapt train configs/aim/k400_vit_b16_8x16.yaml ...
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ..config import ExperimentConfig, add_override_argument, load_config
from ..engine.distributed import DistInfo, init_distributed, shutdown_distributed
from ..engine.experiment import train_experiment
from ..engine.logs import setup_logging

# (config, resume, this process's DistInfo) -> the run's summary
Experiment = Callable[[ExperimentConfig, bool, DistInfo], dict[str, Any]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "YAML recipe, e.g. configs/aim/k400_vit_b16_8x16.yaml")
    parser.add_argument("--resume-from", metavar="CHECKPOINT",
                        help="start from an adapter checkpoint's tuned tensors (an imported "
                             "release, another run's best.safetensors, `vidadapt pretrain`'s "
                             "parts); = --set model.init_from")


def add_run_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """The arguments of every command that trains (train, pretrain)."""
    parser.add_argument("config", help=config_help)
    add_override_argument(parser)
    parser.add_argument("--work-dir", help="outputs (default: train.work_dir or runs/<recipe>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the work dir")


def run(args: argparse.Namespace) -> int:
    return run_experiment(args, train_experiment)


def run_experiment(args: argparse.Namespace, experiment: Experiment) -> int:
    """Load the config with its overrides, run ``experiment`` on this process's device (one
    per GPU under torchrun) and print its summary on rank 0."""
    cfg = load_config(args.config, args.overrides)
    if args.work_dir:
        cfg.train.work_dir = args.work_dir
    if getattr(args, "resume_from", None):
        cfg.model.init_from = args.resume_from
    dist = init_distributed()
    setup_logging(dist.is_main)
    try:
        summary = experiment(cfg, args.resume, dist)
        if dist.is_main:
            print(json.dumps(summary))
    finally:
        shutdown_distributed()
    return 0
