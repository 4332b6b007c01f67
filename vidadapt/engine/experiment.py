"""One training run from a config: what ``vidadapt train`` and ``vidadapt demo`` both do."""

from __future__ import annotations

import logging
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import ExperimentConfig
from .build import build_dataset, build_model, check_num_classes, read_classes, resolve_data
from .distributed import DistInfo
from .trainer import Trainer

logger = logging.getLogger("vidadapt")


def train_experiment(
    cfg: ExperimentConfig, resume: bool = False, dist: DistInfo | None = None
) -> dict[str, Any]:
    """Build the datasets and model of ``cfg`` and train; returns the trainer's summary plus
    the model's parameter counts (``params``)."""
    dist = dist or DistInfo()
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
        summary = Trainer(cfg, model, train_set, val_set, classes, dist).fit(resume)
    return {**summary, "params": counts}
