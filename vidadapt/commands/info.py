"""``vidadapt info``: parameters and compute of a method on a backbone, without any weights
(``vidadapt.report``)."""

from __future__ import annotations

import argparse
import json

from ..config import method_overrides
from ..report import model_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="method name, or stacked methods 'a+b'")
    parser.add_argument("--backbone", default="vit_b16_clip", help="backbone preset")
    parser.add_argument("--num-classes", type=int, default=400,
                        help="classes (CLIP methods: placeholder names 'class 0', 'class 1', ...)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip T")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--shots", type=int, default=16,
                        help="Tip-Adapter: training videos per class, which size its cache")
    parser.add_argument(
        "--set", action="append", default=[], metavar="method.KEY=VALUE",
        help="method option (YAML value), e.g. --set method.num_tadapter=2; repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    options = method_overrides(args.set, args.method.split("+"))
    report = model_report(args.method, args.backbone, args.num_classes, args.frames,
                          args.image_size, args.shots, options)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def print_report(report: dict) -> None:
    share = 100 * report["tunable_params"] / report["total_params"]
    print(f"{report['method']} on {report['backbone']}, {report['frames']}x"
          f"{report['image_size']}², {report['num_classes']} classes")
    print(f"  total params    {report['total_params']:>14,}")
    if "text_params" in report:
        print(f"    text tower    {report['text_params']:>14,}  (counted in the total)")
    print(f"  tunable params  {report['tunable_params']:>14,}  ({share:.2f}%)")
    for part, n in report["tunable_by_part"].items():
        print(f"    {part:<14}{n:>14,}")
    print(f"  GFLOPs / view   {report['gflops_per_view']:>14.1f}  "
          f"({report['gmacs_per_view']:.1f} GMACs)")
    if "text_gflops_per_class_set" not in report:
        return
    if report["text_gflops_per_class_set"] == 0:  # CoCoOp: class embeddings depend on the clip
        print("  text GFLOPs     the text tower runs for every clip: in the GFLOPs per view")
    else:
        print(f"  text GFLOPs     {report['text_gflops_per_class_set']:>14.1f}  (the text "
              "tower, once per class set: not in the GFLOPs per view)")
