"""Parameters and compute of a method on a backbone, without any weights (``vidadapt info``).

Models are built on the meta device: exact shapes and counts, nothing allocated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .checkpoints import create_backbone
from .clip.text import TextTransformer, text_preset
from .clip.tokenizer import ClipTokenizer
from .clip.towers import (
    DEFAULT_LOGIT_SCALE,
    TEXT_PRESET_FOR_BACKBONE,
    Clip,
    ClipOptions,
    random_text_tower,
    readable,
)
from .methods.registry import parse_methods
from .methods.text_head import TextHead
from .models import VideoModel, create_model, method_configs


def count_flops(fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """``fn(*args)`` and the FLOPs torch counts in it (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return out, counter.get_total_flops()


def one_view(model: VideoModel, frames: int, image_size: int) -> Tensor:
    """An empty clip of the model's input: RGB and any motion channels it reads."""
    return torch.empty(1, frames, model.input_channels, image_size, image_size)


def measure(model: VideoModel, frames: int, image_size: int) -> int:
    """FLOPs of one forward over one view."""
    return count_flops(model, one_view(model, frames, image_size))[1]


def measure_text_head(model: VideoModel, frames: int, image_size: int) -> tuple[int, int]:
    """FLOPs per view and FLOPs per class set of a model with a text head.

    A 2-clip batch tells them apart: what it adds to a 1-clip batch is paid per view (image
    tower, temporal fusion, X-CLIP's prompt generator, CoCoOp's text pass for every clip); the
    rest of a forward (CoOp's prompts through the text tower) and ``set_classes`` (template
    embeddings) is paid once per class set.
    """
    # Classes first: it also refreshes embeddings that a forward would otherwise recompute
    # once (ActionCLIP's, after its tuned text tower switches to eval).
    _, class_set = count_flops(model.set_classes, model.head.classes)
    video = one_view(model, frames, image_size)
    (features, context), image = count_flops(features_and_context, model, video)
    _, one = count_flops(model.classify, features, context)
    _, two = count_flops(model.classify, _twice(features), _twice(context))
    return image + two - one, class_set + 2 * one - two


def features_and_context(model: VideoModel, video: Tensor) -> tuple[Tensor, Tensor | None]:
    """What ``classify`` takes for ``video``: the features and the context stage's output."""
    tokens, collected, layout = model.encode(video)
    context = model.context(tokens, layout) if model.context is not None else None
    return model.read(tokens, collected, layout, video), context


def _twice(x: Tensor | None) -> Tensor | None:
    return None if x is None else torch.cat([x, x])  # a 2-clip batch of the same clip


def report_towers(backbone: str, image_size: int, classes: list[str], text_cfg: ClipOptions
                  ) -> Clip:
    """Towers shaped as in the model a user runs, with random weights.

    A CLIP image preset gets its CLIP file's text tower (``TEXT_PRESET_FOR_BACKBONE`` at CLIP's
    49,408-token vocabulary); another backbone, the random text tower of ``method.text:
    random``, whose vocabulary is learned from the class names. The tokenizer is learned from
    the class names either way: only the text's shapes matter here.
    """
    visual = create_backbone(backbone, image_size=image_size)
    tokenizer = ClipTokenizer.learn([readable(c) for c in classes] + text_cfg.vocabulary_texts())
    if backbone in TEXT_PRESET_FOR_BACKBONE:
        preset = text_cfg.text_preset or TEXT_PRESET_FOR_BACKBONE[backbone]
        text = TextTransformer(text_preset(preset, embed_dim=visual.proj.shape[1]))
    else:
        text = random_text_tower(visual, tokenizer, text_cfg.text_preset, backbone)
    return Clip(visual, text, tokenizer, DEFAULT_LOGIT_SCALE)


def report_model(
    method: str, backbone: str, num_classes: int, frames: int, image_size: int, shots: int,
    options: dict,
) -> VideoModel:
    """The model ``model_report`` measures. A text head classifies ``num_classes``
    placeholder names ("class 0", ...) and a Tip-Adapter cache holds ``shots`` videos per
    class."""
    methods = parse_methods(method)
    configs = method_configs(methods, dict(options))
    text_cfg = next((configs[m.name] for m in methods if m.classifies_with_text), None)
    if text_cfg is None:
        return create_model(method, backbone, num_classes=num_classes, num_frames=frames,
                            image_size=image_size, **configs)
    classes = [f"class {i}" for i in range(num_classes)]
    towers = report_towers(backbone, image_size, classes, text_cfg)
    model = create_model(method, towers, classes=classes, num_frames=frames, **configs)
    if model.needs_training_features:
        N = shots * num_classes
        labels = torch.arange(N, device="cpu").remainder(num_classes)[:, None]  # [N, 1]
        model.fit_features(torch.empty(N, 1, model.head.embed_dim), labels)  # [N, V=1, E]
    return model


def model_report(
    method: str, backbone: str = "vit_b16_clip", num_classes: int = 400, frames: int = 8,
    image_size: int = 224, shots: int = 16, options: dict | None = None,
) -> dict:
    """Parameters and FLOPs of ``method`` on ``backbone``.

    With a text head, ``total_params`` counts both towers, ``text_params`` the text tower, and
    ``gflops_per_view`` leaves out the class embeddings, which the text tower computes once per
    class set (``text_gflops_per_class_set``), except CoCoOp's: those depend on the clip and
    are in ``gflops_per_view``.
    """
    with torch.device("meta"):
        model = report_model(method, backbone, num_classes, frames, image_size, shots,
                             options or {}).eval()
        text_head = isinstance(model.head, TextHead)
        if text_head:
            flops, text_flops = measure_text_head(model, frames, image_size)
        else:
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
    if text_head:
        report["text_params"] = sum(p.numel() for p in model.head.text.parameters())
        report["text_gflops_per_class_set"] = text_flops / 1e9
    return report
