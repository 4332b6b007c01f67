"""The checkpoints the papers released, read into vidadapt models (``vidadapt
import-checkpoint``).

A converter maps a release's state dict (its official code's module names) onto a vidadapt
model's and says what the file tells of the architecture (frames, classes, options). The frozen
image model in the file must be the CLIP file given as ``pretrained``: the imported model is
saved as an adapter checkpoint that ``eval``, ``predict``, ``export`` and ``train`` read, and
those rebuild the frozen weights from that file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .backbones import preset_config
from .config import ExperimentConfig, config_from_dict
from .engine.build import build_model
from .engine.checkpoint import backbone_fingerprint
from .errors import CheckpointError, ConfigError
from .methods.aim import convert_aim_release
from .models import VideoModel

Converter = Callable[[dict[str, Tensor]], tuple[dict[str, Tensor], dict[str, Any]]]
CONVERTERS: dict[str, Converter] = {"aim": convert_aim_release}


def read_release(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a released ``.pth`` (``state_dict`` / ``model`` wrappers removed),
    read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or damaged files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                              f"({type(err).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    return {k.removeprefix("module."): v for k, v in data.items() if isinstance(v, Tensor)}


def import_release(
    path: str | Path, method: str, pretrained: str, backbone: str = "vit_b16_clip",
    options: dict[str, Any] | None = None,
) -> tuple[VideoModel, ExperimentConfig]:
    """The model a released checkpoint holds and the config that rebuilds it."""
    if method not in CONVERTERS:
        raise ConfigError(f"import-checkpoint reads {', '.join(CONVERTERS)} releases; "
                          f"{method!r} is not supported yet")
    try:
        state, facts = CONVERTERS[method](read_release(path))
    except KeyError as err:
        raise CheckpointError(f"{path} is not a {method} release: no key {err.args[0]}") from None
    method_options = {k: v for k, v in facts.items() if k not in ("num_frames", "num_classes")}
    patches = state["backbone.pos_embed"].shape[1] - 1  # the trained input side, in patches²
    size = math.isqrt(patches) * preset_config(backbone).patch_size
    cfg = config_from_dict({
        "model": {"method": method, "backbone": backbone, "pretrained": pretrained,
                  "num_frames": facts["num_frames"], "num_classes": facts["num_classes"]},
        "method": {**method_options, **(options or {})},
        "data": {"transform": {"size": size, "short_side": max(size, round(size * 8 / 7))}},
    })
    model = build_model(cfg, facts["num_classes"])
    frozen = backbone_fingerprint(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise CheckpointError(f"{path} does not fit {method} on {backbone}: {first}") from None
    if backbone_fingerprint(model) != frozen:
        raise CheckpointError(f"the frozen image model in {path} differs from {pretrained}: "
                              "pass the CLIP file the release was trained from")
    return model, cfg
