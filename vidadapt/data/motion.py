"""Motion as a second modality of a clip: the RGB difference or the dense optical flow of its
sampled frames (``data.motion``), for methods that read motion (``motion_prompt``).

Motion is computed in the loader, from the frames the model will see (after the resize, the
crop and the flip, so it always matches them), and travels *with* the clip as extra channels
after RGB: a clip becomes ``[T, 3 + M, H, W]``, M = :data:`MOTION_CHANNELS`. Keeping one
tensor means everything that moves clips (batching, test views, mixup, the device transfer,
``data.gpu_augment``) moves the motion along without knowing of it; the model splits the
channels off again (``models.VideoModel``).

Like the frames, the motion channels are uint8 until normalisation, zero motion at
:data:`MOTION_ZERO`: RGB differences as ``128 + diff / 2`` and flow as TSN stores its flow
images, clipped to ±:data:`FLOW_BOUND` pixels and scaled to 0-255. Normalisation
(``transforms.Normalize``) maps both to about [-1, 1]: ``(x - 128) / 127.5``.

Frame ``t``'s map is the change from frame ``t`` to frame ``t + 1`` of the clip (forward
differences of the *sampled* frames, as TSN's RGB-difference stream); the last frame repeats
the one before it, so every frame has a map.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from ..errors import ConfigError

MOTION_CHANNELS = {"rgb_diff": 3, "flow": 2}  # motion kind -> channels per frame
FLOW_ALGORITHMS = ("dis", "farneback")
FLOW_BOUND = 20.0  # pixels: flow is clipped to ±FLOW_BOUND before it is stored in uint8 (TSN)
MOTION_ZERO, MOTION_SCALE = 128, 127.5  # uint8 motion x means (x - zero) / scale


def channels_for(kind: str | None) -> int:
    """Channels a motion kind adds per frame (0 for none)."""
    if kind in (None, "none"):
        return 0
    if kind not in MOTION_CHANNELS:
        raise ConfigError(f"unknown motion {kind!r}; choose one of {', '.join(MOTION_CHANNELS)}")
    return MOTION_CHANNELS[kind]


def rgb_difference(clip: Tensor) -> Tensor:
    """uint8 frames ``[..., T, 3, H, W]`` → their forward differences as uint8, ``128 + diff /
    2`` rounded down (the last frame repeats the previous difference)."""
    frames = clip.to(torch.int16)
    diff = frames[..., 1:, :, :, :] - frames[..., :-1, :, :, :]  # [..., T-1, 3, H, W]
    diff = torch.cat([diff, diff[..., -1:, :, :, :]], dim=-4)  # [..., T, 3, H, W]
    coded = MOTION_ZERO + torch.div(diff, 2, rounding_mode="floor")
    return coded.clamp(0, 255).to(torch.uint8)


class OpticalFlow:
    """Dense optical flow between consecutive frames with OpenCV (an optional dependency:
    ``pip install vidadapt[flow]``): DIS (fast, the default) or Farnebäck, on grayscale.

    Flows are memoised (as their uint8 code) by the content of their two frames, up to
    ``cache_mb`` megabytes per process: a pair of frames seen again while still in the cache
    costs nothing (a small set read every epoch with fixed crops, as the synthetic one). Random
    crops rarely repeat a pair, and a large set's evaluation passes through more pairs than a
    cache holds, so there it saves little.
    """

    def __init__(self, algorithm: str = "dis", cache_mb: float = 64.0):
        if algorithm not in FLOW_ALGORITHMS:
            raise ConfigError(f"unknown flow algorithm {algorithm!r}; choose one of "
                              f"{', '.join(FLOW_ALGORITHMS)}")
        _opencv()  # a missing OpenCV fails here, in the main process, not in a worker
        self.algorithm, self.cache_mb = algorithm, cache_mb
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._estimator: Any = None  # made on first use, in the process that uses it

    def __getstate__(self) -> dict:  # workers start with an empty cache and their own estimator
        return {**self.__dict__, "_cache": OrderedDict(), "_cached_bytes": 0, "_estimator": None}

    def __repr__(self) -> str:
        return f"OpticalFlow({self.algorithm!r})"

    def pair(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Flow from grayscale ``first`` to ``second`` as uint8 ``[H, W, 2]`` (x, y): 128 +
        127.5 · flow / FLOW_BOUND, clipped."""
        key = hashlib.blake2b(first.tobytes() + second.tobytes(), digest_size=16).digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        flow = self._compute(first, second)  # [H, W, 2] pixels
        scaled = MOTION_ZERO + MOTION_SCALE * np.clip(flow / FLOW_BOUND, -1, 1)
        flow = np.rint(scaled).clip(0, 255).astype(np.uint8)
        self._cache[key] = flow
        self._cached_bytes += flow.nbytes
        while self._cached_bytes > self.cache_mb * 2**20 and self._cache:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped.nbytes
        return flow

    def _compute(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        cv2 = _opencv()
        if self.algorithm == "farneback":  # OpenCV's documented example parameters
            return cv2.calcOpticalFlowFarneback(first, second, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        if self._estimator is None:
            self._estimator = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return self._estimator.calc(first, second, None)

    def __call__(self, clip: Tensor) -> Tensor:
        """uint8 frames ``[..., T, 3, H, W]`` → flow to the next frame as uint8 ``[..., T, 2, H,
        W]`` (clipped to ±FLOW_BOUND, 128 + 127.5 · flow / bound; the last frame repeats the
        previous)."""
        lead, (T, _, H, W) = clip.shape[:-4], clip.shape[-4:]
        gray = _grayscale(clip.reshape(-1, T, 3, H, W).cpu())  # [N, T, H, W] uint8 (OpenCV's
        # frames are on the CPU, wherever the clip was decoded)
        flows = np.stack([np.stack([self.pair(frames[t], frames[t + 1]) for t in range(T - 1)])
                          for frames in gray])  # [N, T-1, H, W, 2]
        flows = np.concatenate([flows, flows[:, -1:]], axis=1)  # [N, T, H, W, 2]
        coded = torch.from_numpy(flows).permute(0, 1, 4, 2, 3).reshape(*lead, T, 2, H, W)
        return coded.to(clip.device)


def _grayscale(clips: Tensor) -> np.ndarray:
    """uint8 ``[N, T, 3, H, W]`` → uint8 luma ``[N, T, H, W]`` (ITU-R 601, as OpenCV's)."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    luma = (clips.float() * weights).sum(dim=-3)
    return luma.round().clamp(0, 255).to(torch.uint8).numpy()


def _opencv() -> Any:
    try:
        import cv2
    except ImportError as err:
        raise ConfigError("data.motion: flow needs OpenCV: pip install 'vidadapt[flow]' (or "
                          "opencv-python-headless), or use data.motion: rgb_diff") from err
    if get_worker_info() is not None:  # loader workers run side by side: one thread each, as
        cv2.setNumThreads(1)  # torch gives them
    return cv2


class MotionMaps:
    """A pipeline step: appends each frame's motion map to uint8 clips ``[..., T, 3, H, W]``
    → ``[..., T, 3 + M, H, W]`` (``kind``: "rgb_diff" or "flow")."""

    def __init__(self, kind: str, flow_algorithm: str = "dis", flow_cache_mb: float = 64.0):
        channels_for(kind)  # a known kind
        self.kind = kind
        self.flow = OpticalFlow(flow_algorithm, flow_cache_mb) if kind == "flow" else None

    def maps(self, clip: Tensor) -> Tensor:
        if clip.shape[-4] < 2:
            raise ValueError(f"motion needs at least 2 frames per clip, got {clip.shape[-4]}")
        return rgb_difference(clip) if self.flow is None else self.flow(clip)

    def __call__(self, clip: Tensor, label: int, generator: torch.Generator | None = None):
        return torch.cat([clip, self.maps(clip)], dim=-3), label

    def __repr__(self) -> str:
        return f"MotionMaps({self.kind!r}{'' if self.flow is None else f', {self.flow!r}'})"
