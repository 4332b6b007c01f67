"""Video decoding behind one small interface.

A ``VideoReader`` answers two questions about a file: how many frames it has and what given
frames look like. Frame ``i`` is the ``i``-th frame in display order, counted from the stream
itself, never from a header frame count or ``fps * duration`` (both lie for variable frame rate
and broken files). Readers:

- ``PyAVReader`` (default): builds an index of the stream from its packets (cheap: no decoding),
  then decodes only what a clip needs. For each wanted frame it either decodes on from where it
  is or, when a keyframe lies in between, seeks to that keyframe; frames it does not keep are
  never converted to RGB.
- ``DecordReader``: decord's ``get_batch`` (optional dependency).
- ``RawFrameReader``: directories of extracted JPEG/PNG frames (``img_00001.jpg`` ...), decoded
  with PyAV's image demuxer so no imaging library is needed.

Every reader returns uint8 ``[T, H, W, 3]`` RGB frames in the order of the requested indices
(repeats allowed) and raises ``BadVideoError`` (a ``DataError``) for any file it cannot read.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from ..errors import DataError

# What libav and the file system raise for files that are missing, truncated or not media.
_DECODE_ERRORS = (av.FFmpegError, OSError, EOFError)


class BadVideoError(DataError):
    """A video (or frame file) that cannot be decoded; the message says why."""


@contextmanager
def _libav_errors(action: str) -> Iterator[None]:
    """Re-raise what libav and the file system raise as ``BadVideoError("cannot <action>")``,
    in libav's own words (without its errno and file name)."""
    try:
        yield
    except _DECODE_ERRORS as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise BadVideoError(f"cannot {action}: {reason}") from err


class VideoReader(Protocol):
    """Reads frames of a video by index (display order, from 0)."""

    def num_frames(self, path: str) -> int:
        """Number of decodable frames in ``path``."""
        ...

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        """uint8 RGB frames ``[len(indices), H, W, 3]`` in the order of ``indices``."""
        ...


def resized(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is ``short_side`` (unchanged when None)."""
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(
    frame: av.VideoFrame, short_side: int | None, reformatter: VideoReformatter
) -> np.ndarray:
    """One decoded frame as upright uint8 RGB ``[H, W, 3]``; any pixel format, any size.

    ``reformatter`` keeps its swscale context between frames of one size and format; a fresh
    one per frame (what ``frame.to_ndarray(format=...)`` does) costs ten times the conversion."""
    width, height = resized(frame.width, frame.height, short_side)
    image = reformatter.reformat(frame, format="rgb24", width=width, height=height).to_ndarray()
    # frame.rotation comes from the display matrix (phone videos): counter-clockwise degrees
    # to show the frame upright, as np.rot90 turns.
    quarter_turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


@dataclass(frozen=True)
class FrameIndex:
    """Where each frame of a stream sits, from one pass over its packets (no decoding)."""

    pts: np.ndarray  # [N] presentation timestamps in display order; frame i has pts[i]
    keyframes: list[int]  # indices of the frames a decoder can start from, ascending

    def __len__(self) -> int:
        return len(self.pts)

    def position(self, pts: int | None) -> int:
        """Index of the frame with timestamp ``pts``."""
        i = int(np.searchsorted(self.pts, pts)) if pts is not None else len(self.pts)
        if i == len(self.pts) or self.pts[i] != pts:
            raise BadVideoError(f"decoded a frame with timestamp {pts} that no packet has")
        return i

    def keyframe_at_or_before(self, index: int) -> int:
        return self.keyframes[bisect.bisect_right(self.keyframes, index) - 1]


def index_stream(container: av.container.InputContainer, stream: av.VideoStream) -> FrameIndex:
    """Demux every packet of ``stream`` (reading, not decoding) and index its frames.

    Raises BadVideoError for streams whose packets have no usable timestamps, and for files
    holding fewer packets than their header lists (truncated downloads)."""
    pts, keyframe_pts, packets = [], [], 0
    with _libav_errors("read packets"):
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet that ends the stream
                continue
            packets += 1
            if packet.is_discard:  # dropped by the container's edit list; never displayed
                continue
            if packet.pts is None:
                raise BadVideoError("packets without timestamps (a raw stream); remux it to mp4")
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframe_pts.append(packet.pts)
    if 0 < packets < stream.frames:
        raise BadVideoError(f"truncated: the header lists {stream.frames} frames, "
                            f"the file holds {packets}")
    order = np.sort(np.asarray(pts, dtype=np.int64))
    if len(np.unique(order)) != len(order):
        raise BadVideoError("several frames share one timestamp")
    keyframes = sorted(int(np.searchsorted(order, p)) for p in keyframe_pts)
    if order.size and (not keyframes or keyframes[0] != 0):
        keyframes.insert(0, 0)  # decoding from the file start always works
    return FrameIndex(order, keyframes)


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        raise BadVideoError("no video stream")
    return container.streams.video[0]


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise BadVideoError("file not found")
    if os.path.getsize(path) == 0:
        raise BadVideoError("empty file (0 bytes)")


def _open(path: str) -> av.container.InputContainer:
    _check_file(path)
    with _libav_errors("open"):
        return av.open(path)


def _check_indices(indices: Sequence[int], num_frames: int) -> None:
    if len(indices) == 0:
        raise ValueError("no frame indices given")
    if min(indices) < 0 or max(indices) >= num_frames:
        raise BadVideoError(f"frame {max(indices)} requested, the video has {num_frames} frames")


@dataclass
class _OpenVideo:
    """A video file opened and indexed by ``PyAVReader``."""

    path: str
    container: av.container.InputContainer
    stream: av.VideoStream
    index: FrameIndex
    reformatter: VideoReformatter  # converts this file's frames to RGB


class PyAVReader:
    """The default reader: PyAV, decoding only the frames a clip needs.

    The file read last stays open: callers ask ``num_frames`` and then ``read`` the same file,
    and opening an mp4 costs as much as decoding a few frames (libav probes the first one).
    Use the reader as a context manager, or call ``close()``, to close it early.

    Args:
        short_side: resize frames during conversion so the shorter side has this many pixels
            (cheaper than resizing full-size frames later); None keeps the stored size.
        threads: decoder threads; 1 suits DataLoader workers (each worker is a process
            already), 0 lets libav use every core (frame and slice threading) for one reader.
    """

    def __init__(self, short_side: int | None = None, threads: int = 1):
        self.short_side = short_side
        self.threads = threads
        self._video: _OpenVideo | None = None

    def num_frames(self, path: str) -> int:
        return len(self._open(path).index)

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        video = self._open(path)
        _check_indices(indices, len(video.index))
        with _libav_errors("decode"):
            frames = self._decode(video, sorted(set(indices)))
        return torch.from_numpy(np.stack([frames[i] for i in indices]))  # [T, H, W, 3]

    def close(self) -> None:
        """Close the file kept open, if any."""
        if self._video is not None:
            self._video.container.close()
            self._video = None

    def __enter__(self) -> PyAVReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:  # open files do not travel to DataLoader workers
        return {**self.__dict__, "_video": None}

    def _open(self, path: str) -> _OpenVideo:
        if self._video is not None and self._video.path == path:
            return self._video
        self.close()
        container = _open(path)
        try:
            stream = _video_stream(container)
            stream.thread_count = self.threads
            if self.threads != 1:
                stream.thread_type = "AUTO"  # frame and slice threads
            index = index_stream(container, stream)
        except BadVideoError:
            container.close()
            raise
        self._video = _OpenVideo(path, container, stream, index, VideoReformatter())
        return self._video

    def _decode(self, video: _OpenVideo, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode the frames ``wanted`` (sorted, unique) into RGB arrays keyed by index."""
        index = video.index
        wanted_pts = {int(index.pts[i]) for i in wanted}
        frames: dict[int, np.ndarray] = {}
        decoded: Iterator[tuple[int, av.VideoFrame]] | None = None
        position = -1  # index of the last frame decoded since the last seek
        for target in wanted:
            keyframe = index.keyframe_at_or_before(target)
            # Seeking costs a decoder flush; decoding on costs every frame up to the target.
            # When a keyframe lies past the current position, jumping to it skips frames.
            if decoded is None or keyframe > position + 1:
                decoded = _decode_from(video, keyframe, wanted_pts)
            position, frame = _first_from(decoded, target)
            if position != target:
                raise BadVideoError(f"frame {target} could not be decoded")
            frames[target] = _to_rgb(frame, self.short_side, video.reformatter)
        return frames


def _first_from(
    decoded: Iterator[tuple[int, av.VideoFrame]], target: int
) -> tuple[int, av.VideoFrame]:
    """Advance ``decoded`` to the first frame at or after index ``target``."""
    for position, frame in decoded:
        if position >= target:
            return position, frame
    raise BadVideoError(f"stream ended before frame {target}")


def _decode_from(
    video: _OpenVideo, keyframe: int, wanted_pts: set[int]
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Seek to frame ``keyframe`` and yield (index, frame) from there on.

    Frames that no other frame references (most B-frames) are skipped by the decoder unless
    their timestamp is in ``wanted_pts``: nothing needs them, and they are a third of the work.
    Containers seek by decode timestamp, so a seek can land one keyframe late when frames are
    reordered; then the previous keyframe is tried, down to the file start."""
    container, stream, index = video.container, video.stream, video.index
    codec = stream.codec_context

    def decode_on() -> Iterator[tuple[int, av.VideoFrame]]:
        for packet in container.demux(stream):
            codec.skip_frame = "DEFAULT" if packet.pts in wanted_pts else "NONREF"
            for frame in packet.decode():
                yield index.position(frame.pts), frame

    candidates = index.keyframes[: bisect.bisect_right(index.keyframes, keyframe)]
    for start in reversed(candidates):
        container.seek(int(index.pts[start]), stream=stream, backward=True)
        frames = decode_on()
        first = next(frames, None)
        if first is None:
            raise BadVideoError(f"no frame decodes from frame {start} on")
        if first[0] <= keyframe:
            yield first
            yield from frames
            return
    raise BadVideoError(f"cannot seek to frame {keyframe}")


class DecordReader:
    """decord's ``VideoReader.get_batch`` behind the same interface (``pip install decord``).

    decord ignores rotation metadata and trusts the container's frame index.

    Args:
        short_side: as for ``PyAVReader``.
        num_threads: decoder threads, 0 lets decord choose.
    """

    def __init__(self, short_side: int | None = None, num_threads: int = 0):
        try:
            import decord
        except ImportError as err:
            raise ImportError(
                "DecordReader needs decord: pip install 'vidadapt[decord]' (or use PyAVReader)"
            ) from err
        self._decord = decord
        self.short_side = short_side
        self.num_threads = num_threads

    def __getstate__(self):  # modules do not pickle; DataLoader workers import decord again
        return {"short_side": self.short_side, "num_threads": self.num_threads}

    def __setstate__(self, state):
        self.__init__(**state)

    def num_frames(self, path: str) -> int:
        return len(self._open(path))

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        reader = self._open(path)
        _check_indices(indices, len(reader))
        try:
            frames = reader.get_batch(list(indices)).asnumpy()  # [T, H, W, 3]
        except self._decord.DECORDError as err:
            raise BadVideoError(f"cannot decode: {err}") from err
        return torch.from_numpy(frames)

    def _open(self, path: str):
        _check_file(path)
        width, height = -1, -1
        if self.short_side is not None:
            with _open(path) as container:
                stream = _video_stream(container)
                width, height = resized(stream.width, stream.height, self.short_side)
        try:
            return self._decord.VideoReader(path, ctx=self._decord.cpu(0), width=width,
                                            height=height, num_threads=self.num_threads)
        except self._decord.DECORDError as err:
            raise BadVideoError(f"cannot open: {err}") from err


class RawFrameReader:
    """Folders of extracted frames, ``img_00001.jpg`` onwards (mmaction2's raw-frame layout).

    Frames are JPEG or PNG files decoded with PyAV's image demuxer (no imaging library needed).

    Args:
        template: file name of a frame, formatted with its number.
        start_index: number of the first frame file (frame index 0).
        short_side: as for ``PyAVReader``.
    """

    def __init__(self, template: str = "img_{:05d}.jpg", start_index: int = 1,
                 short_side: int | None = None):
        self.template = template
        self.start_index = start_index
        self.short_side = short_side

    def num_frames(self, path: str) -> int:
        """Frame files numbered consecutively from ``start_index``."""
        if not os.path.isdir(path):
            raise BadVideoError("frame folder not found")
        names = set(os.listdir(path))
        count = 0
        while self.template.format(self.start_index + count) in names:
            count += 1
        return count

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        reformatter = VideoReformatter()
        frames = {i: self._read_frame(path, i, reformatter) for i in set(indices)}
        return torch.from_numpy(np.stack([frames[i] for i in indices]))  # [T, H, W, 3]

    def _read_frame(
        self, folder: str, index: int, reformatter: VideoReformatter
    ) -> np.ndarray:
        name = self.template.format(self.start_index + index)
        try:
            with _open(os.path.join(folder, name)) as container, _libav_errors("decode"):
                frame = next(container.decode(_video_stream(container)), None)
        except BadVideoError as err:
            raise BadVideoError(f"frame file {name}: {err}") from err
        if frame is None:
            raise BadVideoError(f"frame file {name} holds no image")
        return _to_rgb(frame, self.short_side, reformatter)
