"""EVL: a decoder over a frozen backbone that runs without autograd, its temporal terms, exact
counts, and a motion task it solves."""

from __future__ import annotations

import copy

import pytest
import torch
from test_methods import TINY, T, informative_vit, train_and_score
from torch import nn

from vidadapt import ViT, preset_config
from vidadapt.backbones.vit import TokenLayout
from vidadapt.config import ExperimentConfig
from vidadapt.engine.features import trains_on_features
from vidadapt.errors import ConfigError
from vidadapt.export import load_exported, save_exported
from vidadapt.methods.evl import CrossFrameAttention, relative_offset_index
from vidadapt.models import create_model

ALL_OFF = dict(temporal_conv=False, temporal_embedding=False, cross_frame=False)


def build(seed: int = 0, method: str = "evl", **options):
    torch.manual_seed(seed)
    if method == "evl":
        options = {"num_layers": 2, **options}
    return create_model(method, backbone=ViT(TINY), num_classes=5, num_frames=T, **options)


def randomise_zero_init(model: nn.Module) -> None:
    """Give the zero-initialised temporal embeddings and offset tables random values."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("temporal_embedding", "previous", "next")):
                p.normal_(std=0.5)


def decoder_inputs(model, video: torch.Tensor) -> list[torch.Tensor]:
    """The block outputs that the decoder receives in one forward."""
    seen = []
    hook = model.readout.register_forward_pre_hook(lambda _, args: seen.extend(args[0]))
    model(video)
    hook.remove()
    return seen


def test_shapes_and_the_blocks_the_decoder_reads():
    model = build(num_layers=2)
    video = torch.randn(3, T, 3, 32, 32)
    assert model(video).shape == (3, 5)
    assert model.video_features(video).shape == (3, TINY.width)
    assert model.readout.layers == (0, 1)
    assert build(num_layers=1).readout.layers == (1,)  # the last block
    assert [x.shape for x in decoder_inputs(model, video)] == [(3 * T, 17, TINY.width)] * 2


def test_only_decoder_and_head_train_and_no_graph_goes_through_the_backbone():
    model = build().train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("readout.", "head.")) for n in trainable)
    assert model.parameter_counts()["evl"] == sum(p.numel() for p in model.readout.parameters())
    video = torch.randn(2, T, 3, 32, 32)
    inputs = decoder_inputs(model, video)
    assert inputs and not any(x.requires_grad for x in inputs)
    model.zero_grad()
    model(video).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    # When a stacked method trains inside the backbone, gradients pass through it again.
    lora = build(method="lora+evl", evl={"num_layers": 2})
    assert all(x.requires_grad for x in decoder_inputs(lora.train(), video))


def test_a_trainable_video_head_turns_the_feature_cache_off():
    cfg = ExperimentConfig()
    assert cfg.train.feature_cache != "off"
    assert not trains_on_features(cfg, build())
    assert trains_on_features(cfg, build(method="linear"))


def frame_order_gap(model) -> float:
    video = torch.randn(2, T, 3, 32, 32)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        gap = model.video_features(video) - model.video_features(video[:, perm])
    return gap.abs().max().item()


def test_without_temporal_terms_the_decoder_ignores_frame_order():
    # The query attends to the set of all frames' tokens: a permutation changes nothing.
    model = build(**ALL_OFF).eval()
    assert frame_order_gap(model) < 1e-5


@pytest.mark.parametrize("term", ["temporal_conv", "temporal_embedding", "cross_frame"])
def test_each_temporal_term_makes_the_output_depend_on_frame_order(term):
    model = build(**{**ALL_OFF, term: True}).eval()
    randomise_zero_init(model)
    assert frame_order_gap(model) > 1e-3


def test_relative_offset_index():
    # 2x2 grid, patches (0,0) (0,1) (1,0) (1,1); offsets (dy, dx) + 1 in a 3x3 table.
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_offset_index((2, 2)), expected)


def test_cross_frame_attention_matches_a_direct_sum():
    torch.manual_seed(0)
    B, frames, H, grid, d, D = 2, 3, 2, (2, 3), 4, 5
    P = grid[0] * grid[1]
    module = CrossFrameAttention(D, grid)
    layout = TokenLayout(batch=B, frames=frames, grid=grid)
    q, k = torch.randn(2, B, frames, H, P, d)
    assert module(q.flatten(0, 1), k.flatten(0, 1), layout).abs().max() == 0  # zero tables
    with torch.no_grad():
        module.previous.normal_()
        module.next.normal_()
    out = module(q.flatten(0, 1), k.flatten(0, 1), layout)
    expected = torch.zeros(B, frames, P, D)
    for t in range(frames):
        for other, table in ((t - 1, module.previous), (t + 1, module.next)):
            if not 0 <= other < frames:
                continue
            weights = (q[:, t] @ k[:, other].transpose(-2, -1) / d**0.5).softmax(-1).mean(1)
            for i in range(P):
                for j in range(P):
                    (yi, xi), (yj, xj) = divmod(i, grid[1]), divmod(j, grid[1])
                    row = (yi - yj + grid[0] - 1) * (2 * grid[1] - 1) + (xi - xj + grid[1] - 1)
                    expected[:, t, i] += weights[:, i, j, None] * table[row]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_trainable_state_dict_round_trip():
    model = build()
    randomise_zero_init(model)
    state = copy.deepcopy(model.trainable_state_dict())
    assert all(k.startswith(("readout.", "head.")) for k in state)
    fresh = build(seed=5)
    fresh.backbone.load_state_dict(model.backbone.state_dict())  # same frozen weights
    fresh.load_trainable_state_dict(state)
    video = torch.randn(2, T, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(video), model.eval()(video))


def test_export_round_trip(tmp_path):
    # The exported model is rebuilt on the meta device and takes every tensor from the file.
    torch.manual_seed(0)
    model = create_model("evl", backbone="vit_tiny", num_classes=5, num_frames=T).eval()
    randomise_zero_init(model)
    save_exported(tmp_path / "evl.safetensors", model)
    loaded, _ = load_exported(tmp_path / "evl.safetensors")
    video = torch.randn(1, T, 3, 32, 32)
    torch.testing.assert_close(loaded(video), model(video), atol=1e-5, rtol=1e-5)


def test_bad_options_are_clear():
    with pytest.raises(ConfigError, match="only 2 blocks"):
        build(num_layers=3)
    with pytest.raises(ConfigError, match=r"evl.heads \(3\) must divide the backbone width 64"):
        build(heads=3)
    with pytest.raises(ConfigError, match="did you mean 'cross_frame'"):
        build(cross_frames=False)
    with pytest.raises(ValueError, match=r"built for a \(4, 4\) patch grid"):
        build()(torch.randn(1, T, 3, 48, 48))


def test_vit_b16_parameter_count():
    with torch.device("meta"):
        vit = ViT(preset_config("vit_b16_clip", embed_dim=None))
        model = create_model("evl", backbone=vit, num_classes=400, num_frames=8)
    D, hidden, offsets = 768, 4 * 768, 27 * 27  # 14x14 patches → (2*14 - 1)^2 offsets
    attention = 4 * (D * D + D)  # q, k, v, out projections: 2,362,368
    mlp = D * hidden + hidden + hidden * D + D  # 4,722,432
    norms = 3 * 2 * D  # query, tokens and MLP LayerNorms: 4,608
    conv = D * 3 + D  # depthwise Conv1d, kernel 3: 3,072
    temporal_embedding = 8 * D  # [T, D]: 6,144
    cross_frame = 2 * offsets * D  # previous and next tables: 1,119,744
    per_layer = attention + mlp + norms + conv + temporal_embedding + cross_frame  # 8,218,368
    evl = 4 * per_layer + D + 2 * D  # + query token + final LayerNorm: 32,875,776
    head = D * 400 + 400  # 307,600
    counts = model.parameter_counts()
    assert (counts["evl"], counts["head"]) == (evl, head) == (32_875_776, 307_600)
    assert counts["tunable"] == 33_183_376
    assert counts["total"] == 85_799_424 + 33_183_376  # + the frozen ViT-B/16 without its head


def test_evl_learns_motion_direction_that_an_order_blind_decoder_cannot():
    def evl(**options):
        torch.manual_seed(0)
        return create_model(
            "evl", backbone=informative_vit(), num_classes=2, num_frames=T, dropout=0.0,
            num_layers=2, mlp_dropout=0.0, **options,
        )

    assert train_and_score(evl()) >= 0.9  # measured 1.0
    assert train_and_score(evl(**ALL_OFF)) <= 0.65  # measured 0.55: chance level
