"""Small video files for the data tests, written with PyAV.

Frame ``i`` of a "numbered" video is a flat colour that encodes ``i`` (red = 8 * (i % 32),
green = 8 * (i // 32)), which survives H.264 compression well enough for ``frame_number`` to
read it back exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

# H.264 with B-frames whose middle one is a non-reference frame (what the reader may skip),
# near-lossless, no extra keyframes at the colour jumps.
H264_B_FRAMES = {"crf": "1", "x264-params": "bframes=3:b-pyramid=normal:scenecut=0"}


def numbered_frame(i: int, height: int = 32, width: int = 32) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)  # [H, W, 3]
    frame[..., 0] = 8 * (i % 32)
    frame[..., 1] = 8 * (i // 32)
    return frame


def frame_number(frame) -> int:
    """The ``i`` a numbered frame ``[H, W, 3]`` encodes."""
    frame = np.asarray(frame, dtype=np.float64)
    return round(frame[..., 0].mean() / 8) + 32 * round(frame[..., 1].mean() / 8)


def write_video(
    path,
    frames: Sequence[np.ndarray],
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
    gop: int = 8,
    pts: Sequence[int] | None = None,
    rotation: int | None = None,
) -> None:
    """Encode RGB ``frames`` ([H, W, 3] uint8). ``pts`` (in 1/30 s) makes a variable frame rate
    file; ``rotation`` (counter-clockwise degrees) is stored as the display matrix."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.gop_size = gop
        stream.options = dict(H264_B_FRAMES if options is None and codec == "libx264" else
                              options or {})
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_numbered_video(path, num_frames: int, height: int = 32, width: int = 32, **kwargs):
    write_video(path, [numbered_frame(i, height, width) for i in range(num_frames)], **kwargs)


def write_audio_only(path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_image(path, image: np.ndarray) -> None:
    """One RGB image as a JPEG or PNG file (by extension), through PyAV's image encoders."""
    jpeg = str(path).endswith(".jpg")
    height, width = image.shape[:2]
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("mjpeg" if jpeg else "png", rate=1)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj444p" if jpeg else "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def write_noise_video(path, num_frames: int = 20, faststart: bool = True) -> None:
    """Random frames: a file that is mostly frame data (the index sits in front)."""
    rng = np.random.default_rng(0)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(num_frames):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


# Each kind of broken file the dataset must skip: name -> (maker, words of the reason).
def _zero_bytes(path):
    path.write_bytes(b"")


def _truncated(path):
    write_noise_video(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def _not_a_video(path):
    path.write_text("this is a text file, not a video\n" * 20)


def _too_few_frames(path):
    write_numbered_video(path, 2)


def _unreadable_frames(path):
    write_noise_video(path)
    data = bytearray(path.read_bytes())
    start, end = len(data) // 2, len(data) * 8 // 10
    data[start:end] = np.random.default_rng(1).integers(0, 256, end - start, np.uint8).tobytes()
    path.write_bytes(bytes(data))


BAD_FILES = {
    "zero_bytes.mp4": (_zero_bytes, "empty file (0 bytes)"),
    "truncated.mp4": (_truncated, "truncated: the header lists 20 frames, the file holds"),
    "not_a_video.mp4": (_not_a_video, "cannot open: Invalid data found"),
    "audio_only.mp4": (write_audio_only, "no video stream"),
    "too_few_frames.mp4": (_too_few_frames, "2 frame(s), fewer than the 4 needed"),
    "unreadable_frames.mp4": (_unreadable_frames, "cannot decode: Invalid data found"),
}
TOO_FEW = 4  # min_frames the tests use, so that "too_few_frames.mp4" counts as bad


def write_bad_files(folder) -> dict[str, str]:
    """Write every kind of broken file into ``folder``; returns name -> reason fragment."""
    for name, (make, _) in BAD_FILES.items():
        make(folder / name)
    return {name: reason for name, (_, reason) in BAD_FILES.items()}
