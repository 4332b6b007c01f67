"""The synthetic video set: determinism, balance, files on disk, and that the time classes differ
only in time (a single middle frame tells nothing, the motion tells everything)."""

import av
import numpy as np
import pytest
import torch

from vidadapt.cli import main
from vidadapt.data.annotations import load_annotation
from vidadapt.data.synthetic import (
    CLASSES,
    FLIP_LABEL_MAP,
    MOVING_SHAPES,
    NUM_TIME_CLASSES,
    STATIC_SHAPES,
    ObjectTrack,
    SyntheticClips,
    clip_rng,
    make_synthetic,
    object_coverage,
    render_clip,
    sample_track,
)
from vidadapt.data.transforms import NORMALIZATION
from vidadapt.errors import DataError


def decode(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def centroid_x(track, size):
    """x of the drawn object's centre of mass in every frame, from its pixel coverage."""
    coverage = object_coverage(track, size)  # [T, H, W]
    xs = np.arange(size) + 0.5
    return (coverage.sum(1) * xs).sum(1) / coverage.sum((1, 2))


def test_classes_and_flip_map():
    assert len(CLASSES) == 13 and NUM_TIME_CLASSES == 10
    assert CLASSES[:2] == ["moving left", "moving right"]
    assert FLIP_LABEL_MAP == {0: 1, 1: 0, 4: 5, 5: 4}
    assert not set(STATIC_SHAPES.values()) & set(MOVING_SHAPES)


def test_render_is_deterministic_by_seed():
    clip = render_clip(4, clip_rng(0, "train", 7), frames=6, size=32)
    assert clip.shape == (6, 32, 32, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, render_clip(4, clip_rng(0, "train", 7), frames=6, size=32))
    assert not np.array_equal(clip, render_clip(4, clip_rng(1, "train", 7), frames=6, size=32))
    assert not np.array_equal(clip, render_clip(4, clip_rng(0, "val", 7), frames=6, size=32))


def test_in_memory_dataset_is_balanced_and_normalised():
    data = SyntheticClips(26, frames=4, size=32, seed=3)
    labels = [data[i][1] for i in range(len(data))]
    assert sorted(labels) == sorted(list(range(13)) * 2)
    clip, label = data[5]
    video = render_clip(label, clip_rng(3, "train", 5), 4, 32)
    mean, std = NORMALIZATION["clip"]
    expected = torch.from_numpy(video).permute(0, 3, 1, 2) / 255 - torch.tensor(mean).view(3, 1, 1)
    expected = expected / torch.tensor(std).view(3, 1, 1)
    assert clip.shape == (4, 3, 32, 32) and torch.allclose(clip, expected, atol=1e-6)
    raw = SyntheticClips(2, frames=4, size=32, seed=3, transform=lambda c, y: (c, y + 100))
    assert raw[1][0].dtype == torch.uint8 and raw[1][1] == 101
    with pytest.raises(IndexError):
        data[26]


def test_static_classes_do_not_change():
    for class_id in range(NUM_TIME_CLASSES, len(CLASSES)):
        clip = render_clip(class_id, clip_rng(0, "train", class_id), frames=5, size=32)
        assert all(np.array_equal(frame, clip[0]) for frame in clip)


@pytest.mark.parametrize("seed", range(5))
def test_middle_frame_is_the_same_whatever_the_time_class(seed):
    """All draws are shared by the time classes; only the change around the middle differs.
    So with one seed, their middle frames are identical (the fading pair shows the object at
    half opacity, identically for both) and the first frames differ."""
    clips = [render_clip(c, clip_rng(seed, "train", 0), 5, 32) for c in range(NUM_TIME_CLASSES)]
    for clip in clips[1:8]:
        assert np.array_equal(clip[2], clips[0][2])
        assert not np.array_equal(clip[0], clips[0][0])
    assert np.array_equal(clips[8][2], clips[9][2])
    assert not np.array_equal(clips[8][0], clips[9][0])


def test_left_and_right_differ_only_in_time():
    """Statistics over independent clips of "moving left" and "moving right"."""
    size, frames, n = 32, 5, 200
    first, middle, motion, colour = {}, {}, {}, {}
    for class_id in (0, 1):  # moving left, moving right
        rngs = [clip_rng(class_id, "train", i) for i in range(n)]  # other clips per class
        tracks = [sample_track(class_id, rng, frames, size) for rng in rngs]
        xs = np.stack([centroid_x(track, size) for track in tracks])  # [n, T]
        first[class_id], middle[class_id] = xs[:, 0], xs[:, frames // 2]
        motion[class_id] = xs[:, -1] - xs[:, 0]
        rngs = [clip_rng(class_id, "val", i) for i in range(n)]
        clips = [render_clip(class_id, rng, frames, size)[frames // 2] for rng in rngs]
        colour[class_id] = np.stack([clip.mean((0, 1)) for clip in clips])  # [n, 3]
    # One frame: centroid histograms and mean colours agree within sampling noise ...
    bins = np.linspace(0, size, 9)
    left_hist = np.histogram(middle[0], bins)[0] / n
    right_hist = np.histogram(middle[1], bins)[0] / n
    assert np.abs(left_hist - right_hist).max() < 0.08
    assert np.abs(colour[0].mean(0) - colour[1].mean(0)).max() < 4  # of 0..255
    # ... while the first frames are already apart and the motion separates every clip.
    assert first[1].mean() < first[0].mean() - 0.2 * size
    assert motion[0].max() < -0.2 * size and motion[1].min() > 0.2 * size


def test_clockwise_is_clockwise_on_screen():
    # A horizontal bar turned by a small positive angle slopes down to the right (y points
    # down), which is a clockwise turn as seen on screen.
    track = ObjectTrack(
        shape="bar",
        colour=np.ones(3),
        centre=np.array([[16.0, 16.0]]),
        angle=np.array([0.3]),
        radius=np.array([10.0]),
        opacity=np.ones(1),
    )
    coverage = object_coverage(track, 32)[0]
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    weights = coverage / coverage.sum()
    covariance = (weights * (xs - 16) * (ys - 16)).sum()
    assert covariance > 1.0
    assert np.all(np.diff(sample_track(4, clip_rng(0, "train", 0), 5, 32).angle) > 0)
    assert np.all(np.diff(sample_track(5, clip_rng(0, "train", 0), 5, 32).angle) < 0)


def test_make_synthetic_writes_readable_deterministic_videos(tmp_path):
    a = make_synthetic(tmp_path / "a", 13, 4, frames=4, size=32, seed=1, workers=2, progress=False)
    b = make_synthetic(tmp_path / "b", 13, 4, frames=4, size=32, seed=1, workers=1, progress=False)
    c = make_synthetic(tmp_path / "c", 13, 4, frames=4, size=32, seed=2, workers=1, progress=False)
    for name in ("train.txt", "val.txt", "classes.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.txt").read_text().splitlines()[:2] == [
        "train/00000.mp4 0",
        "train/00001.mp4 1",
    ]
    train = load_annotation(a["train"])
    assert train.classes == CLASSES and len(train.records) == 13
    assert [r.label for r in train.records] == list(range(13))
    val = load_annotation(b["val"])
    assert [r.path for r in val.records] == [
        str(tmp_path / "b" / f"val/0000{i}.mp4") for i in range(4)
    ]

    video = decode(tmp_path / "a" / "train" / "00004.mp4")
    assert video.shape == (4, 32, 32, 3)
    assert np.array_equal(video, decode(tmp_path / "b" / "train" / "00004.mp4"))
    assert not np.array_equal(video, decode(tmp_path / "c" / "train" / "00004.mp4"))
    # H.264 at crf 18 keeps the rendered clip close (colour edges lose most to yuv420p).
    rendered = render_clip(4, clip_rng(1, "train", 4), 4, 32)
    assert np.abs(video.astype(int) - rendered).mean() < 6
    assert len(c) == 2


def test_make_synthetic_rejects_odd_sizes_and_cli_works(tmp_path, capsys):
    with pytest.raises(DataError, match="must be even"):
        make_synthetic(tmp_path, 1, 1, size=33)
    with pytest.raises(DataError, match="at least 2 frames"):
        make_synthetic(tmp_path, 1, 1, frames=1)
    out = tmp_path / "cli"
    args = ["make-synthetic", "--out", str(out), "--num-train", "3", "--num-val", "2"]
    assert main(args + ["--frames", "3", "--size", "16", "--workers", "1"]) == 0
    assert "wrote 3 + 2 videos of 13 classes" in capsys.readouterr().out
    assert len((out / "train.txt").read_text().splitlines()) == 3
    assert decode(out / "val" / "00001.mp4").shape == (3, 16, 16, 3)
