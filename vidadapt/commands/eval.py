"""``vidadapt eval``: multi-view accuracy of an adapter checkpoint on the val or test split.

Writes ``eval_<split>.json`` (top-1/top-5, mean class accuracy, per-class accuracy, confusion
matrix) and, with matplotlib, a confusion-matrix heat map and a per-class bar chart.

Methods that learn nothing by gradients need no checkpoint: ``vidadapt eval CONFIG`` scores
zero-shot CLIP, and training-free Tip-Adapter after building its cache from ``data.train`` and
choosing alpha and beta on ``data.val``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..config import ExperimentConfig, add_override_argument, config_from_dict, load_config
from ..engine.checkpoint import AdapterCheckpoint, read_classifier
from ..engine.distributed import init_distributed, shutdown_distributed
from ..engine.evaluate import write_metrics
from ..engine.evaluation import evaluate_config, evaluate_open_set
from ..engine.logs import setup_logging
from ..engine.open_set import open_set_summary, write_open_set
from ..engine.trainer import SUMMARY_KEYS
from ..engine.workdir import writable_dir
from ..errors import ConfigError

logger = logging.getLogger("vidadapt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(
        parser, checkpoint_help="adapter .safetensors file (not needed by methods that train "
        "nothing: zero_shot, tip_adapter)", default_split="val",
    )
    parser.add_argument("--open-set", action="store_true",
                        help="open-set recognition of a model trained on data.known_classes: "
                             "closed-set top-1, and per score (max softmax, max logit, energy, "
                             "evidential) the AUROC of known vs unknown videos and the open "
                             "macro-F1 at a threshold chosen on val (writes "
                             "open_set_<split>.json and a histogram plot; use --split test)")


def add_evaluation_arguments(
    parser: argparse.ArgumentParser, checkpoint_help: str, default_split: str
) -> None:
    """The arguments every evaluating command takes (eval, base-to-new)."""
    parser.add_argument("config", nargs="?",
                        help="YAML recipe (default: the config stored in the checkpoint)")
    parser.add_argument("--checkpoint", help=checkpoint_help)
    parser.add_argument("--split", choices=("val", "test"), default=default_split)
    add_override_argument(parser)
    parser.add_argument("--out", help="folder for the results (default: the checkpoint's)")


def config_and_checkpoint(
    args: argparse.Namespace,
) -> tuple[ExperimentConfig, AdapterCheckpoint | None]:
    """The run's config (the recipe given, else the one stored in the checkpoint, with
    ``--set`` applied) and the adapter checkpoint (None when no ``--checkpoint``)."""
    if args.checkpoint is None and args.config is None:
        raise ConfigError("give a config or an adapter --checkpoint to evaluate")
    checkpoint = read_classifier(args.checkpoint) if args.checkpoint else None
    if args.config:
        return load_config(args.config, args.overrides), checkpoint
    cfg = config_from_dict(checkpoint.config, args.overrides,
                           default_origin=f"{args.checkpoint} (stored config)")
    return cfg, checkpoint


def run(args: argparse.Namespace) -> int:
    dist = init_distributed()
    setup_logging(dist.is_main)
    try:
        cfg, checkpoint = config_and_checkpoint(args)
        default_out = Path(args.checkpoint).parent if checkpoint else Path(cfg.train.work_dir)
        out = Path(args.out) if args.out else default_out
        if dist.is_main:  # before the evaluation, not after it: its results must land
            writable_dir(out, "--out")
        if args.open_set:
            if checkpoint is None:
                raise ConfigError("--open-set scores a trained model: pass its --checkpoint")
            metrics = evaluate_open_set(cfg, args.split, dist, checkpoint, args.checkpoint)
            if dist.is_main:
                files = write_open_set(metrics, out, f"open_set_{args.split}")
                print(json.dumps(open_set_summary(metrics)))
                logger.info("wrote %s", ", ".join(str(f) for f in files))
            return 0
        metrics = evaluate_config(cfg, args.split, dist, checkpoint, args.checkpoint)
        if dist.is_main:
            files = write_metrics(metrics, out, f"eval_{args.split}")
            print(json.dumps({k: metrics[k] for k in SUMMARY_KEYS}))
            logger.info("wrote %s", ", ".join(str(f) for f in files))
    finally:
        shutdown_distributed()
    return 0
