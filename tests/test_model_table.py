"""Every registered method and every sensible stack through the one factory: build, one
training step, save and reload the adapter, export and reload the serving model. Also the stacks
the factory refuses, and adapter files written before the one-model redesign (format 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vidadapt.config import config_from_dict
from vidadapt.engine.build import build_model
from vidadapt.engine.checkpoint import (
    backbone_fingerprint,
    load_adapter,
    read_adapter,
    save_adapter,
)
from vidadapt.errors import ConfigError
from vidadapt.export import load_exported, save_exported
from vidadapt.methods.registry import METHODS, parse_methods
from vidadapt.models import VideoModel, create_model

BACKBONE = "vit_tiny_clip"  # 32 px, 4 blocks of width 128, with CLIP's projection
CLASSES = ["walking", "running", "jumping"]
FRAMES = 4
FORMAT1 = Path(__file__).parent / "fixtures" / "format1"

# Options that keep the tiny models tiny; a text head gets a random text tower.
SMALL = {
    "evl": {"num_layers": 2},
    "prefix": {"length": 4, "mid_dim": 32},
    "mam": {"prefix_length": 4, "mid_dim": 32, "bottleneck": 16},
    "actionclip": {"fusion_layers": 1},
    "efficient_prompt": {"prefix_len": 2, "suffix_len": 2},
    "coop": {"n_ctx": 2},
    "cocoop": {"n_ctx": 2, "ctx_init": None},
    "tip_adapter": {"finetune": True},
    "side_network": {"temporal_width": 16, "pool_layers": 1},
    "dualpath": {"spatial_frames": 4, "grid": 2},
    "motion_prompt": {"num_tokens": 2, "width": 16, "deep": True},
    "sparse_tubes": {"tubes": [{"kernel": [1, 8, 8], "stride": [4, 8, 8], "offset": [1, 0, 0]},
                               {"kernel": [4, 16, 16], "stride": [4, 16, 16]}]},
}
STACKS = [
    "lora+aim", "vpt+aim", "adapter+aim", "mam+prefix", "bitfit+st_adapter", "lora+evl",
    "lora+coop", "aim+coop", "vpt+cocoop", "st_adapter+zero_shot", "st_adapter+clip_adapter",
    "lora+tip_adapter", "aim+efficient_prompt", "lora+actionclip", "vpt+xclip",
    "lora+zeroi2v", "zeroi2v+lora", "zeroi2v+bitfit", "zeroi2v+aim", "prefix+zeroi2v",
    "lora+side_network", "vpt+dualpath", "zeroi2v+evl", "zeroi2v+side_network",
    "side_network+aim", "motion_prompt+vpt", "vpt+motion_prompt", "motion_prompt+aim",
    "motion_prompt+coop", "sparse_tubes+adapter", "sparse_tubes+lora", "vpt+sparse_tubes",
    "st_adapter+evidential", "aim+evidential",
]


def options(stack: str) -> dict:
    methods = parse_methods(stack)
    per_method = {}
    for m in methods:
        per_method[m.name] = dict(SMALL.get(m.name, {}))
        if m.classifies_with_text:
            per_method[m.name]["text"] = "random"
    return per_method


def build(stack: str, seed: int = 0) -> VideoModel:
    torch.manual_seed(seed)
    return create_model(stack, BACKBONE, classes=CLASSES, num_frames=FRAMES, **options(stack))


def video(batch: int = 3, channels: int = 3) -> torch.Tensor:
    """Clips of ``channels`` per frame: RGB, then any motion channels the model reads."""
    return torch.randn(batch, FRAMES, channels, 32, 32,
                       generator=torch.Generator().manual_seed(7))


def fit_cache(model: VideoModel) -> None:
    """Tip-Adapter's cache from stand-in training features (one per class)."""
    if model.needs_training_features:
        features = model.video_features(video()).detach()[:, None]  # [3, V=1, E]
        model.fit_features(features, torch.arange(3)[:, None])


@pytest.mark.parametrize("stack", sorted(METHODS) + STACKS)
def test_build_train_save_reload_and_export(stack, tmp_path):
    model = build(stack)
    fit_cache(model)
    clips = video(channels=model.input_channels)
    tuned = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    counts = model.parameter_counts()
    assert counts["tunable"] == sum(p.numel() for p in tuned.values())
    assert set(counts) - {"total", "tunable"} >= set(stack.split("+")) - {"zero_shot"}

    # One training step: every trainable parameter gets a gradient, and the step moves them.
    model.train()
    labels = torch.tensor([0, 1, 2])
    logits = model(clips)
    assert logits.shape == (3, len(CLASSES)) and torch.isfinite(logits).all()
    if tuned:
        loss = model.loss_fn(logits, labels, 0.5) if model.loss_fn else \
            F.cross_entropy(logits, labels)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p -= 0.1 * p.grad.sign()
        assert any(not torch.equal(p, tuned[n]) for n, p in model.named_parameters()
                   if n in tuned)

    # The adapter file rebuilds the same model: same seed, same frozen weights.
    model.eval()
    with torch.no_grad():
        expected = model(clips)
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, model, backbone_fingerprint(model), classes=CLASSES)
    rebuilt = build(stack)
    load_adapter(rebuilt, path)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(clips), expected, rtol=1e-5, atol=1e-5)

    # The exported file serves the same logits without the frozen weights' source.
    exported_path = tmp_path / "model.safetensors"
    save_exported(exported_path, model, CLASSES)
    served, classes = load_exported(exported_path)
    assert classes == CLASSES
    with torch.no_grad():
        torch.testing.assert_close(served(clips), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stack, message", [
    ("coop+zero_shot", "methods coop and zero_shot both provide the model's head"),
    ("efficient_prompt+actionclip", "both provide the model's temporal"),
    ("evl+coop", "evl replaces the readout with features outside CLIP's joint space, so "
                 "coop's text head cannot read them"),
    ("st_adapter+efficient_prompt", "st_adapter averages the frames before the final norm, "
                                    "which leaves no frames for efficient_prompt's temporal"),
    ("st_adapter+evl", "evl replaces the readout that st_adapter changes"),
    ("linear+coop", "method 'linear' cannot be combined with others"),
    ("aim+aim", "names a method twice"),
    ("sparse_tubes+aim", "sparse_tubes gives the image model images that are not the clip's "
                         "frames in time, and aim would relate them"),
    ("motion_prompt+dualpath", "the clips' rgb_diff maps are per frame, and dualpath gives "
                               "the image model other images than the clip's frames"),
    ("motion_prompt+sparse_tubes", "and sparse_tubes gives the image model other images"),
    ("sparse_tubes+dualpath", "sparse_tubes and dualpath each give the image model their own "
                              "inputs"),
])
def test_stacks_whose_stages_do_not_fit_are_refused(stack, message):
    with pytest.raises(ConfigError, match=message):
        build(stack)


def test_a_backbone_method_adapts_the_image_tower_under_a_text_head():
    lora_coop, coop = build("lora+coop"), build("coop")
    assert coop.parameter_counts()["coop"] == lora_coop.parameter_counts()["coop"] == 2 * 64
    assert lora_coop.parameter_counts()["lora"] > 0
    with torch.no_grad():  # LoRA starts at zero: the same model until it trains
        lora_coop.head.prompts.ctx.copy_(coop.head.prompts.ctx)  # (LoRA drew first)
        torch.testing.assert_close(lora_coop.eval()(video()), coop.eval()(video()))


@pytest.mark.parametrize("method", ["aim", "evl", "coop", "efficient_prompt", "xclip",
                                    "tip_adapter"])
def test_format1_adapter_files_still_load(method):
    """Files written by vidadapt before the one-model redesign (its CLIP classifier named its
    parts at the top level, EVL's decoder was the video_head) load with the same logits."""
    checkpoint = read_adapter(FORMAT1 / f"{method}.safetensors")
    assert checkpoint.format == "vidadapt-adapter/1"
    model = build_model(config_from_dict(checkpoint.config), checkpoint.spec.num_classes,
                        checkpoint.classes)
    load_adapter(model, checkpoint)
    expected = load_file(str(FORMAT1 / "expected_logits.safetensors"))
    with torch.no_grad():
        logits = model.eval()(expected["video"])
    torch.testing.assert_close(logits, expected[method], rtol=1e-5, atol=1e-5)
