"""Checkpoints: adapter-only safetensors files and the full state that ``--resume`` needs.

An *adapter checkpoint* holds only the tuned tensors (``model.trainable_state_dict()``) plus
JSON metadata: the ``ModelSpec``, the experiment config, the class names and a fingerprint of
the frozen backbone, so loading onto another backbone fails loudly instead of silently giving
wrong predictions. It is a few MB for ViT-B where a full model is hundreds.

The *resume state* adds the optimizer, the fp16 GradScaler, every rank's RNG states and the
position in training. It is written with ``torch.save`` and read back with
``weights_only=True``: only tensors and plain containers, never arbitrary pickled objects.
Both are written atomically (temporary file in the same folder, fsync, ``os.replace``), so a
kill during a save leaves the previous file intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from .. import __version__
from ..checkpoints.convert import rename_keys
from ..errors import CheckpointError, StorageError
from ..methods.registry import get_method
from ..models import ModelSpec, VideoModel
from .pretext import PRETEXT_PREFIX, is_pretext

ADAPTER_FORMAT = "vidadapt-adapter/2"
ADAPTER_FORMATS = ("vidadapt-adapter/1", ADAPTER_FORMAT)  # what read_adapter accepts
FINGERPRINT_SAMPLES = 64  # values read per frozen tensor: cheap, yet any other weights differ

# Format 1 came from two model classes: a CLIP classifier kept its text tower, prompts,
# adapter, cache and logit scale at the top level and X-CLIP's context as visual_context, and
# EVL's decoder was the video_head. The one video model nests them in its stages. Renaming is
# idempotent: no current name matches a pattern.
_FORMAT1_NAMES = [
    (r"^video_head\.", "readout."),
    (r"^visual_context\.", "context."),
    (r"^(text|prompts|adapter|cache)\.", r"head.\1."),
    (r"^logit_scale$", "head.logit_scale"),
]
_TO_FORMAT1_NAMES = [
    (r"^readout\.", "video_head."),
    (r"^context\.", "visual_context."),
    (r"^head\.(text|prompts|adapter|cache)\.", r"\1."),
    (r"^head\.logit_scale$", "logit_scale"),
]


def upgrade_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state saved under format 1's names (adapter files, resume states, exported models)
    with the current names."""
    return rename_keys(state, _FORMAT1_NAMES)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path`` (atomic on POSIX), so readers never see a half-written checkpoint.

    The file gets the permissions of any new file (``0o666`` less the umask: readable by the
    group), not safetensors' private ``0o600``. A full disk is one line naming the file and the
    space left; the previous file at ``path``, if any, is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except Exception as err:  # torch.save and safetensors wrap the OSError in their own types
        if not disk_full(err):
            raise
        free = shutil.disk_usage(path.parent).free
        raise StorageError(
            f"cannot write {path}: no space left on its disk ({free / 2**20:.0f} MiB free); "
            "free some space or write elsewhere (the previous file, if any, is unchanged)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk is full: an ``ENOSPC`` OSError, or the message torch's
    and safetensors' writers turn it into."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(err) or "os error 28" in str(err)


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def backbone_fingerprint(model: nn.Module, format1_names: bool = False) -> str:
    """Short sha256 over the frozen parameters: names, shapes and evenly spaced sample values.

    Two models built from the same pretrained file (or the same random init) agree; any other
    weights almost surely differ in some sampled value. ``format1_names``: as a format-1 file
    recorded it, under that format's parameter names.
    """
    digest = hashlib.sha256()
    frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
    if format1_names:  # format 1's CLIP classifier held its logit scale itself: listed first
        frozen = rename_keys(frozen, _TO_FORMAT1_NAMES)
        frozen = dict(sorted(frozen.items(), key=lambda item: item[0] != "logit_scale"))
    for name, param in frozen.items():
        flat = param.detach().reshape(-1)
        picks = torch.linspace(0, flat.numel() - 1, min(FINGERPRINT_SAMPLES, flat.numel()))
        sample = flat[picks.long().to(flat.device)].float().cpu()
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


# ---- adapter checkpoints --------------------------------------------------------------------


@dataclass
class AdapterCheckpoint:
    """The contents of an adapter ``.safetensors`` file."""

    state: dict[str, Tensor]  # the tuned tensors, by parameter name
    spec: ModelSpec  # the architecture they belong to
    fingerprint: str  # backbone_fingerprint of the frozen weights they were trained on
    config: dict[str, Any] | None  # the experiment config (ExperimentConfig.to_dict())
    classes: list[str] | None  # class names, in label order
    info: dict[str, Any]  # training progress and metrics when it was written
    format: str = ADAPTER_FORMAT  # the file's format (its names are upgraded when read)


def save_adapter(
    path: str | os.PathLike,
    model: VideoModel,
    fingerprint: str,
    config: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    info: dict[str, Any] | None = None,
) -> None:
    """Write the model's tuned tensors and the metadata to rebuild and check it."""
    if model.spec is None:
        raise ValueError("model has no spec; build it with vidadapt.create_model")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    metadata = {
        "format": ADAPTER_FORMAT,
        "vidadapt_version": __version__,
        "spec": json.dumps(asdict(model.spec)),
        "backbone_fingerprint": fingerprint,
        "config": json.dumps(config),
        "classes": json.dumps(classes),
        "info": json.dumps(info or {}),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_adapter(path: str | os.PathLike) -> AdapterCheckpoint:
    """Read an adapter file written by :func:`save_adapter`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file ({err})"
        ) from err
    if metadata.get("format") not in ADAPTER_FORMATS:
        raise CheckpointError(
            f"checkpoint {path} is not a vidadapt adapter checkpoint (format "
            f"{metadata.get('format')!r}, expected {ADAPTER_FORMAT!r})"
        )
    return AdapterCheckpoint(
        state=upgrade_names(state),
        format=metadata["format"],
        spec=ModelSpec(**json.loads(metadata["spec"])),
        fingerprint=metadata["backbone_fingerprint"],
        config=json.loads(metadata["config"]),
        classes=json.loads(metadata["classes"]),
        info=json.loads(metadata["info"]),
    )


# ModelSpec fields that must agree for the tuned tensors to mean the same thing; image_size and
# the regularisers (dropout, drop_path) may differ between training and inference.
_ARCHITECTURE_FIELDS = ("method", "num_classes", "num_frames", "options")


def _complete_options(options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every method's options with the defaults of those a file does not name."""
    return {name: asdict(get_method(name).make_config(values))
            for name, values in options.items()}


def refuse_self_supervised(checkpoint: AdapterCheckpoint, source: str) -> None:
    """One line for a ``vidadapt pretrain`` checkpoint where a classifier is wanted: its head
    answered a pretext task, or there is none."""
    if is_pretext(checkpoint.classes):
        raise CheckpointError(f"checkpoint {source} is self-supervised (vidadapt pretrain: "
                              f"{checkpoint.classes[0].removeprefix(PRETEXT_PREFIX)}) and "
                              "classifies none of your classes; train from it with vidadapt "
                              f"train --resume-from {source}")


def read_classifier(path: str | os.PathLike) -> AdapterCheckpoint:
    """:func:`read_adapter` for the commands that classify with it (eval, predict, export,
    the hub): a self-supervised checkpoint is refused in one line."""
    checkpoint = read_adapter(path)
    refuse_self_supervised(checkpoint, str(path))
    return checkpoint


def load_adapter(
    model: VideoModel, checkpoint: AdapterCheckpoint | str | os.PathLike, source: str = "",
    keep_head: bool = False,
) -> AdapterCheckpoint:
    """Load an adapter checkpoint into ``model``, after checking it was trained for this
    architecture and on this frozen backbone. ``keep_head``: load everything but the head,
    which the model keeps (a checkpoint whose head answered other classes: a pretext task's).
    Returns the checkpoint that was read."""
    if not isinstance(checkpoint, AdapterCheckpoint):
        source = source or str(checkpoint)
        checkpoint = read_adapter(checkpoint)
    source = source or "checkpoint"
    if not keep_head:
        refuse_self_supervised(checkpoint, source)
    for field in _ARCHITECTURE_FIELDS:
        if keep_head and field == "num_classes":
            continue
        theirs, ours = getattr(checkpoint.spec, field), getattr(model.spec, field)
        if field == "options":  # an option added since the file was written has its default
            theirs, ours = _complete_options(theirs), _complete_options(ours)
        if json.dumps(theirs, sort_keys=True) != json.dumps(ours, sort_keys=True):
            raise CheckpointError(
                f"checkpoint {source} was trained with {field}={theirs}, this model has "
                f"{field}={ours}; build the model from the checkpoint's config"
            )
    ours = backbone_fingerprint(model, format1_names=checkpoint.format != ADAPTER_FORMAT)
    if checkpoint.fingerprint != ours:
        raise CheckpointError(
            f"checkpoint {source} was trained on backbone {checkpoint.fingerprint}, this "
            f"model's is {ours}; pass the same --set model.pretrained=... as in training"
        )
    state = checkpoint.state
    if keep_head:
        state = {**{k: v for k, v in state.items() if not k.startswith("head.")},
                 **{k: v for k, v in model.trainable_state_dict().items()
                    if k.startswith("head.")}}
    try:
        model.load_trainable_state_dict(state)
    except KeyError as err:
        raise CheckpointError(f"checkpoint {source}: {err.args[0]}") from err
    return checkpoint


# ---- resume state -----------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (+CUDA) RNG states, as weights_only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a dict of tensors and plain containers."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resume_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a resume state back without unpickling anything but tensors and containers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no resume state at {path}; start without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        # torch's message runs to many lines and suggests weights_only=False (running the
        # file's code): never advice to pass on.
        reason = "empty file" if path.stat().st_size == 0 else type(err).__name__
        raise CheckpointError(
            f"cannot read resume state {path} ({reason}): it is damaged (an interrupted copy?) "
            "or not a vidadapt resume state; delete it and start without --resume"
        ) from err
