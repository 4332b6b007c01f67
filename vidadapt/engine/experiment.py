"""One training run from a config: what ``vidadapt train`` and ``vidadapt demo`` both do."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from torch.utils.data import Dataset
from tqdm.contrib.logging import logging_redirect_tqdm

from ..backbones import ViT
from ..config import ExperimentConfig
from ..errors import ConfigError
from ..methods.registry import get_method
from ..models import VideoModel
from .build import build_dataset, build_model, check_num_classes, read_classes, resolve_data
from .checkpoint import load_adapter, read_adapter
from .distributed import DistInfo
from .pretext import PretextClips, is_pretext, pretext_classes
from .ssl_objectives import FeatureObjective, feature_objective
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
        classes: list[str], dist: DistInfo, resume: bool,
        objective: FeatureObjective | None = None) -> dict[str, Any]:
    """Train ``model`` with the engine's Trainer (by ``objective``'s loss when given); its
    summary plus the model's parameter counts (``params``)."""
    counts = model.parameter_counts()
    logger.info("%s on %s: %s tunable of %s parameters (%.2f%%)", cfg.model.method,
                cfg.model.backbone, f"{counts['tunable']:,}", f"{counts['total']:,}",
                100 * counts["tunable"] / counts["total"])
    with logging_redirect_tqdm([logger]):
        summary = Trainer(cfg, model, train_set, val_set, classes, dist, objective).fit(resume)
    return {**summary, "params": counts}


def pretrain_experiment(
    cfg: ExperimentConfig, resume: bool = False, dist: DistInfo | None = None
) -> dict[str, Any]:
    """Train the method's parts on the training split's clips without their labels, by
    ``cfg.ssl.objective``: a pretext task answered by a head (``engine.pretext``: order, arrow,
    speed) or a loss on the features (``engine.ssl_objectives``: masked, distill), validated
    the same way on the val split. ``vidadapt train`` with ``model.init_from`` starts from the
    checkpoints' parts with a new head."""
    dist = dist or DistInfo()
    check_pretrainable(cfg)
    cfg.data = resolve_data(cfg.data, dist)
    ssl, frames = cfg.ssl, cfg.model.num_frames
    factor = ssl.clip_factor  # speed and distill read clips this many times longer and denser
    sampled = replace(cfg, model=replace(cfg.model, num_frames=frames * factor),
                      data=replace(cfg.data, sampler=replace(
                          cfg.data.sampler, interval=max(cfg.data.sampler.interval // factor,
                                                         1))))

    def clips(split: str, train: bool) -> Dataset:
        found = build_dataset(sampled, split, train=train, classes=read_classes(cfg.data))
        if ssl.on_features:  # the labels stay unused
            return found
        return PretextClips(found, ssl.objective, frames, cfg.train.seed, ssl.max_speed)

    train_set = clips("train", True)
    val_set = clips("val", False) if cfg.data.val else None
    classes = pretext_classes(ssl.objective, ssl.max_speed)
    model = build_model(cfg, len(classes))
    if not any(p.requires_grad for p in model.feature_parameters()):
        raise ConfigError(f"method {cfg.model.method} trains nothing that makes the clips' "
                          "features (the image model, its inputs or readout): a pretext task "
                          "has nothing to adapt (pretrain adapters, prompts, LoRA)")
    logger.info("self-supervised objective: %s (%s)", ssl.objective, ", ".join(classes))
    if not ssl.on_features:
        return fit(cfg, model, train_set, val_set, classes, dist, resume)
    target = image_model(cfg) if ssl.objective == "masked" else None
    objective = feature_objective(model, target, ssl, dist)
    return fit(cfg, model, train_set, val_set, classes, dist, resume, objective)


def image_model(cfg: ExperimentConfig) -> ViT:
    """The frozen image model of ``cfg`` alone: the same backbone and weights, no method."""
    plain = replace(cfg, model=replace(cfg.model, method="linear", drop_path=0.0,
                                       init_from=None), method={})
    return build_model(plain, 1).backbone


def check_pretrainable(cfg: ExperimentConfig) -> None:
    """What a self-supervised run cannot do, in one line each."""
    ssl = cfg.ssl
    if cfg.model.num_frames < 2:
        raise ConfigError("model.num_frames: self-supervision on time needs at least 2 frames")
    if cfg.data_motion() != "none":  # the maps of the unchanged clip would give the answer
        raise ConfigError("data.motion: motion maps are computed before pretraining shuffles, "
                          "masks or crops the clip, so they would give the answer away; "
                          "pretrain without motion_prompt")
    if any(get_method(name).classifies_with_text for name in cfg.method_configs()):
        raise ConfigError(f"{cfg.model.method}: pretraining reads the clip features of an "
                          "image-side method; pretrain it alone, then stack the text head")
    if cfg.model.init_from:
        raise ConfigError("model.init_from: pretrain starts from the image model; "
                          "init_from is for vidadapt train")
    if ssl.on_features and (cfg.optim.mixup_alpha or cfg.optim.cutmix_alpha):
        raise ConfigError(f"optim.mixup_alpha / cutmix_alpha: ssl.objective {ssl.objective} has "
                          "no labels to mix; set them to 0")
    if ssl.on_features and cfg.train.compile == "graphs":
        raise ConfigError(f"train.compile: graphs captures a classifier's step; ssl.objective "
                          f"{ssl.objective} runs with off or inductor")
    sampler, factor = cfg.data.sampler, ssl.clip_factor
    if factor > 1 and sampler.type == "dense" and sampler.interval % factor:
        raise ConfigError(f"data.sampler.interval: {sampler.interval} is not a multiple of "
                          f"{factor}, the times longer ssl.objective {ssl.objective} samples its "
                          "clips, so its densest frames would not be at the recipe's rate")
