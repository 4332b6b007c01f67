"""Self-supervised pretext tasks: labels a clip carries about itself (``vidadapt pretrain``).

A pretext task turns unlabeled clips into a classification the model can only solve by looking
at time, so the method's parts (adapters, prompts, LoRA) learn temporal features before any
label is seen (``ssl.objective``):

* ``order``: the clip's frames in order, or shuffled (a random permutation other than the
  identity): is it in order? (temporal order verification);
* ``arrow``: forwards or backwards: which? (the arrow of time);
* ``speed``: played at 1x, 2x, 4x ... ``max_speed`` (every s-th frame of a clip sampled
  ``max_speed`` times as long and as dense, so ``max_speed`` is the recipe's own rate): how
  fast? (playback rate).

:class:`PretextClips` wraps a training or validation dataset: its items keep their clip (after
the dataset's own transform) with the pretext's change and label; the classes are the
pretext's answers. What is drawn is a function of (seed, epoch, index), as the dataset's own
sampling is, so runs and resumes are exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .data import derive_seed

PRETEXT_PREFIX = "pretext: "  # marks a pretext's class names in checkpoints


def pretext_classes(objective: str, max_speed: int = 4) -> list[str]:
    """The answers of a pretext task, as class names (one placeholder for the losses on
    features, whose checkpoints still mark themselves as self-supervised)."""
    if objective == "order":
        answers = ["in order", "shuffled"]
    elif objective == "arrow":
        answers = ["forwards", "backwards"]
    elif objective == "speed":  # max_speed: a power of 2 (SSLConfig checks it)
        answers = [f"{2 ** k}x" for k in range(max_speed.bit_length())]
    elif objective in ("masked", "distill"):  # a loss on features: the head answers nothing
        answers = [f"{objective} (no classes)"]
    else:
        raise ConfigError(f"unknown ssl.objective {objective!r}; one of order, arrow, speed, "
                          "masked, distill")
    return [PRETEXT_PREFIX + answer for answer in answers]


def is_pretext(classes: list[str] | None) -> bool:
    return bool(classes) and all(name.startswith(PRETEXT_PREFIX) for name in classes)


class PretextClips(Dataset):
    """``dataset``'s clips relabelled by a pretext task. For ``speed`` the dataset's clips must
    be ``max_speed`` times as long as the model's (``frames``)."""

    def __init__(self, dataset: Dataset, objective: str, frames: int, seed: int,
                 max_speed: int = 4) -> None:
        self.dataset, self.objective, self.frames = dataset, objective, frames
        self.seed, self.max_speed = seed, max_speed
        self.classes = pretext_classes(objective, max_speed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def report(self):  # the wrapped dataset's skipped files
        return getattr(self.dataset, "report", None)

    def skipped(self) -> dict[str, str]:
        return self.dataset.skipped()  # type: ignore[attr-defined]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        if sample["video"] is None:  # an unreadable evaluation video stays left out
            return sample
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, index, "pretext"))
        answer = int(rng.integers(len(self.classes)))
        sample["video"] = self.change(sample["video"], answer, rng)
        sample["label"] = answer
        return sample

    def change(self, video: torch.Tensor, answer: int, rng: np.random.Generator) -> torch.Tensor:
        """The clip ``[T', C, H, W]`` (or views ``[V, T', C, H, W]``) as ``answer`` says."""
        axis = video.ndim - 4  # the frames' axis
        T = video.shape[axis]
        if self.objective == "speed":  # every step-th frame of the long clip, from a random
            step = 2 ** answer  # start that leaves room for all the frames
            start = int(rng.integers(T - (self.frames - 1) * step))
            index = torch.arange(self.frames) * step + start
        elif answer == 0:  # in order, forwards
            return video
        elif self.objective == "arrow":
            index = torch.arange(T - 1, -1, -1)
        else:  # shuffled: any permutation but the identity
            order = np.arange(T)
            while (order == np.arange(T)).all():
                order = rng.permutation(T)
            index = torch.from_numpy(order)
        return video.index_select(axis, index)
