"""Feature caching: a frozen image encoder runs once per video view, training runs on features.

When no parameter of the model's feature stages trains (``model.feature_parameters()``: linear
probe, zero-shot, CoOp / CoCoOp, CLIP-Adapter, Tip-Adapter, Ju et al.'s prompts), the features
``model.video_features(video)`` of a view never change, so they are computed once and the model
trains on them: ``model(features)`` classifies features (``[B, D]``, or frame embeddings
``[B, T, E]`` for a learned temporal stage) directly. Training keeps ``train.feature_views``
augmented views per video (view ``v`` is what the dataset gives at epoch ``v``); epoch ``e``
trains on view ``e % feature_views``. Validation keeps every test view (clips × crops).

With ``train.feature_cache: off`` the model trains on videos as usual (a fresh augmentation
every epoch). With ``train.feature_cache: disk`` the features are also written to
``<train.feature_cache_dir>/<key>.safetensors`` and reused by later runs. The key hashes
everything a feature depends on: the dataset (records, classes, and each video file's size and
modification time, or its content hash with ``train.feature_cache_check: content``), the
sampler, the view (transform, seed, epochs or test views), the backbone fingerprint and the
features of a fixed probe clip (which also catch a change of temporal pooling); a change of any
gives another file, so a replaced or truncated video is encoded again.

Mixup and CutMix mix pixels, so with them on the model trains on videos as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import safe_open, save_file
from torch import Tensor
from torch.utils.data import Dataset

from ..config import ExperimentConfig
from ..data.dataset import SkipReport, VideoDataset
from ..data.transforms import DeviceAugment
from ..models import VideoModel
from .build import training_device_augment
from .checkpoint import atomic_write, backbone_fingerprint
from .data import ShardedSampler, make_loader, video_on_device
from .distributed import DistInfo, all_gather_objects, barrier
from .logs import progress

logger = logging.getLogger("vidadapt")

CACHE_FORMAT = "vidadapt-features/2"  # 2: frame embeddings keep their [T, E] shape
PROBE_SEED = 1234  # the probe clip whose features fingerprint the feature function


def trains_on_features(cfg: ExperimentConfig, model: VideoModel) -> bool:
    """Whether ``model`` trains on cached features: a frozen feature function (image encoder,
    and EVL-style video head if any), no pixel mixing, and ``train.feature_cache`` not "off"."""
    frozen = not any(p.requires_grad for p in model.feature_parameters())
    mixing = cfg.optim.mixup_alpha > 0 or cfg.optim.cutmix_alpha > 0
    return frozen and not mixing and cfg.train.feature_cache != "off"


class FeatureSet(Dataset):
    """Clip features of a dataset: ``features`` ``[N, V, D]`` and ``labels`` ``[N, V]``.

    ``train=True``: an item is one view's feature ``[D]`` (view ``epoch % V``, see
    ``set_epoch``); ``train=False``: all views ``[V, D]``, scored together like test views.
    """

    def __init__(
        self, features: Tensor, labels: Tensor, train: bool, classes: list[str],
        skipped: dict[str, str] | None = None,
    ) -> None:
        self.features, self.labels, self.train = features, labels, train
        self.classes = classes
        self.view = 0
        self._skipped = dict(skipped or {})

    def __len__(self) -> int:
        return self.features.shape[0]

    def set_epoch(self, epoch: int) -> None:
        self.view = epoch % self.features.shape[1]

    def skipped(self) -> dict[str, str]:
        """The unreadable files passed over while encoding (as ``VideoDataset.skipped``)."""
        return dict(self._skipped)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.train:
            video, label = self.features[index, self.view], self.labels[index, self.view]
        else:
            video, label = self.features[index], self.labels[index, 0]
        return {"video": video, "label": int(label), "index": index}


# ---- encoding ---------------------------------------------------------------------------------


@torch.no_grad()
def encode_views(
    model: VideoModel, dataset: Dataset, epochs: list[int], batch_size: int, num_workers: int,
    seed: int, device: torch.device, amp_dtype: torch.dtype | None = None,
    dist: DistInfo | None = None, augment: DeviceAugment | None = None,
) -> tuple[Tensor, Tensor]:
    """Features ``[N, V, D]`` (float32, CPU) and labels ``[N, V]`` of every video's views.

    Training datasets give one view per epoch in ``epochs``; test datasets give all their views
    at once (``epochs`` is then ``[0]``). Every rank encodes its shard; all get the result.
    ``augment`` finishes the transform of a ``data.gpu_augment`` dataset on the device.
    """
    dist = dist or DistInfo()
    was_training = model.training
    model.eval()
    passes = []
    for epoch in epochs:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        sampler = ShardedSampler(len(dataset), shuffle=False, rank=dist.rank,
                                 world_size=dist.world_size)
        batches = make_loader(dataset, sampler, batch_size, num_workers, seed)
        what = f"encoding features (view {epoch + 1} of {len(epochs)})" if len(epochs) > 1 \
            else "encoding features"
        with progress(len(batches), what, "batch", enabled=dist.is_main) as bar:
            local = _encode_shard(model, batches, device, amp_dtype, bar, augment)
        shards = [s for s in all_gather_objects(local, dist) if s is not None]
        features, labels, indices = (torch.cat(parts) for parts in zip(*shards, strict=True))
        order = indices.argsort()  # dataset order, whatever the number of ranks
        passes.append((features[order], labels[order]))
    model.train(was_training)
    features = torch.cat([f for f, _ in passes], dim=1)  # [N, V, D]
    labels = torch.cat([lab for _, lab in passes], dim=1)  # [N, V]
    return features, labels


def _encode_shard(
    model: VideoModel, batches, device: torch.device, amp_dtype: torch.dtype | None, bar,
    augment: DeviceAugment | None,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Features ``[n, V, D]``, labels ``[n, V]`` and dataset indices ``[n]`` of one rank's
    batches; None when it has none."""
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    features, labels, indices = [], [], []
    for batch in batches:
        bar.update()
        if batch["video"] is None:  # no video of this test batch could be read
            continue
        video = video_on_device(batch, device, augment)
        if video.ndim == 5:  # one view
            video = video.unsqueeze(1)  # [B, 1, T, 3, H, W]
        B, V = video.shape[:2]
        with autocast:
            pooled = model.video_features(video.flatten(0, 1))  # [B*V, D] or [B*V, T, E]
        features.append(pooled.float().cpu().view(B, V, *pooled.shape[1:]))  # [B, V, ...]
        labels.append(torch.as_tensor(batch["label"]).view(B, 1).expand(B, V))  # [B, V]
        indices.append(torch.as_tensor(batch["index"]))
    if not features:
        return None
    return torch.cat(features), torch.cat(labels), torch.cat(indices)


def probe_features(model: VideoModel, num_frames: int, image_size: int) -> Tensor:
    """``video_features`` of a fixed random clip: any change of the feature function (weights,
    pooling, projection) changes them."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    clip = torch.randn(1, num_frames, model.input_channels, image_size, image_size,
                       generator=generator)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        features = model.video_features(clip.to(device)).float().cpu()
    model.train(was_training)
    return features


def file_identity(path: str, content: bool = False) -> str:
    """What tells a changed file from the one whose features were cached: size and
    modification time (of a frame folder: the folder's), or with ``content`` a hash of the
    bytes; ``"missing"`` when there is no such file."""
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    if content and os.path.isfile(path):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def cache_key(model: VideoModel, dataset: VideoDataset, epochs: list[int],
              content: bool = False) -> dict[str, Any]:
    """Everything the features of ``dataset`` depend on (hashed into the cache file name),
    the identity of every video file included (``file_identity``)."""
    records = hashlib.sha256(json.dumps([
        (r.path, r.label, r.num_frames, r.start_index, file_identity(dataset.path(r), content))
        for r in dataset.records
    ]).encode()).hexdigest()
    spec = model.spec
    probe = probe_features(model, spec.num_frames, spec.image_size)
    # Rounded so that last-bit noise between runs on one machine does not miss the cache.
    probe_digest = hashlib.sha256(probe.mul(1e3).round().numpy().tobytes()).hexdigest()[:16]
    return {
        "format": CACHE_FORMAT,
        "dataset": {"source": dataset.source, "records": records, "classes": dataset.classes},
        "sampler": repr(dataset.sampler),
        "view": {"train": dataset.train, "transform": repr(dataset.transform),
                 "seed": dataset.seed, "epochs": epochs, "reader": repr(dataset.reader)},
        "backbone": {"fingerprint": backbone_fingerprint(model.backbone), "probe": probe_digest},
    }


def _cache_path(key: dict[str, Any], root: Path) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return root / f"{digest}.safetensors"


def _read_cache(path: Path, key: dict[str, Any]) -> tuple[Tensor, Tensor, dict] | None:
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("key") != json.dumps(key):
            return None  # a hash collision or a hand-copied file: not these features
        return f.get_tensor("features"), f.get_tensor("labels"), json.loads(metadata["skipped"])


def cached_features(
    cfg: ExperimentConfig, model: VideoModel, dataset: Dataset, train: bool,
    device: torch.device, amp_dtype: torch.dtype | None = None, dist: DistInfo | None = None,
    root: Path | None = None,
) -> FeatureSet:
    """The features of ``dataset``'s views (``train.feature_views`` augmented views of a
    training set, every test view of another), read from the disk cache (``root``, default
    ``train.feature_cache_dir``) when it has them, else encoded and, with
    ``train.feature_cache: disk``, written there."""
    dist = dist or DistInfo()
    root = Path(cfg.train.feature_cache_dir) if root is None else root
    epochs = list(range(cfg.train.feature_views)) if train else [0]
    disk = isinstance(dataset, VideoDataset) and cfg.train.feature_cache == "disk"
    content = cfg.train.feature_cache_check == "content"
    key = cache_key(model, dataset, epochs, content) if disk else None
    path = _cache_path(key, root) if disk else None
    found = _read_cache(path, key) if disk else None
    if found is not None:
        features, labels, skipped = found
        logger.info("read the features of %d videos from %s", len(features), path)
    else:
        per_forward = max(cfg.data.batch_size // dist.world_size, 1) if train \
            else cfg.data.eval_batch_size
        augment = training_device_augment(cfg) if train else None
        features, labels = encode_views(model, dataset, epochs, per_forward,
                                        cfg.data.num_workers, cfg.train.seed, device, amp_dtype,
                                        dist, augment)
        skipped = {}
        for part in all_gather_objects(getattr(dataset, "report", SkipReport()).reasons, dist):
            skipped.update(part)
        if disk and dist.is_main:
            metadata = {"key": json.dumps(key), "skipped": json.dumps(skipped)}
            tensors = {"features": features.contiguous(), "labels": labels.contiguous()}
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
            logger.info("wrote the features of %d videos to %s", len(features), path)
        barrier(dist)
    classes = list(getattr(dataset, "classes", []))
    return FeatureSet(features, labels, train, classes, skipped)


def feature_datasets(
    cfg: ExperimentConfig, model: VideoModel, train_set: Dataset, val_set: Dataset | None,
    device: torch.device, amp_dtype: torch.dtype | None = None, dist: DistInfo | None = None,
) -> tuple[FeatureSet, FeatureSet | None]:
    """Training and validation sets as features, and the model's feature-fitted state
    (``fit_features``) fitted on the training features."""
    train = cached_features(cfg, model, train_set, True, device, amp_dtype, dist)
    val = None if val_set is None else cached_features(cfg, model, val_set, False, device,
                                                       amp_dtype, dist)
    model.fit_features(train.features, train.labels)
    return train, val
