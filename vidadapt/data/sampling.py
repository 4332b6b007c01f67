"""Which frames of a video make a clip (mmaction2 conventions).

- ``DenseSampler``: ``clip_len`` frames every ``interval`` frames (Kinetics recipes, "8x8",
  "16x4"). Training: one random start per clip; test: clip starts evenly spread over the video.
- ``UniformSampler``: the video cut into ``clip_len`` equal segments, one frame from each
  (TSN style; Something-Something recipes). Training: a random frame of each segment; test: the
  segment centre.

``sample(num_frames, train, rng)`` returns ``num_clips`` lists of ``clip_len`` frame indices.
Randomness comes only from ``rng`` (``random.Random`` or a numpy ``Generator``; only its
``random()`` is used), so the dataset makes sampling reproducible by seeding it per
(seed, epoch, sample).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Rng = random.Random | np.random.Generator


class FrameSampler(Protocol):
    clip_len: int  # frames per clip
    num_clips: int  # clips per video

    def sample(self, num_frames: int, train: bool, rng: Rng) -> list[list[int]]:
        """``num_clips`` lists of ``clip_len`` frame indices into a video of ``num_frames``."""
        ...


def _check_num_frames(num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"cannot sample frames from a video of {num_frames} frames")


@dataclass(frozen=True)
class DenseSampler:
    """``clip_len`` frames, ``interval`` frames apart, from each of ``num_clips`` clips.

    As in mmaction2's ``SampleFrames``, a clip is taken to occupy ``clip_len * interval``
    frames when placing it. In training, the video minus one clip length is cut into
    ``num_clips`` equal spans and each clip starts at a random frame of its span; at test each
    clip starts at the centre of its span. Videos shorter than a clip start at frame 0 and
    ``short_video`` says how indices past the end are filled: "loop" wraps to the start,
    "repeat" repeats the last frame.
    """

    clip_len: int  # frames per clip
    interval: int = 1  # distance between consecutive frames of a clip
    num_clips: int = 1  # clips per video
    short_video: Literal["loop", "repeat"] = "loop"  # fill for clips running past the end

    def __post_init__(self):
        if self.short_video not in ("loop", "repeat"):
            raise ValueError(f"short_video must be 'loop' or 'repeat', not {self.short_video!r}")

    def sample(self, num_frames: int, train: bool, rng: Rng) -> list[list[int]]:
        _check_num_frames(num_frames)
        span = (num_frames - self.clip_len * self.interval + 1) / self.num_clips
        if span <= 0:  # shorter than one clip: every clip starts at the first frame
            starts = [0] * self.num_clips
        elif train:
            starts = [int(k * span + rng.random() * span) for k in range(self.num_clips)]
        else:
            starts = [int(k * span + span / 2) for k in range(self.num_clips)]
        clips = []
        for start in starts:
            clip = [start + j * self.interval for j in range(self.clip_len)]
            if self.short_video == "loop":
                clip = [i % num_frames for i in clip]
            else:
                clip = [min(i, num_frames - 1) for i in clip]
            clips.append(clip)
        return clips


@dataclass(frozen=True)
class UniformSampler:
    """One frame from each of ``clip_len`` equal segments of the whole video.

    Training: a uniformly random frame of each segment, drawn anew for every clip. Test: clip
    ``k`` of ``num_clips`` takes the frame at fraction ``(k + 1) / (num_clips + 1)`` of each
    segment, which is the segment centre for a single clip. Videos shorter than ``clip_len``
    give some frames more than once.
    """

    clip_len: int  # frames per clip (= segments)
    num_clips: int = 1  # clips per video

    def sample(self, num_frames: int, train: bool, rng: Rng) -> list[list[int]]:
        _check_num_frames(num_frames)
        segment = num_frames / self.clip_len
        clips = []
        for k in range(self.num_clips):
            offsets = [rng.random() if train else (k + 1) / (self.num_clips + 1)
                       for _ in range(self.clip_len)]
            # min(): float rounding must not push the last segment past the end
            clips.append([min(int((i + offset) * segment), num_frames - 1)
                          for i, offset in enumerate(offsets)])
        return clips
