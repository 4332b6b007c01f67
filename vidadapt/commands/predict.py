"""``vidadapt predict``: the most likely classes of video files, from an adapter checkpoint.

The checkpoint holds the class names and the training config (frame sampling, crops), so no
annotation file is needed; ``--config`` or ``--set`` change how the videos are read.
"""

from __future__ import annotations

import argparse

import torch

from ..config import add_override_argument, config_from_dict, load_config
from ..data.annotations import Annotation, VideoRecord
from ..engine.build import build_model, video_dataset
from ..engine.checkpoint import load_adapter, read_classifier
from ..engine.distributed import default_device
from ..engine.evaluate import view_average
from ..engine.logs import setup_logging
from ..engine.trainer import autocast_dtype
from ..errors import CheckpointError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    parser.add_argument("--checkpoint", required=True, help="adapter .safetensors file")
    parser.add_argument("--config", help="YAML recipe (default: the checkpoint's stored config)")
    add_override_argument(parser)
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per video")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    checkpoint = read_classifier(args.checkpoint)
    if not checkpoint.classes:
        raise CheckpointError(f"{args.checkpoint} stores no class names to name predictions with")
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = config_from_dict(checkpoint.config, args.overrides,
                               default_origin=f"{args.checkpoint} (stored config)")
    device = default_device()
    model = build_model(cfg, len(checkpoint.classes), checkpoint.classes)
    load_adapter(model, checkpoint, args.checkpoint)
    model.to(device).eval()

    records = [VideoRecord(path, label=-1) for path in args.videos]  # labels are unknown
    views = (cfg.data.test_clips, cfg.data.transform.test_crops)
    dataset = video_dataset(cfg, Annotation(records, checkpoint.classes, "command line"),
                            train=False, views=views)
    amp = autocast_dtype(cfg.train.amp, device)
    unreadable = 0
    for index, path in enumerate(args.videos):
        video = dataset[index]["video"]  # [V, T, 3, H, W]; None: unreadable (never replaced)
        if video is None:
            print(f"{path}: cannot read this video ({dataset.skipped()[path]})")
            unreadable += 1
            continue
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            probs = view_average(model, video[None].to(device))[0][0]  # [C]
        top = probs.topk(min(args.top_k, len(probs)))
        print(path)
        for p, c in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {p:.4f}  {checkpoint.classes[c]}")
    return 1 if unreadable else 0
