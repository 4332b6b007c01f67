"""The synthetic CLIP (``builtin:clip_tiny_synthetic``, made by ``vidadapt.demo.pretrain_clip``):
its captions, its file (a Hugging Face CLIPModel folder that HF reads too), and what it knows —
a still frame's shape, colour and place, and on videos the classes a frame can show."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from vidadapt import create_backbone, create_model, load_clip
from vidadapt.checkpoints import resolve_source
from vidadapt.data.synthetic import CLASSES, NUM_TIME_CLASSES, ObjectTrack, SyntheticClips
from vidadapt.demo.pretrain_clip import (
    colour_name,
    describe,
    place_phrase,
    render_captioned,
    zero_shot_report,
)

SOURCE = "builtin:clip_tiny_synthetic"


@pytest.fixture(scope="module")
def clip():
    return load_clip(SOURCE, backbone="vit_tiny_clip")


def test_caption_words():
    assert [colour_name(np.array(rgb)) for rgb in [(1, 0, 0), (1, 1, 0), (0, 0.8, 0.1),
                                                    (0.1, 0.2, 1), (1, 0.3, 0.8)]] == [
        "red", "yellow", "green", "blue", "pink"]
    assert place_phrase(np.array([3.0, 2.0]), 32) == "at the top left"
    assert place_phrase(np.array([16.0, 30.0]), 32) == "at the bottom"
    assert place_phrase(np.array([29.0, 16.0]), 32) == "on the right"
    assert place_phrase(np.array([16.0, 16.0]), 32) == "in the middle"


def test_captions_always_name_the_shape_and_sometimes_each_attribute():
    still = ObjectTrack(shape="ring", colour=np.array([1.0, 0.0, 0.0]),
                        centre=np.array([[3.0, 2.0]]), angle=np.zeros(1),
                        radius=np.array([3.0]), opacity=np.array([0.3]))
    rng = np.random.default_rng(0)
    captions = [describe(still, 32, rng) for _ in range(200)]
    assert all("ring" in c for c in captions)
    for words in ("small", "faint", "red", "at the top left"):
        share = np.mean([words in c for c in captions])
        assert 0.4 < share < 0.8, words  # each attribute is named with chance KEEP = 0.6
    assert any(c.startswith("a photo of a ") for c in captions)


def test_shipped_folder_is_a_hf_clip_model_with_the_same_embeddings(clip):
    folder = resolve_source(SOURCE)
    reference = transformers.CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    prompts = [f"a video of {c}." for c in CLASSES]
    ids = clip.tokenizer(prompts, clip.text.cfg.context_length)
    hf_ids = hf_tokenizer(prompts).input_ids
    assert [row[: len(h)].tolist() for row, h in zip(ids, hf_ids, strict=True)] == hf_ids
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            clip.visual.encode(pixels),
            reference.get_image_features(pixel_values=pixels).pooler_output, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            clip.text(ids), reference.get_text_features(input_ids=ids).pooler_output,
            rtol=0, atol=1e-5)
    assert clip.logit_scale == pytest.approx(reference.logit_scale.item())


def test_image_tower_is_the_demo_image_model(clip):
    plain = create_backbone("vit_tiny", "builtin:vit_tiny_synthetic")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the pooled embedding, before the CLIP projection
        torch.testing.assert_close(clip.visual(pixels), plain(pixels), rtol=0, atol=0)


def test_zero_shot_reads_shape_colour_and_place_off_held_out_stills(clip):
    images, stills = render_captioned(np.random.default_rng(123), 400, 32)
    report = zero_shot_report(clip, images, stills, 32)
    assert report["shape"] > 0.9  # six shapes: chance 0.17
    assert report["colour"] > 0.6  # eight colour names: chance 0.125
    assert report["column"] > 0.75  # left or right


def test_zero_shot_on_videos_names_the_static_classes_by_their_shapes(clip):
    clips = SyntheticClips(130, frames=16, size=32, split="val")
    videos, labels = zip(*(clips[i] for i in range(len(clips))), strict=True)
    video = torch.stack(videos)[:, 2::4]  # [130, 4, 3, 32, 32]: the uniform sampler's frames
    model = create_model("zero_shot", clip, classes=CLASSES, num_frames=4,
                         templates=["a video of {}."]).eval()
    with torch.no_grad():
        predicted = model(video).argmax(-1)  # [130]
    correct = predicted == torch.tensor(labels)
    static = torch.tensor(labels) >= NUM_TIME_CLASSES
    assert correct[static].float().mean() > 0.8  # named by their shapes: chance 1/13
    assert correct.float().mean() > 0.25  # chance 0.077
