"""``vidadapt base-to-new``: CoCoOp's generalisation protocol for the CLIP methods.

The model (trained with ``--set data.class_subset=base``, or zero-shot without a checkpoint)
is scored on the base classes' test videos, then, given the new class names, on the new
classes' videos, which it never trained on. Prints and writes ``base_to_new_<split>.json``
with both accuracies and their harmonic mean (see ``vidadapt.clip.protocols``)::

    vidadapt train configs/synthetic/coop.yaml --set data.class_subset=base
    vidadapt base-to-new --checkpoint runs/coop/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from ..clip.protocols import harmonic_mean
from ..engine.build import build_dataset, build_model, resolve_data
from ..engine.checkpoint import load_adapter
from ..engine.distributed import init_distributed, shutdown_distributed
from ..engine.evaluation import evaluate, prepare_untrained
from ..engine.logs import setup_logging
from ..engine.trainer import autocast_dtype
from ..errors import ConfigError
from ..methods.registry import parse_methods
from .eval import add_evaluation_arguments, config_and_checkpoint

logger = logging.getLogger("vidadapt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(
        parser, checkpoint_help="adapter trained on the base classes (none for methods that "
        "train nothing)", default_split="test",
    )


def run(args: argparse.Namespace) -> int:
    dist = init_distributed()
    setup_logging(dist.is_main)
    try:
        cfg, checkpoint = config_and_checkpoint(args)
        if not any(m.classifies_with_text for m in parse_methods(cfg.model.method)):
            raise ConfigError(f"base-to-new needs a CLIP method (its classifier comes from "
                              f"class names); {cfg.model.method!r} has none")
        cfg.data = resolve_data(cfg.data, dist)
        views = (cfg.data.test_clips, cfg.data.transform.test_crops)
        splits = {subset: replace(cfg, data=replace(cfg.data, class_subset=subset))
                  for subset in ("base", "new")}
        base_set = build_dataset(splits["base"], args.split, train=False, views=views)
        new_set = build_dataset(splits["new"], args.split, train=False, views=views)
        model = build_model(splits["base"], len(base_set.classes), base_set.classes)
        amp_dtype = autocast_dtype(cfg.train.amp, dist.device)
        if checkpoint:
            load_adapter(model, checkpoint, args.checkpoint)
            model.to(dist.device)
        else:
            prepare_untrained(splits["base"], model.to(dist.device), base_set.classes,
                              amp_dtype, dist)
        base = evaluate(splits["base"], model, base_set, amp_dtype, dist)["top1"]
        model.set_classes(new_set.classes)
        new = evaluate(splits["new"], model, new_set, amp_dtype, dist)["top1"]
        if dist.is_main:
            result = {"base": base, "new": new, "harmonic_mean": harmonic_mean(base, new),
                      "base_classes": base_set.classes, "new_classes": new_set.classes}
            out = Path(args.out or (Path(args.checkpoint).parent if checkpoint
                                    else cfg.train.work_dir))
            out.mkdir(parents=True, exist_ok=True)
            (out / f"base_to_new_{args.split}.json").write_text(json.dumps(result, indent=1))
            print(json.dumps({k: result[k] for k in ("base", "new", "harmonic_mean")}))
    finally:
        shutdown_distributed()
    return 0
