"""``data.reader: torchcodec``: TorchCodecReader's frames and indices against PyAVReader's (where
torchcodec loads), and its glue (what it asks the decoder for, how it orders frames and reports
bad files) against a stand-in decoder with torchcodec's documented interface."""

from __future__ import annotations

import pickle
import sys
import types

import av
import numpy as np
import pytest
import torch
from videos import frame_number, write_numbered_video

from vidadapt.config import config_from_dict
from vidadapt.data.annotations import Annotation, VideoRecord
from vidadapt.data.dataset import default_reader
from vidadapt.data.decode import BadVideoError, PyAVReader, TorchCodecReader
from vidadapt.errors import ConfigError


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """70 frames at a constant rate, a keyframe every 8 frames, B-frames."""
    path = tmp_path_factory.mktemp("videos") / "numbered.mp4"
    write_numbered_video(path, 70, height=24, width=40)
    return str(path)


def real_torchcodec():
    """torchcodec's decoder module, or a skip with the reason it does not load (PyPI's
    torchcodec needs a CUDA build of torch and FFmpeg's libraries)."""
    try:
        from torchcodec import decoders
    except (ImportError, OSError, RuntimeError) as err:
        pytest.skip(f"torchcodec does not load here: {str(err).splitlines()[0]}")
    return decoders


def test_frames_and_indices_match_pyav_on_constant_frame_rate(numbered):
    real_torchcodec()
    indices = [69, 0, 0, 33, 8, 7, 33, 41, 40]
    ours = PyAVReader().read(numbered, indices)
    theirs = TorchCodecReader().read(numbered, indices)
    assert TorchCodecReader().num_frames(numbered) == 70
    assert theirs.shape == ours.shape and theirs.dtype == torch.uint8
    assert [frame_number(f) for f in theirs] == indices
    assert (theirs.int() - ours.int()).abs().max() <= 2  # the same frames; converters may round


class StandInDecoder:
    """torchcodec's ``VideoDecoder`` interface (exact seek mode, NHWC) over PyAV decoding every
    frame; records what it was asked."""

    calls: list = []

    def __init__(self, source, *, dimension_order, seek_mode, num_ffmpeg_threads, device):
        self.calls.append(("open", dimension_order, seek_mode, num_ffmpeg_threads, device))
        try:
            with av.open(source) as container:
                self.frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except av.FFmpegError as err:
            raise RuntimeError(f"Could not open input file: {source}") from err

    def __len__(self) -> int:
        return len(self.frames)

    def get_frames_at(self, indices):
        self.calls.append(("get_frames_at", list(indices)))
        if max(indices) >= len(self.frames):
            raise RuntimeError("Invalid frame index")
        return types.SimpleNamespace(data=torch.from_numpy(np.stack([self.frames[i]
                                                                     for i in indices])))


@pytest.fixture
def stand_in(monkeypatch):
    decoders = types.ModuleType("torchcodec.decoders")
    decoders.VideoDecoder = StandInDecoder
    package = types.ModuleType("torchcodec")
    package.decoders = decoders
    monkeypatch.setitem(sys.modules, "torchcodec", package)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", decoders)
    StandInDecoder.calls = []
    return StandInDecoder.calls


def test_reads_each_wanted_frame_once_and_returns_the_requested_order(numbered, stand_in):
    reader = TorchCodecReader(device="cpu", threads=1)
    assert reader.num_frames(numbered) == 70
    frames = reader.read(numbered, [33, 0, 33, 7])
    assert frames.shape == (4, 24, 40, 3) and frames.dtype == torch.uint8
    assert [frame_number(f) for f in frames] == [33, 0, 33, 7]
    # One open for num_frames and read, exact mode and NHWC; each frame asked for once.
    assert stand_in == [("open", "NHWC", "exact", 1, "cpu"), ("get_frames_at", [0, 7, 33])]
    copy = pickle.loads(pickle.dumps(reader))  # to loader workers, without the open decoder
    assert repr(copy) == "TorchCodecReader(device='cpu')"
    assert [frame_number(f) for f in copy.read(numbered, [69])] == [69]


def test_bad_files_and_frames_are_bad_videos(numbered, stand_in, tmp_path):
    empty, junk = tmp_path / "empty.mp4", tmp_path / "junk.mp4"
    empty.write_bytes(b"")
    junk.write_bytes(b"not a video at all" * 10)
    reader = TorchCodecReader()
    with pytest.raises(BadVideoError, match="file not found"):
        reader.num_frames(str(tmp_path / "missing.mp4"))
    with pytest.raises(BadVideoError, match="empty file"):
        reader.num_frames(str(empty))
    with pytest.raises(BadVideoError, match="cannot open: Could not open input file"):
        reader.num_frames(str(junk))
    with pytest.raises(BadVideoError, match="frame 70 requested, the video has 70 frames"):
        reader.read(numbered, [0, 70])


def test_missing_torchcodec_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install 'vidadapt\\[torchcodec\\]'"):
        TorchCodecReader()


def test_the_config_chooses_the_reader_and_where_it_decodes(stand_in):
    annotation = Annotation([VideoRecord("a.mp4", 0)], ["a"], "list.txt")
    reader = default_reader(annotation, "torchcodec", "cuda")
    assert isinstance(reader, TorchCodecReader) and reader.device == "cuda"
    base = {"data": {"reader": "torchcodec", "decode_device": "cuda", "num_workers": 0}}
    assert config_from_dict(base).data.decode_device == "cuda"
    with pytest.raises(ConfigError, match="set data.num_workers=0"):
        config_from_dict({"data": {**base["data"], "num_workers": 4}})
    with pytest.raises(ConfigError, match="set data.reader=torchcodec"):
        config_from_dict({"data": {**base["data"], "reader": "pyav"}})
