"""``vidadapt info``: parameters and compute of a method on a backbone, without any weights."""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import parse_override
from ..errors import ConfigError
from ..models import create_model

NAME = "info"
HELP = "Report total/tunable parameters (per part) and GFLOPs per view of a method on a backbone."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="method name, or stacked methods 'a+b'")
    parser.add_argument("--backbone", default="vit_b16_clip", help="backbone preset")
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip T")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--set", action="append", default=[], metavar="method.KEY=VALUE",
        help="method option (YAML value), e.g. --set method.num_tadapter=2; repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def method_options(assignments: list[str], methods: list[str]) -> dict:
    """``method.KEY=VALUE`` (one method) or ``method.NAME.KEY=VALUE`` (stacked) → options."""
    options: dict = {}
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


def measure(model: torch.nn.Module, frames: int, image_size: int) -> float:
    """FLOPs of one forward over one view, counted by torch (a multiply-add counts 2)."""
    video = torch.empty(1, frames, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        model(video)
    return counter.get_total_flops()


def run(args: argparse.Namespace) -> int:
    methods = args.method.split("+")
    options = method_options(args.set, methods)
    # The meta device gives exact shapes and counts without allocating any weights.
    with torch.device("meta"):
        model = create_model(
            args.method, backbone=args.backbone, num_classes=args.num_classes,
            num_frames=args.frames, image_size=args.image_size, **options,
        ).eval()
        flops = measure(model, args.frames, args.image_size)
    counts = model.parameter_counts()
    report = {
        "method": args.method,
        "backbone": args.backbone,
        "num_classes": args.num_classes,
        "frames": args.frames,
        "image_size": args.image_size,
        "total_params": counts["total"],
        "tunable_params": counts["tunable"],
        "tunable_by_part": {k: v for k, v in counts.items() if k not in ("total", "tunable")},
        "gflops_per_view": flops / 1e9,
        # Papers (fvcore) count a multiply-add once: AIM's "606 GFLOPs" is 3 views of this.
        "gmacs_per_view": flops / 2e9,
        "options": model.spec.options,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    share = 100 * counts["tunable"] / counts["total"]
    print(f"{args.method} on {args.backbone}, {args.frames}x{args.image_size}², "
          f"{args.num_classes} classes")
    print(f"  total params    {report['total_params']:>14,}")
    print(f"  tunable params  {report['tunable_params']:>14,}  ({share:.2f}%)")
    for part, n in report["tunable_by_part"].items():
        print(f"    {part:<14}{n:>14,}")
    print(f"  GFLOPs / view   {report['gflops_per_view']:>14.1f}  "
          f"({report['gmacs_per_view']:.1f} GMACs)")
    return 0
