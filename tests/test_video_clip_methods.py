"""Video CLIP methods (Ju et al.'s efficient prompting, ...) on the tiny random CLIP of
test_clip_methods: logits against hand-written references, what trains, frame order."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_clip_methods import (
    CLASSES,
    CONTEXT,
    EMBED,
    FRAMES,
    SCALE,
    SIZE,
    assert_close,
    clip_model,
    tiny_clip,
    videos,
)

from vidadapt import ViT, ViTConfig, create_model
from vidadapt.backbones.vit import TokenLayout, quick_gelu
from vidadapt.clip import TEMPLATES as TEMPLATES_BY_NAME
from vidadapt.clip import ClipTokenizer, TextConfig, TextTransformer
from vidadapt.clip.towers import Clip
from vidadapt.config import config_from_dict, load_config
from vidadapt.engine.build import build_model
from vidadapt.engine.optim import lr_multiplier
from vidadapt.engine.trainer import Trainer
from vidadapt.errors import ConfigError
from vidadapt.methods.actionclip import ShiftConv1d, TemporalShift, symmetric_kl_loss
from vidadapt.methods.xclip import convert_hf_xclip

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer.learn([c.replace("_", " ") for c in CLASSES])

# ---- reference pieces, written from the papers rather than from the library ----------------


def reference_block(block, x: torch.Tensor, act=F.gelu) -> torch.Tensor:
    """A pre-norm transformer block over ``[B, N, D]`` with plain softmax attention."""
    B, N, D = x.shape
    H = block.attn.heads
    q, k, v = block.attn.qkv(block.norm1(x)).view(B, N, 3, H, D // H).unbind(2)  # [B, N, H, d]
    weights = torch.einsum("bnhd,bmhd->bhnm", q, k).div(math.sqrt(D // H)).softmax(dim=-1)
    attended = torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(B, N, D)
    x = x + block.attn.proj(attended)
    return x + block.mlp.fc2(act(block.mlp.fc1(block.norm2(x))))


def middle_prompt_embeddings(clip, ctx: torch.Tensor, split: int, name: str):
    """``[SOT] ctx[:split] name ctx[split:] . [EOT]`` as token embeddings ``[1, L, D]`` and the
    end position."""
    ids = clip.tokenizer([f"{name}."], CONTEXT)[0]  # [SOT, name..., ".", EOT, 0...]
    words = clip.text.token_embed(ids)  # [L, D]
    end = 1 + len(clip.tokenizer.encode(name))  # after the name's tokens
    sequence = torch.cat([words[:1], ctx[:split], words[1:end], ctx[split:], words[end:]])
    sequence = sequence[:CONTEXT]  # [L, D]
    eot = int(ids.argmax()) + len(ctx)
    return sequence[None], torch.tensor([eot])


def paper_recipe(name: str):
    """A Kinetics-400 recipe built on the meta device (stand-in class names, random text)."""
    cfg = load_config(CONFIGS / name, ["model.pretrained=null", "method.text=random"])
    with torch.device("meta"):
        return cfg, build_model(cfg, classes=[f"class {i}" for i in range(400)])


# ---- efficient prompting (Ju et al.) -------------------------------------------------------


def efficient_prompt(tokenizer, **options):
    defaults = dict(prefix_len=2, suffix_len=3, temporal_heads=2)
    return clip_model(tokenizer, "efficient_prompt", **{**defaults, **options})


def test_efficient_prompt_logits_equal_a_hand_written_reference(tokenizer):
    model = efficient_prompt(tokenizer)
    with torch.no_grad():  # move the learned parts away from their init
        model.head.prompts.ctx.normal_(std=0.5)
        model.temporal.temporal_embed.normal_(std=0.5)
    clip, video = tiny_clip(tokenizer), videos()
    ctx, temporal = model.head.prompts.ctx, model.temporal
    with torch.no_grad():
        text = torch.cat([
            clip.text.encode_embeddings(*middle_prompt_embeddings(clip, ctx, 2, name))
            for name in [c.replace("_", " ") for c in CLASSES]
        ])  # [C, E]
        x = clip.visual.encode(video) + temporal.temporal_embed  # [B, T, E]
        for block in temporal.blocks:
            x = reference_block(block, x)
        clip_embedding = x.mean(dim=1)  # [B, E]
        expected = F.normalize(clip_embedding, dim=-1) @ F.normalize(text, dim=-1).T / 0.07
        assert_close(model(video) * 0.07, expected * 0.07)  # as cosines
        # The engine's cached-feature path: frozen frame embeddings in, same logits out.
        features = model.video_features(video)
        assert features.shape == (4, FRAMES, EMBED)  # frame embeddings: the fusion trains
        assert_close(model(features) * 0.07, expected * 0.07)


def test_efficient_prompt_trains_only_the_prompts_and_the_temporal_transformer(tokenizer):
    model = efficient_prompt(tokenizer, temporal_layers=2).train()
    tuned = [n for n, p in model.named_parameters() if p.requires_grad]
    assert tuned[-1] == "head.prompts.ctx" and model.head.prompts.ctx.shape == (5, 32)
    assert all(n.startswith("temporal.") for n in tuned[:-1])
    assert not model.head.text.training and not model.backbone.training
    F.cross_entropy(model(videos()), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if n in tuned)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in tuned)
    # Per block: two LayerNorms, qkv, proj, fc1 (4x), fc2; and the T x E temporal embedding.
    block = 2 * 2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)
    expected = 5 * 32 + FRAMES * 32 + 2 * block
    assert model.parameter_counts() == {"efficient_prompt": expected, "tunable": expected,
                                        "total": sum(p.numel() for p in model.parameters())}
    assert model.head.logit_scale.exp().item() == pytest.approx(1 / 0.07)


def test_efficient_prompt_depends_on_frame_order(tokenizer):
    model = efficient_prompt(tokenizer)
    video = videos()
    with torch.no_grad():
        model.temporal.temporal_embed.normal_(std=0.5)
        forward, backward = model(video), model(video.flip(1))
        assert (forward - backward).abs().amax() > 1e-2
        # Without the temporal embedding the transformer and the mean are order-blind.
        model.temporal.temporal_embed.zero_()
        assert_close(model(video) * 0.07, model(video.flip(1)) * 0.07)


def test_efficient_prompt_options_are_checked(tokenizer):
    with pytest.raises(ConfigError, match="at least one learned vector"):
        efficient_prompt(tokenizer, prefix_len=0, suffix_len=0)
    with pytest.raises(ConfigError, match="temporal heads \\(3\\) must divide"):
        efficient_prompt(tokenizer, temporal_heads=3)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        efficient_prompt(tokenizer, temperature=0.0)


def test_efficient_prompt_recipe_is_the_papers_architecture():
    cfg, model = paper_recipe("efficient_prompt/k400_vit_b16_8.yaml")
    options = cfg.method["efficient_prompt"]
    assert (options.prefix_len, options.suffix_len, options.temperature) == (16, 16, 0.07)
    # ViT-B/16: E = 512; two 512-wide blocks with 4x MLPs; 8 x 512 temporal embedding.
    block = 2 * 2 * 512 + (512 * 1536 + 1536) + (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512
    assert model.parameter_counts()["tunable"] == 32 * 512 + 8 * 512 + 2 * block == 6_325_248


# ---- ActionCLIP ------------------------------------------------------------------------------

ACTION_TEMPLATES = ["a photo of action {}", "{}, a video of action", "Human action of {}"]


def actionclip(tokenizer, **options):
    return clip_model(tokenizer, "actionclip", **{"templates": ACTION_TEMPLATES, **options})


def template_embeddings(clip) -> torch.Tensor:
    """``[K, C, E]``: every template filled with every class name, through the text tower."""
    names = [c.replace("_", " ") for c in CLASSES]
    with torch.no_grad():
        return torch.stack([clip.text(clip.tokenizer([t.format(n) for n in names], CONTEXT))
                            for t in ACTION_TEMPLATES])


def softmax_over_templates(clip_embedding, text) -> torch.Tensor:
    """ActionCLIP's test: softmax of 100 x cosine per template, averaged over templates."""
    cosine = F.normalize(clip_embedding, dim=-1) @ F.normalize(text, dim=-1).transpose(1, 2)
    return (SCALE * cosine).softmax(dim=-1).mean(dim=0)  # [B, C]


def test_actionclip_has_the_16_official_templates():
    templates = TEMPLATES_BY_NAME["actionclip"]
    assert len(templates) == 16 and len(set(templates)) == 16
    assert templates[:3] == ["a photo of action {}", "a picture of action {}",
                             "Human action of {}"]
    assert "{}, a video of action" in templates and templates[-1] == "The woman is {}"


def test_actionclip_test_logits_average_the_softmax_over_templates(tokenizer):
    clip, video = tiny_clip(tokenizer), videos()
    text = template_embeddings(clip)
    model = actionclip(tokenizer, fusion="mean")
    assert model.parameter_counts()["tunable"] == 0
    with torch.no_grad():
        expected = softmax_over_templates(clip.visual.encode(video).mean(dim=1), text)
        assert_close(model(video).exp(), expected)

    model = actionclip(tokenizer, fusion="transformer", fusion_layers=2)
    fusion = model.temporal
    with torch.no_grad():
        fusion.temporal_embed.normal_(std=0.5)
        frames = clip.visual.encode(video)  # [B, T, E]
        x = frames + fusion.temporal_embed
        for block in fusion.blocks:
            x = reference_block(block, x, act=quick_gelu)
        expected = softmax_over_templates((x + frames).mean(dim=1), text)  # residual, then mean
        assert_close(model(video).exp(), expected)


def test_actionclip_trains_on_one_random_template_per_class(tokenizer):
    clip = tiny_clip(tokenizer)
    text = template_embeddings(clip)  # [K, C, E]
    model = actionclip(tokenizer).train()
    torch.manual_seed(0)
    drawn = model.head.prompts(model.head, None)  # [C, E]
    for c in range(len(CLASSES)):  # each class's embedding is one of its templates'
        distances = (text[:, c] - drawn[c]).abs().amax(dim=-1)  # [K]
        assert distances.min() < 1e-5
    labels = torch.tensor([0, 1, 0, 3])
    loss = model.loss_fn(model(videos()), labels)
    loss.backward()
    tuned = [n for n, p in model.named_parameters() if p.requires_grad]
    assert tuned and all(n.startswith("temporal.") for n in tuned)
    assert all(p.grad is not None for n, p in model.named_parameters() if n in tuned)


def test_actionclip_loss_is_the_symmetric_kl_to_the_batch_ground_truth():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([2, 5, 2, 0])
    similarity = logits[:, [2, 5, 2, 0]]  # clip i vs the text of clip j's label
    truth = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1]])

    def kl(sim):  # sum_ij t_ij (log t_ij - log softmax_j(sim_ij)), averaged over rows
        log_p = sim.log_softmax(dim=1)
        terms = torch.where(truth > 0, truth * (truth.clamp_min(1e-9).log() - log_p), 0.0)
        return terms.sum() / 4

    expected = (kl(similarity) + kl(similarity.T)) / 2
    assert_close(symmetric_kl_loss(logits, labels), expected)
    with pytest.raises(ConfigError, match="mixup"):
        symmetric_kl_loss(logits, torch.rand(4, 6))


def test_actionclip_fusions_shift_conv_and_temporal_shift(tokenizer):
    frames = torch.randn(2, 4, 8)
    shifted = torch.zeros_like(frames)  # channels 0-1 from t-1, 2-5 stay, 6-7 from t+1
    shifted[:, 1:, :2] = frames[:, :-1, :2]
    shifted[:, :, 2:6] = frames[:, :, 2:6]
    shifted[:, :-1, 6:] = frames[:, 1:, 6:]
    with torch.no_grad():
        assert_close(ShiftConv1d(8)(frames), (frames + shifted).mean(dim=1))

    layout = TokenLayout(batch=1, frames=3, grid=(1, 2), num_prefix=1, num_suffix=1)
    tokens = torch.randn(3, 1 + 2 + 1, 16)  # [T, CLS + 2 patches + 1 suffix, D]
    out = TemporalShift(div=8)(tokens, None, layout)
    patches, moved = tokens[:, 1:3], out[:, 1:3]
    assert torch.equal(out[:, 0], tokens[:, 0]) and torch.equal(out[:, 3], tokens[:, 3])
    assert torch.equal(moved[1:, :, :2], patches[:-1, :, :2])  # forward: frame t has t-1's
    assert torch.equal(moved[:-1, :, 2:4], patches[1:, :, 2:4])  # backward: t has t+1's
    assert torch.equal(moved[..., 4:], patches[..., 4:])
    assert not moved[0, :, :2].any() and not moved[-1, :, 2:4].any()

    model = actionclip(tokenizer, fusion="lstm", temporal_shift=True)
    assert all(isinstance(b.pre_attn[0], TemporalShift) for b in model.backbone.blocks)
    with torch.no_grad():  # the shift makes a frame's embedding depend on its neighbours
        video = videos()
        changed = video.clone()
        changed[:, 0] += 1.0
        frames, moved_frames = model.backbone.encode(video), model.backbone.encode(changed)
        assert (frames[:, 1] - moved_frames[:, 1]).abs().amax() > 1e-3


def test_actionclip_tunes_the_encoders_when_asked(tokenizer):
    model = actionclip(tokenizer, fusion="conv1d", tune_image_encoder=True,
                       tune_text_encoder=True).train()
    counts = model.parameter_counts()
    towers = sum(p.numel() for p in model.backbone.parameters()) + sum(
        p.numel() for p in model.head.text.parameters())
    # The towers, the shift conv and the logit scale (trained with the text tower, as upstream).
    assert counts["actionclip"] == counts["tunable"] == towers + EMBED * 3 + 1
    model.loss_fn(model(videos()), torch.tensor([0, 1, 2, 3])).backward()
    assert model.head.logit_scale.grad is not None
    assert model.head.text.token_embed.weight.grad.abs().sum() > 0  # texts encoded with gradients
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.head.text.proj.mul_(-1.0)  # the tuned tower moved: evaluation re-embeds the templates
    model.eval()
    clip = tiny_clip(tokenizer)
    clip.text.load_state_dict(model.head.text.state_dict())
    with torch.no_grad():
        video = videos()
        expected = softmax_over_templates(model.temporal(model.backbone.encode(video)),
                                          template_embeddings(clip))
        assert_close(model(video).exp(), expected)


def test_actionclip_options_are_checked(tokenizer):
    with pytest.raises(ConfigError, match="fusion 'gru'"):
        actionclip(tokenizer, fusion="gru")
    with pytest.raises(ConfigError, match="exactly one"):
        actionclip(tokenizer, templates=["no placeholder"])


def test_actionclip_recipes_fine_tune_both_towers():
    long = load_config(CONFIGS / "actionclip/k400_vit_b16_32.yaml")
    assert (long.model.num_frames, long.method["actionclip"].tune_image_encoder) == (32, True)
    cfg, model = paper_recipe("actionclip/k400_vit_b16_8.yaml")
    assert (cfg.optim.lr, cfg.optim.lr_mult) == (5e-6, {r"^temporal\.": 10.0})
    counts = model.parameter_counts()
    fusion = sum(p.numel() for p in model.temporal.parameters())
    block = 2 * 2 * 512 + (512 * 1536 + 1536) + (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512
    assert fusion == 8 * 512 + 6 * block  # frame position embedding + 6 blocks
    assert counts["tunable"] == counts["total"]  # everything, the logit scale with the text tower


class LabelledClips(torch.utils.data.Dataset):
    def __init__(self, num: int) -> None:
        self.videos = videos(num, seed=2)
        self.labels = torch.arange(num) % len(CLASSES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"video": self.videos[index], "label": int(self.labels[index]), "index": index}


def test_the_trainer_uses_actionclip_loss_on_cached_frame_embeddings(tokenizer, tmp_path):
    cfg = config_from_dict({
        "model": {"method": "actionclip", "num_frames": FRAMES},
        "data": {"batch_size": 4, "eval_batch_size": 4, "num_workers": 0,
                 "transform": {"size": SIZE, "short_side": SIZE}},
        "optim": {"lr": 1e-2, "epochs": 1, "warmup_epochs": 0},
        "train": {"work_dir": str(tmp_path), "amp": "off", "feature_cache": "memory"},
    })
    model = actionclip(tokenizer, fusion="conv1d")
    calls = []

    def recording_loss(logits, labels, progress):
        calls.append((logits.shape, labels.tolist()))
        return symmetric_kl_loss(logits, labels, progress)

    model.loss_fn = recording_loss
    before = model.temporal.conv.weight.clone()
    trainer = Trainer(cfg, model, LabelledClips(8))
    assert trainer.train_set.features.shape == (8, 1, FRAMES, EMBED)  # frame embeddings
    trainer.fit()
    assert [shape for shape, _ in calls] == [(4, len(CLASSES))] * 2
    assert sorted(sum((labels for _, labels in calls), [])) == sorted([0, 1, 2, 3, 4, 0, 1, 2])
    assert not torch.equal(model.temporal.conv.weight, before)


# ---- X-CLIP ----------------------------------------------------------------------------------


def xclip_model(tokenizer, **options):
    """X-CLIP on the tiny CLIP with a 2-block image tower: a message token built from the class
    token entering the first block carries nothing of its frame (every frame's class token is
    the same there), so frames first exchange information in the second block."""
    text = tiny_clip(tokenizer)
    clip = Clip(deep_visual(), text.text, tokenizer, text.logit_scale)
    torch.manual_seed(2)
    model = create_model("xclip", clip, classes=CLASSES, num_frames=FRAMES, mit_heads=2,
                         prompt_heads=2, **options).eval()
    with torch.no_grad():  # messages strong enough to see (their default init is small)
        for name, p in model.backbone.named_parameters():
            if ".pre_attn." in name and p.ndim > 1:
                p.normal_(std=0.3)
    return model


def deep_visual() -> ViT:
    torch.manual_seed(1)
    visual = ViT(ViTConfig(image_size=SIZE, patch_size=8, width=32, depth=2, heads=2,
                           mlp_dim=64, embed_dim=EMBED))
    with torch.no_grad():
        for name, p in visual.named_parameters():
            if p.ndim > 1 and "norm" not in name:
                p.normal_(std=0.3)
    return visual.eval()


def test_xclip_matches_hugging_face_xclip_model(tokenizer):
    transformers = pytest.importorskip("transformers")
    text_config = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2,
                       max_position_embeddings=CONTEXT)
    vision_config = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, image_size=SIZE, patch_size=8,
                         num_frames=FRAMES, mit_hidden_size=EMBED, mit_intermediate_size=128,
                         mit_num_hidden_layers=1, mit_num_attention_heads=2)
    config = transformers.XCLIPConfig(text_config=text_config, vision_config=vision_config,
                                      projection_dim=EMBED, prompt_layers=2,
                                      prompt_num_attention_heads=2)
    torch.manual_seed(0)
    hf = transformers.XCLIPModel(config).eval()
    with torch.no_grad():  # move every weight off its init (LayerNorms, alpha, zero biases)
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)

    model = xclip_model(tokenizer)
    visual, text, head = convert_hf_xclip(hf.state_dict())
    model.backbone.load_state_dict(visual)
    model.head.text.load_state_dict(text)
    missing, unexpected = model.load_state_dict(head, strict=False)
    assert unexpected == [] and all(
        k.startswith(("backbone.", "head.text.")) or k == "head.logit_scale" for k in missing)
    with torch.no_grad():
        model.head.logit_scale.copy_(hf.logit_scale)
    model.set_classes(model.head.classes)  # re-embed the class names with the loaded text tower

    video = videos()
    with torch.no_grad():
        expected = hf(input_ids=model.head.prompts.tokens, pixel_values=video)
        tokens, collected, layout = model.encode(video)
        frames = model.read(tokens, collected, layout, video)  # [B, T, E]
        video_embeds = model.temporal(frames)
        context = model.context(tokens, layout)  # [B, N, E]
        text_embeds = model.head.prompts(model.head, context)  # [B, C, E]
        logits = model(video)
    tol = dict(rtol=0, atol=1e-4)
    torch.testing.assert_close(F.normalize(video_embeds, dim=-1), expected.video_embeds, **tol)
    torch.testing.assert_close(F.normalize(text_embeds, dim=-1), expected.text_embeds, **tol)
    torch.testing.assert_close(logits, expected.logits_per_video, **tol)


def test_xclip_message_tokens_let_frames_talk_and_leave_the_layout_as_found(tokenizer):
    model = xclip_model(tokenizer)
    plain = deep_visual()  # the same image tower without the message tokens
    video = videos()
    changed = video.clone()
    changed[:, 0] += 1.0  # only frame 0 differs
    with torch.no_grad():
        for vit, talks in ((plain, False), (model.backbone, True)):
            tokens, _, layout = vit.forward_tokens(video)
            assert tokens.shape[1] == 1 + 4 and layout.num_suffix == 0  # message removed
            frame1 = vit.encode(video)[:, 1] - vit.encode(changed)[:, 1]
            assert (frame1.abs().amax() > 1e-3) == talks
    assert torch.equal(model.head.prompts.alpha, torch.full((EMBED,), 0.1))


@pytest.mark.parametrize("tune", [False, True])
def test_xclip_trains_its_modules_and_optionally_the_towers(tokenizer, tune):
    model = xclip_model(tokenizer, tune_image_encoder=tune, tune_text_encoder=tune).train()
    tuned = {".".join(n.split(".")[: 2 if n.startswith("head.") else 1])
             for n, p in model.named_parameters() if p.requires_grad}
    own = {"temporal", "context", "head.prompts"}
    assert tuned == own | {"backbone", "head.text"} if tune else own | {"backbone"}
    messages = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert tune or all(".pre_attn.0." in n for n in messages)  # frozen tower: messages only
    F.cross_entropy(model(videos()), torch.tensor([0, 1, 2, 3])).backward()
    assert model.head.prompts.alpha.grad.abs().sum() > 0
    assert (model.head.text.token_embed.weight.grad is not None) == tune


def test_xclip_recipe_gives_the_new_modules_ten_times_the_image_towers_rate():
    cfg, model = paper_recipe("xclip/k400_vit_b16_8.yaml")
    assert (cfg.optim.lr, cfg.method["xclip"].tune_image_encoder) == (8e-6, True)
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    own = {".".join(filter(None, ("backbone", module_name, name)))  # the ViT's own weights
           for module_name, module in model.backbone.named_image_modules()
           for name, _ in module.named_parameters(recurse=False)}
    new = tuned - own
    assert all(lr_multiplier(n, cfg.optim.lr_mult) == 10.0 for n in new)
    assert all(lr_multiplier(n, cfg.optim.lr_mult) == 1.0 for n in tuned - new)
    assert not any(n.startswith("head.text.") for n in tuned)
    # Per block: message Linear, LayerNorm and attention (qkv + proj) at width 768.
    message = (768 * 768 + 768) + 2 * 768 + (768 * 2304 + 2304) + (768 * 768 + 768)
    assert model.parameter_counts()["xclip"] == sum(
        p.numel() for n, p in model.named_parameters() if n in tuned)
    assert sum(p.numel() for n, p in model.named_parameters() if ".pre_attn." in n) == (
        12 * message)


@pytest.mark.parametrize("method, options", [
    ("actionclip", dict(templates=ACTION_TEMPLATES, tune_text_encoder=True)),
    ("xclip", dict(mit_heads=2, prompt_heads=2)),
])
def test_tuned_state_round_trips(tokenizer, method, options):
    trained = clip_model(tokenizer, method, **options)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    trained.train().eval()  # a tuned text tower re-embeds the class prompts
    state = trained.trainable_state_dict()
    rebuilt = clip_model(tokenizer, method, **options)  # already in eval mode
    video = videos()
    with torch.no_grad():
        rebuilt(video)  # embeds the class prompts with the untrained text tower
        rebuilt.load_trainable_state_dict(state)  # which loading must invalidate
        assert_close(rebuilt(video), trained(video))


def test_xclip_runs_on_towers_without_projections(tokenizer):
    visual = ViT(ViTConfig(image_size=SIZE, patch_size=8, width=32, depth=1, heads=2,
                           mlp_dim=64))
    text = TextTransformer(TextConfig(vocab_size=tokenizer.vocab_size, context_length=CONTEXT,
                                      width=32, depth=1, heads=2, mlp_dim=64, embed_dim=None))
    model = create_model("xclip", Clip(visual, text, tokenizer, 0.0), classes=CLASSES,
                         num_frames=FRAMES, mit_heads=2, prompt_heads=2).eval()
    with torch.no_grad():
        frames = visual.encode(videos())  # [B, T, D]: no projection
        assert_close(model.video_features(videos()), frames)
        assert model(videos()).shape == (4, len(CLASSES))
