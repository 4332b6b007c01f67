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
from typing import Any

import torch

from ..config import ExperimentConfig, add_override_argument, config_from_dict, load_config
from ..data.dataset import VideoDataset
from ..engine.build import build_dataset, build_model, resolve_data
from ..engine.checkpoint import AdapterCheckpoint, load_adapter, read_adapter
from ..engine.data import ShardedSampler, make_loader
from ..engine.distributed import DistInfo, init_distributed, shutdown_distributed
from ..engine.evaluate import classification_metrics, left_out, predict, write_metrics
from ..engine.features import fit_without_training
from ..engine.logs import setup_logging
from ..engine.trainer import SUMMARY_KEYS, autocast_dtype
from ..engine.workdir import writable_dir
from ..errors import ConfigError
from ..models import TunableModel

logger = logging.getLogger("vidadapt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(
        parser, checkpoint_help="adapter .safetensors file (not needed by methods that train "
        "nothing: zero_shot, tip_adapter)", default_split="val",
    )


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
    checkpoint = read_adapter(args.checkpoint) if args.checkpoint else None
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
        metrics = evaluate_config(cfg, args.split, dist, checkpoint, args.checkpoint)
        if dist.is_main:
            files = write_metrics(metrics, out, f"eval_{args.split}")
            print(json.dumps({k: metrics[k] for k in SUMMARY_KEYS}))
            logger.info("wrote %s", ", ".join(str(f) for f in files))
    finally:
        shutdown_distributed()
    return 0


def evaluate_config(
    cfg: ExperimentConfig, split: str, dist: DistInfo,
    checkpoint: AdapterCheckpoint | None = None, checkpoint_path: str | None = None,
) -> dict[str, Any]:
    """Multi-view metrics of ``cfg``'s model on ``split``, with the adapter ``checkpoint`` or,
    for methods that learn nothing by gradients, without one (``prepare_untrained``)."""
    cfg.data = resolve_data(cfg.data, dist)
    views = (cfg.data.test_clips, cfg.data.transform.test_crops)
    classes = checkpoint.classes if checkpoint else None
    dataset = build_dataset(cfg, split, train=False, classes=classes, views=views)
    model = build_model(cfg, len(dataset.classes), dataset.classes)
    amp_dtype = autocast_dtype(cfg.train.amp, dist.device)
    if checkpoint:
        load_adapter(model, checkpoint, checkpoint_path)
        model.to(dist.device)
    else:
        prepare_untrained(cfg, model.to(dist.device), dataset.classes, amp_dtype, dist)
    metrics = evaluate(cfg, model, dataset, amp_dtype, dist)
    metrics["views"] = {"clips": views[0], "crops": views[1]}
    return metrics


def evaluate(
    cfg: ExperimentConfig, model: TunableModel, dataset: VideoDataset,
    amp_dtype: torch.dtype | None, dist: DistInfo,
) -> dict[str, Any]:
    """``classification_metrics`` of ``model`` on every view of ``dataset`` (all ranks)."""
    sampler = ShardedSampler(len(dataset), shuffle=False, rank=dist.rank,
                             world_size=dist.world_size)
    loader = make_loader(dataset, sampler, cfg.data.eval_batch_size, cfg.data.num_workers,
                         cfg.train.seed, pin_memory=dist.device.type == "cuda")
    scores = predict(model, loader, dist.device, amp_dtype, dist, progress=dist.is_main)
    metrics = classification_metrics(scores, dataset.classes)
    metrics["skipped"] = left_out(dataset, metrics["num_videos"], dist)
    return metrics


def prepare_untrained(
    cfg: ExperimentConfig, model: TunableModel, classes: list[str],
    amp_dtype: torch.dtype | None, dist: DistInfo,
) -> None:
    """Make a model without a checkpoint ready to score: only methods that learn nothing by
    gradients can do without one (their data-fitted state comes from the training set)."""
    if any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"method {cfg.model.method} trains parameters; pass the --checkpoint "
                          "that `vidadapt train` wrote")
    chosen = fit_without_training(cfg, model, classes, dist.device, amp_dtype, dist)
    if chosen:
        logger.info("selected on data.val: %s", chosen)
