"""ZeroI2V: the frame shift moves exactly the listed heads' (or channel slices') keys and values
across frames, the linear adapters fold into the layers they wrap, and the exported model is the
image model's layers plus the shift: the trained model's logits at the plain model's cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vidadapt.backbones.vit import TokenLayout
from vidadapt.errors import ConfigError
from vidadapt.export import load_exported, save_exported, save_onnx
from vidadapt.methods.folding import merged_state_dict
from vidadapt.methods.zeroi2v import AdaptedLinear, FrameShift, LinearAdapter
from vidadapt.models import create_model
from vidadapt.report import model_report

FRAMES = 4


def test_head_shift_moves_the_listed_heads_across_frames_and_keeps_the_edges():
    B, T, H, N, d = 2, 5, 4, 3, 2
    # Every value names its frame: frame t holds t everywhere.
    k = torch.arange(T).float().view(1, T, 1, 1, 1).expand(B, T, H, N, d).reshape(B * T, H, N, d)
    shifted, _ = FrameShift((-1, 1, 2))(k, k, TokenLayout(batch=B, frames=T, grid=(1, 2)))
    frame_of = shifted.view(B, T, H, N, d)[0, :, :, 0, 0]  # [T, H]: whose keys each head sees
    assert frame_of[:, 0].tolist() == [0, 0, 1, 2, 3]  # t - 1; frame 0 keeps its own
    assert frame_of[:, 1].tolist() == [1, 2, 3, 4, 4]  # t + 1; the last keeps its own
    assert frame_of[:, 2].tolist() == [2, 3, 4, 3, 4]  # t + 2
    assert frame_of[:, 3].tolist() == [0, 1, 2, 3, 4]  # spatial


def test_channel_shift_moves_the_same_slice_of_every_head():
    B, T, H, N, d = 2, 4, 3, 5, 8
    # Every value names its place: 1000 clip + 100 frame + 10 head + token.
    place = (1000 * torch.arange(B).view(B, 1, 1, 1, 1) + 100 * torch.arange(T).view(1, T, 1, 1, 1)
             + 10 * torch.arange(H).view(1, 1, H, 1, 1) + torch.arange(N).view(1, 1, 1, N, 1))
    k = place.expand(B, T, H, N, d).reshape(B * T, H, N, d).float()
    v = k + 0.5  # values move with their keys
    shift = FrameShift((-1, 1), channels=2)
    sk, sv = shift(k, v, TokenLayout(batch=B, frames=T, grid=(1, N - 1)))
    moved = sk.view(B, T, H, N, d)
    source = {0: [0, 0, 1, 2], 2: [1, 2, 3, 3], 4: [0, 1, 2, 3]}  # t - 1, t + 1, its own frame
    for b, h, n in [(0, 0, 0), (1, 2, 4), (1, 1, 3)]:
        for first, width in ((0, 2), (2, 2), (4, 4)):
            expected = [[1000 * b + 100 * f + 10 * h + n] * width for f in source[first]]
            assert moved[b, :, h, n, first:first + width].tolist() == expected
    torch.testing.assert_close(sv, sk + 0.5, rtol=0, atol=0)


def test_the_shift_stays_out_of_attention_across_frames():
    model = create_model("aim", "vit_tiny", num_classes=3, num_frames=FRAMES, image_size=32)
    attn = model.backbone.blocks[0].attn
    x = torch.randn(2 * FRAMES, 17, 128)
    layout = TokenLayout(batch=2, frames=FRAMES, grid=(4, 4))
    across, within = attn.forward_frames(x, layout), attn(x, layout)
    attn.kv_sites.append(FrameShift((-1, 1)))
    torch.testing.assert_close(attn.forward_frames(x, layout), across, rtol=0, atol=0)
    assert not torch.allclose(attn(x, layout), within)  # it acts on the frames' attention


@pytest.mark.parametrize("before", [True, False])
def test_an_adapted_layer_folds_into_one_linear_layer(before):
    torch.manual_seed(0)
    base = nn.Linear(16, 24)
    adapter = LinearAdapter(16 if before else 24, 4, scale=0.5, dropout=0.1)
    layer = AdaptedLinear(base, adapter, before).eval()
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)  # zero up: the identity
    nn.init.normal_(adapter.up.weight, std=0.3)
    nn.init.normal_(adapter.up.bias, std=0.3)
    weight, bias = layer.folded()
    torch.testing.assert_close(nn.functional.linear(x, weight, bias), layer(x), rtol=1e-5,
                               atol=1e-5)


def trained_zeroi2v(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = create_model("zeroi2v", "vit_tiny", num_classes=5, num_frames=FRAMES, image_size=32,
                         zeroi2v=options)
    with torch.no_grad():  # as if trained: every tuned tensor away from its init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("shift", [{"shift_unit": "heads"},
                                   {"shift_unit": "channels", "shift_div": 8,
                                    "shift_offsets": [-1, 1, 2]}])
def test_export_is_the_image_models_layers_with_the_trained_logits(tmp_path, shift):
    model = trained_zeroi2v(**shift)
    clip = torch.randn(2, FRAMES, 3, 32, 32)
    with torch.no_grad():
        expected = model(clip)
    save_exported(tmp_path / "model.safetensors", model)
    served, _ = load_exported(tmp_path / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(served(clip), expected, rtol=1e-5, atol=1e-5)
    assert served.spec.options["zeroi2v"]["folded"] is True
    for key, value in shift.items():  # the exported model shifts as the trained one did
        assert served.spec.options["zeroi2v"][key] == value
    plain = create_model("linear", "vit_tiny", num_classes=5, num_frames=FRAMES, image_size=32)
    # The image model's tensors, the head, and only the temporal embedding beside them.
    extra = set(served.state_dict()) - set(plain.state_dict())
    assert extra == {"backbone.embed_sites.0.temporal_embedding"}
    assert not any(isinstance(m, AdaptedLinear) for m in served.modules())
    assert set(merged_state_dict(model)) == set(served.state_dict())

    def flops(m) -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            m(clip)
        return counter.get_total_flops()

    assert flops(served) == flops(plain)  # the shift re-indexes; it computes nothing
    assert flops(model) > flops(plain)  # while training, the adapters cost


def test_vit_b16_counts_and_cost():
    trained = model_report("zeroi2v", "vit_b16_clip", 400, 8, 224)
    # 48 adapters of 768 -> 192 -> 768 (295,872 each), the final norm, the temporal embedding.
    assert trained["tunable_by_part"] == {"head": 307_600, "zeroi2v": 14_209_536}
    folded = model_report("zeroi2v", "vit_b16_clip", 400, 8, 224,
                          options={"zeroi2v": {"folded": True}})
    plain = model_report("linear", "vit_b16_clip", 400, 8, 224)
    assert folded["total_params"] == plain["total_params"] + 8 * 768  # + temporal embedding
    assert folded["gflops_per_view"] == plain["gflops_per_view"] < trained["gflops_per_view"]


def test_options_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="0 is the frame itself"):
        create_model("zeroi2v", "vit_tiny", num_classes=3, num_frames=FRAMES,
                     zeroi2v={"shift_offsets": [0, 1]})
    with pytest.raises(ConfigError, match="leave none of the 4 heads spatial"):
        create_model("zeroi2v", "vit_tiny", num_classes=3, num_frames=FRAMES,
                     zeroi2v={"shift_offsets": [-1, 1, -2, 2]})
    with pytest.raises(ConfigError, match="2 offsets x 16 channels leave none of a head's 32"):
        create_model("zeroi2v", "vit_tiny", num_classes=3, num_frames=FRAMES,
                     zeroi2v={"shift_unit": "channels", "shift_div": 2})
    with pytest.raises(ConfigError, match="shift_div 64: a part is head_dim // shift_div"):
        create_model("zeroi2v", "vit_tiny", num_classes=3, num_frames=FRAMES,
                     zeroi2v={"shift_unit": "channels", "shift_div": 64})
    with pytest.raises(ConfigError, match="shift_div: 2.5; use a whole number"):
        create_model("zeroi2v", "vit_tiny", num_classes=3, num_frames=FRAMES,
                     zeroi2v={"shift_unit": "channels", "shift_div": 2.5})
    with pytest.raises(ConfigError, match="use heads or channels"):
        create_model("zeroi2v", "vit_tiny", num_classes=3, num_frames=FRAMES,
                     zeroi2v={"shift_unit": "tokens"})
    with pytest.raises(ConfigError, match="reach past the 4 frames"):
        create_model("zeroi2v", "vit_tiny", num_classes=3, num_frames=FRAMES,
                     zeroi2v={"shift_offsets": [-4]})


def test_the_channel_shift_exports_to_onnx(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = trained_zeroi2v(shift_unit="channels")
    path = save_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    clips = torch.randn(2, FRAMES, 3, 32, 32)
    (logits,) = session.run(None, {"video": clips.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(clips), rtol=1e-4, atol=1e-4)
