"""Experiment configs: typed dataclasses read from YAML recipes.

A recipe is a YAML file with the sections of :class:`ExperimentConfig`. It may start from other
recipes (``_base_: ../base.yaml`` or a list; later files and keys win, mappings merge key by
key) and every command accepts ``--set a.b=c`` overrides, whose values are read as YAML
(``--set optim.betas=[0.9,0.98]``). Loading checks every key and type and reports the first
problem as one :class:`ConfigError` line naming the file and key::

    configs/aim/k400.yaml: optim.lrr: unknown key; did you mean 'lr'?
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .backbones import PRESETS
from .data.transforms import TransformConfig
from .errors import ConfigError
from .methods.base import Method, motion_read
from .methods.registry import parse_methods

# ---- sections ---------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    method: str = "aim"  # registered method, or methods stacked in order: "lora+aim"
    backbone: str = "vit_b16_clip"  # architecture preset (vidadapt.backbones.PRESETS)
    pretrained: str | None = None  # image checkpoint (CLIP .pt, safetensors...); None = random
    init_from: str | None = None  # adapter checkpoint whose tuned tensors start training (an
    # imported release, another run's result); a --resume state of this run takes precedence
    num_classes: int | None = None  # head size; None = the training annotation's class count
    num_frames: int = 8  # frames per clip T (also the frame sampler's clip length)
    image_size: int | None = None  # input side; None = data.transform.size (the crop size)
    dropout: float = 0.5  # dropout before the head
    drop_path: float = 0.0  # backbone stochastic depth (only matters when the backbone trains)


@dataclass
class SamplerConfig:
    type: Literal["dense", "uniform"] = "dense"  # dense: `interval` apart; uniform: 1 per segment
    interval: int = 16  # dense only: frames between sampled frames ("8x16")
    short_video: Literal["loop", "repeat"] = "loop"  # dense only: fill for clips past the end


@dataclass
class SyntheticConfig:
    num_train: int = 64  # training videos (spread evenly over the classes)
    num_val: int = 32  # validation videos
    num_test: int = 0  # test videos (0: the test split is the validation split)
    frames: int = 16  # frames per video
    size: int = 64  # frame side in pixels
    seed: int = 0  # the set is a pure function of these numbers


@dataclass
class DataConfig:
    dataset: Literal["files", "synthetic"] = "files"  # synthetic: made into `root` on first use
    format: str = "auto"  # annotation format (see vidadapt.data.annotations.FORMATS)
    train: str | None = None  # training annotation file
    val: str | None = None  # validation annotation (evaluated during training)
    test: str | None = None  # test annotation (for `vidadapt eval --split test`)
    root: str | None = None  # folder the video paths are relative to (default: the file's)
    roots: dict[Literal["train", "val", "test"], str] = field(default_factory=dict)  # per split
    classes: str | None = None  # class-name file, one per line (default: the annotation's own)
    shots: int | None = None  # few-shot: training videos kept per class (None = all)
    class_subset: Literal["all", "base", "new"] = "all"  # base-to-new protocol: keep the first
    # (base) or second (new) half of the classes in every split, labels renumbered
    known_classes: list[str] | str | None = None  # open set: the classes the model learns, by
    # name (a list, or a file with one name per line); the other classes' videos are left out
    # of training and validation, and are the unknowns that `vidadapt eval --open-set` rejects
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # which frames form a clip
    transform: TransformConfig = field(default_factory=TransformConfig)  # crops, augmentation
    batch_size: int = 64  # clips per optimizer step, summed over GPUs and accumulation steps
    eval_batch_size: int = 8  # videos per GPU per evaluation step (each with all its views)
    num_workers: int = 8  # loader processes per GPU
    cache_videos: bool = False  # keep decoded videos in memory (small sets read many times)
    reader: Literal["pyav", "decord", "torchcodec"] = "pyav"  # video decoder: PyAV (rotation,
    # exact frame count; decodes only a clip's frames), decord or torchcodec (optional extras)
    decode_device: Literal["cpu", "cuda"] = "cpu"  # torchcodec only: cuda decodes on the GPU
    # (NVDEC) in the training process, so it needs num_workers 0
    gpu_augment: bool = False  # training: workers decode, crop and flip in uint8 and draw the
    # other augmentation's parameters; colour, RandAugment, normalisation and erasing then run
    # batched on the device in the training step (same distributions, 4x fewer bytes moved)
    motion: Literal["auto", "none", "rgb_diff", "flow"] = "auto"  # motion maps added to every
    # clip as channels after RGB (data/motion.py): RGB differences or optical flow of the sampled
    # frames; auto = what the model's methods read (motion_prompt's `motion`), else none
    flow_algorithm: Literal["dis", "farneback"] = "dis"  # OpenCV's estimator for motion: flow
    test_clips: int = 3  # temporal clips per video in `vidadapt eval` (1 during training);
    # spatial crops per clip are data.transform.test_crops
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # dataset: synthetic


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak learning rate, reached after warmup
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    weight_decay: float = 0.05  # AdamW decay; never on biases, norms and embeddings
    epochs: int = 30  # passes over the training set
    warmup_epochs: float = 2.5  # linear warmup (per step), then cosine decay to 0
    lr_mult: dict[str, float] = field(default_factory=dict)  # param-name regex → lr factor
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    accum_steps: int = 1  # micro-batches per optimizer step (part of data.batch_size)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    mixup_alpha: float = 0.0  # Beta(a, a) mixup of two clips; 0 = off
    cutmix_alpha: float = 0.0  # CutMix, one box on all frames; with mixup, one of the two per step


@dataclass
class TrainConfig:
    amp: Literal["bf16", "fp16", "off"] = "bf16"  # mixed precision on CUDA (CPU runs fp32)
    eval_every: int = 1  # epochs between validations; 0 = only after the last epoch
    save_every_steps: int = 0  # also save the resume state every N steps; 0 = per epoch only
    log_every: int = 10  # optimizer steps between log records
    seed: int = 0  # seeds the init, and with the epoch the data order and augmentation
    compile: Literal["off", "graphs", "inductor"] = "off"  # how the training forward and backward
    # run on CUDA: off = eager; graphs = replayed as CUDA graphs (one GPU; removes the kernel
    # launch cost that bounds small batches); inductor = torch.compile (see engine/compiled.py)
    grad_checkpointing: bool | int = False  # recompute block activations in backward (less
    # memory, more time): true = every block, N = the first N blocks (see ViTConfig)
    work_dir: str | None = None  # outputs; default runs/<recipe file name>
    feature_cache: Literal["disk", "memory", "off"] = "disk"  # frozen image encoder: clip
    # features are computed once per view and trained on; "disk" also keeps them in
    # .cache/features; "off" encodes every step (fresh augmentation every epoch)
    feature_views: int = 1  # augmented views per training video in the feature cache; epoch e
    # trains on view e % feature_views
    feature_cache_dir: str = ".cache/features"  # where feature_cache: disk keeps its files
    feature_cache_check: Literal["stat", "content"] = "stat"  # how a cached feature knows its
    # video is unchanged: the file's size and modification time, or a hash of its bytes (slow)


@dataclass
class SSLConfig:
    objective: Literal["order", "arrow", "speed", "masked", "distill"] = "order"  # `vidadapt
    # pretrain`'s task on unlabeled clips. Pretexts answered by a head (engine/pretext.py):
    # order = in order or shuffled; arrow = forwards or backwards; speed = played at 1x, 2x, 4x...
    # max_speed. Losses on features (engine/ssl_objectives.py): masked = predict the frozen
    # image model's features of masked tubes; distill = a view of part of the clip matches an
    # EMA teacher's view of all of it
    max_speed: int = 4  # speed only: the fastest playback, a power of 2
    mask_ratio: float = 0.75  # masked: share of patch positions hidden, the same in every frame
    prototypes: int = 1024  # distill: outputs of the projection head (the distributions' size)
    teacher_temp: float = 0.04  # distill: sharpening of the teacher's distribution
    student_temp: float = 0.1  # distill: temperature of the student's
    ema: float = 0.996  # distill: the teacher's momentum at the start, cosine to 1 at the end
    local_scale: float = 0.6  # distill: smallest side of the student's crop, as a fraction

    def __post_init__(self) -> None:
        if self.max_speed < 2 or self.max_speed & (self.max_speed - 1):
            raise ConfigError(f"ssl.max_speed must be a power of 2 from 2, got {self.max_speed}")
        checks = {"mask_ratio": 0 < self.mask_ratio < 1, "ema": 0 <= self.ema < 1,
                  "local_scale": 0 < self.local_scale <= 1, "prototypes": self.prototypes >= 2,
                  "teacher_temp": self.teacher_temp > 0, "student_temp": self.student_temp > 0}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"ssl.{key} is {getattr(self, key)}: out of range (mask_ratio"
                                  " in (0, 1), ema in [0, 1), local_scale in (0, 1], "
                                  "prototypes >= 2, temperatures > 0)")

    @property
    def on_features(self) -> bool:
        """A loss on the model's features (masked, distill) rather than a pretext's head."""
        return self.objective in ("masked", "distill")

    @property
    def clip_factor(self) -> int:
        """How many times longer (and denser) than the model's clip a clip is sampled: speed
        takes every s-th frame of it, distill views all of it and a part of it."""
        return {"speed": self.max_speed, "distill": 2}.get(self.objective, 1)


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # what to build
    method: dict[str, Any] = field(default_factory=dict)  # method options; a recipe writes a
    # lone method's flat and a stack's per name, loading gives {name: config dataclass}
    data: DataConfig = field(default_factory=DataConfig)  # what to read
    optim: OptimConfig = field(default_factory=OptimConfig)  # how to step
    train: TrainConfig = field(default_factory=TrainConfig)  # how to run
    ssl: SSLConfig = field(default_factory=SSLConfig)  # `vidadapt pretrain`'s objective

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as a recipe writes it (every method option spelled out)."""
        data = _plain(dataclasses.asdict(self))
        method = {name: _plain(dataclasses.asdict(c)) for name, c in self.method_configs().items()}
        data["method"] = next(iter(method.values())) if len(method) == 1 else method
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def method_configs(self) -> dict[str, Any]:
        """``{method name: its config dataclass}``, in stack order, for ``create_model``: what
        a loaded config's ``method`` holds (one assembled in code may still hold the options
        as written; they are built here)."""
        methods = parse_methods(self.model.method)
        lone = methods[0].name
        if len(methods) == 1 and set(self.method) != {lone}:
            return {lone: methods[0].make_config(self.method)}  # flat, as written
        return {m.name: m.make_config(self.method.get(m.name)) for m in methods}

    def model_motion(self) -> str:
        """The motion maps the model's methods read ("rgb_diff", "flow"), else "none"."""
        return motion_read(parse_methods(self.model.method), self.method_configs())

    def data_motion(self) -> str:
        """``data.motion`` with ``auto`` resolved: the motion every clip carries."""
        return self.model_motion() if self.data.motion == "auto" else self.data.motion


# ---- value checks that types cannot express ---------------------------------------------------

_AT_LEAST_1 = "an integer >= 1"
_NON_NEGATIVE = "a number >= 0"
RULES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "model.num_classes": (lambda v: v is None or v >= 1, _AT_LEAST_1),
    "model.num_frames": (lambda v: v >= 1, _AT_LEAST_1),
    "model.dropout": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "model.drop_path": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "data.sampler.interval": (lambda v: v >= 1, _AT_LEAST_1),
    "data.shots": (lambda v: v is None or v >= 1, _AT_LEAST_1),
    "data.batch_size": (lambda v: v >= 1, _AT_LEAST_1),
    "data.eval_batch_size": (lambda v: v >= 1, _AT_LEAST_1),
    "data.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "data.test_clips": (lambda v: v >= 1, _AT_LEAST_1),
    "optim.lr": (lambda v: v > 0, "a number > 0"),
    "optim.betas": (lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "optim.weight_decay": (lambda v: v >= 0, _NON_NEGATIVE),
    "optim.epochs": (lambda v: v >= 1, _AT_LEAST_1),
    "optim.warmup_epochs": (lambda v: v >= 0, _NON_NEGATIVE),
    "optim.grad_clip": (lambda v: v is None or v > 0, "a number > 0, or null for no clipping"),
    "optim.accum_steps": (lambda v: v >= 1, _AT_LEAST_1),
    "optim.label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.mixup_alpha": (lambda v: v >= 0, _NON_NEGATIVE),
    "optim.cutmix_alpha": (lambda v: v >= 0, _NON_NEGATIVE),
    "train.eval_every": (lambda v: v >= 0, "an integer >= 0"),
    "train.save_every_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.log_every": (lambda v: v >= 1, _AT_LEAST_1),
    "train.feature_views": (lambda v: v >= 1, _AT_LEAST_1),
    "train.grad_checkpointing": (lambda v: v >= 0, "true, false or a number of blocks >= 0"),
}


# ---- loading ----------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML recipe (following ``_base_``), apply ``--set`` overrides, check it all."""
    data, origins = _read_with_bases(Path(path), chain=())
    cfg = config_from_dict(data, overrides, origins, default_origin=str(path))
    if cfg.train.work_dir is None:
        cfg.train.work_dir = str(Path("runs") / Path(path).stem)
    return cfg


def config_from_dict(
    data: dict[str, Any],
    overrides: Iterable[str] = (),
    origins: dict[str, str] | None = None,
    default_origin: str = "config",
) -> ExperimentConfig:
    """Build and check an :class:`ExperimentConfig` from plain data (e.g. a checkpoint's),
    after applying ``--set`` style ``overrides``.

    ``origins`` maps dotted keys to the file that gave them, for messages.
    """
    data, origins = copy.deepcopy(data), dict(origins or {})
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
        origins.pop(key, None)  # origins are in the order the keys were set (_Where.latest)
        origins[key] = "--set"
    where = _Where(origins, default_origin)
    cfg = _build(ExperimentConfig, data, "", where)
    for key, (ok, allowed) in RULES.items():
        value = _get_dotted(cfg, key)
        if not ok(value):
            raise ConfigError(f"{where(key)}: {key}: {value!r} is not allowed; use {allowed}")
    _check_transform(cfg, where)
    _check_decoding(cfg, where)
    _check_open_set(cfg, where)
    _check_model(cfg, where)
    return cfg


class _ExtendOverrides(argparse.Action):
    """``--cfg-options k=v k2=v2``: several overrides after one flag, as mmaction2 takes them."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), *values])


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--set KEY=VALUE`` option every command that reads a config takes, and its
    mmaction2-style alias ``--cfg-options KEY=VALUE [KEY=VALUE ...]``; both apply in order."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, read as YAML (repeatable): --set optim.lr=1e-3",
    )
    parser.add_argument(
        "--cfg-options", dest="overrides", action=_ExtendOverrides, nargs="+",
        metavar="KEY=VALUE", help="the same as repeated --set: --cfg-options optim.lr=1e-3 "
                                  "data.batch_size=32",
    )


def method_overrides(assignments: Iterable[str], methods: list[str]) -> dict[str, Any]:
    """``method.KEY=VALUE`` (one method) or ``method.NAME.KEY=VALUE`` (stacked) → options, as
    ``create_model`` takes them (``vidadapt info --set``)."""
    options: dict[str, Any] = {}
    for text in assignments:
        key, value = parse_override(text)
        path = key.split(".")
        if path[0] != "method" or len(path) not in (2, 3):
            raise ConfigError(
                f"--set {text!r}: info takes method.KEY=VALUE (or method.NAME.KEY=VALUE)"
            )
        if len(path) == 3 or len(methods) > 1:
            options.setdefault(path[1], {})[path[-1]] = value
        else:
            options[path[1]] = value
    return options


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.betas=[0.9, 0.98]"`` → ``("optim.betas", [0.9, 0.98])``: the value is read as
    YAML, then converted to the field's type when the config is built."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-3")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: cannot read the value as YAML ({err})") from err
    return key.strip(), value


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    """The merged mapping of ``path`` and its bases, and the file each leaf key came from."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    bases = data.pop("_base_", [])
    merged: dict = {}
    origins: dict[str, str] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_data, base_origins = _read_with_bases(path.parent / base, chain + (path.resolve(),))
        _merge(merged, base_data)
        for key, origin in base_origins.items():  # in the order set (see _Where.latest)
            origins.pop(key, None)
            origins[key] = origin
    _merge(merged, data)
    for key in _leaf_keys(data):  # in the order set: this file's keys after its bases'
        origins.pop(key, None)
        origins[key] = str(path)
    return merged, origins


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _leaf_keys(data: dict, prefix: str = "") -> Iterable[str]:
    for key, value in data.items():
        yield prefix + str(key)
        if isinstance(value, dict):
            yield from _leaf_keys(value, f"{prefix}{key}.")


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        child = data.setdefault(part, {})
        if not isinstance(child, dict):  # e.g. --set model=x then --set model.y=z
            child = data[part] = {}
        data = child
    data[last] = value


def _get_dotted(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


class _Where:
    """Names the file a key came from: its own origin, else its nearest parent's."""

    def __init__(self, origins: dict[str, str], default: str) -> None:
        self.origins, self.default = origins, default

    def __call__(self, key: str) -> str:
        while key:
            if key in self.origins:
                return self.origins[key]
            key = key.rpartition(".")[0]
        return self.default

    def latest(self, key: str) -> str:
        """Where ``key`` or anything under it was set last: the likely culprit of an error
        about the section as a whole (``--set data.transform.size=...`` over a recipe)."""
        under = [k for k in self.origins if k == key or k.startswith(key + ".")]
        return self.origins[under[-1]] if under else self(key)


# ---- typed conversion -------------------------------------------------------------------------


def _build(cls: type, data: Any, prefix: str, where: _Where) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, converting and checking every field."""
    section = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where(section)}: {section}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(names)}"
            raise ConfigError(f"{where(prefix + str(key))}: {prefix}{key}: unknown key; {hint}")
        values[key] = _convert(value, hints[key], prefix + key, where)
    return cls(**values)


def _convert(value: Any, tp: Any, key: str, where: _Where) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # alternative types (bool | int, list[str] | str): the value's own
            for alternative in inner:
                if type(value) is (typing.get_origin(alternative) or alternative):
                    return _convert(value, alternative, key, where)
            names = " or ".join((typing.get_origin(a) or a).__name__ for a in inner)
            raise ConfigError(f"{where(key)}: {key}: expected {names}, got {value!r}")
        return _convert(value, inner[0], key, where)
    if tp is Any:
        return value
    if origin is Literal:
        if value is False and "off" in args:  # YAML 1.1 reads a bare `off` as false
            value = "off"
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where(key)}: {key}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(
                f"{where(key)}: {key}: expected a list of {len(args)} values, got {value!r}"
            )
        items = enumerate(zip(value, args, strict=True))
        return tuple(_convert(v, t, f"{key}[{i}]", where) for i, (v, t) in items)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where(key)}: {key}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where(key)}: {key}: expected a mapping, got {value!r}")
        return {
            _convert(k, args[0], f"{key}.{k}", where): _convert(v, args[1], f"{key}.{k}", where)
            for k, v in value.items()
        }
    return _convert_scalar(value, tp, key, where)


def _convert_scalar(value: Any, tp: type, key: str, where: _Where) -> Any:
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; it is a float to anyone writing a recipe.
        try:
            return float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"config field {key} has an unsupported type {tp}")
    if not ok:
        raise ConfigError(f"{where(key)}: {key}: expected {tp.__name__}, got {value!r}")
    return float(value) if tp is float else value


def _check_transform(cfg: ExperimentConfig, where: _Where) -> None:
    """The crop pipeline can work, and the model's input side is the crop size."""
    try:
        cfg.data.transform.validate()
    except ConfigError as err:
        raise ConfigError(f"{where.latest('data.transform')}: {err}") from err
    size = cfg.data.transform.size
    if cfg.model.image_size is None:
        cfg.model.image_size = size
    elif cfg.model.image_size != size:
        raise ConfigError(
            f"{where('model.image_size')}: model.image_size: {cfg.model.image_size} differs from "
            f"the crop size data.transform.size {size}; set only data.transform.size"
        )


def _check_open_set(cfg: ExperimentConfig, where: _Where) -> None:
    """Known classes are distinct names (a file's are checked when it is read), and not
    another class protocol."""
    known = cfg.data.known_classes
    if known is None:
        return
    if cfg.data.class_subset != "all":
        raise ConfigError(f"{where('data.known_classes')}: data.known_classes (open set) and "
                          f"data.class_subset (base-to-new) choose classes two ways; set one")
    if isinstance(known, list) and (not known or len(set(known)) != len(known)):
        raise ConfigError(f"{where('data.known_classes')}: data.known_classes must list distinct "
                          f"class names, got {known}")


def _check_decoding(cfg: ExperimentConfig, where: _Where) -> None:
    """GPU decoding is torchcodec's, in the training process."""
    data = cfg.data
    if data.decode_device == "cuda" and data.reader != "torchcodec":
        raise ConfigError(f"{where('data.decode_device')}: data.decode_device: cuda decoding is "
                          f"torchcodec's; set data.reader=torchcodec")
    if data.decode_device == "cuda" and data.num_workers > 0:
        raise ConfigError(f"{where('data.decode_device')}: data.decode_device: cuda decodes in "
                          f"the training process; set data.num_workers=0")


def _check_model(cfg: ExperimentConfig, where: _Where) -> None:
    """The backbone exists and the method options fit the method's config."""
    if cfg.model.backbone not in PRESETS:
        near = difflib.get_close_matches(cfg.model.backbone, PRESETS, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"choose one of {', '.join(PRESETS)}"
        raise ConfigError(
            f"{where('model.backbone')}: model.backbone: unknown preset "
            f"{cfg.model.backbone!r}; {hint}"
        )
    try:
        methods = parse_methods(cfg.model.method)
    except ConfigError as err:
        raise ConfigError(f"{where('model.method')}: model.method: {err}") from err
    try:
        if len(methods) > 1:
            extra = sorted(set(cfg.method) - {m.name for m in methods})
            if extra:
                raise ConfigError(
                    f"stacked methods take options per method name ({cfg.model.method}); "
                    f"unexpected {extra}"
                )
        cfg.method = cfg.method_configs()
    except (ConfigError, ValueError, TypeError) as err:
        key = "method" if cfg.method else "model.method"
        raise ConfigError(f"{where.latest(key)}: {key}: {err}") from err
    _resolve_motion(cfg, methods, where)


def _resolve_motion(cfg: ExperimentConfig, methods: list[Method], where: _Where) -> None:
    """``data.motion`` gives the model the motion its methods read: ``auto`` becomes that, and
    an explicit value must be it. Motion needs two frames and no RandAugment."""
    wanted = cfg.model_motion()
    if cfg.data.motion == "auto":
        cfg.data.motion = wanted
    elif cfg.data.motion != wanted:
        reader = next((m.name for m in methods if m.reads_motion), None)
        key = "method.motion" if len(methods) == 1 else f"method.{reader}.motion"
        found = (f"{reader} reads {wanted} ({key})" if reader
                 else f"no method of {cfg.model.method} reads motion")
        raise ConfigError(f"{where('data.motion')}: data.motion: {cfg.data.motion} is not what "
                          f"the model reads: {found}; set data.motion: auto"
                          + (f" and {key} to the maps you want" if reader else ""))
    if wanted == "none":
        return
    if cfg.model.num_frames < 2:
        raise ConfigError(f"{where('model.num_frames')}: model.num_frames: motion maps are "
                          "changes between frames; use at least 2 frames")
    if cfg.data.transform.rand_augment is not None:
        raise ConfigError(f"{where('data.transform.rand_augment')}: data.transform.rand_augment: "
                          "its rotations, shears and translations would move the frames away "
                          "from their motion maps; set it to null with data.motion")


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively, so the dict is plain YAML/JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
