"""``vidadapt export``: one self-contained safetensors model for serving, from an adapter
checkpoint. The model is rebuilt as ``eval`` rebuilds it (from the checkpoint's stored config);
``vidadapt.export`` says what the file holds and reads it back.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import add_override_argument, config_from_dict
from ..engine.build import build_model
from ..engine.checkpoint import load_adapter, read_classifier
from ..engine.logs import setup_logging
from ..errors import CheckpointError
from ..export import ONNX_OPSET, PLAIN_METHOD, save_exported, save_onnx
from ..models import ModelSpec

logger = logging.getLogger("vidadapt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="adapter .safetensors file written by `vidadapt train`")
    parser.add_argument("--out", required=True, help="the model file to write")
    parser.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                        help="safetensors: vidadapt's serving file; onnx: a traced graph with "
                             "a dynamic batch (checked with onnxruntime when installed)")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset")
    add_override_argument(parser)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    checkpoint = read_classifier(args.checkpoint)
    if checkpoint.config is None:
        raise CheckpointError(f"{args.checkpoint} stores no config to rebuild the model from")
    cfg = config_from_dict(checkpoint.config, args.overrides,
                           default_origin=f"{args.checkpoint} (stored config)")
    model = build_model(cfg, checkpoint.spec.num_classes, checkpoint.classes)
    load_adapter(model, checkpoint, args.checkpoint)
    if args.format == "onnx":
        save_onnx(model, args.out, args.opset)
        logger.info("wrote %s (%.1f MB): input video [batch, T, 3, H, W], output logits",
                    args.out, Path(args.out).stat().st_size / 1e6)
        return 0
    spec = save_exported(args.out, model, checkpoint.classes)
    logger.info("wrote %s (%.1f MB): %s", args.out, Path(args.out).stat().st_size / 1e6,
                export_summary(checkpoint.spec, spec))
    return 0


def export_summary(trained: ModelSpec, served: ModelSpec) -> str:
    """What the exported file is, from the trained model's spec and the served one's."""
    if served.method == PLAIN_METHOD:
        return (f"a plain ViT + head, {trained.method} folded into the frozen weights; serving "
                "costs what the image model costs")
    if (served.method, served.options) != (trained.method, trained.options):
        return (f"the foldable layers of {trained.method} are folded into the frozen weights; "
                f"the file holds the full model state with what stays (served as "
                f"{served.method}, options {served.options})")
    return (f"{served.method} adds modules that cannot fold into the frozen weights, so the "
            f"file holds the full model state (backbone + head + {served.method})")
