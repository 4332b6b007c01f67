"""General parameter-efficient methods on the video backbone (VPT, LoRA, prefix tuning, adapters,
MAM, BitFit) and stacks of methods: identity at init where the method defines it, placement
against reference formulas, LoRA merging, prefix freezing, adapter-only round trips and exact
ViT-B/16 counts."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from test_methods import TINY, T, informative_vit, randomise_new_weights
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from vidadapt import ViT, ViTConfig, preset_config
from vidadapt.backbones.vit import Attention, TokenLayout
from vidadapt.errors import ConfigError
from vidadapt.methods.adapters import ParallelAdapter, SequentialAdapter
from vidadapt.methods.folding import merged_state_dict
from vidadapt.methods.lora import LoRALinear, merge_lora, unmerge_lora
from vidadapt.methods.prefix import PrefixEncoder, PrefixKV, freeze_prefixes
from vidadapt.methods.st_adapter import STAdapter
from vidadapt.methods.vpt import prompt_init_bound
from vidadapt.models import create_model

PREFIX = dict(length=3, mid_dim=16)
CONFIGS = {
    "vpt": ("vpt", {}),
    "vpt_deep": ("vpt", dict(deep=True)),
    "lora": ("lora", {}),
    "lora_all": ("lora", dict(rank=2, alpha=4.0, targets=["q", "k", "v", "attn.proj", "mlp.fc"])),
    "prefix": ("prefix", PREFIX),
    "prefix_direct": ("prefix", dict(length=3, reparameterize=False)),
    "houlsby": ("adapter", dict(bottleneck=8)),
    "parallel": ("adapter", dict(style="parallel", bottleneck=8)),
    "scaled_parallel": ("adapter", dict(style="parallel", positions=["mlp"], bottleneck=8,
                                        scale=4)),
    "mam": ("mam", dict(prefix_length=3, mid_dim=16, bottleneck=8)),
    "bitfit": ("bitfit", {}),
    "lora+aim": ("lora+aim", {}),
    "vpt+aim": ("vpt+aim", dict(vpt=dict(deep=True))),
    "prefix+st_adapter": ("prefix+st_adapter", dict(prefix=PREFIX)),
    "bitfit+aim": ("bitfit+aim", {}),
    "mam+prefix": ("mam+prefix", dict(mam=dict(prefix_length=3, mid_dim=16), prefix=PREFIX)),
}
# Methods whose new branches start at zero: the adapted model starts as the image model.
IDENTITY = ["lora", "lora_all", "houlsby", "parallel", "scaled_parallel", "bitfit", "lora+aim",
            "bitfit+aim"]
# Prompts and prefixes are attended to from the first step: the output changes.
NOT_IDENTITY = ["vpt", "vpt_deep", "prefix", "prefix_direct", "mam", "vpt+aim",
                "prefix+st_adapter", "mam+prefix"]


def build(name: str, seed: int = 0, backbone: ViT | None = None):
    torch.manual_seed(seed)
    method, options = CONFIGS[name]
    vit = backbone if backbone is not None else ViT(TINY)
    return create_model(method, backbone=vit, num_classes=5, num_frames=T, **copy.deepcopy(options))


def image_model_features(model, video: torch.Tensor) -> torch.Tensor:
    """The frozen image model (the backbone without any method), frame by frame, [B, T, D]."""
    plain = ViT(model.backbone.cfg)
    plain.load_state_dict(merged_state_dict(model.backbone), strict=False)
    return plain.eval()(video.flatten(0, 1)).view(video.shape[0], video.shape[1], -1)


def video_clip(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, T, 3, 32, 32)


def test_every_case_is_classified_once():
    assert sorted(IDENTITY + NOT_IDENTITY) == sorted(CONFIGS)


@pytest.mark.parametrize("name", IDENTITY)
def test_identity_at_init(name):
    model = build(name).eval()
    video = video_clip()
    torch.testing.assert_close(
        model.backbone(video), image_model_features(model, video), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", NOT_IDENTITY)
def test_prompts_and_prefixes_change_the_output(name):
    model = build(name, backbone=informative_vit()).eval()
    video = video_clip()
    gap = (model.backbone(video) - image_model_features(model, video)).abs().max()
    assert gap > 1e-2


def test_mam_adapter_part_is_identity_at_init():
    # MAM at init = its prefix part alone: the scaled parallel adapter adds exactly 0.
    mam = build("mam").eval()
    prefix_only = create_model(
        "prefix", backbone=ViT(TINY), num_classes=5, num_frames=T, **PREFIX
    ).eval()
    missing, unexpected = prefix_only.load_state_dict(mam.state_dict(), strict=False)
    assert not missing and all(".parallel_mlp." in k for k in unexpected)
    video = video_clip()
    torch.testing.assert_close(mam.backbone(video), prefix_only.backbone(video))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gradients_reach_only_tunable_parameters(name):
    model = build(name).train()
    randomise_new_weights(model)
    model(video_clip()).logsumexp(-1).sum().backward()
    # As in test_methods: ST-Adapter's pre-MLP adapter in the last block cannot reach the CLS.
    dead = f"backbone.blocks.{TINY.depth - 1}.pre_mlp."
    for pname, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, pname
        if p.requires_grad and not pname.startswith(dead):
            assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_trainable_state_dict_round_trip(name):
    model = build(name)
    randomise_new_weights(model)
    state = copy.deepcopy(model.trainable_state_dict())
    fresh = build(name, seed=5)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    fresh.load_state_dict(frozen, strict=False)  # the same image model, the untrained method
    video = video_clip(1)
    model.eval(), fresh.eval()
    assert not torch.allclose(fresh(video), model(video))
    fresh.load_trainable_state_dict(state)
    torch.testing.assert_close(fresh(video), model(video))


@pytest.mark.parametrize("name", ["vpt_deep", "lora", "prefix", "mam+prefix"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    # The prefix MLP runs once per forward outside the checkpointed blocks; VPT and LoRA live
    # inside them. Recomputation must not change a thing.
    plain = build(name).eval()
    randomise_new_weights(plain)
    checkpointed = build(name)
    checkpointed.backbone.set_grad_checkpointing(True)
    checkpointed.load_state_dict(plain.state_dict())
    video = video_clip()
    for model in (plain, checkpointed):
        model.eval()(video).logsumexp(-1).sum().backward()
    grads = {n: p.grad for n, p in checkpointed.named_parameters() if p.requires_grad}
    for n, p in plain.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[n], p.grad)


# ---- exact counts for CLIP ViT-B/16, 8 frames, 400 classes (meta device: no memory) ----------
IMAGE_MODEL = 86_107_024  # ViT-B/16 without its projection + head (768 x 400 + 400 = 307,600)
HEAD = 307_600
AIM = 10_659_072  # AIM's part (test_methods), of which ln_post's 1,536 is in the image model
ST_ADAPTER = 12 * 592_512  # 12x384


@pytest.mark.parametrize(
    "method, options, parts, added",
    [
        # shallow VPT: 5 prompts x 768
        ("vpt", {}, {"vpt": 5 * 768}, 3_840),
        # deep VPT: 12 layers x 5 x 768 = 46,080
        ("vpt", {"deep": True}, {"vpt": 46_080}, 46_080),
        # LoRA r=8 on q and v: 12 blocks x 2 slices x (A 8x768 + B 768x8) = 12 x 2 x 12,288
        ("lora", {}, {"lora": 294_912}, 294_912),
        # prefix l=30 through the MLP: Embedding 30x768 = 23,040; Linear(768, 512) = 393,728;
        # Linear(512, 12*2*768 = 18,432) = 9,437,184 + 18,432 = 9,455,616 → 9,872,384
        ("prefix", {}, {"prefix": 9_872_384}, 9_872_384),
        # stored prefixes: 12 x 2 x 30 x 768
        ("prefix", {"reparameterize": False}, {"prefix": 552_960}, 552_960),
        # Houlsby, bottleneck 64, after attention and MLP: 24 x (768x64 + 64 + 64x768 + 768)
        ("adapter", {}, {"adapter": 24 * 99_136}, 24 * 99_136),
        # scaled parallel adapter on the MLP, bottleneck 512: 12 x (768x512 + 512 + 512x768 + 768)
        ("adapter", {"style": "parallel", "positions": ["mlp"], "bottleneck": 512, "scale": 4},
         {"adapter": 12 * 787_712}, 12 * 787_712),
        # MAM = prefix l=30 (9,872,384) + scaled parallel MLP adapter 512 (9,452,544)
        ("mam", {}, {"mam": 19_324_928}, 19_324_928),
        # BitFit: per block norm1 768 + qkv 2,304 + proj 768 + norm2 768 + fc1 3,072 + fc2 768
        # = 8,448, x 12 = 101,376; + norm_pre 768 + norm 768 (CLIP's patch conv has no bias).
        # It adds no parameter.
        ("bitfit", {}, {"bitfit": 102_912}, 0),
        # Stacks count each part separately.
        ("lora+aim", {}, {"lora": 294_912, "aim": AIM}, 294_912 + AIM - 1_536),
        ("vpt+aim", {}, {"vpt": 3_840, "aim": AIM}, 3_840 + AIM - 1_536),
        ("prefix+st_adapter", {}, {"prefix": 9_872_384, "st_adapter": ST_ADAPTER},
         9_872_384 + ST_ADAPTER),
        # BitFit declares ln_post's bias first, so AIM's part keeps only ln_post's weight of it.
        ("bitfit+aim", {}, {"bitfit": 102_912, "aim": AIM - 768}, AIM - 1_536),
    ],
)
def test_parameter_counts_vit_b16(method, options, parts, added):
    with torch.device("meta"):
        vit = ViT(preset_config("vit_b16_clip", embed_dim=None))
        model = create_model(method, backbone=vit, num_classes=400, num_frames=8, **options)
        logits = model(torch.empty(1, 8, 3, 224, 224))  # `vidadapt info` runs this forward
    assert logits.shape == (1, 400)
    tunable = HEAD + sum(parts.values())
    expected = {"head": HEAD, **parts, "tunable": tunable, "total": IMAGE_MODEL + added}
    assert model.parameter_counts() == expected


# ---- VPT ------------------------------------------------------------------------------------


def test_vpt_init_range():
    assert prompt_init_bound(16, 768) == 0.0625  # sqrt(6 / (3 * 256 + 768)) = sqrt(1 / 256)
    bound = prompt_init_bound(TINY.patch_size, TINY.width)  # sqrt(6 / 256)
    prompts = build("vpt_deep").backbone.blocks[1].pre_attn[0].prompts
    assert 0.9 * bound < prompts.abs().max().item() <= bound


def test_vpt_prompts_go_after_cls_before_registers_and_patches():
    vit = ViT(ViTConfig(**{**TINY.__dict__, "num_registers": 2}))
    model = create_model("vpt+st_adapter", backbone=vit, num_classes=5, num_frames=T)
    insert = vit.embed_sites[0]
    B, p, R, patches = 2, 5, 2, 16
    layout = TokenLayout(batch=B, frames=T, grid=(4, 4))
    x = vit.embed(video_clip(B).flatten(0, 1), layout)  # [B*T, 1 + R + 16, D]
    y = insert(x, vit, layout)
    assert y.shape == (B * T, 1 + p + R + patches, TINY.width)
    assert layout.num_prefix == 1 + p + R
    torch.testing.assert_close(y[:, 0], x[:, 0])
    torch.testing.assert_close(y[:, 1 : 1 + p], insert.prompts.expand(B * T, -1, -1))  # every frame
    torch.testing.assert_close(y[:, 1 + p :], x[:, 1:])  # registers, then patches
    # ST-Adapter reads the layout: it changes the patch tokens only (not CLS, prompts, registers).
    adapter = model.backbone.blocks[0].pre_mlp[0]
    assert isinstance(adapter, STAdapter)
    nn.init.normal_(adapter.conv.weight)
    z = adapter(y, model.backbone.blocks[0], layout)
    torch.testing.assert_close(z[:, : 1 + p + R], y[:, : 1 + p + R])
    assert (z[:, 1 + p + R :] - y[:, 1 + p + R :]).abs().min() > 0


def test_deep_vpt_matches_a_layer_by_layer_reference():
    model = build("vpt_deep").eval()
    vit = model.backbone
    plain = ViT(TINY)
    plain.load_state_dict(vit.state_dict(), strict=False)
    video = video_clip()
    frames = video.flatten(0, 1)
    p = 5
    x = plain.embed(frames, TokenLayout(batch=2 * T, frames=1, grid=(4, 4)))
    x = torch.cat([x[:, :1], vit.embed_sites[0].prompts.expand(2 * T, -1, -1), x[:, 1:]], dim=1)
    x = plain.norm_pre(x)
    layout = TokenLayout(batch=2 * T, frames=1, grid=(4, 4), num_prefix=1 + p)
    for i, block in enumerate(plain.blocks):
        if i > 0:  # the previous block's prompt outputs are dropped for block i's own prompts
            x = x.clone()
            x[:, 1 : 1 + p] = vit.blocks[i].pre_attn[0].prompts
        x = block(x, layout)
    reference = plain.norm(x[:, 0]).view(2, T, -1)
    torch.testing.assert_close(model.backbone(video), reference)


def test_vpt_treats_every_frame_alone():
    # The same prompts for every frame and no cross-frame path: a frame's features do not depend
    # on the other frames of its video.
    model = build("vpt_deep").eval()
    video = video_clip()
    alone = model.backbone(video.flatten(0, 1).unsqueeze(1))  # [B*T, 1, D]
    torch.testing.assert_close(model.backbone(video), alone.view(2, T, -1))


def test_vpt_dropout_and_frozen_encoder_in_eval_mode():
    assert build("vpt").spec.options["vpt"]["prompt_dropout"] == 0.0
    deep = build("vpt_deep").train()
    assert deep.spec.options["vpt"]["prompt_dropout"] == 0.1
    assert deep.backbone.embed_sites[0].dropout.p == 0.1
    assert deep.backbone.blocks[1].pre_attn[0].training  # prompt dropout is active
    assert not deep.backbone.blocks[1].attn.training and not deep.backbone.norm_pre.training
    no_dropout = create_model("vpt", backbone=ViT(TINY), num_classes=5, num_frames=T, deep=True,
                              prompt_dropout=0.0)
    assert no_dropout.backbone.blocks[1].pre_attn[0].dropout.p == 0.0
    with pytest.raises(ConfigError, match="num_tokens"):
        create_model("vpt", backbone=ViT(TINY), num_classes=5, num_frames=T, num_tokens=0)


# ---- LoRA -----------------------------------------------------------------------------------


def test_lora_init_and_trainable_set():
    model = build("lora")
    qkv = model.backbone.blocks[0].attn.qkv
    assert isinstance(qkv, LoRALinear) and qkv.scale == 8.0 / 8
    assert qkv.lora_A.shape == (2, 8, 64) and qkv.lora_B.shape == (2, 64, 8)  # q and v slices
    assert qkv.lora_A.abs().max() <= 1 / math.sqrt(64)  # kaiming-uniform(a=√5) bound
    assert qkv.lora_B.abs().max() == 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"} | {
        f"backbone.blocks.{i}.attn.qkv.lora_{ab}" for i in range(TINY.depth) for ab in "AB"
    }


def test_lora_updates_only_the_q_and_v_slices():
    model = build("lora")
    randomise_new_weights(model)
    qkv = model.backbone.blocks[0].attn.qkv
    D = TINY.width
    delta = qkv.folded_weight() - qkv.base.weight  # [3D, D]
    assert delta[:D].abs().min() > 0 and delta[2 * D :].abs().min() > 0
    assert delta[D : 2 * D].abs().max() == 0  # k is untouched
    x = torch.randn(3, 7, D)
    out = qkv(x)
    base = qkv.base(x)
    # q slice: W_q x + b_q + (B_q A_q x) * alpha / r
    q = base[..., :D] + (x @ qkv.lora_A[0].T @ qkv.lora_B[0].T) * qkv.scale
    torch.testing.assert_close(out[..., :D], q)
    torch.testing.assert_close(out[..., D : 2 * D], base[..., D : 2 * D])
    torch.testing.assert_close(out, F.linear(x, qkv.folded_weight(), qkv.base.bias))


def test_lora_targets_select_linear_layers_by_name():
    model = build("lora_all")
    block = model.backbone.blocks[1]
    assert block.attn.qkv.slots.tolist() == [0, 1, 2] and block.attn.qkv.groups == 3
    for layer in (block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        assert isinstance(layer, LoRALinear) and layer.groups == 1
        assert layer.lora_A.shape == (1, 2, layer.base.in_features)
    assert layer.scale == 4.0 / 2


@pytest.mark.parametrize(
    "targets, message",
    [
        (["q", "attn.qkv"], "selected both by q/k/v slices and by 'attn.qkv'"),
        (["mlp.fc3"], "'mlp.fc3' matches no linear layer"),
        (["mlp.(fc"], "not a valid regex"),
        ([], "lora.targets is empty"),
    ],
)
def test_lora_bad_targets_are_config_errors(targets, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_model("lora", backbone=ViT(TINY), num_classes=5, num_frames=T, targets=targets)


def flops(model: nn.Module, video: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(video)
    return counter.get_total_flops()


def test_merge_gives_the_same_outputs_without_extra_compute():
    model = build("lora_all").eval()
    randomise_new_weights(model)
    video = video_clip()
    before = model(video)
    image_model_flops = flops(build("bitfit").eval(), video)
    assert flops(model, video) > image_model_flops
    base = model.backbone.blocks[0].attn.qkv.base.weight.clone()

    merge_lora(model)
    torch.testing.assert_close(model(video), before, atol=1e-5, rtol=1e-5)
    assert flops(model, video) == image_model_flops  # only the base weights are used
    with pytest.raises(RuntimeError, match="already merged"):
        merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        model.train()(video)

    unmerge_lora(model)
    torch.testing.assert_close(model.backbone.blocks[0].attn.qkv.base.weight, base)
    model(video).sum().backward()  # training works again and reaches LoRA
    assert model.backbone.blocks[0].attn.qkv.lora_B.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="not merged"):
        unmerge_lora(model)


def test_merged_state_dict_is_a_plain_vit():
    model = build("lora_all").eval()
    randomise_new_weights(model)
    weights = merged_state_dict(model.backbone)
    plain = ViT(TINY).eval()
    assert weights.keys() == plain.state_dict().keys()
    plain.load_state_dict(weights)
    video = video_clip()
    expected = model.backbone(video)
    torch.testing.assert_close(plain(video.flatten(0, 1)).view(2, T, -1), expected)
    # The model itself is unchanged, and a merged model exports the same weights.
    assert not any(m.merged for m in model.modules() if isinstance(m, LoRALinear))
    merge_lora(model)
    torch.testing.assert_close(merged_state_dict(model.backbone), weights)


# ---- prefix tuning --------------------------------------------------------------------------


def test_prefix_keys_and_values_are_split_into_heads():
    D, H, l, N = 8, 2, 3, 5
    d = D // H
    attn = Attention(D, H)
    attn.kv_sites.append(PrefixKV("prefix", layer=1))
    prefixes = torch.randn(2, 2, l, D)  # [layers, key/value, l, D]
    layout = TokenLayout(batch=2, frames=1, grid=(1, N))
    layout.extras["prefix"] = prefixes
    x = torch.randn(2, N, D)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)  # [B, N, D] each
    k = torch.cat([prefixes[1, 0].expand(2, -1, -1), k], dim=1)  # [B, l + N, D]
    v = torch.cat([prefixes[1, 1].expand(2, -1, -1), v], dim=1)
    heads = []
    for h in range(H):  # head h owns channels h*d:(h+1)*d of queries, keys and values
        c = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[..., c] @ k[..., c].transpose(1, 2) / math.sqrt(d), dim=-1)
        heads.append(weights @ v[..., c])  # [B, N, d]
    reference = attn.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x, layout), reference)


def test_freeze_prefixes_keeps_outputs_and_shrinks_the_checkpoint():
    model = build("mam+prefix").eval()
    randomise_new_weights(model)
    video = video_clip()
    before = model(video)
    freeze_prefixes(model)
    torch.testing.assert_close(model(video), before)
    encoders = [m for m in model.modules() if isinstance(m, PrefixEncoder)]
    assert [e.reparameterized for e in encoders] == [False, False]
    state = model.trainable_state_dict()
    stored = {k: v.shape for k, v in state.items() if "embed_sites" in k}  # no MLP left
    L = TINY.depth
    assert stored == {
        "backbone.embed_sites.0.prefix": (L, 2, 3, TINY.width),  # mam's
        "backbone.embed_sites.1.prefix": (L, 2, 3, TINY.width),  # prefix's
    }
    counts = model.parameter_counts()
    assert counts["prefix"] == L * 2 * 3 * TINY.width
    adapters = L * (64 * 512 + 512 + 512 * 64 + 64)  # MAM's default bottleneck 512
    assert counts["mam"] == L * 2 * 3 * TINY.width + adapters
    assert model.spec.options["mam"]["reparameterize"] is False
    assert model.spec.options["prefix"]["reparameterize"] is False

    # What an adapter checkpoint saved now holds loads into a model built from the new spec.
    spec = model.spec
    rebuilt = create_model(spec.method, backbone=ViT(TINY), num_classes=5, num_frames=T,
                           **spec.options)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    rebuilt.load_state_dict(frozen, strict=False)
    rebuilt.load_trainable_state_dict(state)
    torch.testing.assert_close(rebuilt.eval()(video), before)
    with pytest.raises(ValueError, match="no reparameterised prefixes"):
        freeze_prefixes(model)


# ---- adapters, MAM, BitFit ------------------------------------------------------------------


@pytest.mark.parametrize("style, scale", [("sequential", 1.0), ("parallel", 4.0)])
def test_adapter_sites_follow_the_unified_view(style, scale):
    model = create_model("adapter", backbone=ViT(TINY), num_classes=5, num_frames=T,
                         style=style, bottleneck=8, scale=scale)
    randomise_new_weights(model)
    block = model.backbone.blocks[0]
    where = "post" if style == "sequential" else "parallel"
    on_attn, on_mlp = getattr(block, f"{where}_attn")[0], getattr(block, f"{where}_mlp")[0]

    def adapter(module, z):  # s * up(relu(down(z)))
        return scale * module.adapter.up(torch.relu(module.adapter.down(z)))

    x = torch.randn(3, 17, TINY.width)
    h = block.norm1(x)
    a = block.attn(h)
    a = a + adapter(on_attn, a if style == "sequential" else h)
    x1 = x + a
    h = block.norm2(x1)
    m = block.mlp(h)
    m = m + adapter(on_mlp, m if style == "sequential" else h)
    layout = TokenLayout(batch=3, frames=1, grid=(4, 4))
    torch.testing.assert_close(block(x, layout), x1 + m)


def test_adapters_use_the_lora_init():
    adapter = build("houlsby").backbone.blocks[0].post_mlp[0]
    assert isinstance(adapter, SequentialAdapter)
    assert adapter.adapter.up.weight.abs().max() == 0 and adapter.adapter.up.bias.abs().max() == 0
    bound = 1 / math.sqrt(TINY.width)  # kaiming-uniform(a=√5)
    assert 0.9 * bound < adapter.adapter.down.weight.abs().max() <= bound
    assert isinstance(adapter.adapter.act, nn.ReLU)


def test_mam_is_prefix_on_attention_plus_scaled_parallel_mlp_adapter():
    with torch.device("meta"):
        vit = ViT(preset_config("vit_b16_clip", embed_dim=None))
        model = create_model("mam", backbone=vit, num_classes=400, num_frames=8)
    (encoder,) = model.backbone.embed_sites
    assert isinstance(encoder, PrefixEncoder) and encoder.shape == (12, 2, 30, 768)
    for block in model.backbone.blocks:
        (adapter,) = block.parallel_mlp
        assert isinstance(adapter, ParallelAdapter) and adapter.scale == 4.0
        assert adapter.adapter.down.out_features == 512
        assert [type(s) for s in block.attn.kv_sites] == [PrefixKV]
        assert not (block.pre_attn or block.parallel_attn or block.post_attn or block.post_mlp)


def test_bitfit_trains_biases_only():
    trainable = [n for n, p in build("bitfit").named_parameters() if p.requires_grad]
    assert all(n.endswith(".bias") for n in trainable if n != "head.weight")
    assert "backbone.blocks.1.attn.qkv.bias" in trainable and "backbone.norm_pre.bias" in trainable
    # With LoRA stacked, BitFit finds the wrapped layers' biases; LoRA's weights stay LoRA's.
    both = create_model("lora+bitfit", backbone=ViT(TINY), num_classes=5, num_frames=T)
    assert "backbone.blocks.0.attn.qkv.base.bias" in both.parts["bitfit"]
    assert all("lora_" in n for n in both.parts["lora"])


# ---- composition ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, message",
    [
        ("mam+mam", "names a method twice"),
        ("lora+full", "cannot be combined"),
        ("bitfit+linear", "cannot be combined"),
        ("lora+vtp", "did you mean 'vpt'"),
    ],
)
def test_stacks_that_cannot_work_are_config_errors(method, message):
    with pytest.raises(ConfigError, match=message):
        create_model(method, backbone=ViT(TINY), num_classes=5, num_frames=T)


def test_two_prefix_sets_share_each_attention():
    model = build("mam+prefix")
    assert [s.method for s in model.backbone.blocks[0].attn.kv_sites] == ["mam", "prefix"]
    layout = TokenLayout(batch=1, frames=1, grid=(4, 4))
    for encoder in model.backbone.embed_sites:
        encoder(None, model.backbone, layout)
    k = v = torch.zeros(1, TINY.heads, 17, TINY.width // TINY.heads)
    for site in model.backbone.blocks[0].attn.kv_sites:
        k, v = site(k, v, layout)
    assert k.shape[2] == v.shape[2] == 3 + 3 + 17  # prefix's, then mam's, then the tokens
