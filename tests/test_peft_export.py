"""LoRA exported in peft's layout: peft loads it onto Hugging Face's CLIPVisionModel and gives
the outputs of vidadapt's LoRA model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from vidadapt.checkpoints import load_image_encoder
from vidadapt.errors import UserError
from vidadapt.export import save_peft_lora
from vidadapt.models import create_model

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def random_clip_vision() -> transformers.CLIPVisionModel:
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=2,
                                           image_size=16, patch_size=8)
    model = transformers.CLIPVisionModel(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1 + float(p.ndim == 1))
    return model.eval()


@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v", "attn.proj", "mlp.fc1")])
def test_peft_reads_the_exported_lora(targets, tmp_path):
    hf = random_clip_vision()
    hf.save_pretrained(tmp_path / "clip")
    vit = load_image_encoder(tmp_path / "clip")
    torch.manual_seed(0)
    model = create_model("lora", vit, num_classes=3, num_frames=1, rank=4, alpha=8.0,
                         targets=targets)
    with torch.no_grad():  # B starts at zero: give the update a value to compare
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    folder = save_peft_lora(model.eval(), tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8.0)
    adapted = peft.PeftModel.from_pretrained(copy.deepcopy(hf), folder).eval()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = adapted(pixel_values=images).pooler_output  # final-norm class token
        plain = hf(pixel_values=images).pooler_output
        ours = model.backbone(images)
    assert (expected - plain).abs().max() > 1e-3  # the adapter changes the outputs
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_only_lora_alone_exports_to_peft(tmp_path):
    with pytest.raises(UserError, match="a peft adapter holds LoRA alone"):
        save_peft_lora(create_model("lora+aim", "vit_tiny", num_classes=3), tmp_path)
