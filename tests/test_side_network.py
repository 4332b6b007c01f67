"""The side network: the image model runs without autograd (no gradient, no saved activation
inside it), the side network reads the pixels and every block, and its counts at ViT-B/16 are
DiST's order of size."""

from __future__ import annotations

import pytest
import torch

from vidadapt.errors import ConfigError
from vidadapt.models import create_model
from vidadapt.report import model_report

FRAMES = 4


def side_model(**options):
    torch.manual_seed(0)
    return create_model("side_network", "vit_tiny", num_classes=5, num_frames=FRAMES,
                        image_size=32, side_network=options)


def test_nothing_backpropagates_through_the_image_model():
    model = side_model()
    seen = []
    for block in model.backbone.blocks:  # the block outputs the side network reads
        block.register_forward_hook(lambda m, i, out: seen.append(out.requires_grad))
    logits = model(torch.randn(2, FRAMES, 3, 32, 32))
    logits.sum().backward()
    assert seen == [False] * len(model.backbone.blocks)  # no graph through the image model
    assert all(p.grad is None for p in model.backbone.parameters())
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)  # DDP: no unused parameter


def test_with_a_frame_stride_the_image_model_sees_every_kth_frame():
    model = side_model(frame_stride=2)
    seen = []
    model.backbone.patch_embed.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    video = torch.randn(2, FRAMES, 3, 32, 32)
    model(video)
    assert seen == [(2 * FRAMES // 2, 3, 32, 32)]  # the frames the image model embeds
    torch.testing.assert_close(model.inputs(video), video[:, ::2])
    with pytest.raises(ConfigError, match="frame_stride 3 does not divide the clip's 4 frames"):
        side_model(frame_stride=3)


def test_the_pixels_and_every_block_reach_the_feature():
    model = side_model().eval()
    video = torch.randn(1, FRAMES, 3, 32, 32)
    with torch.no_grad():
        base = model.video_features(video)
        # The side network reads the pixels itself: with the image model's block outputs held
        # fixed, moving one frame's pixels changes the feature.
        tokens, collected, layout = model.encode(video)
        moved = video.clone()
        moved[:, 1] = video[:, 1].roll(8, dims=-1)
        assert (model.read(tokens, collected, layout, moved) - base).abs().max() > 1e-3
        for i in range(len(collected)):  # and every block's output
            changed = [c.clone() for c in collected]
            changed[i][:, 1:] += torch.randn_like(changed[i][:, 1:])
            moved_by = (model.read(tokens, changed, layout, video) - base).abs().max()
            assert moved_by > 1e-3, i
    assert model.readout.layers == tuple(range(len(model.backbone.blocks)))


def test_vit_b16_counts():
    report = model_report("side_network", "vit_b16_clip", 400, 8, 224)
    # 12 integration layers and temporal blocks at 384 / 96 channels and 4 pooling layers (DiST
    # is about 25M), the 400-class head, beside the 86M image model that stays frozen.
    assert report["tunable_by_part"] == {"head": 307_600, "side_network": 25_700_352}
    assert report["total_params"] == 111_807_376
    # DiST's 8+16: 16 frames for the temporal encoder, 8 for the image model; the temporal
    # projection of every integration layer reads two frames (12 x 96 x 384 more weights).
    paired = model_report("side_network", "vit_b16_clip", 400, 16, 224,
                          options={"side_network": {"frame_stride": 2}})
    assert paired["tunable_by_part"]["side_network"] == 25_700_352 + 12 * 96 * 384


def test_options_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="must be odd"):
        side_model(kernel_size=2)
    with pytest.raises(ConfigError, match="pool_layers must be at least 1"):
        side_model(pool_layers=0)
    with pytest.raises(ConfigError, match="not divisible by pool_heads"):
        side_model(pool_heads=5)
