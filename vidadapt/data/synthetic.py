"""A synthetic video set whose classes need time: the default data of the demo and the tests.

One object moves, rotates, grows or fades over a smooth random background. Ten classes differ
only in how the object changes over time (a single frame of "moving left" looks like a frame of
"moving right": same shapes, colours and sizes, start positions spread over the frame, motion
centred on the middle frame); three "static" classes show shapes that no other class uses.
A frame-only model gets the static classes right and can at best tell a time class's group
(a half-transparent object is fading, but in or out?), roughly 30-40% accuracy against 7.7%
chance, while a model that uses time can reach 100%.

Everything is drawn from a ``numpy.random.Generator``: one seed gives the same clips on any
machine. :class:`SyntheticClips` renders clips on the fly for unit tests; :func:`make_synthetic`
writes them as H.264 mp4 files with ``train.txt``, ``val.txt`` and ``classes.txt``.
"""

from __future__ import annotations

import colorsys
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import DataError
from .annotations import Annotation, VideoRecord, write_annotation
from .transforms import Normalize, mirror_label_map

CLASSES = [
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "rotating clockwise",
    "rotating counter-clockwise",
    "growing",
    "shrinking",
    "appearing",
    "disappearing",
    "static circle",
    "static ring",
    "static cross",
]
NUM_TIME_CLASSES = 10  # the first ten classes cannot be told apart from one frame
STATIC_SHAPES = {"static circle": "circle", "static ring": "ring", "static cross": "cross"}
MOVING_SHAPES = ("square", "triangle", "bar")  # not rotation-symmetric, so rotation shows
FLIP_LABEL_MAP = mirror_label_map(CLASSES)  # a mirrored clip: left <-> right, cw <-> ccw
SPLITS = ("train", "val", "test")


@dataclass
class ObjectTrack:
    """How the object looks in every frame of a clip (pixel units, y pointing down)."""

    shape: str  # one of MOVING_SHAPES or STATIC_SHAPES' values
    colour: np.ndarray  # [3] RGB in [0, 1]
    centre: np.ndarray  # [T, 2] (x, y) of the object centre
    angle: np.ndarray  # [T] radians; an increasing angle turns clockwise on screen
    radius: np.ndarray  # [T] half-size: the shape spans about [-radius, radius]
    opacity: np.ndarray  # [T] 0 = invisible, 1 = opaque


def sample_track(class_id: int, rng: np.random.Generator, frames: int, size: int) -> ObjectTrack:
    """Random object and motion for class ``class_id``.

    Every parameter a frame shows (shape, colour, size, position, angle) is drawn alike for all
    time classes; the class only decides how one of them changes, symmetric about the middle
    frame, so the middle frame's statistics do not depend on the class.
    """
    name = CLASSES[class_id]
    shape = STATIC_SHAPES.get(name) or MOVING_SHAPES[rng.integers(len(MOVING_SHAPES))]
    colour = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1), rng.uniform(0.75, 1)))
    # Time in clip lengths, -0.5 at the first frame, 0 at the middle, 0.5 at the last.
    time = np.linspace(-0.5, 0.5, frames) if frames > 1 else np.zeros(1)
    middle = rng.uniform(0.25, 0.75, size=2) * size  # (x, y) in the middle frame
    angle0 = rng.uniform(0, 2 * np.pi)
    radius0 = rng.uniform(0.12, 0.2) * size
    travel = rng.uniform(0.25, 0.4) * size  # moving: distance covered over the clip
    turn = rng.uniform(0.5, 1.0) * np.pi  # rotating: angle covered over the clip
    growth = np.log(rng.uniform(2.0, 3.0))  # growing: log of the last / first size ratio

    directions = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    step = np.array(directions[name.split()[1]]) if name.startswith("moving") else np.zeros(2)
    spin = {"rotating clockwise": 1, "rotating counter-clockwise": -1}.get(name, 0)
    scaling = {"growing": 1, "shrinking": -1}.get(name, 0)
    fading = {"appearing": 1, "disappearing": -1}.get(name, 0)
    return ObjectTrack(
        shape=shape,
        colour=colour,
        centre=middle + travel * time[:, None] * step,  # [T, 2]
        angle=angle0 + spin * turn * time,
        radius=radius0 * np.exp(scaling * growth * time),
        opacity=np.clip(0.5 + fading * time, 0, 1) if fading else np.ones(frames),
    )


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance-like field in object units (negative inside) at local coords (u, v)."""
    abs_u, abs_v = np.abs(u), np.abs(v)
    if shape == "square":
        return np.maximum(abs_u, abs_v) - 0.8
    if shape == "bar":
        return np.maximum(abs_u - 1.0, abs_v - 0.35)
    if shape == "triangle":  # equilateral, circumradius 1, one corner pointing along +u
        sides = [(np.cos(a), np.sin(a)) for a in np.deg2rad([180.0, 60.0, -60.0])]
        return np.max([nu * u + nv * v for nu, nv in sides], axis=0) - 0.5
    radius = np.hypot(u, v)
    if shape == "circle":
        return radius - 0.85
    if shape == "ring":
        return np.abs(radius - 0.7) - 0.25
    if shape == "cross":
        horizontal = np.maximum(abs_u - 1.0, abs_v - 0.3)
        vertical = np.maximum(abs_u - 0.3, abs_v - 1.0)
        return np.minimum(horizontal, vertical)
    raise ValueError(f"unknown shape {shape!r}")


def object_coverage(track: ObjectTrack, size: int) -> np.ndarray:
    """Fraction of every pixel the object covers, ``[T, H, W]`` in [0, 1], edges antialiased."""
    pixels = np.arange(size) + 0.5  # pixel centres
    dx = pixels[None, None, :] - track.centre[:, 0, None, None]  # [T, 1, W]
    dy = pixels[None, :, None] - track.centre[:, 1, None, None]  # [T, H, 1]
    cos = np.cos(track.angle)[:, None, None]
    sin = np.sin(track.angle)[:, None, None]
    radius = track.radius[:, None, None]
    # Rotate by -angle into the object's frame: its +u axis points along `angle`.
    u = (cos * dx + sin * dy) / radius  # [T, H, W]
    v = (cos * dy - sin * dx) / radius  # [T, H, W]
    distance = _shape_distance(track.shape, u, v) * radius  # ~pixels
    return np.clip(0.5 - distance, 0.0, 1.0)


def sample_background(rng: np.random.Generator, size: int, grid: int = 4) -> np.ndarray:
    """Smooth random colours ``[H, W, 3]`` in [0.1, 0.6]: a ``grid``² lattice of random colours,
    bilinearly interpolated; darker than every object colour so the object always shows."""
    lattice = rng.uniform(0.1, 0.6, size=(grid, grid, 3))
    # Linear interpolation weights from lattice points to pixels: [size, grid].
    position = np.linspace(0, grid - 1, size)
    weights = np.maximum(0, 1 - np.abs(position[:, None] - np.arange(grid)[None, :]))
    return np.einsum("yi,xj,ijc->yxc", weights, weights, lattice)


def render_clip(
    class_id: int, rng: np.random.Generator, frames: int = 16, size: int = 64
) -> np.ndarray:
    """A clip of class ``class_id`` as uint8 ``[T, H, W, 3]`` RGB."""
    background = sample_background(rng, size)  # [H, W, 3]
    track = sample_track(class_id, rng, frames, size)
    alpha = (object_coverage(track, size) * track.opacity[:, None, None])[..., None]  # [T,H,W,1]
    video = background * (1 - alpha) + track.colour * alpha  # [T, H, W, 3]
    return (video * 255 + 0.5).astype(np.uint8)


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of ``split``: independent of every other clip, so clips
    can be rendered in any order or process."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def clip_label(index: int) -> int:
    """Labels cycle through the classes, so every prefix of a split is balanced."""
    return index % len(CLASSES)


class SyntheticClips(Dataset):
    """In-memory synthetic clips, rendered on access (the same clips ``make_synthetic`` writes,
    before compression).

    Without ``transform`` an item is ``(float clip [T, 3, H, W] normalised with the CLIP preset,
    label)``; with one, ``transform(uint8 clip [T, 3, H, W], label)``.
    """

    def __init__(
        self,
        num: int,
        frames: int = 16,
        size: int = 64,
        seed: int = 0,
        split: str = "train",
        transform=None,
    ):
        self.num, self.frames, self.size, self.seed, self.split = num, frames, size, seed, split
        self.transform = transform
        self.classes = list(CLASSES)
        self.normalize = Normalize("clip")

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int):
        if not 0 <= index < self.num:
            raise IndexError(index)
        label = clip_label(index)
        video = render_clip(label, clip_rng(self.seed, self.split, index), self.frames, self.size)
        clip = torch.from_numpy(video).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        if self.transform is None:
            return self.normalize.apply(clip), label
        return self.transform(clip, label)


def write_video(path: str | os.PathLike, video: np.ndarray, fps: int = 8, crf: int = 18) -> None:
    """Encode uint8 ``[T, H, W, 3]`` RGB as H.264 (yuv420p) mp4; H and W must be even."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        # One thread per video: make_synthetic already runs one process per core.
        stream.codec_context.thread_count = 1
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def _write_clip(job: tuple[str, int, int, int, int, int]) -> None:
    path, seed, split_index, index, frames, size = job
    split = SPLITS[split_index]
    write_video(path, render_clip(clip_label(index), clip_rng(seed, split, index), frames, size))


def make_synthetic(
    out_dir: str | os.PathLike,
    num_train: int = 520,
    num_val: int = 130,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    num_test: int = 0,
) -> dict[str, Path]:
    """Write the synthetic set to ``out_dir``: ``train/NNNNN.mp4``, ``val/NNNNN.mp4``, list files
    ``train.txt`` / ``val.txt`` (paths relative to ``out_dir``) and ``classes.txt``; with
    ``num_test`` also a test split (``test/``, ``test.txt``), for protocols that choose on
    validation what they report on test (open-set thresholds).

    Returns the paths of the list files by split name.
    """
    if size % 2 or size < 16:
        raise DataError(f"synthetic video size must be even and >= 16 (yuv420p), got {size}")
    if frames < 2:
        raise DataError(f"synthetic clips need at least 2 frames to show time, got {frames}")
    out_dir = Path(out_dir)
    jobs, annotations = [], {}
    counts = (num_train, num_val, num_test)
    for split_index, (split, num) in enumerate(zip(SPLITS, counts, strict=True)):
        if split == "test" and not num:
            continue
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        records = []
        for index in range(num):
            path = out_dir / split / f"{index:05d}.mp4"
            records.append(VideoRecord(str(path), clip_label(index)))
            jobs.append((str(path), seed, split_index, index, frames, size))
        annotations[split] = Annotation(records, list(CLASSES), "synthetic")
    with tqdm(total=len(jobs), desc="synthetic videos", unit="clip", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_write_clip, jobs, chunksize=16):
                    bar.update()
        else:
            for job in jobs:
                _write_clip(job)
                bar.update()
    # List files last: a list on disk means all its videos are there.
    lists = {split: out_dir / f"{split}.txt" for split in annotations}
    for split, annotation in annotations.items():
        write_annotation(annotation, lists[split])
    return lists
