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
    assert_close,
    clip_model,
    tiny_clip,
    videos,
)

from vidadapt.clip import ClipTokenizer
from vidadapt.config import load_config
from vidadapt.engine.build import build_model
from vidadapt.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer.learn([c.replace("_", " ") for c in CLASSES])

# ---- reference pieces, written from the papers rather than from the library ----------------


def reference_block(block, x: torch.Tensor) -> torch.Tensor:
    """A pre-norm transformer block over ``[B, N, D]`` with plain softmax attention."""
    B, N, D = x.shape
    H = block.attn.heads
    q, k, v = block.attn.qkv(block.norm1(x)).view(B, N, 3, H, D // H).unbind(2)  # [B, N, H, d]
    weights = torch.einsum("bnhd,bmhd->bhnm", q, k).div(math.sqrt(D // H)).softmax(dim=-1)
    attended = torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(B, N, D)
    x = x + block.attn.proj(attended)
    return x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x))))


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
        model.prompts.ctx.normal_(std=0.5)
        model.temporal.temporal_embed.normal_(std=0.5)
    clip, video = tiny_clip(tokenizer), videos()
    ctx, temporal = model.prompts.ctx, model.temporal
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
        assert features.shape == (4, FRAMES * EMBED)
        assert_close(model(features) * 0.07, expected * 0.07)


def test_efficient_prompt_trains_only_the_prompts_and_the_temporal_transformer(tokenizer):
    model = efficient_prompt(tokenizer, temporal_layers=2).train()
    tuned = [n for n, p in model.named_parameters() if p.requires_grad]
    assert tuned[0] == "prompts.ctx" and model.prompts.ctx.shape == (5, 32)
    assert all(n.startswith("temporal.") for n in tuned[1:])
    assert not model.text.training and not model.backbone.training
    F.cross_entropy(model(videos()), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if n in tuned)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in tuned)
    # Per block: two LayerNorms, qkv, proj, fc1 (4x), fc2; and the T x E temporal embedding.
    block = 2 * 2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)
    expected = 5 * 32 + FRAMES * 32 + 2 * block
    assert model.parameter_counts() == {"efficient_prompt": expected, "tunable": expected,
                                        "total": sum(p.numel() for p in model.parameters())}
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)


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
    assert {k: cfg.method[k] for k in ("prefix_len", "suffix_len", "temperature")} == {
        "prefix_len": 16, "suffix_len": 16, "temperature": 0.07}
    # ViT-B/16: E = 512; two 512-wide blocks with 4x MLPs; 8 x 512 temporal embedding.
    block = 2 * 2 * 512 + (512 * 1536 + 1536) + (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512
    assert model.parameter_counts()["tunable"] == 32 * 512 + 8 * 512 + 2 * block == 6_325_248
