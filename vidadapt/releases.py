"""The checkpoints the papers released, read into vidadapt models (``vidadapt
import-checkpoint``).

A converter maps a release's state dict (its official code's module names) onto a vidadapt
model's and says what the file tells of the architecture. Its facts are a dict: ``num_frames``
and ``num_classes`` when the file tells them, ``grid`` (patches per side) when only a table's
size tells the input size, ``data`` (config overrides the release's preprocessing needs), and
method options. Releases hold different parts: the whole model (ActionCLIP, X-CLIP), the frozen
image model with the adapters (AIM), or only what trained (ST-Adapter, EVL). Every tensor the
imported method trains must be in the file; frozen tensors that are in it must equal the CLIP
file given as ``pretrained``, element for element, as ``eval``, ``predict``, ``export`` and
``train`` rebuild them from that file.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .backbones import preset_config
from .config import ExperimentConfig, config_from_dict
from .engine.build import build_model
from .errors import CheckpointError, ConfigError
from .methods.actionclip import convert_actionclip_release
from .methods.aim import convert_aim_release
from .methods.evl import convert_evl_release
from .methods.st_adapter import convert_st_adapter_release
from .methods.xclip import convert_xclip_release
from .models import VideoModel

StateDict = dict[str, Tensor]
# (the release's state dict, the frame count given on the command line) → (state, facts)
Converter = Callable[[StateDict, int | None], tuple[StateDict, dict[str, Any]]]
CONVERTERS: dict[str, Converter] = {
    "aim": convert_aim_release,
    "st_adapter": convert_st_adapter_release,
    "evl": convert_evl_release,
    "actionclip": convert_actionclip_release,
    "xclip": convert_xclip_release,
}
# Wrappers around the model's state dict: mmaction2's runner, and EVL / ST-Adapter / X-CLIP.
WRAPPERS = ("state_dict", "model")
# ActionCLIP saves its two models side by side; their keys keep these names as prefixes.
PARTS = ("model_state_dict", "fusion_model_state_dict")


class _ConfigStandIn:
    """Stands in for yacs' ``CfgNode``, which X-CLIP pickles beside its weights: torch's
    ``weights_only`` loader builds a plain ``OrderedDict`` in its place, under all its own
    restrictions (it fills only dicts it knows, calls nothing else)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:
        return OrderedDict()


_FOREIGN_CLASSES = [(_ConfigStandIn, "yacs.config.CfgNode")]


def _strip_parallel(key: str) -> str:
    """DataParallel / DDP's leading ``module.``."""
    return key.removeprefix("module.")


def read_release(path: str | Path) -> StateDict:
    """The tensors of a released ``.pth``, wrappers removed (ActionCLIP's two models under
    their names), read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with torch.serialization.safe_globals(_FOREIGN_CLASSES):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or damaged files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                              f"({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict")
    for key in WRAPPERS:
        if isinstance(data.get(key), dict):
            data = data[key]
    if any(isinstance(data.get(part), dict) for part in PARTS):
        data = {f"{part}.{_strip_parallel(key)}": value for part in PARTS
                for key, value in data.get(part, {}).items()}
    return {_strip_parallel(k): v for k, v in data.items() if isinstance(v, Tensor)}


def import_release(
    path: str | Path, method: str, pretrained: str, backbone: str = "vit_b16_clip",
    options: dict[str, Any] | None = None, num_frames: int | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[VideoModel, ExperimentConfig]:
    """The model a released checkpoint holds and the config that rebuilds it."""
    if method not in CONVERTERS:
        raise ConfigError(f"import-checkpoint reads {', '.join(CONVERTERS)} releases; "
                          f"{method!r} is not supported")
    release = read_release(path)
    try:
        state, facts = CONVERTERS[method](release, num_frames)
    except (KeyError, CheckpointError) as err:
        what = f"no key {err.args[0]}" if isinstance(err, KeyError) else str(err)
        raise CheckpointError(f"{path} is not a release of {method}: {what}") from None
    frames = _agreed("frame count", facts.pop("num_frames", None), num_frames, "--num-frames")
    if frames is None:
        raise ConfigError(f"{path} does not record its frame count: pass --num-frames "
                          "(8 for the released 8-frame models)")
    num_classes = _agreed("class count", facts.pop("num_classes", None),
                          len(classes) if classes else None, "--classes")
    if num_classes is None:
        raise ConfigError(f"{method} classifies with class names: pass --classes")
    size = _input_size(state, backbone, facts.pop("grid", None))
    data = facts.pop("data", {})
    cfg = config_from_dict({
        "model": {"method": method, "backbone": backbone, "pretrained": pretrained,
                  "num_frames": frames, "num_classes": num_classes},
        "method": {**facts, **(options or {})},
        "data": {**data, "transform": {"size": size, "short_side": max(size, round(size * 8 / 7)),
                                       **data.get("transform", {})}},
    })
    model = build_model(cfg, num_classes, list(classes) if classes else None)
    _load_release(model, state, path, pretrained)
    return model, cfg


def _agreed(what: str, in_file: int | None, given: int | None, option: str) -> int | None:
    """The file's value, or the one given; they must agree when both are there."""
    if in_file is not None and given is not None and in_file != given:
        raise ConfigError(f"the release's {what} is {in_file}, {option} gives {given}")
    return in_file if in_file is not None else given


def _input_size(state: StateDict, backbone: str, grid: int | None) -> int:
    """The trained input side: from the patch grid the converter read, or the position table
    when the file has the image model, else the backbone's."""
    preset = preset_config(backbone)
    if grid is None and "backbone.pos_embed" in state:
        grid = math.isqrt(state["backbone.pos_embed"].shape[1] - 1)  # [1, g² + 1, D]
    return preset.image_size if grid is None else grid * preset.patch_size


def _load_release(model: VideoModel, state: StateDict, path: str | Path, pretrained: str) -> None:
    """Load ``state`` over the model built on ``pretrained``: every tuned tensor from the file;
    the frozen ones it holds must equal the pretrained ones, element for element."""
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    current = model.state_dict()
    differing = [k for k, v in state.items()
                 if k in current and k not in tuned and current[k].shape == v.shape
                 and not torch.equal(current[k], v.to(current[k].dtype))]
    if differing:
        raise CheckpointError(f"the frozen weights in {path} differ from {pretrained} (first: "
                              f"{differing[0]}): pass the CLIP file the release was trained from")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise CheckpointError(f"{path} does not fit {model.spec.method}: {first}") from None
    lacking = sorted(tuned.intersection(missing))
    if unexpected or lacking:
        what = (f"unexpected key {unexpected[0]}" if unexpected
                else f"no {lacking[0]} ({len(lacking)} trained tensors missing)")
        raise CheckpointError(f"{path} does not fit {model.spec.method}: {what}; check "
                              "--method and the --set options")
