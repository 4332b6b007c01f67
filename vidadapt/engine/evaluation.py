"""Evaluating an experiment: the library behind ``vidadapt eval`` and ``base-to-new``.

:func:`evaluate_config` builds the model of a config, loads an adapter checkpoint into it (or,
for methods that learn nothing by gradients, fits it on the training set) and scores it on
every view of a split (``engine.evaluate`` has the metrics).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..config import ExperimentConfig
from ..data.dataset import VideoDataset
from ..errors import ConfigError
from ..models import VideoModel
from .build import build_dataset, build_model, resolve_data
from .checkpoint import AdapterCheckpoint, load_adapter
from .data import ShardedSampler, make_loader, pins_memory
from .distributed import DistInfo
from .evaluate import Scores, classification_metrics, left_out, predict
from .features import feature_datasets
from .open_set import SCORES, check_known_and_unknown, naming_metrics, open_set_metrics
from .trainer import autocast_dtype

logger = logging.getLogger("vidadapt")


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
    cfg: ExperimentConfig, model: VideoModel, dataset: VideoDataset,
    amp_dtype: torch.dtype | None, dist: DistInfo,
) -> dict[str, Any]:
    """``classification_metrics`` of ``model`` on every view of ``dataset`` (all ranks)."""
    scores = score_views(cfg, model, dataset, amp_dtype, dist)
    metrics = classification_metrics(scores, dataset.classes)
    metrics["skipped"] = left_out(dataset, metrics["num_videos"], dist)
    return metrics


def score_views(
    cfg: ExperimentConfig, model: VideoModel, dataset: VideoDataset,
    amp_dtype: torch.dtype | None, dist: DistInfo,
) -> Scores:
    """The view-averaged scores of ``model`` on every video of ``dataset`` (all ranks)."""
    sampler = ShardedSampler(len(dataset), shuffle=False, rank=dist.rank,
                             world_size=dist.world_size)
    loader = make_loader(dataset, sampler, cfg.data.eval_batch_size, cfg.data.num_workers,
                         cfg.train.seed, pin_memory=pins_memory(cfg.data, dist.device))
    return predict(model, loader, dist.device, amp_dtype, dist, progress=dist.is_main)


def evaluate_open_set(
    cfg: ExperimentConfig, split: str, dist: DistInfo, checkpoint: AdapterCheckpoint,
    checkpoint_path: str | None = None,
) -> dict[str, Any]:
    """Open-set metrics (``engine.open_set``) of a model trained on ``data.known_classes``: its
    scores on the validation split choose each score's threshold, applied to ``split``."""
    if cfg.data.known_classes is None:
        raise ConfigError("--open-set needs data.known_classes: the classes the model was "
                          "trained on (the others are the unknowns to reject)")
    if split == "val":
        raise ConfigError("--open-set chooses its thresholds on the val split; evaluate "
                          "--split test")
    cfg.data = resolve_data(cfg.data, dist)
    if cfg.data.test == cfg.data.val:
        raise ConfigError("--open-set: data.test is data.val, so thresholds chosen on val would "
                          "be reported on themselves; set a test split (synthetic: "
                          "data.synthetic.num_test)")
    views = (cfg.data.test_clips, cfg.data.transform.test_crops)
    model = build_model(cfg, len(checkpoint.classes), checkpoint.classes)
    load_adapter(model, checkpoint, checkpoint_path)
    model.to(dist.device)
    amp_dtype = autocast_dtype(cfg.train.amp, dist.device)
    K = len(checkpoint.classes)
    datasets = {name: build_dataset(cfg, name, train=False, classes=checkpoint.classes,
                                    views=views, unknowns=True) for name in ("val", split)}
    for name, dataset in datasets.items():  # before hours of scoring, not after
        check_known_and_unknown(torch.tensor([r.label for r in dataset.records]), K, name)
    scores = {name: score_views(cfg, model, dataset, amp_dtype, dist)
              for name, dataset in datasets.items()}
    names = [n for n in SCORES if n != "evidential" or model.head.logits_are_evidence]
    metrics = open_set_metrics(scores["val"], scores[split], checkpoint.classes, names)
    if model.head.names_new_classes:  # a text head can name classes it never learned
        model.set_classes(datasets[split].classes)
        everything = score_views(cfg, model, datasets[split], amp_dtype, dist)
        metrics["naming"] = naming_metrics(scores[split], everything, metrics)
    skipped = left_out(datasets[split], len(scores[split].labels), dist)
    metrics.update(views={"clips": views[0], "crops": views[1]}, skipped=skipped)
    return metrics


def prepare_untrained(
    cfg: ExperimentConfig, model: VideoModel, classes: list[str],
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


def fit_without_training(
    cfg: ExperimentConfig, model: VideoModel, classes: list[str], device: torch.device,
    amp_dtype: torch.dtype | None = None, dist: DistInfo | None = None,
) -> dict[str, float]:
    """Prepare a model that learns nothing by gradients (zero-shot, training-free Tip-Adapter)
    for evaluation: fit it on the training features and select its hyper-parameters on the
    validation features (``data.val``), labels indexing ``classes``. Returns the selection."""
    if not model.needs_training_features:
        return {}
    views = (cfg.data.test_clips, cfg.data.transform.test_crops)
    train_set = build_dataset(cfg, "train", train=True, classes=classes)
    val_set = build_dataset(cfg, "val", train=False, classes=classes, views=views)
    train, val = feature_datasets(cfg, model, train_set, val_set, device, amp_dtype, dist)
    if cfg.data.test == cfg.data.val:
        logger.warning("data.val is also data.test: hyper-parameters selected on it make its "
                       "accuracy optimistic")
    return model.select_hparams(val.features, val.labels[:, 0])
