"""``vidadapt info``: parameters and compute of a method on a backbone, without any weights."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..checkpoints import create_backbone
from ..clip.heads import readable
from ..clip.model import (
    DEFAULT_LOGIT_SCALE,
    TEXT_PRESET_FOR_BACKBONE,
    Clip,
    ClipVideoClassifier,
    create_clip_model,
    is_clip_method,
    random_text_tower,
)
from ..clip.text import TextTransformer, text_preset
from ..clip.tokenizer import ClipTokenizer
from ..config import parse_override
from ..errors import ConfigError
from ..methods import parse_methods
from ..models import TunableModel, create_model


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


def count_flops(fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """``fn(*args)`` and the FLOPs torch counts in it (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return out, counter.get_total_flops()


def measure(model: torch.nn.Module, frames: int, image_size: int) -> int:
    """FLOPs of one forward over one view."""
    return count_flops(model, torch.empty(1, frames, 3, image_size, image_size))[1]


def measure_clip(model: ClipVideoClassifier, frames: int, image_size: int) -> tuple[int, int]:
    """FLOPs per view and FLOPs per class set of a CLIP classifier.

    A 2-clip batch tells them apart: what it adds to a 1-clip batch is paid per view (image
    tower, temporal fusion, X-CLIP's prompt generator, CoCoOp's text pass for every clip); the
    rest of a forward (CoOp's prompts through the text tower) and ``set_classes`` (template
    embeddings) is paid once per class set.
    """
    # Classes first: it also refreshes embeddings that a forward would otherwise recompute
    # once (ActionCLIP's, after its tuned text tower switches to eval).
    _, class_set = count_flops(model.set_classes, model.classes)
    video = torch.empty(1, frames, 3, image_size, image_size)
    features, image = count_flops(model.video_features, video)  # [1, F]
    _, one = count_flops(model.classify, features)
    _, two = count_flops(model.classify, torch.cat([features, features]))  # [2, F]
    return image + two - one, class_set + 2 * one - two


def clip_towers(backbone: str, image_size: int, classes: list[str], method: str,
                options: dict) -> Clip:
    """Towers shaped as in the model a user runs, with random weights.

    A CLIP image preset gets its CLIP file's text tower (``TEXT_PRESET_FOR_BACKBONE`` at CLIP's
    49,408-token vocabulary); another backbone, the random text tower of ``method.text:
    random``, whose vocabulary is learned from the class names. The tokenizer is learned from
    the class names either way: only the text's shapes matter here.
    """
    (spec,) = parse_methods(method)
    cfg = spec.make_config(options)
    visual = create_backbone(backbone, image_size=image_size)
    tokenizer = ClipTokenizer.learn([readable(c) for c in classes] + cfg.vocabulary_texts())
    if backbone in TEXT_PRESET_FOR_BACKBONE:
        preset = cfg.text_preset or TEXT_PRESET_FOR_BACKBONE[backbone]
        text = TextTransformer(text_preset(preset, embed_dim=visual.proj.shape[1]))
    else:
        text = random_text_tower(visual, tokenizer, cfg.text_preset, backbone)
    return Clip(visual, text, tokenizer, DEFAULT_LOGIT_SCALE)


def build_clip_model(
    method: str, backbone: str, num_classes: int, frames: int, image_size: int, shots: int,
    options: dict,
) -> ClipVideoClassifier:
    """The CLIP classifier for ``num_classes`` placeholder class names ("class 0", ...); a
    Tip-Adapter cache holds ``shots`` videos per class."""
    classes = [f"class {i}" for i in range(num_classes)]
    towers = clip_towers(backbone, image_size, classes, method, options)
    model = create_clip_model(method, classes, towers, num_frames=frames, **options)
    if model.needs_training_features:
        N = shots * num_classes
        labels = torch.arange(N, device="cpu").remainder(num_classes)[:, None]  # [N, 1]
        model.fit_features(torch.empty(N, 1, model.embed_dim), labels)  # [N, V=1, E]
    return model


def model_report(
    method: str, backbone: str = "vit_b16_clip", num_classes: int = 400, frames: int = 8,
    image_size: int = 224, shots: int = 16, options: dict | None = None,
) -> dict:
    """Parameters and FLOPs of ``method`` on ``backbone`` (what ``vidadapt info`` prints).

    For a CLIP method (``is_clip_method``) ``total_params`` counts both towers, ``text_params``
    the text tower, and ``gflops_per_view`` leaves out the class embeddings, which the text
    tower computes once per class set (``text_gflops_per_class_set``), except CoCoOp's: those
    depend on the clip and are in ``gflops_per_view``.
    """
    options = options or {}
    clip = is_clip_method(method)
    # The meta device gives exact shapes and counts without allocating any weights.
    with torch.device("meta"):
        if clip:
            model: TunableModel = build_clip_model(
                method, backbone, num_classes, frames, image_size, shots, options
            ).eval()
            flops, text_flops = measure_clip(model, frames, image_size)
        else:
            model = create_model(method, backbone=backbone, num_classes=num_classes,
                                 num_frames=frames, image_size=image_size, **options).eval()
            flops = measure(model, frames, image_size)
    counts = model.parameter_counts()
    report = {
        "method": method,
        "backbone": backbone,
        "num_classes": num_classes,
        "frames": frames,
        "image_size": image_size,
        "total_params": counts["total"],
        "tunable_params": counts["tunable"],
        "tunable_by_part": {k: v for k, v in counts.items() if k not in ("total", "tunable")},
        "gflops_per_view": flops / 1e9,
        # Papers (fvcore) count a multiply-add once: AIM's "606 GFLOPs" is 3 views of this.
        "gmacs_per_view": flops / 2e9,
        "options": model.spec.options,
    }
    if clip:
        report["text_params"] = sum(p.numel() for p in model.text.parameters())
        report["text_gflops_per_class_set"] = text_flops / 1e9
    return report


def run(args: argparse.Namespace) -> int:
    options = method_options(args.set, args.method.split("+"))
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
