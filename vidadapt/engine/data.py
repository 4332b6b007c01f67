"""Data order and loaders: a pure function of (seed, epoch), split over ranks, resumable.

Training: one permutation of the training set per epoch, cut to whole global batches; rank
``r`` of ``w`` takes positions ``r, r + w, r + 2w, ...``. Every optimizer step then consumes
the same global batch whatever the number of GPUs and accumulation steps, so runs on 1 and N
processes see identical data, and a resumed run skips exactly the batches it already did.
Evaluation: the same interleaving over the whole set without padding, so no video is scored
twice (the evaluator merges the shards by index).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig
from ..data.dataset import VideoDataset, collate_samples
from ..data.transforms import DeviceAugment


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from several parts (run seed, epoch, rank...), same on every run."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ShardedSampler(Sampler[int]):
    """Dataset indices for one rank; see the module docstring.

    ``samples_per_epoch`` (a multiple of ``world_size``) cuts the shuffled order to whole
    global batches. ``set_epoch(epoch, start)`` picks the epoch's order and skips the first
    ``start`` samples of this rank's share (those a resumed run already trained on).
    """

    def __init__(
        self,
        size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        samples_per_epoch: int | None = None,
    ) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.samples_per_epoch = size if samples_per_epoch is None else samples_per_epoch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _shard(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, "order"))
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        return order[: self.samples_per_epoch][self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.start :])

    def __len__(self) -> int:
        return max(len(range(self.rank, self.samples_per_epoch, self.world_size)) - self.start, 0)


class EpochStream(Sampler[tuple[int, int]]):
    """``(epoch, index)`` for epochs ``first`` to ``last - 1`` of ``sampler``, one after the
    other (the first from position ``start``).

    One loader over the whole run never drains at an epoch's end: while the last steps of an
    epoch train, its workers already decode the first batches of the next. A loader per epoch
    started empty each time, and the first step waited for one worker to decode a whole batch
    (3 s for 16 K400 clips). The epoch travels with each index: see :class:`EpochKeyed`.
    """

    def __init__(self, sampler: ShardedSampler, first: int, last: int, start: int = 0) -> None:
        self.sampler, self.first, self.last, self.start = sampler, first, last, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in range(self.first, self.last):
            self.sampler.set_epoch(epoch, self.start if epoch == self.first else 0)
            for index in self.sampler:
                yield epoch, index

    def __len__(self) -> int:
        per_epoch = len(range(self.sampler.rank, self.sampler.samples_per_epoch,
                              self.sampler.world_size))
        return max(per_epoch * (self.last - self.first) - self.start, 0)


class EpochKeyed(Dataset):
    """``dataset`` indexed by ``(epoch, index)``: it is moved to that epoch (``set_epoch``, its
    per-epoch augmentation or feature view) before the item is read, in whichever process
    reads it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def report(self):
        return getattr(self.dataset, "report", None)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.epoch = epoch
        return self.dataset[index]


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a loader worker from the seed torch gave it, which the
    loader derives from its own generator; so workers are reproducible too."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class SkipReportingLoader(DataLoader):
    """A DataLoader that tells its dataset's skip report about the files that loader workers
    passed over (a worker's own report lives and dies in the worker process)."""

    def __iter__(self) -> Iterator:
        report = getattr(self.dataset, "report", None)
        for batch in super().__iter__():
            if report is not None and "skipped" in batch:
                report.update(batch)
            yield batch


def make_loader(
    dataset: Dataset,
    sampler: ShardedSampler | EpochStream,
    batch_size: int,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
    persistent: bool = False,
) -> SkipReportingLoader:
    """A loader over ``sampler`` whose worker seeds come from (seed, epoch, rank), never from
    the global RNG: creating it leaves the training RNG streams untouched, which exact
    resumption needs. Files that a ``VideoDataset`` skipped reach its report.

    ``persistent`` keeps the workers alive from one ``iter()`` to the next (validation runs
    once per epoch): starting them again cost seconds each time."""
    first = sampler.sampler if isinstance(sampler, EpochStream) else sampler
    epoch = sampler.first if isinstance(sampler, EpochStream) else sampler.epoch
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, first.rank, "workers"))
    inner = dataset  # the VideoDataset under any wrappers (EpochKeyed, a pretext task's)
    while not isinstance(inner, VideoDataset) and hasattr(inner, "dataset"):
        inner = inner.dataset
    return SkipReportingLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=persistent and num_workers > 0,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        collate_fn=collate_samples if isinstance(inner, VideoDataset) else None,
    )


def video_on_device(batch: dict, device: torch.device, augment: DeviceAugment | None) -> Tensor:
    """A batch's clips on ``device`` (``[B, T, 3, H, W]``). A batch of ``data.gpu_augment``
    arrives as uint8 clips and their drawn parameters; ``augment`` finishes the transform
    there, batched."""
    video = batch["video"].to(device, non_blocking=True)
    if "augment" not in batch:
        return video
    if augment is None:
        raise ValueError("this batch defers its augmentation to the device (data.gpu_augment) "
                         "but no DeviceAugment was given to apply it")
    return augment(video, batch["augment"])


def pins_memory(data: DataConfig, device: torch.device) -> bool:
    """Whether loaders should page-lock batches: copies to a GPU from locked memory are faster
    and can overlap compute; frames decoded on the GPU are there already."""
    return device.type == "cuda" and data.decode_device == "cpu"
