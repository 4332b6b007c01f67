import random
import sys

import av
import numpy as np
import pytest
import torch
from videos import (
    BAD_FILES,
    frame_number,
    numbered_frame,
    write_bad_files,
    write_image,
    write_numbered_video,
    write_video,
)

from vidadapt.data.decode import (
    BadVideoError,
    DecordReader,
    InMemoryReader,
    PyAVReader,
    RawFrameReader,
)


def numbers(frames: torch.Tensor) -> list[int]:
    return [frame_number(frame) for frame in frames]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """70 frames, a keyframe every 8 frames, B-frames (some never referenced)."""
    path = tmp_path_factory.mktemp("videos") / "numbered.mp4"
    write_numbered_video(path, 70, height=24, width=40)
    return str(path)


def test_reads_exactly_the_requested_frames_in_order_with_repeats(numbered):
    reader = PyAVReader()
    assert reader.num_frames(numbered) == 70
    frames = reader.read(numbered, [69, 0, 0, 33, 8, 7, 33])
    assert frames.dtype == torch.uint8 and frames.shape == (7, 24, 40, 3)
    assert numbers(frames) == [69, 0, 0, 33, 8, 7, 33]
    rng = random.Random(0)
    for _ in range(30):  # sparse, dense, across and within GOPs
        indices = sorted(rng.sample(range(70), rng.randint(1, 12)))
        assert numbers(reader.read(numbered, indices)) == indices


def test_every_frame_decodes_including_unreferenced_b_frames(numbered):
    with av.open(numbered) as container:  # the file does have frames nothing refers to
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        assert sum(1 for _ in container.decode(stream)) < 70
    assert numbers(PyAVReader().read(numbered, range(70))) == list(range(70))
    assert numbers(PyAVReader(threads=0).read(numbered, range(69, -1, -3))) == list(
        range(69, -1, -3)
    )


@pytest.mark.parametrize(
    "name, codec", [("vp9.webm", "libvpx-vp9"), ("mpeg4.avi", "mpeg4"), ("mpeg2.mpg", "mpeg2video")]
)
def test_frames_equal_decoding_every_frame_in_other_containers(tmp_path, name, codec):
    path = str(tmp_path / name)
    write_numbered_video(path, 40, codec=codec, options={}, gop=10)
    with av.open(path) as container:
        every_frame = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    reader = PyAVReader()
    assert reader.num_frames(path) == len(every_frame) == 40
    rng = random.Random(0)
    for _ in range(10):
        indices = rng.sample(range(40), 5)
        assert np.array_equal(reader.read(path, indices).numpy(), every_frame[indices])


def test_reader_travels_to_worker_processes_without_its_open_file(numbered):
    import pickle

    reader = PyAVReader(short_side=12)
    reader.read(numbered, [3])  # leaves the file open (an open container does not pickle)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.short_side == 12
    assert numbers(copy.read(numbered, [5])) == [5]
    reader.close()
    assert numbers(reader.read(numbered, [6])) == [6]


def test_frames_are_counted_from_packets_when_the_header_has_no_count(tmp_path):
    path = tmp_path / "no_count.mkv"  # Matroska stores no frame count
    write_numbered_video(path, 21)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    reader = PyAVReader()
    assert reader.num_frames(str(path)) == 21
    assert numbers(reader.read(str(path), [20, 10, 0])) == [20, 10, 0]


def test_variable_frame_rate_frames_are_indexed_in_display_order(tmp_path):
    path = tmp_path / "vfr.mp4"
    pts = [0, 1, 2, 7, 8, 30, 31, 32, 33, 60, 61, 90, 91, 92, 150, 151, 152, 153, 154, 200]
    write_video(path, [numbered_frame(i) for i in range(len(pts))], pts=pts, gop=4)
    reader = PyAVReader()
    assert reader.num_frames(str(path)) == 20
    assert numbers(reader.read(str(path), range(20))) == list(range(20))
    assert numbers(reader.read(str(path), [19, 14, 3, 9])) == [19, 14, 3, 9]


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotation_metadata_turns_frames_upright(tmp_path, degrees):
    image = np.zeros((32, 48, 3), np.uint8)  # [H, W, 3]: a white block in the top-left corner
    image[:16, :16] = 255
    path = tmp_path / f"rotated{degrees}.mp4"
    write_video(path, [image] * 3, rotation=degrees)
    frames = PyAVReader().read(str(path), [1]).numpy()
    expected = np.rot90(image, k=degrees // 90)
    assert frames.shape[1:] == expected.shape
    assert np.abs(frames[0].astype(int) - expected).mean() < 4


def test_grayscale_stream_becomes_rgb(tmp_path):
    levels = [0, 60, 200]
    path = tmp_path / "gray.mkv"
    frames = [np.full((16, 24, 3), level, np.uint8) for level in levels]
    write_video(path, frames, codec="ffv1", pix_fmt="gray")
    with av.open(str(path)) as container:
        assert container.streams.video[0].format.name == "gray"
    decoded = PyAVReader().read(str(path), [2, 0, 1]).numpy()
    assert decoded.shape == (3, 16, 24, 3)
    assert [int(v) for v in decoded[:, 5, 5, :].min(axis=1)] == [200, 0, 60]
    assert np.array_equal(decoded.min(axis=(1, 2, 3)), decoded.max(axis=(1, 2, 3)))


def test_odd_size_and_rgb_stream_decode_exactly(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (17, 33, 3), dtype=np.uint8) for _ in range(5)]
    path = tmp_path / "odd.mov"
    write_video(path, frames, codec="png", pix_fmt="rgb24")
    decoded = PyAVReader().read(str(path), [4, 1])
    assert torch.equal(decoded, torch.from_numpy(np.stack([frames[4], frames[1]])))


def test_short_side_resize_during_decoding(numbered):
    frames = PyAVReader(short_side=12).read(numbered, [0, 45])
    assert frames.shape == (2, 12, 20, 3)  # 24x40 -> 12x20
    assert numbers(frames) == [0, 45]


def test_decord_matches_pyav(numbered):
    pytest.importorskip("decord")
    indices = [0, 5, 17, 40, 41, 69, 5]
    ours = PyAVReader().read(numbered, indices)
    theirs = DecordReader().read(numbered, indices)
    assert DecordReader().num_frames(numbered) == 70
    assert theirs.shape == ours.shape and theirs.dtype == torch.uint8
    assert (theirs.int() - ours.int()).abs().max() <= 2  # same frames, converters may round
    assert numbers(theirs) == indices
    assert DecordReader(short_side=12).read(numbered, [3]).shape == (1, 12, 20, 3)


def test_decord_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` fail
    with pytest.raises(ImportError, match="pip install 'vidadapt\\[decord\\]'"):
        DecordReader()


@pytest.mark.parametrize("extension", ["png", "jpg"])
def test_raw_frame_folder(tmp_path, extension):
    for i in range(6):
        write_image(tmp_path / f"img_{i + 1:05d}.{extension}", numbered_frame(i, 16, 24))
    reader = RawFrameReader(template="img_{:05d}." + extension)
    assert reader.num_frames(str(tmp_path)) == 6
    frames = reader.read(str(tmp_path), [5, 0, 0, 3])
    assert frames.shape == (4, 16, 24, 3)
    assert numbers(frames) == [5, 0, 0, 3]
    if extension == "png":
        assert torch.equal(frames[0], torch.from_numpy(numbered_frame(5, 16, 24)))
    assert RawFrameReader(template="img_{:05d}." + extension, start_index=0).num_frames(
        str(tmp_path)
    ) == 0


def test_raw_frame_folder_errors_name_the_frame_file(tmp_path):
    write_image(tmp_path / "img_00001.jpg", numbered_frame(0))
    (tmp_path / "img_00002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    reader = RawFrameReader()
    with pytest.raises(BadVideoError, match="frame file img_00003.jpg: file not found"):
        reader.read(str(tmp_path), [2])
    with pytest.raises(BadVideoError, match="frame file img_00002.jpg"):
        reader.read(str(tmp_path), [0, 1])
    with pytest.raises(BadVideoError, match="frame folder not found"):
        reader.num_frames(str(tmp_path / "missing"))


@pytest.mark.parametrize("name", [n for n in BAD_FILES if n != "too_few_frames.mp4"])
def test_broken_files_raise_bad_video_error_with_the_reason(tmp_path, name):
    reasons = write_bad_files(tmp_path)
    path = str(tmp_path / name)
    reader = PyAVReader()
    with pytest.raises(BadVideoError, match=reasons[name].replace("(", r"\(").replace(")", r"\)")):
        reader.read(path, [0, reader.num_frames(path) - 1])


def test_missing_file_and_out_of_range_frames(numbered, tmp_path):
    with pytest.raises(BadVideoError, match="file not found"):
        PyAVReader().num_frames(str(tmp_path / "missing.mp4"))
    with pytest.raises(BadVideoError, match="frame 70 requested, the video has 70 frames"):
        PyAVReader().read(numbered, [0, 70])


def test_in_memory_reader_decodes_each_video_once(tmp_path):
    path = str(tmp_path / "counted.mp4")
    write_numbered_video(path, 12)
    calls = []

    class Counting(PyAVReader):
        def read(self, path, indices):
            calls.append(list(indices))
            return super().read(path, indices)

    reader = InMemoryReader(Counting())
    assert reader.num_frames(path) == 12
    first = reader.read(path, [0, 5, 11, 5])
    again = reader.read(path, [3, 3])
    assert calls == [list(range(12))]  # one whole decode, then memory
    assert [frame_number(f) for f in first] == [0, 5, 11, 5]
    assert torch.equal(first, PyAVReader().read(path, [0, 5, 11, 5]))
    assert torch.equal(again, PyAVReader().read(path, [3, 3]))
    with pytest.raises(BadVideoError):
        reader.read(path, [12])
