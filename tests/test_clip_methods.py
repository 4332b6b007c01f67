"""CLIP methods on a tiny random CLIP: every logit against a hand-written reference built from
the towers, what trains, base-to-new, and checkpoints through the engine."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from vidadapt import ViT, ViTConfig
from vidadapt.cli import main as cli
from vidadapt.clip import ClipTokenizer, TextConfig, TextTransformer
from vidadapt.clip.protocols import base_new_split, class_subset, harmonic_mean
from vidadapt.clip.towers import Clip
from vidadapt.config import config_from_dict
from vidadapt.data.annotations import Annotation, VideoRecord
from vidadapt.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from vidadapt.data.synthetic import make_synthetic
from vidadapt.engine.build import build_model
from vidadapt.engine.checkpoint import (
    backbone_fingerprint,
    load_adapter,
    read_adapter,
    save_adapter,
)
from vidadapt.errors import CheckpointError, ConfigError
from vidadapt.methods.tip_adapter import search_grid
from vidadapt.models import create_model

CLASSES = ["moving left", "moving right", "growing", "shrinking", "static_circle"]
TEMPLATES = ["a video of {}.", "a clip of an object {}."]
FRAMES, SIZE, EMBED, CONTEXT = 3, 16, 32, 16
SCALE = 100.0  # exp(logit_scale)
ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    texts = [c.replace("_", " ") for c in CLASSES] + TEMPLATES + ["a video of", "new classes"]
    return ClipTokenizer.learn(texts)


def tiny_clip(tokenizer: ClipTokenizer, seed: int = 0) -> Clip:
    """Random towers whose outputs depend on their inputs (a wider init than CLIP's, so that
    class names give clearly different embeddings)."""
    torch.manual_seed(seed)
    visual = ViT(ViTConfig(image_size=SIZE, patch_size=8, width=32, depth=1, heads=2,
                           mlp_dim=64, embed_dim=EMBED))
    text = TextTransformer(TextConfig(vocab_size=tokenizer.vocab_size, context_length=CONTEXT,
                                      width=32, depth=1, heads=2, mlp_dim=64, embed_dim=EMBED))
    for module in (visual, text):
        for name, p in module.named_parameters():
            if p.ndim > 1 and "norm" not in name:
                torch.nn.init.normal_(p, std=0.3)
    return Clip(visual.eval(), text.eval(), tokenizer, math.log(SCALE))


def clip_model(tokenizer, method: str, seed: int = 0, classes=CLASSES, **options):
    torch.manual_seed(seed)
    return create_model(method, tiny_clip(tokenizer), classes=classes, num_frames=FRAMES,
                        **options).eval()


def videos(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def embed_texts(clip: Clip, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return clip.text(clip.tokenizer(texts, CONTEXT))


def clip_embedding(clip: Clip, video: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return clip.visual.encode(video).mean(dim=1)  # frames averaged


def cosine_logits(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return SCALE * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


def template_classifier(clip: Clip, classes=CLASSES, templates=TEMPLATES) -> torch.Tensor:
    """CLIP's prompt ensembling, written out: mean of normalised embeddings, normalised."""
    rows = []
    for name in classes:
        embedded = embed_texts(clip, [t.format(name.replace("_", " ")) for t in templates])
        rows.append(F.normalize(F.normalize(embedded, dim=-1).mean(dim=0), dim=-1))
    return torch.stack(rows)  # [C, E]


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


def assert_logits_close(actual, expected):
    """Logits are 100 x cosine: compared as cosines, to 1e-5."""
    assert_close(actual / SCALE, expected / SCALE)


# ---- zero-shot -------------------------------------------------------------------------------


def test_zero_shot_is_cosine_to_ensembled_templates(tokenizer):
    model = clip_model(tokenizer, "zero_shot", templates=TEMPLATES)
    clip, video = tiny_clip(tokenizer), videos()
    expected = cosine_logits(clip_embedding(clip, video), template_classifier(clip))
    with torch.no_grad():
        assert_logits_close(model(video), expected)
        assert_logits_close(model(model.video_features(video)), expected)  # features in
    assert model.parameter_counts()["tunable"] == 0 and model.trainable_state_dict() == {}

    max_pool = clip_model(tokenizer, "zero_shot", templates=TEMPLATES, temporal_pool="max")
    with torch.no_grad():
        frames = clip.visual.encode(video)  # [B, T, E]
        expected = cosine_logits(frames.amax(dim=1), template_classifier(clip))
        assert_logits_close(max_pool(video), expected)


# ---- CoOp / CoCoOp ---------------------------------------------------------------------------


@pytest.mark.parametrize("position, sentence", [
    ("end", "a video of {}."),
    ("front", "{} a video of."),
    ("middle", "a {} video of."),  # 3 context vectors: 1 before the name, 2 after
])
def test_coop_from_words_starts_as_the_written_prompt(tokenizer, position, sentence):
    # Context initialised from "a video of" is those words' embeddings, so before training the
    # learned prompt is exactly the sentence with the class name at `position`.
    model = clip_model(tokenizer, "coop", ctx_init="a video of", class_position=position)
    clip = tiny_clip(tokenizer)
    written = embed_texts(clip, [sentence.format(c.replace("_", " ")) for c in CLASSES])
    with torch.no_grad():
        assert_close(model.head.prompts(model.head, None), written)
        video = videos()
        assert_logits_close(model(video), cosine_logits(clip_embedding(clip, video), written))


def test_coop_trains_only_the_context(tokenizer):
    model = clip_model(tokenizer, "coop", n_ctx=4).train()
    assert model.head.prompts.ctx.shape == (4, 32)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.prompts.ctx"]
    # The frozen towers stay in eval.
    assert not model.head.text.training and not model.backbone.training
    F.cross_entropy(model(videos()), torch.tensor([0, 1, 2, 3])).backward()
    assert model.head.prompts.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.prompts.ctx")
    assert model.parameter_counts() == {"coop": 4 * 32, "tunable": 4 * 32,
                                        "total": sum(p.numel() for p in model.parameters())}


def test_prompts_longer_than_the_text_context_are_refused(tokenizer):
    longest = max(len(tokenizer.encode(f"{c.replace('_', ' ')}.")) for c in CLASSES)
    fits = CONTEXT - 2 - longest  # learned vectors that still fit beside SOT and EOT
    assert clip_model(tokenizer, "coop", n_ctx=fits).head.prompts.ctx.shape == (fits, 32)
    with pytest.raises(ConfigError, match=f"{fits + 1} learned vectors .* 16 tokens"):
        clip_model(tokenizer, "coop", n_ctx=fits + 1)
    with pytest.raises(ConfigError, match="does not fit the text tower's 16 tokens"):
        clip_model(tokenizer, "efficient_prompt", prefix_len=fits, suffix_len=1)


def test_coop_class_specific_context(tokenizer):
    model = clip_model(tokenizer, "coop", n_ctx=2, class_specific=True)
    assert model.head.prompts.ctx.shape == (len(CLASSES), 2, 32)
    with torch.no_grad():  # one class's context moves only that class's embedding
        before = model.head.prompts(model.head, None)
        # (A constant shift is what LayerNorm removes.)
        model.head.prompts.ctx[1] += torch.randn(2, 32)
        after = model.head.prompts(model.head, None)
    changed = (after - before).abs().amax(dim=1) > 1e-4
    assert changed.tolist() == [False, True, False, False, False]
    with pytest.raises(ConfigError, match="learned for 5 classes"):
        model.set_classes(["a", "b"])


def test_cocoop_shifts_the_context_per_clip(tokenizer):
    model = clip_model(tokenizer, "cocoop", ctx_init="a video of")
    net = model.head.prompts.meta_net
    assert (net.linear1.in_features, net.linear1.out_features) == (EMBED, EMBED // 16)
    assert net.linear2.out_features == 32  # the text width
    clip, video = tiny_clip(tokenizer), videos()
    with torch.no_grad():
        text = model.head.prompts(model.head, F.normalize(model.video_features(video), dim=-1))
        assert text.shape == (4, len(CLASSES), EMBED)  # class embeddings per clip
        assert not torch.allclose(text[0], text[1])
        # With a silent meta-network it is CoOp: the written prompt for every clip.
        net.linear2.weight.zero_()
        net.linear2.bias.zero_()
        written = embed_texts(clip, [f"a video of {c.replace('_', ' ')}." for c in CLASSES])
        assert_logits_close(model(video), cosine_logits(clip_embedding(clip, video), written))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.prompts.ctx"} | {
        f"head.prompts.meta_net.linear{i}.{kind}" for i in (1, 2) for kind in ("weight", "bias")}


# ---- CLIP-Adapter and Tip-Adapter ------------------------------------------------------------


def test_clip_adapter_blends_the_adapted_embedding(tokenizer):
    model = clip_model(tokenizer, "clip_adapter", templates=TEMPLATES, ratio=0.2, reduction=4)
    down, up = model.head.adapter.fc[0], model.head.adapter.fc[2]
    assert down.weight.shape == (EMBED // 4, EMBED) and down.bias is None and up.bias is None
    assert model.parameter_counts()["tunable"] == 2 * EMBED * EMBED // 4
    clip, video = tiny_clip(tokenizer), videos()
    f = clip_embedding(clip, video)
    adapted = 0.2 * F.relu(up(F.relu(down(f)))) + 0.8 * f
    with torch.no_grad():
        assert_logits_close(model(video), cosine_logits(adapted, template_classifier(clip)))


def clustered_features(num: int, views: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[N, V, E]`` near one random centre per class, labels ``[N, V]``."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(CLASSES), EMBED, generator=torch.Generator().manual_seed(9))
    labels = torch.arange(num) % len(CLASSES)
    noise = 0.3 * torch.randn(num, views, EMBED, generator=generator)
    return centres[labels][:, None] + noise, labels[:, None].expand(num, views)


def test_tip_adapter_cache_and_logits(tokenizer):
    model = clip_model(tokenizer, "tip_adapter", templates=TEMPLATES, alpha=2.0, beta=3.0)
    features, labels = clustered_features(10, views=3, seed=0)
    model.fit_features(features, labels)
    keys = F.normalize(F.normalize(features, dim=-1).mean(dim=1), dim=-1)
    assert_close(model.head.cache.keys, keys)
    assert torch.equal(model.head.cache.values, F.one_hot(labels[:, 0], len(CLASSES)).float())
    assert not model.head.cache.keys.requires_grad and model.parameter_counts()["tunable"] == 0

    clip, video = tiny_clip(tokenizer), videos()
    f = F.normalize(clip_embedding(clip, video), dim=-1)
    cache = torch.exp(-3.0 * (1 - f @ keys.T)) @ model.head.cache.values
    with torch.no_grad():
        assert_logits_close(model(video), cosine_logits(f, template_classifier(clip)) + 2.0 * cache)
    assert set(model.trainable_state_dict()) == {
        "head.cache.keys", "head.cache.values", "head.cache.alpha", "head.cache.beta"}


def test_tip_adapter_search_picks_the_best_grid_point_on_validation(tokenizer):
    # alpha up to 100: the cache must outvote random text embeddings scaled by 100.
    model = clip_model(tokenizer, "tip_adapter", templates=TEMPLATES, alpha_max=100.0,
                       alpha_steps=4, beta_steps=5)
    model.fit_features(*clustered_features(20, views=2, seed=0))
    val, val_labels = clustered_features(15, views=2, seed=1)
    chosen = model.select_hparams(val, val_labels[:, 0])

    def top1(alpha, beta):
        model.head.cache.alpha.fill_(alpha)
        model.head.cache.beta.fill_(beta)
        with torch.no_grad():
            probs = model(val.flatten(0, 1)).softmax(dim=-1).view(15, 2, -1).mean(dim=1)
        return float((probs.argmax(dim=-1) == val_labels[:, 0]).double().mean() * 100)

    grid = [(a, b) for b in search_grid(7.0, 5) for a in search_grid(100.0, 4)]
    assert chosen["top1"] == max(top1(a, b) for a, b in grid) == top1(chosen["alpha"],
                                                                      chosen["beta"])
    assert chosen["top1"] == 100.0  # the cache separates the clusters the random text cannot
    assert search_grid(3.0, 20)[:2] == [0.1, pytest.approx(0.245)]


def test_tip_adapter_f_trains_keys_and_the_cache_round_trips(tokenizer):
    model = clip_model(tokenizer, "tip_adapter", templates=TEMPLATES, finetune=True)
    with pytest.raises(RuntimeError, match="cache is empty"):
        model(videos())
    keys = model.head.cache.keys
    model.fit_features(*clustered_features(10, views=1, seed=0))
    assert model.head.cache.keys is keys and keys.shape == (10, EMBED)  # an optimizer keeps it
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.cache.keys"]
    with torch.no_grad():
        keys.add_(0.1)
        model.head.cache.alpha.fill_(0.5)
    fresh = clip_model(tokenizer, "tip_adapter", templates=TEMPLATES, finetune=True)
    fresh.load_trainable_state_dict(model.trainable_state_dict())  # resizes the empty cache
    with torch.no_grad():
        assert_logits_close(fresh(videos()), model(videos()))


# ---- protocols, building, checkpoints ----------------------------------------------------------


def test_base_to_new_split_and_new_class_names(tokenizer):
    assert base_new_split(5) == ([0, 1, 2], [3, 4])
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0
    records = [VideoRecord(f"{i}.mp4", label=i % 5) for i in range(12)]
    new = class_subset(Annotation(records, CLASSES, "list"), "new")
    assert new.classes == CLASSES[3:]
    assert [(r.path, r.label) for r in new.records] == [("3.mp4", 0), ("4.mp4", 1),
                                                        ("8.mp4", 0), ("9.mp4", 1)]

    model = clip_model(tokenizer, "coop", classes=CLASSES[:3], ctx_init="a video of")
    model.set_classes(["new classes", "shrinking"])
    written = embed_texts(tiny_clip(tokenizer), ["a video of new classes.",
                                                 "a video of shrinking."])
    with torch.no_grad():
        assert_close(model.head.prompts(model.head, None), written)
    assert model(videos()).shape == (4, 2) and model.spec.num_classes == 2
    tip = clip_model(tokenizer, "tip_adapter", classes=CLASSES[:3], templates=TEMPLATES)
    with pytest.raises(ConfigError, match="Tip-Adapter cache"):
        tip.set_classes(["new classes"])


def test_options_are_checked_and_a_text_head_needs_a_text_tower_and_class_names():
    with pytest.raises(ConfigError, match="class_position 'back'"):
        create_model("coop", classes=CLASSES, class_position="back")
    with pytest.raises(ConfigError, match="exactly one"):
        create_model("zero_shot", classes=CLASSES, templates=["no placeholder"])
    with pytest.raises(ConfigError, match="text 'clip'"):
        create_model("zero_shot", classes=CLASSES, text="clip")
    with pytest.raises(ConfigError, match="set model.pretrained"):
        create_model("coop", classes=CLASSES, backbone="vit_tiny")
    bare = ViT(ViTConfig(image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64))
    with pytest.raises(ConfigError, match="a text head needs CLIP's text tower"):
        create_model("coop", bare, classes=CLASSES)
    with pytest.raises(ConfigError, match="classifies with the class names: pass classes"):
        create_model("coop", bare, num_classes=5)


def test_config_builds_random_text_tower_and_checkpoint_round_trip(tmp_path):
    cfg = config_from_dict({
        "model": {"method": "coop", "backbone": "vit_tiny", "num_frames": 2},
        "method": {"text": "random", "n_ctx": 3},
        "data": {"dataset": "synthetic", "transform": {"size": 32, "short_side": 32}},
    })
    model = build_model(cfg)  # the synthetic set's names, known before it is generated
    head = model.head
    assert head.classes[:2] == ["moving left", "moving right"] and len(head.classes) == 13
    assert head.text.cfg.width == 64 and head.text.output_dim == model.backbone.width == 128
    with torch.no_grad():
        model.head.prompts.ctx.add_(1.0)
    path = tmp_path / "coop.safetensors"
    save_adapter(path, model, backbone_fingerprint(model), cfg.to_dict(), model.head.classes)
    checkpoint = read_adapter(path)
    assert list(checkpoint.state) == ["head.prompts.ctx"]  # the towers are not saved
    rebuilt = build_model(cfg, classes=checkpoint.classes)  # same seed: same random towers
    load_adapter(rebuilt, checkpoint)  # checks the fingerprint of both towers
    clip = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        assert_logits_close(rebuilt(clip), model(clip))
    other_seed = config_from_dict({**cfg.to_dict(), "train": {"seed": 1}})
    with pytest.raises(CheckpointError, match="trained on backbone"):
        load_adapter(build_model(other_seed, classes=checkpoint.classes), checkpoint)


# ---- commands ----------------------------------------------------------------------------------


def test_commands_zero_shot_tip_adapter_coop_and_base_to_new(tmp_path, capsys):
    make_synthetic(tmp_path / "videos", 13, 13, frames=4, size=16, workers=1, progress=False)
    config = tmp_path / "clip.yaml"
    config.write_text(f"""
model: {{method: zero_shot, backbone: vit_tiny, num_frames: 2}}
method: {{text: random}}
data:
  dataset: synthetic
  root: {tmp_path / 'videos'}
  sampler: {{type: uniform}}
  transform: {{size: 16, short_side: 16, flip: false}}
  batch_size: 7
  num_workers: 0
  test_clips: 1
optim: {{epochs: 1, warmup_epochs: 0}}
train: {{amp: off, work_dir: {tmp_path / 'run'}}}
""")

    def last_json() -> dict:
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # Zero-shot and training-free Tip-Adapter need no checkpoint.
    assert cli(["eval", str(config), "--out", str(tmp_path / "zero_shot")]) == 0
    assert set(last_json()) == {"top1", "top5", "mean_class_accuracy"}
    metrics = json.loads((tmp_path / "zero_shot" / "eval_val.json").read_text())
    assert metrics["num_videos"] == 13 and metrics["classes"][0] == "moving left"
    assert cli(["train", str(config)]) == 2  # nothing to train: a one-line error
    assert "has nothing to train" in capsys.readouterr().err
    tip = ["--set", "model.method=tip_adapter", "--set", "data.shots=1"]
    assert cli(["eval", str(config), *tip, "--out", str(tmp_path / "tip")]) == 0
    assert json.loads((tmp_path / "tip" / "eval_val.json").read_text())["num_videos"] == 13

    # CoOp on the 7 base classes, then base-to-new on the 6 it never saw.
    coop = ["--set", "model.method=coop", "--set", "method.n_ctx=2",
            "--set", "data.class_subset=base"]
    assert cli(["train", str(config), *coop]) == 0
    assert last_json()["steps"] == 1  # 7 base videos: one batch of 7
    best = tmp_path / "run" / "best.safetensors"
    assert read_adapter(best).classes == SYNTHETIC_CLASSES[:7]
    assert cli(["base-to-new", "--checkpoint", str(best), "--split", "val"]) == 0
    result = last_json()
    assert result["harmonic_mean"] == pytest.approx(harmonic_mean(result["base"],
                                                                  result["new"]))
    saved = json.loads((tmp_path / "run" / "base_to_new_val.json").read_text())
    assert saved["new_classes"] == SYNTHETIC_CLASSES[7:]
