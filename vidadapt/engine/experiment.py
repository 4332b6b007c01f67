"""One training run from a config: what ``vidadapt train`` and ``vidadapt demo`` both do."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from torch.utils.data import Dataset
from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..methods.registry import get_method
from ..models import VideoModel
from .build import build_dataset, build_model, check_num_classes, read_classes, resolve_data
from .checkpoint import load_adapter, read_adapter
from .distributed import DistInfo
from .pretext import PretextClips, is_pretext, pretext_classes
from .trainer import Trainer

logger = logging.getLogger("vidadapt")


def start_from(model: VideoModel, path: str, classes: list[str]) -> None:
    """Load the tuned tensors of the adapter checkpoint at ``path`` (``model.init_from``); from
    a pretext task's (``vidadapt pretrain``), all but its head."""
    pretrained = read_adapter(path)
    if is_pretext(pretrained.classes):
        load_adapter(model, pretrained, path, keep_head=True)
        logger.info("starting from %s (self-supervised; a new head)", path)
        return
    checkpoint = load_adapter(model, pretrained, path)
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
    return fit(cfg, model, train_set, val_set, classes, dist, resume)


def fit(cfg: ExperimentConfig, model: VideoModel, train_set: Dataset, val_set: Dataset | None,
        classes: list[str], dist: DistInfo, resume: bool) -> dict[str, Any]:
    """Train ``model`` with the engine's Trainer; its summary plus the model's parameter counts
    (``params``)."""
    counts = model.parameter_counts()
    logger.info("%s on %s: %s tunable of %s parameters (%.2f%%)", cfg.model.method,
                cfg.model.backbone, f"{counts['tunable']:,}", f"{counts['total']:,}",
                100 * counts["tunable"] / counts["total"])
    with logging_redirect_tqdm([logger]):
        summary = Trainer(cfg, model, train_set, val_set, classes, dist).fit(resume)
    return {**summary, "params": counts}


def pretrain_experiment(
    cfg: ExperimentConfig, resume: bool = False, dist: DistInfo | None = None
) -> dict[str, Any]:
    """Train the method's parts on the training split's clips without their labels, on the
    pretext task ``cfg.ssl.objective`` (``engine.pretext``), validated on the same task on the
    val split. The checkpoints answer the pretext's classes; ``vidadapt train`` with
    ``model.init_from`` starts from their parts with a new head."""
    dist = dist or DistInfo()
    check_pretrainable(cfg)
    cfg.data = resolve_data(cfg.data, dist)
    ssl, frames = cfg.ssl, cfg.model.num_frames
    classes = pretext_classes(ssl.objective, ssl.max_speed)
    sampled = replace(cfg, model=replace(cfg.model, num_frames=frames * ssl.max_speed),
                      data=replace(cfg.data, sampler=replace(
                          cfg.data.sampler, interval=max(cfg.data.sampler.interval //
                                                         ssl.max_speed, 1)))) \
        if ssl.objective == "speed" else cfg  # speed: clips max_speed times longer and denser

    def pretext(split: str, train: bool) -> PretextClips:
        clips = build_dataset(sampled, split, train=train, classes=read_classes(cfg.data))
        return PretextClips(clips, ssl.objective, frames, cfg.train.seed, ssl.max_speed)

    train_set = pretext("train", True)
    val_set = pretext("val", False) if cfg.data.val else None
    model = build_model(cfg, len(classes))
    if not any(p.requires_grad for p in model.feature_parameters()):
        raise ConfigError(f"method {cfg.model.method} trains nothing that makes the clips' "
                          "features (the image model, its inputs or readout): a pretext task "
                          "has nothing to adapt (pretrain adapters, prompts, LoRA)")
    logger.info("pretext task: %s (%s)", ssl.objective, ", ".join(classes))
    return fit(cfg, model, train_set, val_set, classes, dist, resume)


def check_pretrainable(cfg: ExperimentConfig) -> None:
    """What a pretext run cannot do, in one line each."""
    if cfg.model.num_frames < 2:
        raise ConfigError("model.num_frames: a pretext task on time needs at least 2 frames")
    if cfg.data_motion() != "none":  # the maps of the unchanged clip would give the answer
        raise ConfigError("data.motion: motion maps are computed before a pretext task changes "
                          "the clip, so they would give its answer away; pretrain without "
                          "motion_prompt")
    if any(get_method(name).classifies_with_text for name in cfg.method_configs()):
        raise ConfigError(f"{cfg.model.method}: a pretext task is answered by a linear head; "
                          "pretrain the image-side method alone, then stack the text head")
    if cfg.model.init_from:
        raise ConfigError("model.init_from: pretrain starts from the image model; "
                          "init_from is for vidadapt train")
    sampler = cfg.data.sampler
    if cfg.ssl.objective == "speed" and sampler.type == "dense" \
            and sampler.interval % cfg.ssl.max_speed:
        raise ConfigError(f"data.sampler.interval: {sampler.interval} is not a multiple of "
                          f"ssl.max_speed {cfg.ssl.max_speed}, so the fastest speed would not "
                          "be the recipe's frame rate")
