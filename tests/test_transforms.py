"""Video transforms: geometry, one set of parameters per clip, label swap on flip, exact
normalisation numbers, RandAugment ops (against PIL where PIL defines them), determinism."""

import colorsys

import numpy as np
import pytest
import torch

from vidadapt.data.transforms import (
    NORMALIZATION,
    RAND_AUGMENT_OPS,
    ColorJitter,
    MultiScaleCrop,
    Normalize,
    RandAugment,
    RandomErasing,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    SpatialViews,
    TransformConfig,
    adjust_hue,
    build_transform,
    crop,
    mirror_label_map,
    multi_scale_crop_box,
    random_resized_crop_box,
    resize,
    rotate,
    translate_x,
    view_boxes,
)
from vidadapt.errors import ConfigError


def random_clip(frames=4, height=48, width=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, 3, height, width), dtype=torch.uint8, generator=g)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def repeated_frame_clip(frames=4, height=48, width=64):
    """A clip whose frames are identical: any per-frame randomness would make them differ."""
    return random_clip(1, height, width).expand(frames, -1, -1, -1).contiguous()


def assert_frames_identical(clip):
    assert all(torch.equal(frame, clip[0]) for frame in clip)


# --- resize and crops ----------------------------------------------------------------------


def test_resize_short_side_and_antialias():
    clip = random_clip(2, 48, 64)
    assert Resize(24).apply(clip).shape == (2, 3, 24, 32)
    assert Resize(48).apply(clip) is clip
    assert Resize(30).apply(random_clip(1, 64, 48)).shape == (1, 3, 40, 30)
    # Shrunk 3x, a one-pixel checkerboard averages to grey; without antialiasing the samples
    # would land on single black or white pixels.
    board = ((torch.arange(12)[:, None] + torch.arange(12)[None, :]) % 2 * 255).to(torch.uint8)
    small = resize(board.expand(1, 3, 12, 12), 4, 4)
    assert small.min() >= 126 and small.max() <= 129


@pytest.mark.parametrize("size", [(17, 23), (96, 80)])  # shrinking and enlarging
def test_uint8_resize_is_within_one_grey_level_of_the_float_one(size):
    clip = random_clip(3, 48, 64)
    through_float = torch.nn.functional.interpolate(
        clip.float(), size=size, mode="bilinear", antialias=True, align_corners=False,
    ).round().clamp(0, 255)  # the earlier path
    fast = resize(clip, *size)
    assert fast.dtype == torch.uint8 and fast.shape == (3, 3, *size)
    assert (fast.float() - through_float).abs().max() <= 1.0


def test_random_resized_crop_uses_one_box_for_all_frames():
    clip = random_clip(5, 48, 64)
    out = RandomResizedCrop(32, area=(0.1, 0.6)).apply(clip, seeded(3))
    box = random_resized_crop_box(48, 64, (0.1, 0.6), (3 / 4, 4 / 3), seeded(3))
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, resize(crop(clip, *box), 32, 32))
    assert_frames_identical(RandomResizedCrop(32).apply(repeated_frame_clip(), seeded(4)))


def test_random_resized_crop_area_and_ratio_stay_in_range():
    g = seeded(0)
    for _ in range(500):
        top, left, h, w = random_resized_crop_box(120, 100, (0.2, 0.5), (0.5, 2.0), g)
        assert 0 <= top <= 120 - h and 0 <= left <= 100 - w
        # Rounding h and w moves the area and ratio by at most about one pixel row / column.
        assert 0.2 - 0.03 <= h * w / (120 * 100) <= 0.5 + 0.03
        assert 0.5 - 0.05 <= w / h <= 2.0 + 0.05


def test_random_resized_crop_falls_back_to_central_crop():
    # No crop of >= 90% area with aspect >= 2 fits a square: central crop at the nearest ratio.
    assert random_resized_crop_box(50, 50, (0.9, 1.0), (2.0, 3.0), seeded(0)) == (12, 0, 25, 50)


def test_multi_scale_crop_sizes_and_fixed_offsets():
    # Sides: int(256 * (1, .875, .75, .66)) = 256, 224, 192, 168; pairs at most one level apart.
    sides = [256, 224, 192, 168]
    pairs = {(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    seen_sizes, g = set(), seeded(0)
    for _ in range(400):
        top, left, h, w = multi_scale_crop_box(256, 340, 224, generator=g)
        hs, ws = (256 - h) // 4, (340 - w) // 4
        assert (top, left) in {(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)}
        seen_sizes.add((h, w))
    assert seen_sizes == pairs
    out = MultiScaleCrop(32).apply(repeated_frame_clip(3, 40, 56), seeded(1))
    assert out.shape == (3, 3, 32, 32)
    assert_frames_identical(out)


def test_centre_and_three_crop_positions():
    assert view_boxes(224, 300, 224, 1) == [(0, 38)]
    assert view_boxes(224, 300, 224, 3) == [(0, 0), (0, 38), (0, 76)]  # left, centre, right
    assert view_boxes(300, 224, 224, 3) == [(0, 0), (38, 0), (76, 0)]  # top, centre, bottom
    assert view_boxes(40, 50, 32, 3) == [(4, 0), (4, 9), (4, 18)]
    clip = random_clip(2, 40, 50)
    views = SpatialViews(32, 3).apply(clip)
    assert views.shape == (3, 2, 3, 32, 32)
    assert torch.equal(views[2], clip[..., 4:36, 18:50])
    with pytest.raises(ValueError, match="larger than the frame"):
        view_boxes(20, 50, 32, 1)


# --- flip --------------------------------------------------------------------------------


def test_flip_mirrors_pixels_and_swaps_labels():
    clip = random_clip()
    flip = RandomHorizontalFlip(p=1.0, label_map={0: 1, 1: 0})
    out, label = flip(clip, 0)
    assert torch.equal(out[..., :, 0], clip[..., :, -1])
    assert torch.equal(out, clip[..., torch.arange(63, -1, -1)])
    assert label == 1
    assert flip(clip, 1)[1] == 0 and flip(clip, 5)[1] == 5
    kept, label = RandomHorizontalFlip(p=0.0, label_map={0: 1})(clip, 0)
    assert kept is clip and label == 0


def test_flip_rate_and_determinism():
    flip = RandomHorizontalFlip(label_map={0: 1})
    labels = [flip(random_clip(1, 4, 4), 0, seeded(i))[1] for i in range(400)]
    assert 150 < sum(labels) < 250
    assert labels == [flip(random_clip(1, 4, 4), 0, seeded(i))[1] for i in range(400)]


def test_mirror_label_map_from_names():
    classes = [
        "moving left",
        "moving right",
        "rotating clockwise",
        "rotating counter-clockwise",
        "growing",
        "Pushing something from left to right",
        "Pushing something from right to left",
        "Turning the camera left while filming something",
    ]
    assert mirror_label_map(classes) == {0: 1, 1: 0, 2: 3, 3: 2, 5: 6, 6: 5}


# --- normalisation and colour --------------------------------------------------------------


def test_normalisation_numbers():
    reference = {
        "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    }
    assert NORMALIZATION == reference
    clip = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    for preset, (mean, std) in reference.items():
        out = Normalize(preset).apply(clip)
        assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
        expected = [(0 - mean[0]) / std[0], (1 - mean[1]) / std[1], (0.2 - mean[2]) / std[2]]
        assert torch.allclose(out[1, :, 1, 1], torch.tensor(expected), atol=1e-6)
    with pytest.raises(ConfigError, match="unknown normalisation 'yuv'"):
        Normalize("yuv")


def test_hue_matches_colorsys():
    clip = random_clip(1, 4, 5)
    out = adjust_hue(clip[None], 0.3)[0]  # ops take batches [B, T, 3, H, W]
    for y in range(4):
        for x in range(5):
            h, s, v = colorsys.rgb_to_hsv(*(clip[0, :, y, x].double() / 255).tolist())
            expected = [round(c * 255) for c in colorsys.hsv_to_rgb((h + 0.3) % 1, s, v)]
            assert (out[0, :, y, x].int() - torch.tensor(expected)).abs().max() <= 1


def test_color_jitter_same_for_every_frame_and_zero_is_identity():
    clip = repeated_frame_clip()
    out = ColorJitter(0.4, 0.4, 0.4, 0.1).apply(clip, seeded(2))
    assert out.dtype == torch.uint8 and not torch.equal(out, clip)
    assert_frames_identical(out)
    assert torch.equal(ColorJitter().apply(clip, seeded(2)), clip)


# --- RandAugment -------------------------------------------------------------------------

# Ops that are the identity at magnitude 0 (equalize always changes a clip, autocontrast
# changes one that does not span 0..255).
IDENTITY_AT_ZERO = set(RAND_AUGMENT_OPS) - {"equalize", "autocontrast"}


@pytest.mark.parametrize("name", list(RAND_AUGMENT_OPS))
def test_rand_augment_ops_keep_shape_dtype_and_frames_alike(name):
    op, argument, signed = RAND_AUGMENT_OPS[name]
    clip = repeated_frame_clip(3, 24, 32)
    for strength in (0.7, -0.7) if signed else (0.7,):
        out = op(clip[None], argument(strength))[0]
        assert out.shape == clip.shape and out.dtype == torch.uint8
        assert_frames_identical(out)
    if name in IDENTITY_AT_ZERO:
        assert torch.equal(op(clip[None], argument(0.0))[0], clip)


def test_rand_augment_ops_match_pil():
    image_module = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    clip = random_clip(1, 24, 32, seed=5) // 2 + 40  # not spanning 0..255
    pil = image_module.fromarray(clip[0].permute(1, 2, 0).numpy())

    def as_clip(image):
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]

    exact = {
        "equalize": ImageOps.equalize(pil),
        "autocontrast": ImageOps.autocontrast(pil),
        "posterize": ImageOps.posterize(pil, 5),
        "solarize": ImageOps.solarize(pil, 100),
    }
    arguments = {"equalize": 0, "autocontrast": 0, "posterize": 5, "solarize": 100}
    for name, expected in exact.items():
        ours = RAND_AUGMENT_OPS[name][0](clip[None], arguments[name])[0]
        assert torch.equal(ours, as_clip(expected)), name
    # Enhance ops: PIL rounds its intermediate grey image, so values may differ by one.
    enhance = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color}
    enhance |= {"sharpness": ImageEnhance.Sharpness}
    for name, enhancer in enhance.items():
        ours = RAND_AUGMENT_OPS[name][0](clip[None], 1.6)[0]
        assert (ours.int() - as_clip(enhancer(pil).enhance(1.6)).int()).abs().max() <= 1, name


def test_geometric_ops_exact():
    clip = random_clip(2, 8, 8)
    assert torch.equal(rotate(clip[None], 90)[0], clip.rot90(1, (-2, -1)))  # counter-clockwise
    shifted = translate_x(clip[None], 0.25)[0]  # two pixels to the right, grey fill on the left
    assert torch.equal(shifted[..., 2:], clip[..., :-2])
    assert (shifted[..., :2] == 128).all()


def test_rand_augment_deterministic_and_same_for_every_frame():
    clip = repeated_frame_clip(3, 24, 32)
    augment = RandAugment(num_ops=4, magnitude=7)
    outs = [augment.apply(clip, seeded(s)) for s in range(6)]
    assert torch.equal(outs[0], augment.apply(clip, seeded(0)))
    assert any(not torch.equal(outs[0], out) for out in outs[1:])
    for out in outs:
        assert_frames_identical(out)


# --- random erasing and whole pipelines ----------------------------------------------------


def test_random_erasing_one_box_per_clip():
    clip = torch.zeros(4, 3, 40, 40)
    g = seeded(0)
    for _ in range(50):
        out = RandomErasing(p=1.0).apply(clip, g)
        erased = out[0, 0] != 0
        assert_frames_identical(out)
        assert 0.02 * 1600 * 0.8 <= erased.sum() <= 1600 / 3 * 1.2
        rows, cols = erased.any(1).nonzero(), erased.any(0).nonzero()
        box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert erased.sum() == box_area  # one rectangle
    assert torch.equal(RandomErasing(p=0.0).apply(clip, g), clip)


def test_build_transform_train_and_test():
    clip = random_clip(4, 48, 64)
    config = TransformConfig(
        size=32,
        short_side=40,
        label_swap={0: 1},
        color_jitter=(0.4, 0.4, 0.4, 0.1),
        rand_augment=(2, 5),
        random_erasing=0.5,
    )
    train = build_transform(config, train=True)
    out, label = train(clip, 0, seeded(1))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    again, label_again = train(clip, 0, seeded(1))
    assert torch.equal(out, again) and label == label_again
    assert not torch.equal(out, train(clip, 0, seeded(2))[0])

    views, label = build_transform(TransformConfig(size=32, test_crops=3), train=False)(clip, 7)
    assert label == 7 and len(views) == 3
    centre = Normalize("clip").apply(crop(resize(clip, 32, 43), 0, 5, 32, 32))
    assert torch.equal(views[1], centre)
    assert torch.equal(views[0], Normalize("clip").apply(resize(clip, 32, 43)[..., :32]))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("crop", "five", "unknown crop 'five'"),
        ("normalize", "yuv", "unknown preset 'yuv'"),
        ("test_crops", 10, "test_crops must be 1 or 3"),
        ("short_side", 200, "must be at least the crop size 224"),
        ("area", (0.5, 0.2), "area must satisfy"),
    ],
)
def test_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        build_transform(TransformConfig(**{field: value}), train=True)
