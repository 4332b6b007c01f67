"""Decode benchmark: clips/s of vidadapt's reader against decoding every frame and decord.

Generates Kinetics-400-like clips (10 s, 454x340, 30 fps, H.264 with a 250-frame GOP, textured
content panning like a hand-held camera) into a temporary directory, then reads training clips
from them with each method, all fed the same frame indices:

- ``vidadapt``: ``PyAVReader`` (reads the packets once, decodes from the right keyframe only
  the frames a clip needs and those they refer to), one decoder thread as in DataLoader
  workers; ``vidadapt_all_cores``: the same with libav choosing the thread count;
- ``decode_all``: the naive way, every frame decoded and converted with PyAV, then indexed;
- ``decord``: ``decord.VideoReader(path).get_batch(indices)`` with its default threads (all
  cores) and ``decord_1_thread``, when decord is installed;

for two samplers: dense 8x16 (8 frames 16 apart, random start) and uniform 8 segments.
``speedup_vs_decord`` compares one thread with one thread, ``speedup_vs_decord_all_cores``
all cores with all cores.

    python benchmarks/decode.py            # table
    python benchmarks/decode.py --json     # one JSON object
    python benchmarks/decode.py --quick    # fewer clips and rounds (under a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial

import av
import numpy as np
import torch

from vidadapt.data.decode import PyAVReader
from vidadapt.data.sampling import DenseSampler, UniformSampler

SAMPLERS = {
    "dense_8x16": DenseSampler(clip_len=8, interval=16),
    "uniform_8": UniformSampler(clip_len=8),
}


ENCODER_OPTIONS = {
    "libx264": {"crf": "23", "preset": "veryfast"},
    "libvpx-vp9": {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"},
}


def make_clip(path: str, seed: int, seconds: float = 10.0, width: int = 454, height: int = 340,
              fps: int = 30, gop: int = 250, codec: str = "libx264") -> None:
    """Encode a clip of smooth random texture seen through a slowly panning, shaking camera
    (H.264 by default; ``codec="libvpx-vp9"`` for WebM, as SSv2 ships)."""
    rng = np.random.default_rng(seed)
    num_frames = round(seconds * fps)
    margin = 64  # room for the camera to move inside the texture
    texture = _smooth_noise(rng, height + 2 * margin, width + 2 * margin)  # [H', W', 3]
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = ENCODER_OPTIONS[codec]
        for t in range(num_frames):
            dy = int(margin + margin * 0.8 * np.sin(t / 40))
            dx = int(margin + margin * 0.8 * np.cos(t / 55))
            image = texture[dy: dy + height, dx: dx + width]
            noise = rng.integers(-6, 7, image.shape)  # sensor noise keeps the bitrate realistic
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _smooth_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random texture with most energy at low spatial frequencies, like natural images."""
    spectrum = np.fft.rfft2(rng.standard_normal((3, height, width)))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    spectrum /= (np.sqrt(fx**2 + fy**2) + 1 / 64) ** 1.5  # 1/f-like falloff
    image = np.fft.irfft2(spectrum, s=(height, width)).transpose(1, 2, 0)  # [H, W, 3]
    image = (image - image.mean()) / image.std()
    return np.clip(128 + 50 * image, 0, 255)


def read_vidadapt(path: str, draw: Callable[[int], list[int]], threads: int = 1) -> torch.Tensor:
    with PyAVReader(threads=threads) as reader:  # fresh per clip: nothing kept from before
        return reader.read(path, draw(reader.num_frames(path)))


def read_decode_all(path: str, draw: Callable[[int], list[int]]) -> torch.Tensor:
    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack([frames[i] for i in draw(len(frames))]))


def read_decord(path: str, draw: Callable[[int], list[int]], threads: int = 0) -> torch.Tensor:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    return torch.from_numpy(reader.get_batch(draw(len(reader))).asnumpy())


def clips_per_second(methods: dict[str, Callable], paths: Sequence[str], sampler,
                     rounds: int) -> dict[str, float]:
    """Read ``rounds`` training clips from each path with every method, interleaved clip by
    clip so that load from other processes slows all methods alike; every method gets the
    same frame indices."""
    seconds = dict.fromkeys(methods, 0.0)
    rng = random.Random(0)
    for method in methods.values():  # warm-up: imports, libav initialisation
        method(paths[0], lambda n: sampler.sample(n, train=True, rng=rng)[0])
    for _ in range(rounds):
        for path in paths:
            state = rng.getstate()
            for name, method in methods.items():
                rng.setstate(state)  # the same draw for each method
                start = time.perf_counter()
                method(path, lambda n: sampler.sample(n, train=True, rng=rng)[0])
                seconds[name] += time.perf_counter() - start
    return {name: rounds * len(paths) / total for name, total in seconds.items()}


def have_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def speedups(rates: dict[str, float]) -> dict[str, float]:
    """vidadapt against decoding everything and against decord, like for like in threads."""
    result = {"speedup_vs_decode_all": rates["vidadapt"] / rates["decode_all"]}
    if "decord" in rates:
        result["speedup_vs_decord"] = rates["vidadapt"] / rates["decord_1_thread"]
        result["speedup_vs_decord_all_cores"] = rates["vidadapt_all_cores"] / rates["decord"]
    return result


def run(num_clips: int, rounds: int) -> dict:
    methods = {
        "vidadapt": read_vidadapt,
        "vidadapt_all_cores": partial(read_vidadapt, threads=0),
        "decode_all": read_decode_all,
    }
    if have_decord():
        methods["decord"] = read_decord
        methods["decord_1_thread"] = partial(read_decord, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"clip{i}.mp4") for i in range(num_clips)]
        for seed, path in enumerate(paths):
            make_clip(path, seed)
        per_sampler = {name: clips_per_second(methods, paths, sampler, rounds)
                       for name, sampler in SAMPLERS.items()}
    # Headline: throughput over equally many clips of each sampler (the harmonic mean).
    overall = {m: len(SAMPLERS) / sum(1 / rates[m] for rates in per_sampler.values())
               for m in methods}
    for rates in [*per_sampler.values(), overall]:
        rates.update(speedups(rates))
    return {
        "clips_per_s": overall["vidadapt"],
        "decode_all_clips_per_s": overall["decode_all"],
        "decord_clips_per_s": overall.get("decord"),
        **{name: value for name, value in overall.items() if name.startswith("speedup")},
        "per_sampler": per_sampler,
        "overall": overall,
        "video": "10 s, 454x340, 30 fps, H.264 crf 23, GOP 250",
        "num_videos": num_clips,
        "rounds": rounds,
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer videos and rounds")
    args = parser.parse_args()
    num_clips, rounds = (3, 2) if args.quick else (8, 5)
    result = run(num_clips, rounds)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['video']}, {num_clips} videos x {rounds} rounds, {os.cpu_count()} cores")
    for name, rates in [*result["per_sampler"].items(), ("overall", result["overall"])]:
        print(f"{name}:")
        for key, value in rates.items():
            print(f"  {key:28s} {value:6.2f}{'x' if key.startswith('speedup') else ' clips/s'}")


if __name__ == "__main__":
    main()
