"""DualPath: the images the image model encodes (sampled frames, then frame grids), and each
path's adapters acting on that path's images only."""

from __future__ import annotations

import pytest
import torch

from vidadapt.errors import ConfigError
from vidadapt.methods.dualpath import DualPathConfig, DualPathInputs, path_layout
from vidadapt.models import create_model
from vidadapt.report import model_report


def test_inputs_are_every_other_frame_then_grids_of_consecutive_frames():
    T, H = 8, 16
    video = torch.arange(T).float().view(1, T, 1, 1, 1).expand(1, T, 3, H, H)  # frame t is t
    paths = path_layout(T, DualPathConfig(spatial_frames=4, grid=2))
    images = DualPathInputs(paths, grid=2)(video)
    assert images.shape == (1, 4 + 2, 3, H, H)
    assert images[0, :4, 0, 0, 0].tolist() == [0, 2, 4, 6]  # every T / Ts-th frame
    for g, first in enumerate((0, 4)):  # grid image g tiles frames first..first+3, row by row
        cells = images[0, 4 + g, 0]  # [H, W]
        half = H // 2
        assert cells[:half, :half].unique().tolist() == [first]
        assert cells[:half, half:].unique().tolist() == [first + 1]
        assert cells[half:, :half].unique().tolist() == [first + 2]
        assert cells[half:, half:].unique().tolist() == [first + 3]


def dualpath_model():
    torch.manual_seed(0)
    return create_model("dualpath", "vit_tiny", num_classes=5, num_frames=4, image_size=32,
                        dualpath={"spatial_frames": 4, "grid": 2})


@pytest.mark.parametrize("path, changed", [("spatial", slice(0, 4)), ("temporal", slice(4, 5))])
def test_each_paths_adapters_change_only_its_images(path, changed):
    model = dualpath_model().eval()
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        before = model.encode(video)[0].view(2, 5, -1)  # [B, Ts + Tt, N*D]
        for block in model.backbone.blocks:  # this path's adapters away from zero
            sites = ("parallel_attn", "parallel_mlp") if path == "spatial" else (
                "pre_attn", "post_attn", "post_mlp")
            for site in sites:
                for module in getattr(block, site):
                    module.adapter.up.weight.normal_(std=0.5)
        after = model.encode(video)[0].view(2, 5, -1)
    moved = (after - before).abs().amax(dim=(0, 2))  # per image
    others = torch.ones(5, dtype=torch.bool)
    others[changed] = False
    assert (moved[changed] > 1e-3).all() and (moved[others] == 0).all()


def test_another_input_size_resamples_the_grid_positions():
    model = dualpath_model().eval()
    with torch.no_grad():
        model.backbone.embed_sites[0].position.normal_()
        assert model(torch.randn(1, 4, 3, 48, 32)).shape == (1, 5)  # a 6x4 patch grid


def test_the_two_paths_meet_before_the_linear_head():
    model = dualpath_model()
    counts = model.parameter_counts()
    # 4 blocks x 5 adapters (128 -> 32 -> 128), the grid position table, Linear(256 -> 128).
    adapters = 4 * 5 * (128 * 32 + 32 + 32 * 128 + 128)
    assert counts["dualpath"] == adapters + 16 * 128 + (256 * 128 + 128)
    assert model.temporal.fuse.in_features == 2 * model.backbone.width


def test_vit_b16_counts():
    report = model_report("dualpath", "vit_b16_clip", 400, 32, 224)
    # 60 adapters of 768 -> 192 -> 768, the grid position table [196, 768], Linear(1536, 768).
    assert report["tunable_by_part"] == {"head": 307_600, "dualpath": 19_083_264}
    assert report["total_params"] == 105_190_288


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="grid must be at least 2"):
        DualPathConfig(grid=1)
    with pytest.raises(ConfigError, match="spatial_frames=8 must divide the clip's 4 frames"):
        create_model("dualpath", "vit_tiny", num_classes=5, num_frames=4)
    with pytest.raises(ConfigError, match="4 frames do not split into grids of 16"):
        create_model("dualpath", "vit_tiny", num_classes=5, num_frames=4,
                     dualpath={"spatial_frames": 4})
    with pytest.raises(ConfigError, match="aim would relate them as frames"):
        create_model("dualpath+aim", "vit_tiny", num_classes=5, num_frames=4,
                     dualpath={"spatial_frames": 4, "grid": 2}, aim={})
    with pytest.raises(ConfigError, match="no text head"):
        create_model("dualpath+coop", "vit_tiny_clip", classes=["a", "b"], num_frames=4,
                     dualpath={"spatial_frames": 4, "grid": 2}, coop={"text": "random"})
