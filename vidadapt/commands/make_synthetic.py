"""``vidadapt make-synthetic``: write the synthetic video set (classes that need time)."""

from __future__ import annotations

import argparse

from ..data.synthetic import CLASSES, make_synthetic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=520, help="training videos")
    parser.add_argument("--num-val", type=int, default=130, help="validation videos")
    parser.add_argument("--num-test", type=int, default=0,
                        help="test videos (0: no test split; the validation split serves)")
    parser.add_argument("--frames", type=int, default=16, help="frames per video")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same videos")
    parser.add_argument("--workers", type=int, default=2, help="encoding processes")


def run(args: argparse.Namespace) -> int:
    lists = make_synthetic(
        args.out, args.num_train, args.num_val, args.frames, args.size, args.seed, args.workers,
        num_test=args.num_test,
    )
    counts = " + ".join(str(n) for n in (args.num_train, args.num_val, args.num_test) if n)
    print(f"wrote {counts} videos of {len(CLASSES)} classes to {args.out}")
    for split, path in lists.items():
        print(f"  {split}: {path}")
    return 0
