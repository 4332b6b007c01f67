"""``vidadapt export``: one self-contained safetensors model for serving, from an adapter
checkpoint.

The adapter checkpoint holds only the tuned tensors; serving needs the frozen backbone too.
Export rebuilds the trained model (as ``eval`` does, from the checkpoint's stored config) and
writes its whole state, with every LoRA update folded into the frozen weight it adapts
(``methods.lora.merged_state_dict``). Where nothing else remains — LoRA, BitFit, full
fine-tuning, the linear probe — the file is a plain ViT + head (``plain``): serving costs
exactly what the image model costs. Methods that add modules (AIM, ST-Adapter, VPT, prefix,
adapters) cannot fold; their modules' weights are written beside the backbone's and the model
keeps their compute. :func:`load_exported` rebuilds either kind without the pretrained file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from ..clip.model import is_clip_method
from ..config import add_override_argument, config_from_dict
from ..engine.build import build_model
from ..engine.checkpoint import atomic_write, load_adapter, read_adapter
from ..engine.logs import setup_logging
from ..errors import CheckpointError, UserError
from ..methods import parse_methods
from ..methods.lora import merged_state_dict
from ..models import ModelSpec, VideoClassifier, create_model

EXPORT_FORMAT = "vidadapt-model/1"
PLAIN_METHOD = "linear"  # a model with no method modules: the plain ViT + head

logger = logging.getLogger("vidadapt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="adapter .safetensors file written by `vidadapt train`")
    parser.add_argument("--out", required=True, help="the model .safetensors file to write")
    add_override_argument(parser)


def serving_spec(spec: ModelSpec) -> ModelSpec:
    """The architecture of the exported model: ``spec`` without LoRA (folded into the frozen
    weights), and the plain model (``linear``) where no method modules remain."""
    methods = [m.name for m in parse_methods(spec.method)]
    kept = [m for m in methods if m != "lora"]
    with torch.device("meta"):  # shapes only: which keys would the remaining model have?
        plain_spec = replace(spec, method=PLAIN_METHOD, options={PLAIN_METHOD: {}})
        plain_keys = set(_build(plain_spec).state_dict())
        kept_spec = replace(spec, method="+".join(kept) or PLAIN_METHOD,
                            options={m: spec.options[m] for m in kept})
        kept_keys = set(_build(kept_spec).state_dict())
    # BitFit and full fine-tuning change only the image model's own tensors: plain as well.
    return plain_spec if kept_keys == plain_keys else kept_spec


def export_state(model: VideoClassifier) -> tuple[dict[str, Tensor], ModelSpec]:
    """The model's whole state with LoRA folded in, and the spec of the model it loads into."""
    spec = model.spec
    if spec is None or spec.backbone == "custom" or is_clip_method(spec.method):
        raise UserError("export writes models that vidadapt.create_model builds from a backbone "
                        "preset; CLIP methods and custom ViT objects are not supported")
    state = {k: v.detach().contiguous().cpu() for k, v in merged_state_dict(model).items()}
    return state, serving_spec(spec)


def save_exported(path: str | os.PathLike, model: VideoClassifier,
                  classes: list[str] | None = None) -> ModelSpec:
    """Write :func:`export_state` of ``model`` to ``path``; returns the serving spec."""
    state, spec = export_state(model)
    metadata = {
        "format": EXPORT_FORMAT,
        "spec": json.dumps(asdict(spec)),
        "trained_method": model.spec.method,
        "classes": json.dumps(classes),
    }
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return spec


def _build(spec: ModelSpec) -> VideoClassifier:
    """The model of ``spec``, with random (or, under the meta device, no) weights."""
    return create_model(spec.method, backbone=spec.backbone, num_classes=spec.num_classes,
                        num_frames=spec.num_frames, image_size=spec.image_size,
                        dropout=spec.dropout, drop_path=spec.drop_path, **spec.options)


def load_exported(path: str | os.PathLike) -> tuple[VideoClassifier, list[str] | None]:
    """The model a :func:`save_exported` file holds (in eval mode) and its class names."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    if metadata.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not a model written by `vidadapt export` (format "
                              f"{metadata.get('format')!r}, expected {EXPORT_FORMAT!r})")
    spec = ModelSpec(**json.loads(metadata["spec"]))
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = _build(spec)
    model.load_state_dict(load_file(str(path)), strict=True, assign=True)
    return model.eval(), json.loads(metadata["classes"])


def run(args: argparse.Namespace) -> int:
    setup_logging()
    checkpoint = read_adapter(args.checkpoint)
    if checkpoint.config is None:
        raise CheckpointError(f"{args.checkpoint} stores no config to rebuild the model from")
    cfg = config_from_dict(checkpoint.config, args.overrides,
                           default_origin=f"{args.checkpoint} (stored config)")
    model = build_model(cfg, checkpoint.spec.num_classes, checkpoint.classes)
    load_adapter(model, checkpoint, args.checkpoint)
    spec = save_exported(args.out, model, checkpoint.classes)
    size_mb = Path(args.out).stat().st_size / 1e6
    if spec.method == PLAIN_METHOD:
        logger.info("wrote %s (%.1f MB): a plain ViT + head, %s folded into the frozen weights; "
                    "serving costs what the image model costs", args.out, size_mb,
                    checkpoint.spec.method)
    else:
        logger.info("wrote %s (%.1f MB): %s adds modules that cannot fold into the frozen "
                    "weights, so the file holds the full model state (backbone + head + %s)",
                    args.out, size_mb, spec.method, spec.method)
    return 0
