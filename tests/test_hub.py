"""save_pretrained / from_pretrained: a folder with config.json, model.safetensors and a model
card rebuilds the trained model, from the experiment config or from the spec alone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from vidadapt import create_backbone, from_pretrained, save_pretrained
from vidadapt.config import config_from_dict
from vidadapt.engine.build import build_model
from vidadapt.errors import CheckpointError
from vidadapt.models import VideoModel, create_model

CLASSES = ["walking", "running", "jumping"]
IMAGE = "builtin:vit_tiny_synthetic"


def video() -> torch.Tensor:
    return torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def trained(model: VideoModel) -> VideoModel:
    """Tuned weights moved away from their init, as training would."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def assert_same_logits(a: VideoModel, b: VideoModel) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(video()), b(video()), rtol=1e-5, atol=1e-5)


def test_from_the_spec_with_the_recorded_weights(tmp_path):
    torch.manual_seed(0)
    model = trained(create_model("lora+aim", "vit_tiny", num_classes=3, num_frames=4,
                                 pretrained=IMAGE))
    folder = save_pretrained(model, tmp_path / "m", classes=CLASSES, metrics={"top1": 81.5},
                             pretrained=IMAGE)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json",
                                                       "model.safetensors"]
    description = json.loads((folder / "config.json").read_text())
    assert (description["spec"]["method"], description["classes"]) == ("lora+aim", CLASSES)
    card = (folder / "README.md").read_text()
    assert "# lora+aim on vit_tiny" in card and "| top1 | 81.50 |" in card
    assert f"| tunable | {model.parameter_counts()['tunable']:,} " in card
    assert_same_logits(from_pretrained(folder), model)


def test_from_the_experiment_config_with_a_text_head(tmp_path):
    cfg = config_from_dict({
        "model": {"method": "coop", "backbone": "vit_tiny_clip",
                  "pretrained": "builtin:clip_tiny_synthetic", "num_frames": 4},
        "method": {"n_ctx": 2},
        "data": {"transform": {"size": 32, "short_side": 32}},
    })
    model = trained(build_model(cfg, 3, CLASSES))
    folder = save_pretrained(model, tmp_path / "coop", config=cfg, classes=CLASSES)
    rebuilt = from_pretrained(folder)
    assert rebuilt.head.classes == CLASSES
    assert_same_logits(rebuilt, model)


def test_other_frozen_weights_and_missing_sources_are_one_line_errors(tmp_path):
    model = trained(create_model("aim", "vit_tiny", num_classes=3, num_frames=4,
                                 pretrained=IMAGE))
    folder = save_pretrained(model, tmp_path / "m", pretrained=IMAGE)
    other = tmp_path / "other.safetensors"  # the same architecture, other weights
    save_file(create_backbone("vit_tiny").state_dict(), str(other))
    with pytest.raises(CheckpointError, match="was trained on backbone"):
        from_pretrained(folder, pretrained=str(other))
    with pytest.raises(CheckpointError, match="not a folder"):
        from_pretrained(tmp_path / "nowhere" / "org/model")
