"""The video dataset: annotation records -> sampled, decoded, transformed clips.

Broken files are common in scraped datasets (Kinetics: truncated downloads, missing streams), so
a bad file never stops a run: the dataset logs it once with the reason, loads another sample
instead (a deterministic choice) and remembers the file in a ``SkipReport``. DataLoader workers
are separate processes, so each sample also carries the skips that happened while making it
(``sample["skipped"]``); batch samples with ``collate_samples`` and pass every batch to
``dataset.report.update(batch)`` so that the main process ends the run knowing every skipped
file (``dataset.skipped()``, ``dataset.report.summary()``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import DataError
from .annotations import Annotation, VideoRecord
from .decode import (
    BadVideoError,
    DecordReader,
    PyAVReader,
    RawFrameReader,
    TorchCodecReader,
    VideoReader,
)
from .sampling import FrameSampler
from .transforms import PlannedClip

logger = logging.getLogger(__name__)

# (uint8 clip [T, 3, H, W], label, generator) -> (float clip or list of crops, label), or with
# deferred steps (a transforms.PlannedClip, label); see transforms.build_transform. The label
# can change (a flip that swaps left and right).
Transform = Callable[
    [torch.Tensor, int, torch.Generator], "tuple[torch.Tensor | list[torch.Tensor], int]"
]


class SkipReport:
    """The files skipped as unreadable, each with its reason.

    Worker processes only record (their copy of the report doubles as a cache of known-bad
    files, so a file is not decoded twice); the main process logs each file the first time it
    hears of it, from its own loading or from ``update(batch)``.
    """

    def __init__(self):
        self.reasons: dict[str, str] = {}  # path -> why it was skipped

    def add(self, path: str, reason: str) -> None:
        if path in self.reasons:
            return
        self.reasons[path] = reason
        if get_worker_info() is None:
            logger.warning("skipping unreadable video %s: %s", path, reason)

    def update(self, batch: dict) -> None:
        """Record the skips a batch (or one sample) reports, e.g. from DataLoader workers."""
        for path, reason in batch["skipped"]:
            self.add(path, reason)

    def __len__(self) -> int:
        return len(self.reasons)

    def summary(self) -> str:
        """One line per skipped file, for the end of a run."""
        lines = [f"skipped {len(self.reasons)} unreadable file(s)"]
        lines += [f"  {path}: {reason}" for path, reason in sorted(self.reasons.items())]
        return "\n".join(lines)


def collate_samples(samples: Sequence[dict]) -> dict:
    """Batch samples of a ``VideoDataset`` (DataLoader ``collate_fn``): stacks videos, labels
    and indices and joins the lists of skipped files, which the default collate cannot.
    Evaluation samples whose video could not be read (``video`` None) are left out of the
    batch; ``video`` is None when none was read."""
    read = [s for s in samples if s["video"] is not None]
    batch = {
        # [B, T, 3, H, W] / [B, V, T, 3, H, W]
        "video": torch.stack([s["video"] for s in read]) if read else None,
        "label": torch.tensor([s["label"] for s in read], dtype=torch.long),  # [B]
        "index": torch.tensor([s["index"] for s in read], dtype=torch.long),  # [B]
        "skipped": [skip for s in samples for skip in s["skipped"]],
    }
    if read and "augment" in read[0]:  # data.gpu_augment: uint8 clips, steps left to run
        batch["augment"] = [s["augment"] for s in read]
    return batch


def frame_count(record: VideoRecord, path: str, reader: VideoReader, min_frames: int = 1) -> int:
    """Frames of a record (the annotation's count for raw-frame folders, else the reader's);
    raises BadVideoError below ``min_frames``."""
    num_frames = record.num_frames if record.num_frames is not None else reader.num_frames(path)
    if num_frames < min_frames:
        raise BadVideoError(f"{num_frames} frame(s), fewer than the {min_frames} needed")
    return num_frames


def check_record(record: VideoRecord, reader: VideoReader, min_frames: int = 1) -> str | None:
    """Why ``record`` cannot be used (None if it can): counts its frames and decodes the first
    and the last, which catches truncated files as well as unopenable ones."""
    try:
        num_frames = frame_count(record, record.path, reader, min_frames)
        reader.read(record.path, [0, num_frames - 1])
    except BadVideoError as err:
        return str(err)
    return None


def default_reader(annotation: Annotation, video_reader: str = "pyav",
                   decode_device: str = "cpu") -> VideoReader:
    """``RawFrameReader`` for raw-frame annotations, else the video reader named
    ``video_reader`` (``data.reader``): ``"pyav"`` (``PyAVReader``), ``"decord"`` or
    ``"torchcodec"`` (decoding on ``decode_device``)."""
    records = annotation.records
    if records and records[0].num_frames is not None:
        # The raw-frame formats give every record of a file the same start index.
        return RawFrameReader(start_index=records[0].start_index)
    if video_reader == "torchcodec":
        return TorchCodecReader(device=decode_device)
    return DecordReader() if video_reader == "decord" else PyAVReader()


class VideoDataset(Dataset):
    """Clips of the videos of an annotation, for training or testing.

    A sample is ``{"video", "label", "index", "skipped"}``: ``video`` is float ``[T, 3, H, W]``
    in training and ``[V, T, 3, H, W]`` at test with V = clips x crops (the transform returns a
    list of crops at test); ``index`` is the requested index; ``skipped`` lists the
    ``(path, reason)`` of the bad files passed over to make this sample. A transform that defers
    its last steps to the device (``data.gpu_augment``) gives a uint8 ``video`` and, under
    ``augment``, the parameters it drew for those steps.

    In training a file that fails is replaced by another sample (see below). At test
    (``train=False``) it is not: the sample's ``video`` is None, so an evaluation scores only
    what it could read and lists the rest (``collate_samples`` drops such samples).

    Sampling is deterministic given (seed, epoch, index): call ``set_epoch`` before each epoch,
    before the DataLoader iterator is made, or read through ``engine.data.EpochKeyed``, which
    sets each worker's own copy to the epoch of the item it reads. A file that fails is
    replaced by a random other sample, drawn from the same seed, up to ``max_retries`` times
    before a DataError.

    Args:
        annotation: records and class names (``load_annotation``).
        sampler: frame sampler (``DenseSampler`` / ``UniformSampler``); one clip in training.
        transform: ``(clip, label, generator) -> (clip, label)``: uint8 ``[T, 3, H, W]`` ->
            float ``[T, 3, H, W]`` in training, a list of float crops at test
            (``build_transform``); its random draws come from the per-sample generator.
        reader: decoder; default ``default_reader(annotation)``.
        root: folder relative record paths are joined with (records from ``load_annotation``
            are already joined with its root).
        train: training (random sampling, one clip) or test (fixed clips and crops).
        seed: base seed of the sampling.
        max_retries: replacements tried for one sample before giving up.
        min_frames: videos with fewer frames count as bad.
    """

    def __init__(
        self,
        annotation: Annotation,
        sampler: FrameSampler,
        transform: Transform,
        reader: VideoReader | None = None,
        root: str | None = None,
        train: bool = True,
        seed: int = 0,
        max_retries: int = 10,
        min_frames: int = 1,
    ):
        if train and sampler.num_clips != 1:
            raise DataError(f"training takes one clip per video; the sampler has "
                            f"num_clips={sampler.num_clips}")
        if not annotation.records:
            raise DataError(f"{annotation.source} lists no videos")
        self.records = annotation.records
        self.classes = annotation.classes
        self.source = annotation.source
        self.sampler = sampler
        self.transform = transform
        self.reader = reader if reader is not None else default_reader(annotation)
        self.root = root
        self.train = train
        self.seed = seed
        self.max_retries = max_retries
        self.min_frames = min_frames
        self.epoch = 0
        self.report = SkipReport()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skipped(self) -> dict[str, str]:
        """Every file skipped so far (path -> reason), as far as this process has heard."""
        return dict(self.report.reasons)

    def path(self, record: VideoRecord) -> str:
        return os.path.join(self.root, record.path) if self.root else record.path

    def __getitem__(self, index: int) -> dict:
        skipped: list[tuple[str, str]] = []
        candidate = index
        epoch = self.epoch
        for attempt in range(self.max_retries + 1):
            rng = np.random.default_rng([self.seed, epoch, index, attempt])
            if attempt > 0:
                candidate = int(rng.integers(len(self.records)))
            record = self.records[candidate]
            path = self.path(record)
            try:
                video, label = self._load(record, path, rng)
            except BadVideoError as err:
                self.report.add(path, str(err))
                skipped.append((path, self.report.reasons[path]))
                if not self.train:  # an evaluation scores what it reads, nothing in its place
                    return {"video": None, "label": record.label, "index": index,
                            "skipped": skipped}
                continue
            sample = {"video": video, "label": label, "index": index, "skipped": skipped}
            if isinstance(video, PlannedClip):  # the rest of its transform runs on the device
                sample.update(video=video.clip, augment=video.plans)
            return sample
        tried = "; ".join(f"{path} ({reason})" for path, reason in skipped)
        raise DataError(f"sample {index}: {len(skipped)} unreadable videos in a row: {tried}; "
                        f"`vidadapt check-data {self.source}` lists every bad file")

    def _load(
        self, record: VideoRecord, path: str, rng: np.random.Generator
    ) -> tuple[torch.Tensor, int]:
        """The transformed clip(s) of one record and its (possibly swapped) label."""
        if path in self.report.reasons:  # known bad in this process: do not decode it again
            raise BadVideoError(self.report.reasons[path])
        num_frames = frame_count(record, path, self.reader, self.min_frames)
        clips = self.sampler.sample(num_frames, self.train, rng)
        frames = self.reader.read(path, [i for clip in clips for i in clip])  # [V*T, H, W, 3]
        frames = frames.permute(0, 3, 1, 2)  # [V*T, 3, H, W]
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        if self.train:
            return self.transform(frames, record.label, generator)  # [T, 3, H, W], label
        views = []
        for clip in frames.split(self.sampler.clip_len):  # each [T, 3, H, W]
            crops, label = self.transform(clip, record.label, generator)
            views.extend(crops)
        return torch.stack(views), label  # [V, T, 3, H, W]
