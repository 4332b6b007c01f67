"""Video decoding behind one small interface.

A ``VideoReader`` answers two questions about a file: how many frames it has and what given
frames look like. Frame ``i`` is the ``i``-th frame in display order, counted from the stream
itself, never from a header frame count or ``fps * duration`` (both lie for variable frame rate
and broken files). Readers:

- ``PyAVReader`` (default): reads the stream's packets into memory once (cheap: no decoding),
  which gives the exact frame count and the keyframes, then decodes only what a clip needs: for
  each wanted frame it decodes on from where it is or, when a keyframe lies in between, restarts
  at that keyframe; unreferenced frames it does not want are skipped by the decoder, and only
  wanted frames are converted to RGB.
- ``DecordReader``: decord's ``get_batch`` (optional dependency).
- ``TorchCodecReader``: torchcodec's decoder (optional dependency), on the CPU or, with
  NVDEC, on the GPU.
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
class DemuxedStream:
    """Every packet of a video stream, held in memory (a few MB for a typical clip), and where
    its frames are. Built by reading the file once, without decoding anything."""

    packets: list[av.Packet]  # in decode order
    pts: np.ndarray  # [N] presentation timestamps in display order: frame i has pts[i]
    keyframes: list[int]  # frames a decoder can start from (display index), ascending
    keyframe_packets: list[int]  # position in ``packets`` of each of those keyframes

    def __len__(self) -> int:
        return len(self.pts)

    def frame_index(self, pts: int | None) -> int | None:
        """Display index of the frame with timestamp ``pts``; None for a frame that is never
        shown (an edit list discards it)."""
        i = int(np.searchsorted(self.pts, pts)) if pts is not None else len(self.pts)
        return i if i < len(self.pts) and self.pts[i] == pts else None

    def start_for(self, index: int) -> int:
        """Which keyframe (position in ``keyframes``) to decode from to reach frame ``index``."""
        return bisect.bisect_right(self.keyframes, index) - 1


def demux_stream(container: av.container.InputContainer, stream: av.VideoStream) -> DemuxedStream:
    """Read every packet of ``stream`` and index its frames.

    Raises BadVideoError for streams whose packets have no usable timestamps, and for files
    holding fewer packets than their header lists (truncated downloads)."""
    packets, stored = [], 0
    with _libav_errors("read packets"):
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None:  # PyAV's end-of-stream marker
                continue
            stored += 1
            if packet.size > 0:  # AVI stores dropped frames as empty packets: no frame
                packets.append(packet)
    if stored < stream.frames:
        raise BadVideoError(f"truncated: the header lists {stream.frames} frames, "
                            f"the file holds {stored}")
    # Packets the container's edit list discards are decoded (others may refer to them) but
    # never shown, so they get no frame index.
    shown = [(position, packet) for position, packet in enumerate(packets) if not packet.is_discard]
    if any(packet.pts is None for _, packet in shown):
        raise BadVideoError("packets without timestamps (a raw stream); remux it to mp4")
    pts = np.sort(np.array([packet.pts for _, packet in shown], dtype=np.int64))
    if len(np.unique(pts)) != len(pts):
        raise BadVideoError("several frames share one timestamp")
    starts = {int(np.searchsorted(pts, packet.pts)): position
              for position, packet in shown if packet.is_keyframe}
    starts.setdefault(0, 0)  # from the first packet the decoder reaches every frame
    keyframes = sorted(starts)
    return DemuxedStream(packets, pts, keyframes, [starts[k] for k in keyframes])


@dataclass
class _OpenVideo:
    """A video file opened and demuxed by ``PyAVReader``."""

    path: str
    container: av.container.InputContainer  # open: its codec context decodes the packets
    stream: av.VideoStream
    demuxed: DemuxedStream


class PyAVReader:
    """The default reader: PyAV, decoding only the frames a clip needs.

    A file is read once into memory (its packets: no decoding), which gives the exact frame
    count and where the keyframes are. Reading frames then decodes from the keyframe before
    the first wanted frame and, between wanted frames, either decodes on or, when a keyframe
    lies in between, restarts from that keyframe; frames that no other frame refers to are
    skipped unless wanted, and only wanted frames are converted to RGB.

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
        # One converter for every file: swscale reuses its context while the frame size and
        # format stay the same, which for small clips costs more than the conversion itself.
        self._reformatter: VideoReformatter | None = None

    def __repr__(self) -> str:
        return f"PyAVReader(short_side={self.short_side})"

    def num_frames(self, path: str) -> int:
        return len(self._open(path).demuxed)

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        video = self._open(path)
        _check_indices(indices, len(video.demuxed))
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
        return {**self.__dict__, "_video": None, "_reformatter": None}

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
            demuxed = demux_stream(container, stream)
        except BadVideoError:
            container.close()
            raise
        self._video = _OpenVideo(path, container, stream, demuxed)
        if self._reformatter is None:
            self._reformatter = VideoReformatter()
        return self._video

    def _decode(self, video: _OpenVideo, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode the frames ``wanted`` (sorted, unique) into RGB arrays keyed by index."""
        demuxed = video.demuxed
        wanted_pts = {int(demuxed.pts[i]) for i in wanted}
        frames: dict[int, np.ndarray] = {}
        decoded: Iterator[tuple[int, av.VideoFrame]] | None = None
        position = -1  # display index of the last frame decoded
        for target in wanted:
            start = demuxed.start_for(target)
            # Restarting costs a decoder flush; decoding on costs every frame up to the
            # target. When a keyframe lies past the current position, restarting there skips
            # the frames in between.
            if decoded is None or demuxed.keyframes[start] > position + 1:
                decoded = _decode_from(video, start, wanted_pts)
            position, frame = _first_from(decoded, target)
            if position != target:
                raise BadVideoError(f"frame {target} could not be decoded")
            frames[target] = _to_rgb(frame, self.short_side, self._reformatter)
        return frames


def _first_from(
    decoded: Iterator[tuple[int, av.VideoFrame]], target: int
) -> tuple[int, av.VideoFrame]:
    """Advance ``decoded`` to the first frame at or after display index ``target``."""
    for position, frame in decoded:
        if position >= target:
            return position, frame
    raise BadVideoError(f"stream ended before frame {target}")


def _decode_from(
    video: _OpenVideo, start: int, wanted_pts: set[int]
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decode from keyframe number ``start`` on, yielding (display index, frame).

    Frames that no other frame references (most B-frames) are skipped by the decoder unless
    their timestamp is in ``wanted_pts``: nothing needs them, and they are a third of the work.
    """
    demuxed, codec = video.demuxed, video.stream.codec_context
    codec.flush_buffers()  # forget the frames of an earlier pass
    for packet in [*demuxed.packets[demuxed.keyframe_packets[start]:], None]:  # None: drain
        if packet is not None:
            codec.skip_frame = "DEFAULT" if packet.pts in wanted_pts else "NONREF"
        for frame in codec.decode(packet):
            index = demuxed.frame_index(frame.pts)
            if index is not None:
                yield index, frame


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

    def __repr__(self) -> str:
        return f"DecordReader(short_side={self.short_side})"

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


class TorchCodecReader:
    """TorchCodec's ``VideoDecoder`` behind the same interface (``pip install
    'vidadapt[torchcodec]'``; torchcodec needs FFmpeg's shared libraries and the torch build it
    was made for).

    Files are opened in torchcodec's exact seek mode: opening scans the stream once, so frame
    ``i`` is the ``i``-th frame in presentation order, as with ``PyAVReader``. With
    ``device="cuda"`` the GPU's video decoder (NVDEC) decodes and the frames stay on the GPU,
    where the transforms then run; that decoding happens in the training process
    (``data.num_workers: 0``), as CUDA cannot be shared with loader processes.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        threads: FFmpeg decoding threads on the CPU; 1 suits loader workers.
    """

    def __init__(self, device: str = "cpu", threads: int = 1):
        try:
            from torchcodec.decoders import VideoDecoder
        except (ImportError, OSError, RuntimeError) as err:  # OSError: its libraries
            raise ImportError(
                "TorchCodecReader needs a working torchcodec: pip install "
                f"'vidadapt[torchcodec]' and FFmpeg's libraries (or use data.reader=pyav): {err}"
            ) from err
        self._decoder_class = VideoDecoder
        self.device, self.threads = device, threads
        self._path: str | None = None
        self._decoder = None  # the decoder of the file read last (num_frames, then read)

    def __getstate__(self):  # decoders do not pickle; DataLoader workers open files again
        return {"device": self.device, "threads": self.threads}

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"TorchCodecReader(device={self.device!r})"

    def num_frames(self, path: str) -> int:
        return len(self._open(path))

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        decoder = self._open(path)
        _check_indices(indices, len(decoder))
        unique = sorted(set(indices))
        try:
            frames = decoder.get_frames_at(unique).data  # [N, H, W, 3] (NHWC)
        except (RuntimeError, ValueError) as err:
            raise BadVideoError(f"cannot decode: {err}") from err
        position = {index: k for k, index in enumerate(unique)}
        return frames[[position[i] for i in indices]]  # [T, H, W, 3]

    def _open(self, path: str):
        if path == self._path:
            return self._decoder
        _check_file(path)
        # A bare "cuda" would decode on GPU 0 in every process of a multi-GPU run: use the
        # process's own GPU (each rank has set its device before it reads).
        device = f"cuda:{torch.cuda.current_device()}" if self.device == "cuda" else self.device
        try:
            decoder = self._decoder_class(path, dimension_order="NHWC", seek_mode="exact",
                                          num_ffmpeg_threads=self.threads, device=device)
        except (RuntimeError, ValueError) as err:
            raise BadVideoError(f"cannot open: {err}") from err
        self._path, self._decoder = path, decoder
        return decoder


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

    def __repr__(self) -> str:
        return (f"RawFrameReader({self.template!r}, start_index={self.start_index}, "
                f"short_side={self.short_side})")

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


class InMemoryReader:
    """Wraps a reader and keeps every video it decodes, whole, in memory.

    For small sets read many times (few-shot training, the synthetic demo) each video is then
    decoded once instead of once per epoch. Memory grows with the data set (T·H·W·3 bytes per
    video), so it is off by default; each DataLoader worker keeps its own copy, which lasts
    as long as the worker (``num_workers: 0`` keeps one copy for the whole run).
    """

    def __init__(self, reader: VideoReader):
        self.reader = reader
        self._videos: dict[str, torch.Tensor] = {}  # path -> uint8 [N, H, W, 3]

    def __repr__(self) -> str:
        return repr(self.reader)  # the same frames as the reader it keeps

    def num_frames(self, path: str) -> int:
        return len(self._video(path))

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        video = self._video(path)
        _check_indices(indices, len(video))
        return video[list(indices)]  # [T, H, W, 3]

    def _video(self, path: str) -> torch.Tensor:
        if path not in self._videos:
            self._videos[path] = self.reader.read(path, range(self.reader.num_frames(path)))
        return self._videos[path]
