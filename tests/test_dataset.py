import logging
import re

import pytest
import torch
from torch.utils.data import DataLoader
from videos import (
    TOO_FEW,
    frame_number,
    numbered_frame,
    write_bad_files,
    write_image,
    write_numbered_video,
)

from vidadapt.cli import main
from vidadapt.data.annotations import Annotation, VideoRecord
from vidadapt.data.dataset import SkipReport, VideoDataset, collate_samples
from vidadapt.data.decode import RawFrameReader
from vidadapt.data.sampling import DenseSampler, UniformSampler
from vidadapt.data.transforms import TransformConfig, build_transform
from vidadapt.engine.data import EpochKeyed, EpochStream, ShardedSampler, make_loader
from vidadapt.engine.logs import LoggedProgress
from vidadapt.errors import DataError


def keep(clip, label, generator):
    """Transform that keeps the frames ([T, 3, H, W]) so tests can read their numbers."""
    return clip.float(), label


def keep_views(clip, label, generator):
    return [clip.float()], label


def clip_numbers(video: torch.Tensor) -> list[int]:
    return [frame_number(frame.permute(1, 2, 0)) for frame in video]  # frame: [3, H, W]


@pytest.fixture(scope="module")
def good_videos(tmp_path_factory):
    """Three numbered videos of 40, 50 and 60 frames, labels 0, 1, 2."""
    folder = tmp_path_factory.mktemp("good")
    records = []
    for label, length in enumerate((40, 50, 60)):
        path = folder / f"video{label}.mp4"
        write_numbered_video(path, length, height=16, width=24, gop=12)
        records.append(VideoRecord(str(path), label))
    return records


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    reasons = write_bad_files(folder)
    return {str(folder / name): reason for name, reason in reasons.items()}


def annotation(records, classes=("a", "b", "c")):
    return Annotation(list(records), list(classes), "test.txt")


def test_training_sample_is_deterministic_per_seed_epoch_and_index(good_videos):
    dataset = VideoDataset(annotation(good_videos), DenseSampler(4, interval=3), keep, seed=7)
    sample = dataset[2]
    assert sample["video"].shape == (4, 3, 16, 24)
    assert sample["label"] == 2 and sample["index"] == 2 and sample["skipped"] == []
    frames = clip_numbers(sample["video"])
    assert frames == list(range(frames[0], frames[0] + 12, 3)) and frames[-1] < 60
    assert torch.equal(dataset[2]["video"], sample["video"])
    epochs = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        epochs.add(clip_numbers(dataset[2]["video"])[0])
    assert len(epochs) > 1
    other_seed = VideoDataset(annotation(good_videos), DenseSampler(4, interval=3), keep, seed=8)
    assert [clip_numbers(other_seed[i]["video"]) for i in range(3)] != [
        clip_numbers(dataset[i]["video"]) for i in range(3)
    ]


def test_test_sample_stacks_clips_times_crops(good_videos):
    config = TransformConfig(size=16, short_side=16, test_crops=3)
    dataset = VideoDataset(
        annotation(good_videos),
        UniformSampler(4, num_clips=2),
        build_transform(config, train=False),
        train=False,
    )
    sample = dataset[0]
    assert sample["video"].shape == (6, 4, 3, 16, 16)  # 2 clips x 3 crops
    assert sample["video"].dtype == torch.float32
    frames = VideoDataset(
        annotation(good_videos), UniformSampler(4, num_clips=2), keep_views, train=False
    )[0]["video"]
    assert frames.shape == (2, 4, 3, 16, 24)
    # 40 frames, 4 segments of 10, clips at 1/3 and 2/3 of each segment
    assert [clip_numbers(clip) for clip in frames] == [[3, 13, 23, 33], [6, 16, 26, 36]]


def test_training_transform_with_random_crops_gives_model_input(good_videos):
    config = TransformConfig(size=16, short_side=16)
    dataset = VideoDataset(annotation(good_videos), UniformSampler(8),
                           build_transform(config, train=True))
    assert dataset[1]["video"].shape == (8, 3, 16, 16)
    assert dataset.classes == ["a", "b", "c"]


def test_label_comes_from_the_transform(good_videos):
    def swap(clip, label, generator):
        return clip.float(), {0: 1, 1: 0}.get(label, label)

    dataset = VideoDataset(annotation(good_videos), DenseSampler(2), swap)
    assert [dataset[i]["label"] for i in range(3)] == [1, 0, 2]


def test_bad_files_are_skipped_logged_once_and_reported(good_videos, bad_videos, caplog):
    records = good_videos + [VideoRecord(path, 0) for path in bad_videos]
    dataset = VideoDataset(annotation(records), DenseSampler(4), keep, min_frames=TOO_FEW)
    caplog.set_level(logging.WARNING, logger="vidadapt.data.dataset")
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            sample = dataset[i]
            assert sample["video"].shape == (4, 3, 16, 24)
            assert sample["index"] == i
            if i >= 3:  # a bad record: replaced by a good one, which says why
                assert records[i].path in dict(sample["skipped"])
    skipped = dataset.skipped()
    assert sorted(skipped) == sorted(bad_videos)
    for path, reason in bad_videos.items():
        assert reason in skipped[path]
    assert len(caplog.records) == len(bad_videos)  # once per file, not per epoch
    assert all("skipping unreadable video" in r.getMessage() for r in caplog.records)
    assert dataset.report.summary().splitlines()[0] == "skipped 6 unreadable file(s)"


def test_replacement_is_deterministic(good_videos, bad_videos):
    records = [VideoRecord(path, 0) for path in bad_videos] + good_videos

    def sample(dataset, i):
        s = dataset[i]
        return s["label"], clip_numbers(s["video"])

    first = VideoDataset(annotation(records), DenseSampler(4), keep, min_frames=TOO_FEW, seed=3)
    second = VideoDataset(annotation(records), DenseSampler(4), keep, min_frames=TOO_FEW, seed=3)
    assert [sample(first, i) for i in range(6)] == [sample(second, i) for i in range(6)]


def test_skips_in_dataloader_workers_reach_the_main_process(good_videos, bad_videos, caplog):
    records = good_videos + [VideoRecord(path, 0) for path in bad_videos]
    dataset = VideoDataset(annotation(records), DenseSampler(4), keep, min_frames=TOO_FEW)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_samples)
    caplog.set_level(logging.WARNING, logger="vidadapt.data.dataset")
    indices = []
    for batch in loader:
        assert batch["video"].shape == (len(batch["index"]), 4, 3, 16, 24)
        dataset.report.update(batch)
        indices += batch["index"].tolist()
    assert indices == list(range(9))
    assert sorted(dataset.skipped()) == sorted(bad_videos)
    assert len(caplog.records) == len(bad_videos)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_at_test_time_bad_files_are_left_out_not_replaced(good_videos, bad_videos, num_workers):
    records = good_videos + [VideoRecord(path, 0) for path in bad_videos]
    dataset = VideoDataset(annotation(records), DenseSampler(4), keep, train=False,
                           min_frames=TOO_FEW)
    assert dataset[3]["video"] is None and dataset[3]["index"] == 3
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers,
                        collate_fn=collate_samples)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2], [], []]
    assert batches[1]["video"] is None
    assert sorted(p for b in batches for p, _ in b["skipped"]) == sorted(bad_videos)


def test_only_bad_files_raise_data_error_naming_them(bad_videos):
    records = [VideoRecord(path, 0) for path in bad_videos]
    dataset = VideoDataset(annotation(records), DenseSampler(4), keep, max_retries=2,
                           min_frames=TOO_FEW)
    with pytest.raises(DataError, match=r"sample 0: 3 unreadable videos in a row: .*zero_bytes"):
        dataset[0]


def test_skip_report_merges_and_summarises():
    report = SkipReport()
    report.update({"skipped": [("b.mp4", "no video stream"), ("a.mp4", "empty file")]})
    report.update({"skipped": [("b.mp4", "no video stream")]})
    assert len(report) == 2
    assert report.summary() == (
        "skipped 2 unreadable file(s)\n  a.mp4: empty file\n  b.mp4: no video stream"
    )


def test_raw_frame_records_use_the_frame_reader(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        write_image(folder / f"img_{i + 1:05d}.jpg", numbered_frame(i, 8, 8))
    missing = str(tmp_path / "missing")
    records = [VideoRecord(str(folder), 0, num_frames=12), VideoRecord(missing, 0, num_frames=12)]
    dataset = VideoDataset(annotation(records, ["x"]), UniformSampler(4), keep_views, train=False)
    assert isinstance(dataset.reader, RawFrameReader)
    video = dataset[0]["video"]  # [1, 4, 3, 8, 8]
    assert clip_numbers(video[0]) == [1, 4, 7, 10]  # centres of 3-frame segments
    skipped = dict(dataset[1]["skipped"])  # the missing folder (maybe drawn again as substitute)
    assert list(skipped) == [missing]
    assert re.fullmatch(r"frame file img_000\d\d.jpg: file not found", skipped[missing])


def test_training_needs_one_clip_and_some_records(good_videos):
    with pytest.raises(DataError, match="num_clips=2"):
        VideoDataset(annotation(good_videos), DenseSampler(4, num_clips=2), keep)
    with pytest.raises(DataError, match="lists no videos"):
        VideoDataset(annotation([]), DenseSampler(4), keep)


@pytest.fixture
def list_with_bad_files(tmp_path, good_videos, bad_videos):
    """A video list (mmaction2 format) of three good and six bad videos, relative paths."""
    (tmp_path / "videos").mkdir()
    lines = []
    for i, source in enumerate([r.path for r in good_videos] + list(bad_videos)):
        name = f"videos/{i}_{source.rsplit('/', 1)[-1]}"
        (tmp_path / name).write_bytes(open(source, "rb").read())
        lines.append(f"{name} {i % 3}\n")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    (tmp_path / "train.txt").write_text("".join(lines))
    return tmp_path / "train.txt"


@pytest.mark.parametrize("workers", [0, 2])
def test_check_data_lists_every_bad_file_and_exits_1(list_with_bad_files, bad_videos, capsys,
                                                     workers):
    code = main(["check-data", str(list_with_bad_files), "--workers", str(workers),
                 "--min-frames", str(TOO_FEW)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[-1] == "checked 9 files: 6 bad"
    reported = dict(line.split(": ", 1) for line in lines[:-1])
    folder = list_with_bad_files.parent / "videos"
    expected = {str(folder / f"{i}_{name.rsplit('/', 1)[-1]}"): reason
                for i, (name, reason) in enumerate(bad_videos.items(), start=3)}
    assert sorted(reported) == sorted(expected)
    for path, reason in expected.items():
        assert reason in reported[path]


def test_check_data_write_clean_keeps_the_good_lines(list_with_bad_files, capsys):
    out = list_with_bad_files.parent / "train_clean.txt"
    code = main(["check-data", str(list_with_bad_files), "--workers", "0", "--min-frames",
                 str(TOO_FEW), "--write-clean", str(out)])
    assert code == 1
    assert out.read_text() == (
        "videos/0_video0.mp4 0\nvideos/1_video1.mp4 1\nvideos/2_video2.mp4 2\n"
    )
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote 3 good records to {out}"
    capsys.readouterr()
    assert main(["check-data", str(out), "--workers", "0"]) == 0
    assert capsys.readouterr().out == "checked 3 files: 0 bad\n"


def test_check_data_bad_annotation_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["check-data", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err == f"vidadapt check-data: error: annotation file {tmp_path / 'missing.txt'} " \
                  "does not exist\n"
    broken = tmp_path / "broken.txt"
    broken.write_text("a.mp4 0\nb.mp4\n")
    assert main(["check-data", str(broken), "--format", "list"]) == 2
    assert "broken.txt:2: expected '<path> <label>'" in capsys.readouterr().err


def test_logged_progress_gives_count_rate_and_time_left(vidadapt_log):
    with LoggedProgress(4, "checking videos", "video", every=0.0) as bar:
        bar.update(2)
        bar.update(2)
    assert re.fullmatch(r"checking videos: 2/4 video \(50%\), [\d.]+ video/s, \d+:\d\d left",
                        vidadapt_log[0])
    assert vidadapt_log[1].startswith("checking videos: 4/4 video (100%)")
    assert vidadapt_log[1].endswith("0:00 left")


def test_streamed_epochs_sample_the_same_with_and_without_workers(good_videos):
    """One loader over several epochs (the trainer's): each worker learns the epoch of the
    item it reads, so the clips are those of a plain loop, however the workers interleave."""
    dataset = VideoDataset(annotation(good_videos * 4), DenseSampler(4, interval=3), keep,
                           seed=3)

    def clips(num_workers):
        sampler = ShardedSampler(len(dataset), shuffle=True, seed=1)
        loader = make_loader(EpochKeyed(dataset), EpochStream(sampler, 0, 4), 2, num_workers,
                             seed=1)
        return [clip_numbers(v) for batch in loader for v in batch["video"]]

    assert clips(3) == clips(0)
