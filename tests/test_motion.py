"""Motion as a modality (data/motion.py) and the motion prompts that read it."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidadapt.config import config_from_dict
from vidadapt.data.motion import FLOW_BOUND, MotionMaps, OpticalFlow, rgb_difference
from vidadapt.data.synthetic import CLASSES, clip_rng, render_clip
from vidadapt.data.transforms import (
    Normalize,
    TransformConfig,
    build_transform,
    device_augment,
)
from vidadapt.errors import ConfigError
from vidadapt.methods.motion_prompt import EXTRAS_KEY
from vidadapt.models import create_model
from vidadapt.report import model_report


def moving_square(shift: int, frames: int = 4, size: int = 48) -> torch.Tensor:
    """uint8 ``[T, 3, H, W]``: a textured square moving ``shift`` pixels right per frame."""
    rng = np.random.default_rng(0)
    texture = rng.integers(60, 255, size=(12, 12, 3), dtype=np.uint8)
    clip = np.full((frames, size, size, 3), 20, dtype=np.uint8)
    for t in range(frames):
        left = 10 + t * shift
        clip[t, 18:30, left : left + 12] = texture
    return torch.from_numpy(clip).permute(0, 3, 1, 2)


def test_rgb_difference_is_the_next_frame_minus_this_one():
    clip = torch.randint(0, 256, (2, 5, 3, 8, 8), dtype=torch.uint8)  # [V, T, 3, H, W]
    coded = rgb_difference(clip)
    diff = clip[:, 1:].int() - clip[:, :-1].int()
    assert coded.shape == clip.shape and coded.dtype == torch.uint8
    assert torch.equal(coded[:, :-1].int(), 128 + torch.div(diff, 2, rounding_mode="floor"))
    assert torch.equal(coded[:, -1], coded[:, -2])  # the last frame repeats the previous
    still = clip[:, :1].expand(2, 5, 3, 8, 8)
    assert (rgb_difference(still) == 128).all()  # no change is exactly the zero code


@pytest.mark.parametrize("algorithm", ["dis", "farneback"])
def test_flow_follows_the_motion_and_a_flip_negates_it(algorithm):
    pytest.importorskip("cv2")
    clip = moving_square(3)
    flow = OpticalFlow(algorithm)(clip)  # uint8 [T, 2, H, W]
    assert flow.shape == (4, 2, 48, 48)
    x, y = ((flow[:-1, :, 20:28, 14:24].float() - 128) / 127.5 * FLOW_BOUND).mean(dim=(0, 2, 3))
    assert abs(x - 3) < 0.5 and abs(y) < 0.3
    mirrored = OpticalFlow(algorithm)(clip.flip(-1))
    x_mirrored = ((mirrored[:-1, 0, 20:28, 24:34].float() - 128) / 127.5 * FLOW_BOUND).mean()
    assert abs(x_mirrored + 3) < 0.5


def test_flows_are_memoised_by_frame_content_and_not_pickled(monkeypatch):
    pytest.importorskip("cv2")
    flow = OpticalFlow("dis")
    calls = []
    compute = flow._compute
    monkeypatch.setattr(flow, "_compute", lambda a, b: calls.append(1) or compute(a, b))
    clip = moving_square(2)
    first = flow(clip)
    assert len(calls) == 3
    assert torch.equal(flow(clip), first) and len(calls) == 3  # every pair from the cache
    flow(clip[[0, 1, 3, 2]])
    assert len(calls) == 5  # (0, 1) known; (1, 3) and (3, 2) new
    monkeypatch.undo()
    copy = pickle.loads(pickle.dumps(flow))  # what a loader worker gets
    assert copy._cache == {} and copy._estimator is None and len(flow._cache) == 5


@pytest.mark.parametrize("kind, channels", [("rgb_diff", 3), ("flow", 2)])
def test_training_pipeline_computes_motion_from_the_frames_it_outputs(kind, channels):
    """Whatever crop and flip a clip gets, its motion channels are those of its RGB frames."""
    if kind == "flow":
        pytest.importorskip("cv2")
    config = TransformConfig(size=32, short_side=40, area=(0.3, 1.0), normalize="half",
                             color_jitter=(0.4, 0.4, 0.4, 0.1))
    motion = MotionMaps(kind)
    clip = torch.from_numpy(render_clip(0, clip_rng(0, "train", 0), 6, 48)).permute(0, 3, 1, 2)
    jitter_free = build_transform(TransformConfig(size=32, short_side=40, area=(0.3, 1.0),
                                                  normalize="half"), True, motion=motion)
    jittered = build_transform(config, True, motion=motion)
    for seed in range(4):
        out, _ = jitter_free(clip, 0, torch.Generator().manual_seed(seed))
        assert out.shape == (6, 3 + channels, 32, 32)
        frames = (out[:, :3] * 127.5 + 127.5).round().to(torch.uint8)  # "half": x/127.5 - 1
        expected = (motion.maps(frames).float() - 128) / 127.5
        torch.testing.assert_close(out[:, 3:], expected, atol=1e-6, rtol=0)
        # Colour jitter changes the RGB frames, not their motion maps.
        again, _ = jittered(clip, 0, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(again[:, 3:], out[:, 3:])
        assert not torch.allclose(again[:, :3], out[:, :3])


def test_test_views_and_device_augmentation_carry_the_motion_channels():
    config = TransformConfig(size=32, short_side=40, test_short_side=40, test_crops=3,
                             color_jitter=(0.4, 0.4, 0.4, 0.1), random_erasing=0.5)
    motion = MotionMaps("rgb_diff")
    clip = torch.from_numpy(render_clip(0, clip_rng(0, "val", 1), 4, 48)).permute(0, 3, 1, 2)
    views, _ = build_transform(config, False, motion=motion)(clip, 0)
    assert len(views) == 3 and all(v.shape == (4, 6, 32, 32) for v in views)
    # data.gpu_augment: the worker leaves uint8 clips with motion; the device applies the rest,
    # the RGB-only steps leaving the motion channels as they were.
    worker = build_transform(config, True, motion=motion)
    deferred = build_transform(config, True, defer=True, motion=motion)
    planned = [deferred(clip, 0, torch.Generator().manual_seed(s))[0] for s in range(6)]
    batch = device_augment(config, 3)(torch.stack([p.clip for p in planned]),
                                      [p.plans for p in planned])
    for s in range(6):
        expected, _ = worker(clip, 0, torch.Generator().manual_seed(s))
        torch.testing.assert_close(batch[s], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch[s, :, 3:], (planned[s].clip[:, 3:].float() - 128) / 127.5)


def test_config_gives_the_data_the_motion_the_model_reads():
    base = {"model": {"backbone": "vit_tiny", "method": "motion_prompt"},
            "method": {"motion": "flow"}}
    assert config_from_dict(base).data.motion == "flow"
    assert config_from_dict({"model": {"method": "aim"}}).data.motion == "none"
    with pytest.raises(ConfigError, match="data.motion: rgb_diff is not what the model reads: "
                                          "motion_prompt reads flow"):
        config_from_dict({**base, "data": {"motion": "rgb_diff"}})
    with pytest.raises(ConfigError, match="no method of aim reads motion"):
        config_from_dict({"model": {"method": "aim"}, "data": {"motion": "flow"}})
    with pytest.raises(ConfigError, match="motion_prompt.motion must be one of"):
        config_from_dict({**base, "method": {"motion": "optical"}})
    stacked = {"model": {"backbone": "vit_tiny", "method": "vpt+motion_prompt"},
               "data": {"motion": "rgb_diff"}, "method": {"motion_prompt": {"motion": "flow"}}}
    with pytest.raises(ConfigError, match=r"motion_prompt reads flow \(method.motion_prompt."
                                          r"motion\); set data.motion: auto and method."
                                          r"motion_prompt.motion to the maps you want"):
        config_from_dict(stacked)
    with pytest.raises(ConfigError, match="model.num_frames: motion maps are changes between "
                                          "frames; use at least 2"):
        config_from_dict({**base, "model": {**base["model"], "num_frames": 1}})
    with pytest.raises(ConfigError, match="data.transform.rand_augment: its rotations, shears "
                                          "and translations would move the frames away"):
        config_from_dict({**base, "data": {"transform": {"rand_augment": [2, 9]}}})


def test_motion_needs_the_image_model_to_see_the_clips_frames():
    """A side network's frame stride feeds the image model every k-th frame, which no motion
    map matches; at stride 1 the two stack."""
    options = {"motion_prompt": {"num_tokens": 2, "width": 16},
               "side_network": {"temporal_width": 16, "pool_layers": 1}}
    with pytest.raises(ConfigError, match="stack motion prompts without side_network, or "
                                          "with its options that show the image model every "
                                          "frame in order"):
        create_model("motion_prompt+side_network", "vit_tiny", num_classes=5, num_frames=4,
                     motion_prompt=options["motion_prompt"],
                     side_network={**options["side_network"], "frame_stride": 2})
    model = create_model("motion_prompt+side_network", "vit_tiny", num_classes=5, num_frames=4,
                         **options)
    assert model(torch.randn(2, 4, 6, 32, 32)).shape == (2, 5)


def test_the_model_splits_the_channels_and_refuses_clips_without_motion():
    torch.manual_seed(0)
    model = create_model("motion_prompt", "vit_tiny", num_classes=5, num_frames=4,
                         motion="flow", num_tokens=3)
    assert model.input_channels == 5
    with pytest.raises(ValueError, match="takes clips of 5 channels per frame \\(RGB \\+ "
                                         "flow\\), got 3: set data.motion: auto"):
        model(torch.randn(1, 4, 3, 32, 32))
    plain = create_model("vpt", "vit_tiny", num_classes=5, num_frames=4)
    with pytest.raises(ValueError, match="got 5: leave data.motion at auto"):
        plain(torch.randn(1, 4, 5, 32, 32))


def test_prompts_are_made_from_each_frames_motion():
    """The same RGB with other motion gives other logits; with the projection at zero, the
    prompts are the learned ones and motion does not matter."""
    torch.manual_seed(0)
    model = create_model("motion_prompt", "vit_tiny", num_classes=5, num_frames=4,
                         num_tokens=3, deep=True).eval()
    rgb = torch.randn(2, 4, 3, 32, 32)
    still, moving = torch.zeros(2, 4, 3, 32, 32), torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        a = model(torch.cat([rgb, still], 2))
        b = model(torch.cat([rgb, moving], 2))
        assert (a - b).abs().max() > 1e-3
        for name, p in model.named_parameters():
            if name.endswith("projection.proj.weight"):
                p.zero_()
        torch.testing.assert_close(model(torch.cat([rgb, still], 2)),
                                   model(torch.cat([rgb, moving], 2)))


@pytest.mark.parametrize("stack", ["motion_prompt+vpt", "vpt+motion_prompt"])
def test_deep_prompts_replace_their_own_tokens_beside_vpt(stack):
    """Each block's motion prompts sit right before the patches and are that block's projection
    of the frame's motion features; VPT's stay right after the class token."""
    torch.manual_seed(0)
    model = create_model(stack, "vit_tiny", num_classes=5, num_frames=4,
                         motion_prompt={"num_tokens": 3, "deep": True},
                         vpt={"num_tokens": 2, "deep": True}).eval()
    seen = {}

    def record(index):
        def hook(module, args):
            seen[index] = (args[0].clone(), args[1])
        return hook

    for i, block in enumerate(model.backbone.blocks):
        block.attn.register_forward_pre_hook(record(i))
    with torch.no_grad():
        model(torch.randn(1, 4, 6, 32, 32))
    for i, block in enumerate(model.backbone.blocks):
        x, layout = seen[i]
        assert x.shape[1] == 1 + 2 + 3 + 16 and layout.num_prefix == 6
        if i == 0:
            continue
        motion = next(m for m in block.pre_attn if hasattr(m, "projection"))
        vpt = next(m for m in block.pre_attn if hasattr(m, "prompts"))
        with torch.no_grad():
            prompts = motion.projection(layout.extras[EXTRAS_KEY])
        normed = block.norm1(torch.cat([prompts, vpt.prompts.expand(4, -1, -1)], 1))
        torch.testing.assert_close(x[:, 3:6], normed[:, :3])
        torch.testing.assert_close(x[:, 1:3], normed[:, 3:])


def test_motion_prompts_learn_what_single_frames_cannot_tell():
    """Moving left vs moving right: one frame cannot tell them apart (the linear probe stays
    near chance); the RGB difference can, once the prompts have learned to read it."""
    left, right = CLASSES.index("moving left"), CLASSES.index("moving right")

    def clips(split: str, count: int):
        videos, labels = [], []
        for i in range(count):
            label = (left, right)[i % 2]
            frames = render_clip(label, clip_rng(5, split, i), 4, 32)
            videos.append(torch.from_numpy(frames).permute(0, 3, 1, 2))
            labels.append(i % 2)
        video = torch.stack(videos)
        with_motion = torch.cat([video, rgb_difference(video)], dim=2)
        return Normalize("clip", 3).apply_batch(with_motion, [None] * count), torch.tensor(labels)

    train, train_labels = clips("train", 64)
    val, val_labels = clips("val", 64)

    def fit(method: str, x: torch.Tensor, v: torch.Tensor, **options) -> float:
        torch.manual_seed(0)
        model = create_model(method, "vit_tiny", num_classes=2, num_frames=4, dropout=0.0,
                             **options)
        optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        model.train()
        for _ in range(60):
            loss = F.cross_entropy(model(x), train_labels)
            optim.zero_grad()
            loss.backward()
            optim.step()
        with torch.no_grad():
            return (model.eval()(v).argmax(1) == val_labels).float().mean().item()

    frame_only = fit("linear", train[:, :, :3], val[:, :, :3])
    with_motion = fit("motion_prompt", train, val, num_tokens=2, width=32)
    assert frame_only < 0.7
    assert with_motion >= 0.9


def test_vit_b16_counts():
    """Defaults: a 3 -> 64 channel patch convolution of the RGB differences (2 -> 64 for flow),
    a 3x3 convolution, positions, 4 queries, two norms and one projection to 768 with 4
    prompts; deep adds a projection and prompts per later block."""
    report = model_report("motion_prompt", "vit_b16_clip", 400, 8, 224)
    encoder = (3 * 64 * 256 + 64) + (64 * 64 * 9 + 64) + 196 * 64 + 4 * 64 + 2 * 2 * 64
    projection = 4 * 768 + 64 * 768 + 768
    assert report["tunable_by_part"] == {"head": 307_600, "motion_prompt": encoder + projection}
    assert encoder + projection == 152_192
    recipe = model_report("motion_prompt", "vit_b16_clip", 400, 8, 224, options={
        "motion_prompt": {"deep": True, "num_tokens": 8, "width": 128}})
    assert recipe["tunable_by_part"]["motion_prompt"] == 1_535_232
    assert round(report["gflops_per_view"], 1) == 287.2


def test_flow_without_opencv_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(ConfigError, match=r"flow needs OpenCV: pip install 'vidadapt\[flow\]'"):
        MotionMaps("flow")
    MotionMaps("rgb_diff")  # needs nothing
