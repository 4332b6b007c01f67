"""Sparse tubes: TubeViT's tokenisation of a whole clip for the frozen image model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidadapt.errors import ConfigError
from vidadapt.methods.sparse_tubes import Tube, inflate_patch_kernel, sincos_3d
from vidadapt.models import create_model
from vidadapt.report import count_flops, measure, model_report

SYNTHETIC_TUBES = [  # configs/synthetic/sparse_tubes.yaml
    {"kernel": [1, 8, 8], "stride": [4, 8, 8], "offset": [1, 0, 0]},
    {"kernel": [4, 8, 8], "stride": [4, 8, 8]},
    {"kernel": [4, 16, 16], "stride": [4, 16, 16]},
]


def tiny(tubes=SYNTHETIC_TUBES, method: str = "sparse_tubes", **options):
    torch.manual_seed(0)
    if "+" in method:
        options = {"sparse_tubes": {"tubes": tubes}, **options}
    else:
        options = {"tubes": tubes, **options}
    return create_model(method, "vit_tiny", num_classes=5, num_frames=4, **options)


def test_tubevit_tubes_on_32_frames_of_224():
    """TubeViT's four tubes: 2x7x7 + 3x7x7 + 2x7x7 + 1x14x14 = 539 tokens, a third of 8 x 196
    patches (and far fewer than 32 x 196)."""
    model = create_model("sparse_tubes", "vit_b16_clip", num_classes=400, num_frames=32)
    tokenizer = model.backbone.video_tokenizer[0]
    counts = [tube.positions((32, 224, 224)) for tube in tokenizer.tubes]
    assert counts == [(2, 7, 7), (3, 7, 7), (2, 7, 7), (1, 14, 14)]
    assert tokenizer.count((32, 224, 224)) == 539
    # Trainable: each kernel's rank-16 update (16 x 3*t*h*w down, 768 x 16 up) and a bias per
    # tube; a full update trains the four kernels (3 x 768 x t*h*w).
    volume = 512 + 256 + 576 + 256
    assert model.parameter_counts()["sparse_tubes"] == 16 * 3 * volume + 4 * 768 * 16 + 4 * 768
    full = create_model("sparse_tubes", "vit_b16_clip", num_classes=400, num_frames=32,
                        kernel_rank=None)
    assert full.parameter_counts()["sparse_tubes"] == 3 * 768 * volume + 4 * 768
    report = model_report("sparse_tubes", "vit_b16_clip", 400, 32, 224)
    assert round(report["gflops_per_view"], 1) == 103.5  # the plain ViT: 281.0 at 8 frames


def test_tube_centres_account_for_offset_and_stride():
    tube = Tube((16, 4, 4), (6, 32, 32), (4, 8, 8))
    centres = tube.centres((32, 224, 224), torch.device("cpu")).view(3, 7, 7, 3)
    assert centres[:, 0, 0, 0].tolist() == [12, 18, 24]  # 4 + 8, then every 6 frames
    assert centres[0, :, 0, 1].tolist() == [10 + 32 * i for i in range(7)]  # 8 + 2, every 32


def test_sincos_positions():
    table = sincos_3d(torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), 14)
    third, half = 4, 2
    assert torch.equal(table[0], torch.tensor([0.0, 0, 1, 1] * 3 + [0, 0]))  # sin 0, cos 0
    freq = torch.tensor([1.0, 1 / 100.0])  # 1 / 10000^(j / half)
    for axis, coordinate in enumerate((1.0, 2.0, 3.0)):
        chunk = table[1, axis * third : (axis + 1) * third]
        torch.testing.assert_close(chunk[:half], (coordinate * freq).sin())
        torch.testing.assert_close(chunk[half:], (coordinate * freq).cos())


def test_inflated_kernels_see_a_still_clip_as_the_image_model_sees_its_frame():
    """On a clip whose frames are all alike, an image-sized tube of any length gives the patch
    embedding of the frame; a resized kernel keeps the response to a flat image."""
    weight = torch.randn(16, 3, 8, 8)
    frame = torch.randn(1, 3, 32, 32)
    clip = frame[:, :, None].expand(1, 3, 4, 32, 32)  # [B, 3, T, H, W]
    patches = F.conv2d(frame, weight, stride=8)  # [1, 16, 4, 4]
    for t in (1, 2, 4):
        tube = F.conv3d(clip[:, :, :t], inflate_patch_kernel(weight, (t, 8, 8)), stride=(t, 8, 8))
        torch.testing.assert_close(tube[:, :, 0], patches, rtol=1e-5, atol=1e-5)
    flat = torch.full((1, 3, 4, 16, 16), 0.7)
    for patch in (8, 16):  # the synthetic ViT's patch and ViT-B/16's, to TubeViT's sizes
        weight = torch.randn(16, 3, patch, patch)
        for size in (4, 8, 12, 16):
            kernel = inflate_patch_kernel(weight, (4, size, size))
            response = F.conv3d(flat[:, :, :, :size, :size], kernel)[:, :, 0, 0, 0]
            torch.testing.assert_close(response, 0.7 * weight.sum(dim=(1, 2, 3))[None],
                                       rtol=1e-4, atol=1e-4)


def test_one_sequence_per_clip_and_only_the_tubes_train():
    model = tiny()
    video = torch.randn(2, 4, 3, 32, 32)
    tokens, _, layout = model.backbone.forward_tokens(video)
    assert tokens.shape == (2, 1 + 16 + 16 + 4, 128)  # class token + the three tubes
    assert (layout.batch, layout.frames, layout.num_patches) == (2, 1, 36)
    model(video).sum().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    tubes = "backbone.video_tokenizer.0"
    updates = {f"{tubes}.kernels.{i}.{part}" for i in range(3) for part in ("up", "down")}
    assert trained == {*updates, f"{tubes}.biases", "head.weight", "head.bias"}


def test_half_of_aims_flops_on_the_synthetic_recipe():
    """The synthetic recipe's 37 tokens per clip cost under half of AIM S+T's 4 x 17: 0.42x per
    clip, 0.45x at batch 1 (the kernels' rank-4 updates are composed once per forward)."""
    aim = create_model("aim", "vit_tiny", num_classes=13, num_frames=4, joint=False)
    tubes = tiny(kernel_rank=4)

    def per_clip(model):
        return count_flops(model, torch.empty(2, 4, 3, 32, 32))[1] - measure(model, 4, 32)

    assert per_clip(tubes) / per_clip(aim) == pytest.approx(0.421, abs=1e-3)
    assert measure(tubes, 4, 32) / measure(aim, 4, 32) == pytest.approx(0.447, abs=1e-3)


def test_tubes_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match=r"tubes\[0\].stride must be 3 numbers >= 1"):
        tiny([{"kernel": [1, 8, 8], "stride": [0, 8, 8]}])
    with pytest.raises(ConfigError, match=r"tubes\[1\] needs kernel"):
        tiny([{"kernel": [1, 8, 8]}, {"stride": [1, 8, 8]}])
    with pytest.raises(ConfigError, match=r"tubes\[0\] needs kernel"):
        tiny([{"kernel": [1, 8, 8], "strides": [1, 8, 8]}])
    with pytest.raises(ConfigError, match="kernel_rank must be at least 1"):
        tiny(kernel_rank=0)
    with pytest.raises(ConfigError, match="positions must be sincos or image, got 'imag'"):
        tiny(positions="imag")
    with pytest.raises(ValueError, match="does not fit clips of 4 frames of 32x32"):
        tiny([{"kernel": [8, 8, 8]}])(torch.randn(1, 4, 3, 32, 32))


@pytest.mark.parametrize("stack", ["sparse_tubes+adapter", "sparse_tubes+lora",
                                   "vpt+sparse_tubes"])
def test_frame_wise_methods_stack_on_the_tube_sequence(stack):
    model = tiny(method=stack)
    logits = model(torch.randn(2, 4, 3, 32, 32))
    assert logits.shape == (2, 5)
    other = stack.replace("sparse_tubes", "").strip("+")
    assert model.parameter_counts()[other] > 0
    if other == "vpt":  # VPT's prompts join the clip's one sequence
        tokens, _, layout = model.backbone.forward_tokens(torch.randn(2, 4, 3, 32, 32))
        assert tokens.shape[1] == 1 + 5 + 36 and layout.num_prefix == 6
    assert math.isfinite(logits.sum().item())
