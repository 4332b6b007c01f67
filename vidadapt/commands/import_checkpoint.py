"""``vidadapt import-checkpoint``: a released checkpoint of a paper as a vidadapt adapter
checkpoint (``vidadapt.releases``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import method_overrides
from ..engine.checkpoint import backbone_fingerprint, save_adapter
from ..engine.logs import setup_logging
from ..releases import CONVERTERS, import_release

logger = logging.getLogger("vidadapt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the released .pth file")
    parser.add_argument("--method", required=True, choices=sorted(CONVERTERS))
    parser.add_argument("--pretrained", required=True,
                        help="the CLIP file the release started from (its frozen weights, the "
                             "architecture and the tokenizer)")
    parser.add_argument("--backbone", default="vit_b16_clip", help="backbone preset")
    parser.add_argument("--num-frames", type=int,
                        help="frames per clip, for releases that do not record it "
                             "(ST-Adapter, ActionCLIP)")
    parser.add_argument("--classes", help="class names, one per line, in label order "
                                          "(required by the CLIP methods' text heads)")
    parser.add_argument("--set", action="append", default=[], metavar="method.KEY=VALUE",
                        help="a method option the file cannot tell, e.g. "
                             "--set method.adapter_scale=1.0 (AIM's SSv2 models)")
    parser.add_argument("--out", required=True, help="folder for the adapter checkpoint")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    options = method_overrides(args.set, [args.method])
    classes = None
    if args.classes:
        classes = [c.strip() for c in Path(args.classes).read_text().splitlines() if c.strip()]
    model, cfg = import_release(args.file, args.method, args.pretrained, args.backbone, options,
                                args.num_frames, classes)
    out = Path(args.out) / "imported.safetensors"
    cfg.train.work_dir = str(out.parent)
    save_adapter(out, model, backbone_fingerprint(model), cfg.to_dict(), classes,
                 {"imported_from": str(args.file)})
    logger.info("wrote %s: %s, %d frames, %d classes", out, model.spec.method,
                model.spec.num_frames, model.spec.num_classes)
    return 0
