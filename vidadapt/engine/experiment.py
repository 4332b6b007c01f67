"""One training run from a config: what ``vidadapt train`` and ``vidadapt demo`` both do."""

from __future__ import annotations

import logging
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..models import VideoModel
from .build import build_dataset, build_model, check_num_classes, read_classes, resolve_data
from .checkpoint import load_adapter
from .distributed import DistInfo
from .trainer import Trainer

logger = logging.getLogger("vidadapt")


def start_from(model: VideoModel, path: str, classes: list[str]) -> None:
    """Load the tuned tensors of the adapter checkpoint at ``path`` (``model.init_from``)."""
    checkpoint = load_adapter(model, path)
    if checkpoint.classes and checkpoint.classes != list(classes):
        raise ConfigError(f"{path} was trained on classes {checkpoint.classes[:3]}..., this "
                          f"data has {list(classes)[:3]}...: its head rows would mean other "
                          "classes; pass the same class list (data.classes)")
    logger.info("starting from %s", path)


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
    if cfg.model.init_from:
        start_from(model, cfg.model.init_from, classes)
    counts = model.parameter_counts()
    logger.info("%s on %s: %s tunable of %s parameters (%.2f%%)", cfg.model.method,
                cfg.model.backbone, f"{counts['tunable']:,}", f"{counts['total']:,}",
                100 * counts["tunable"] / counts["total"])
    with logging_redirect_tqdm([logger]):
        summary = Trainer(cfg, model, train_set, val_set, classes, dist).fit(resume)
    return {**summary, "params": counts}
