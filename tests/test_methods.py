"""Core video methods: identity at init, trainable sets, frame-order behaviour, exact counts, and
a training run in which only temporal adaptation can solve a motion task."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vidadapt import ViT, ViTConfig, preset_config
from vidadapt.errors import ConfigError
from vidadapt.models import create_model

TINY = ViTConfig(image_size=32, patch_size=8, width=64, depth=2, heads=2, mlp_dim=128)
T = 4

CONFIGS = {
    "linear": ("linear", {}),
    "full": ("full", {}),
    "aim_s": ("aim", dict(temporal=False, joint=False)),
    "aim_st": ("aim", dict(joint=False)),
    "aim_stj": ("aim", {}),
    "aim_stj_t2": ("aim", dict(num_tadapter=2)),
    "st_adapter": ("st_adapter", {}),
    "st_adapter_24": ("st_adapter", dict(positions=["pre_attn", "pre_mlp"])),
}


def build(name: str, seed: int = 0, num_classes: int = 5):
    torch.manual_seed(seed)
    method, options = CONFIGS[name]
    vit = ViT(TINY)
    return create_model(method, backbone=vit, num_classes=num_classes, num_frames=T, **options)


def randomise_new_weights(model: nn.Module) -> None:
    """Give zero-initialised adapter weights random values so they have an effect."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith("head"):
                p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_identity_at_init(name):
    model = build(name).eval()
    image_model = ViT(TINY)
    image_model.load_state_dict(model.backbone.state_dict(), strict=False)
    image_model.eval()
    video = torch.randn(2, T, 3, 32, 32)
    frames = image_model(video.flatten(0, 1)).view(2, T, -1)  # the image model, frame by frame
    torch.testing.assert_close(model.backbone(video), frames, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gradients_reach_only_tunable_parameters(name):
    model = build(name).train()
    randomise_new_weights(model)
    loss = model(torch.randn(2, T, 3, 32, 32)).logsumexp(-1).sum()
    loss.backward()
    # ST-Adapter's pre-MLP adapter in the last block changes only patch tokens after the last
    # attention, so it cannot reach the class token: its gradient is zero (as in the paper's model).
    dead = f"backbone.blocks.{TINY.depth - 1}.pre_mlp."
    for pname, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, pname
        if p.requires_grad and not pname.startswith(dead):
            assert p.grad.abs().sum() > 0, pname


def test_trainable_sets_match_the_papers():
    def trainable(name):
        return {n for n, p in build(name).named_parameters() if p.requires_grad}

    assert trainable("linear") == {"head.weight", "head.bias"}
    aim = trainable("aim_stj")
    # AIM: adapters, temporal embedding, final norm (ln_post), head; the image model stays frozen.
    assert {"backbone.norm.weight", "backbone.norm.bias", "head.weight"} <= aim
    assert "backbone.embed_sites.0.temporal_embedding" in aim
    assert not any(".attn." in n or ".mlp." in n or "patch_embed" in n for n in aim)
    st = trainable("st_adapter")
    # ST-Adapter keeps ln_post frozen and has no temporal embedding.
    assert "backbone.norm.weight" not in st
    assert all(n.startswith("head") or ".pre_mlp." in n for n in st)


def test_frozen_modules_stay_in_eval_mode():
    model = build("aim_stj").train()
    assert not model.backbone.blocks[0].attn.training
    assert not model.backbone.patch_embed.training
    assert model.backbone.blocks[0].pre_attn[0].training
    assert model.head.dropout.training


def permuted_output_gap(model, video):
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        gap = model.video_features(video) - model.video_features(video[:, perm])
        return gap.abs().max().item()


@pytest.mark.parametrize("name", ["aim_st", "aim_stj", "st_adapter"])
def test_temporal_methods_depend_on_frame_order(name):
    model = build(name).eval()
    randomise_new_weights(model)
    assert permuted_output_gap(model, torch.randn(2, T, 3, 32, 32)) > 1e-3


def test_spatial_only_aim_ignores_frame_order():
    model = create_model(
        "aim", backbone=ViT(TINY), num_classes=5, num_frames=T,
        temporal=False, joint=True, temporal_embedding=False,
    ).eval()
    randomise_new_weights(model)
    assert permuted_output_gap(model, torch.randn(2, T, 3, 32, 32)) < 1e-5


# Counts for CLIP ViT-B/16 and ViT-L/14 (docs/methods.md), built on the meta device (no memory).
@pytest.mark.parametrize(
    "backbone, method, num_classes, options, tunable, total",
    [
        ("vit_b16_clip", "aim", 400, {}, 10_966_672, 96_764_560),
        # 14.3M is the SSv2 (174 classes) model: 12 extra adapters of 295,872.
        ("vit_b16_clip", "aim", 174, {"num_tadapter": 2}, 14_343_342, 100_141_230),
        ("vit_l14_clip", "aim", 400, {}, 38_261_136, 341_438_864),
        ("vit_b16_clip", "st_adapter", 400, {}, 7_110_144 + 307_600, 93_217_168),
        ("vit_b16_clip", "linear", 400, {}, 307_600, 86_107_024),
    ],
)
def test_parameter_counts_match_the_papers(backbone, method, num_classes, options, tunable, total):
    with torch.device("meta"):
        vit = ViT(preset_config(backbone, embed_dim=None))
        model = create_model(method, backbone=vit, num_classes=num_classes, num_frames=8, **options)
    counts = model.parameter_counts()
    assert (counts["tunable"], counts["total"]) == (tunable, total)


def test_aim_adapter_sizes_are_exact():
    with torch.device("meta"):
        vit = ViT(preset_config("vit_b16_clip", embed_dim=None))
        model = create_model("aim", backbone=vit, num_classes=400, num_frames=8)
    block = model.backbone.blocks[0]
    adapter = block.post_attn[0].adapter
    assert sum(p.numel() for p in adapter.parameters()) == 295_872
    assert sum(p.numel() for p in block.pre_mlp.parameters()) == 0
    st = create_model("st_adapter", backbone=ViT(TINY), num_classes=5, num_frames=T)
    assert st.backbone.blocks[0].pre_mlp[0].conv.weight.shape == (384, 1, 3, 1, 1)


def test_bad_method_names_and_options_are_clear():
    with pytest.raises(ConfigError, match="did you mean 'aim'"):
        create_model("aimm", backbone=ViT(TINY), num_classes=5, num_frames=T)
    with pytest.raises(ConfigError, match="did you mean 'adapter_scale'"):
        create_model("aim", backbone=ViT(TINY), num_classes=5, num_frames=T, adaptor_scale=1.0)
    with pytest.raises(ConfigError, match="cannot be combined"):
        create_model("linear+aim", backbone=ViT(TINY), num_classes=5, num_frames=T)


def test_trainable_state_dict_round_trip():
    model = build("aim_stj")
    randomise_new_weights(model)
    state = copy.deepcopy(model.trainable_state_dict())
    fresh = build("aim_stj", seed=5)
    fresh.backbone.load_state_dict(model.backbone.state_dict())  # same frozen weights
    fresh.load_trainable_state_dict(state)
    video = torch.randn(1, T, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(video), model.eval()(video))
    with pytest.raises(KeyError, match="missing"):
        fresh.load_trainable_state_dict({})


# ---- a task only temporal modelling solves ----------------------------------------------------


def motion_clips(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright 8x8 square moving 4 px per frame left (label 0) or right (label 1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    video = torch.zeros(n, T, 3, 32, 32)
    for i in range(n):
        x0 = int(torch.randint(0, 32 - 8 - 4 * (T - 1) + 1, (1,), generator=g))
        y0 = int(torch.randint(0, 32 - 8 + 1, (1,), generator=g))
        for t in range(T):
            step = t if labels[i] == 1 else (T - 1 - t)  # same set of positions, reversed order
            x = x0 + 4 * step
            video[i, t, :, y0 : y0 + 8, x : x + 8] = 1.0
    return video, labels


def train_and_score(model, steps: int = 100) -> float:
    torch.manual_seed(0)
    train_x, train_y = motion_clips(128, seed=0)
    test_x, test_y = motion_clips(128, seed=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, 128, (32,))
        loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return (model(test_x).argmax(-1) == test_y).float().mean().item()


def informative_vit() -> ViT:
    """A random ViT whose layers are not near-identity (std 1/sqrt(fan_in) instead of 0.02), so
    its frozen features carry the input, as a pretrained model's would."""
    vit = ViT(TINY)
    with torch.no_grad():
        for m in vit.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features**-0.5)
    return vit


def test_temporal_adaptation_learns_motion_direction_that_spatial_cannot():
    def aim(**options):
        torch.manual_seed(0)
        return create_model(
            "aim", backbone=informative_vit(), num_classes=2, num_frames=T, dropout=0.0, **options
        )

    spatial = train_and_score(aim(temporal=False, joint=False, temporal_embedding=False))
    spatio_temporal = train_and_score(aim(joint=False))
    assert spatio_temporal >= 0.9
    assert spatial <= 0.65  # frames in reverse order look the same to it: chance level
