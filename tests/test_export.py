"""`vidadapt export`: LoRA folds into a plain ViT + head; other methods keep their modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_model_table import build, video

from vidadapt.cli import main as cli
from vidadapt.commands.export import export_summary
from vidadapt.config import load_config
from vidadapt.engine.build import build_model
from vidadapt.engine.checkpoint import backbone_fingerprint, save_adapter
from vidadapt.errors import CheckpointError, UserError
from vidadapt.export import load_exported, save_exported, save_onnx, serving_spec
from vidadapt.methods.lora import lora_layers
from vidadapt.models import create_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
CLASSES = [f"class{i}" for i in range(5)]


def trained_model(method: str, overrides: list[str] = ()):
    """The synthetic recipe's model (built-in pretrained vit_tiny) with every tuned tensor
    moved off its initial value, as training would, so a missed fold changes the logits."""
    cfg = load_config(CONFIGS / "lora.yaml", [f"model.method={method}", "method={}", *overrides])
    model = build_model(cfg, len(CLASSES))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return cfg, model.eval()


def export_via_cli(tmp_path: Path, cfg, model) -> Path:
    adapter, out = tmp_path / "adapter.safetensors", tmp_path / "model.safetensors"
    save_adapter(adapter, model, backbone_fingerprint(model), cfg.to_dict(), CLASSES)
    assert cli(["export", str(adapter), "--out", str(out)]) == 0
    return out


def logits(model, seed: int = 0) -> torch.Tensor:
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(video)


def test_lora_export_is_a_plain_vit_with_the_same_logits(tmp_path):
    cfg, model = trained_model("lora", ["method.targets=[q, v, mlp.fc1]"])
    out = export_via_cli(tmp_path, cfg, model)

    exported, classes = load_exported(out)
    assert classes == CLASSES
    assert exported.spec.method == "linear" and not lora_layers(exported)
    assert export_summary(model.spec, exported.spec).startswith("a plain ViT + head, lora folded")
    torch.testing.assert_close(logits(exported), logits(model), atol=1e-5, rtol=1e-5)

    # The file is the plain image model + head: it loads strictly into a model with no method.
    plain = create_model("linear", backbone="vit_tiny", num_classes=len(CLASSES), num_frames=4)
    plain.load_state_dict(load_file(out), strict=True)
    assert all(n.startswith(("backbone.", "head.")) for n in load_file(out))
    torch.testing.assert_close(logits(plain), logits(model), atol=1e-5, rtol=1e-5)
    assert not any(n.endswith(("lora_A", "lora_B", "base.weight")) for n in load_file(out))


def test_methods_with_modules_export_the_full_state(tmp_path):
    cfg, model = trained_model("aim")
    out = export_via_cli(tmp_path, cfg, model)
    exported, _ = load_exported(out)
    assert exported.spec.method == "aim"
    assert export_summary(model.spec, exported.spec).startswith("aim adds modules that cannot")
    assert load_file(out).keys() == model.state_dict().keys()
    torch.testing.assert_close(logits(exported), logits(model), atol=1e-5, rtol=1e-5)


def test_stacked_lora_folds_and_the_rest_stays(tmp_path):
    cfg, model = trained_model("lora+st_adapter")
    out = tmp_path / "model.safetensors"
    spec = save_exported(out, model, CLASSES)
    assert (spec.method, list(spec.options)) == ("st_adapter", ["st_adapter"])
    exported, _ = load_exported(out)
    assert not lora_layers(exported)
    torch.testing.assert_close(logits(exported), logits(model), atol=1e-5, rtol=1e-5)


def test_zeroi2v_exports_folded_through_the_command(tmp_path):
    cfg, model = trained_model("zeroi2v")
    out = export_via_cli(tmp_path, cfg, model)
    exported, _ = load_exported(out)
    summary = export_summary(model.spec, exported.spec)  # what the command logs
    assert summary.startswith("the foldable layers of zeroi2v are folded into the frozen")
    assert exported.spec.options["zeroi2v"]["folded"] is True
    assert not any(".adapter." in n or n.endswith("base.weight") for n in load_file(out))
    torch.testing.assert_close(logits(exported), logits(model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["bitfit", "full", "linear"])
def test_methods_that_change_only_image_weights_are_plain(method):
    _, model = trained_model(method)
    assert serving_spec(model.spec).method == "linear"


def test_export_refuses_files_it_did_not_write(tmp_path):
    cfg, model = trained_model("lora")
    adapter = tmp_path / "adapter.safetensors"
    save_adapter(adapter, model, backbone_fingerprint(model), cfg.to_dict(), CLASSES)
    with pytest.raises(CheckpointError, match="is not a model written by `vidadapt export`"):
        load_exported(adapter)


ONNX_CAN = ["linear", "lora", "aim", "st_adapter", "vpt", "coop", "xclip", "lora+coop", "zeroi2v",
            "lora+zeroi2v", "side_network", "dualpath", "motion_prompt", "sparse_tubes"]


@pytest.mark.parametrize("stack", ONNX_CAN)
def test_onnx_export_matches_pytorch_at_any_batch(stack, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = build(stack).eval()
    path = save_onnx(model, tmp_path / "model.onnx")  # checked at batch 3 inside
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        clips = video(batch, model.input_channels)
        (logits,) = session.run(None, {"video": clips.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(clips), rtol=1e-4,
                                       atol=1e-4)


def test_a_model_whose_graph_holds_for_one_batch_only_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(UserError, match="cocoop traces to an ONNX graph that only holds for "
                                        "the traced batch size"):
        save_onnx(build("cocoop"), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
