"""``vidadapt check-data``: find the unreadable videos of an annotation before training.

Every video is opened, indexed and has its first and last frames decoded (a truncated file
fails on the last one), in parallel processes. Bad files are printed with the reason; the exit
status is 1 when there are any, so the command can gate a pipeline. ``--write-clean`` writes
the annotation without them.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from ..data.annotations import FORMATS, Annotation, detect_format, load_annotation, write_annotation
from ..data.dataset import check_record, default_reader
from ..engine.logs import progress, setup_logging

WRITABLE_FORMATS = ("list", "rawframes")  # what write_annotation can produce


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("annotation", help="annotation file (a folder for 'folder'/'hmdb51')")
    parser.add_argument("--root", help="folder video paths are relative to "
                                       "(default: the annotation's folder)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                        help="annotation format (default: detected)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes checking videos (default: one per core; 0 = none)")
    parser.add_argument("--min-frames", type=int, default=1,
                        help="videos with fewer frames count as bad (default: 1)")
    parser.add_argument("--reader", default="pyav", choices=("pyav", "decord", "torchcodec"),
                        help="the decoder training will use (data.reader; default: pyav)")
    parser.add_argument("--write-clean", metavar="OUT",
                        help="write the annotation without the bad files to OUT (list or "
                             "rawframes format; other formats are written as a video list)")


def run(args: argparse.Namespace) -> int:
    setup_logging()  # progress lines when the output is not a terminal
    annotation = load_annotation(args.annotation, root=args.root, format=args.format)
    check = partial(check_record, reader=default_reader(annotation, args.reader),
                    min_frames=args.min_frames)
    records = annotation.records
    reasons: list[str | None] = []
    with progress(len(records), "checking videos", "video") as bar:
        for record, reason in zip(records, _map(check, records, args.workers), strict=True):
            if reason is not None:
                bar.write(f"{record.path}: {reason}")
            reasons.append(reason)
            bar.update()
    num_bad = sum(reason is not None for reason in reasons)
    print(f"checked {len(records)} files: {num_bad} bad")
    if args.write_clean:
        good = [record for record, reason in zip(records, reasons, strict=True) if reason is None]
        _write_clean(Annotation(good, annotation.classes, annotation.source), args)
    return 1 if num_bad else 0


def _map(function, items: list, workers: int):
    """``map`` in ``workers`` processes (in order), or in this one for ``workers <= 1``."""
    if workers <= 1:
        yield from map(function, items)
        return
    chunksize = max(1, min(32, len(items) // (4 * workers)))  # few round trips, even load
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(function, items, chunksize=chunksize)


def _write_clean(annotation: Annotation, args: argparse.Namespace) -> None:
    source_format = args.format if args.format != "auto" else detect_format(Path(args.annotation))
    out_format = source_format if source_format in WRITABLE_FORMATS else "list"
    write_annotation(annotation, args.write_clean, format=out_format)
    note = "" if out_format == source_format else f" (a video list: {source_format} is read-only)"
    print(f"wrote {len(annotation.records)} good records to {args.write_clean}{note}")
