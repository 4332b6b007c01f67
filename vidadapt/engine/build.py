"""From an :class:`ExperimentConfig` to the objects a run needs: model, datasets, class names."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..clip.protocols import class_subset, subset_ids
from ..config import DataConfig, ExperimentConfig
from ..data.annotations import Annotation, load_annotation
from ..data.dataset import VideoDataset, default_reader
from ..data.decode import InMemoryReader
from ..data.motion import MotionMaps, channels_for
from ..data.sampling import DenseSampler, FrameSampler, UniformSampler
from ..data.synthetic import CLASSES as SYNTHETIC_CLASSES
from ..data.synthetic import make_synthetic
from ..data.transforms import DeviceAugment, build_transform, device_augment
from ..errors import ConfigError
from ..methods.registry import get_method
from ..models import VideoModel, create_model
from .distributed import DistInfo, barrier
from .open_set import known_subset

logger = logging.getLogger("vidadapt")

SYNTHETIC_CACHE = Path(".cache") / "synthetic"  # default home of `data.dataset: synthetic`


def build_model(
    cfg: ExperimentConfig, num_classes: int | None = None, classes: list[str] | None = None
) -> VideoModel:
    """The model of ``cfg.model`` and ``cfg.method``.

    New weights (and a backbone without ``pretrained`` weights) are drawn from
    ``train.seed`` in a forked RNG, so training, ``eval`` and ``predict`` rebuild the very
    same model from the same config without touching the caller's RNG. A text head (CLIP
    methods: ``zero_shot``, ``coop``...) classifies with the class names: ``classes``, else
    the training annotation's.
    """
    configs = cfg.method_configs()
    needs_names = any(get_method(name).classifies_with_text for name in configs)
    if needs_names and classes is None:
        classes = training_classes(cfg.data)
    num_classes = num_classes or cfg.model.num_classes or (len(classes) if classes else None)
    if num_classes is None:
        raise ConfigError("model.num_classes is not set and there is no annotation to count them")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = create_model(
            cfg.model.method,
            cfg.model.backbone,
            num_classes=num_classes,
            classes=classes if needs_names else None,
            num_frames=cfg.model.num_frames,
            pretrained=cfg.model.pretrained,
            image_size=cfg.model.image_size,
            dropout=cfg.model.dropout,
            drop_path=cfg.model.drop_path,
            **configs,
        )
    if cfg.model.pretrained is None:
        logger.warning("model.pretrained is not set: the %s backbone has random weights",
                       cfg.model.backbone)
    return model


# ---- data ---------------------------------------------------------------------------------------


def synthetic_dir(data: DataConfig) -> Path:
    """Where ``dataset: synthetic`` lives: ``data.root``, else a cache folder named by its
    parameters (so changing them makes a new set instead of reusing a stale one)."""
    if data.root is not None:
        return Path(data.root)
    s = data.synthetic
    counts = f"{s.num_train}+{s.num_val}" + (f"+{s.num_test}" if s.num_test else "")
    return SYNTHETIC_CACHE / f"{counts}_{s.frames}f_{s.size}px_seed{s.seed}"


def resolve_data(data: DataConfig, dist: DistInfo | None = None) -> DataConfig:
    """``data`` with the synthetic set's paths filled in, generating the set on first use
    (rank 0 writes it while the others wait). Other datasets are returned unchanged."""
    if data.dataset != "synthetic":
        return data
    dist = dist or DistInfo()
    root = synthetic_dir(data)
    test = root / ("test.txt" if data.synthetic.num_test else "val.txt")
    files = [root / "train.txt", root / "val.txt", test, root / "classes.txt"]
    if dist.is_main and not all(f.exists() for f in files):
        logger.info("writing the synthetic video set to %s", root)
        make_synthetic(root, **asdict(data.synthetic))
    barrier(dist)
    return replace(data, train=str(files[0]), val=str(files[1]), test=data.test or str(test),
                   root=str(root))


def known_class_names(data: DataConfig) -> list[str] | None:
    """``data.known_classes`` as names (read from its file when it names one), or None."""
    known = data.known_classes
    if not isinstance(known, str):
        return known
    path = Path(known)
    if not path.is_file():
        raise ConfigError(f"data.known_classes: {path} does not exist (a file of class names, "
                          "one per line, or a list of names)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.known_classes: {path} names a class twice")
    return names


def read_classes(data: DataConfig) -> list[str] | None:
    """The names of ``data.classes`` (one per line), or None when it is not set."""
    if data.classes is None:
        return None
    path = Path(data.classes)
    if not path.is_file():
        raise ConfigError(f"data.classes: {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def training_classes(data: DataConfig) -> list[str]:
    """The class names of the training split (the synthetic set's are known before it exists)."""
    if data.dataset == "synthetic" and data.train is None and data.known_classes is None:
        return [SYNTHETIC_CLASSES[i] for i in subset_ids(len(SYNTHETIC_CLASSES), data.class_subset)]
    if data.dataset == "synthetic" and data.train is None:
        whole = Annotation([], list(SYNTHETIC_CLASSES), "the synthetic set")
        return known_subset(whole, known_class_names(data), keep_unknown=False).classes
    return load_split(data, "train", read_classes(data)).classes


def load_split(data: DataConfig, split: str, classes: list[str] | None = None,
               unknowns: bool = False) -> Annotation:
    """The annotation of ``split`` ("train", "val" or "test"), labels indexing ``classes``.

    With ``data.class_subset`` base or new, the file's labels index the full class list
    (``data.classes`` or the file's own) and half of the classes are kept, renumbered;
    ``classes`` may then name the full list or the subset. With ``data.known_classes`` (open
    set) the known classes are kept, renumbered in that list's order, and with ``unknowns``
    the other videos too, their classes listed (and labelled) after the known ones.
    """
    path = getattr(data, split)
    if path is None:
        raise ConfigError(f"data.{split} is not set; pass --set data.{split}=ANNOTATION_FILE")
    root = data.roots.get(split, data.root)
    if data.class_subset == "all" and data.known_classes is None:
        return load_annotation(path, root=root, format=data.format, classes=classes)
    full = load_annotation(path, root=root, format=data.format, classes=read_classes(data))
    if data.known_classes is not None and data.class_subset != "all":
        raise ConfigError("data.known_classes (open set) and data.class_subset (base-to-new) "
                          "choose classes two ways; set one")
    if data.known_classes is not None:
        key, subset = "known_classes", known_subset(full, known_class_names(data), unknowns)
    else:
        key, subset = f"class_subset {data.class_subset}", class_subset(full, data.class_subset)
    # The known classes lead the list when the unknown ones follow (open-set evaluation).
    given = subset.classes[: len(classes)] if classes is not None and unknowns else None
    if classes is not None and list(classes) not in (full.classes, subset.classes, given):
        raise ConfigError(
            f"data.{key}: the classes of {path} differ from those given (e.g. a checkpoint's); "
            "set data.classes to a class-name file"
        )
    return subset


def keep_shots(annotation: Annotation, shots: int, seed: int) -> Annotation:
    """Few-shot subset: ``shots`` videos per class, chosen at random (fixed by ``seed``)."""
    order = np.random.default_rng([seed, shots]).permutation(len(annotation.records))
    taken: Counter[int] = Counter()
    kept = []
    for i in order.tolist():
        label = annotation.records[i].label
        if taken[label] < shots:
            taken[label] += 1
            kept.append(i)
    short = [name for c, name in enumerate(annotation.classes) if taken[c] < shots]
    if short:
        logger.warning("%d class(es) have fewer than %d training videos, e.g. %r",
                       len(short), shots, short[0])
    return replace(annotation, records=[annotation.records[i] for i in sorted(kept)])


def frame_sampler(cfg: ExperimentConfig, num_clips: int) -> FrameSampler:
    s, clip_len = cfg.data.sampler, cfg.model.num_frames
    if s.type == "dense":
        return DenseSampler(clip_len, s.interval, num_clips, s.short_video)
    return UniformSampler(clip_len, num_clips)


def video_dataset(
    cfg: ExperimentConfig, annotation: Annotation, train: bool, views: tuple[int, int] = (1, 1),
    max_retries: int = 10,
) -> VideoDataset:
    """Clips of ``annotation`` sampled and transformed as ``cfg`` says: one training clip, or
    ``views`` = (clips, crops) test views per video."""
    clips, crops = (1, 1) if train else views
    transform = build_transform(replace(cfg.data.transform, test_crops=crops), train,
                                defer=train and cfg.data.gpu_augment, motion=motion_maps(cfg))
    reader = default_reader(annotation, cfg.data.reader, cfg.data.decode_device)
    if cfg.data.cache_videos:
        reader = InMemoryReader(reader)
    return VideoDataset(annotation, frame_sampler(cfg, clips), transform, reader, train=train,
                        seed=cfg.train.seed, max_retries=max_retries)


def training_device_augment(cfg: ExperimentConfig) -> DeviceAugment | None:
    """What the training step applies to each batch on the device with ``data.gpu_augment``
    (None without it)."""
    if not cfg.data.gpu_augment:
        return None
    return device_augment(cfg.data.transform, channels_for(cfg.data_motion()))


def motion_maps(cfg: ExperimentConfig) -> MotionMaps | None:
    """The pipeline step adding the motion the model reads (``data.motion``), if any."""
    kind = cfg.data_motion()
    return None if kind == "none" else MotionMaps(kind, cfg.data.flow_algorithm)


def build_dataset(
    cfg: ExperimentConfig,
    split: str,
    train: bool,
    classes: list[str] | None = None,
    views: tuple[int, int] = (1, 1),
    unknowns: bool = False,
) -> VideoDataset:
    """The dataset of ``split`` (few-shot subset in training when ``data.shots`` is set; the
    unknown classes' videos too, labelled after the known ones, with ``unknowns`` and
    ``data.known_classes``)."""
    annotation = load_split(cfg.data, split, classes, unknowns)
    if train and cfg.data.shots is not None:
        annotation = keep_shots(annotation, cfg.data.shots, cfg.train.seed)
    return video_dataset(cfg, annotation, train, views)


def check_num_classes(cfg: ExperimentConfig, classes: list[str]) -> int:
    """The head size: the annotation's class count, which ``model.num_classes`` must match."""
    if cfg.model.num_classes not in (None, len(classes)):
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but the training annotation has "
            f"{len(classes)} classes; set model.num_classes: {len(classes)} (or leave it out)"
        )
    return len(classes)
