"""Base-to-new generalisation (CoCoOp's protocol), on any annotation.

The classes, in label order, are split in two halves: the first ``ceil(C / 2)`` are *base*,
the rest *new*. A method trains on the base classes' videos (``data.class_subset: base``) and
is tested on the base classes and, with the new class names, on the new classes, which it
never saw; the summary is the harmonic mean ``H = 2 b n / (b + n)`` of the two accuracies.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..data.annotations import Annotation
from ..errors import DataError

SUBSETS = ("all", "base", "new")


def base_new_split(num_classes: int) -> tuple[list[int], list[int]]:
    """Label ids of the base (first half, rounded up) and new classes."""
    half = math.ceil(num_classes / 2)
    return list(range(half)), list(range(half, num_classes))


def subset_ids(num_classes: int, subset: str) -> list[int]:
    """Label ids of the ``subset`` ("all", "base" or "new") of ``num_classes`` classes."""
    if subset == "all":
        return list(range(num_classes))
    base, new = base_new_split(num_classes)
    return base if subset == "base" else new


def class_subset(annotation: Annotation, subset: str) -> Annotation:
    """The videos of the ``subset`` classes ("base" or "new"; "all" keeps everything), with
    labels renumbered from 0 in the subset's class order."""
    if subset == "all":
        return annotation
    kept = subset_ids(len(annotation.classes), subset)
    if not kept:
        raise DataError(f"{annotation.source}: {len(annotation.classes)} class(es) leave no "
                        f"{subset} classes")
    relabel = {old: i for i, old in enumerate(kept)}
    records = [replace(r, label=relabel[r.label]) for r in annotation.records
               if r.label in relabel]
    return Annotation(records, [annotation.classes[i] for i in kept], annotation.source)


def harmonic_mean(base: float, new: float) -> float:
    """``2 b n / (b + n)``; 0 when both are 0."""
    return 2 * base * new / (base + new) if base + new else 0.0
