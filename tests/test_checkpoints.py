"""Checkpoint loading: every supported source layout reproduces a Hugging Face reference.

References are ``transformers`` models with seeded random weights. Their weights are re-laid out
here the way each source stores them (OpenAI, open_clip, timm, DINOv2); this test code is written
from the layouts in docs/methods.md, independently of ``vidadapt.checkpoints.convert``.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from vidadapt import create_backbone, load_image_encoder
from vidadapt.backbones.presets import preset_config
from vidadapt.backbones.vit import ViTConfig, resample_pos_embed
from vidadapt.checkpoints import read_checkpoint
from vidadapt.errors import CheckpointError

# Small CLIP-like tower: 2 heads of 64 so that the head count can be inferred (width / 64).
WIDTH, DEPTH, HEADS, MLP, PATCH, IMAGE, EMBED = 128, 2, 2, 256, 8, 32, 64
ATOL = 1e-5  # float32 parity; fp16 sources are compared with a reference rounded to fp16


def small_config(**fields) -> ViTConfig:
    """The architecture vidadapt should infer for the small test towers (CLIP defaults)."""
    sizes = dict(image_size=IMAGE, patch_size=PATCH, width=WIDTH, depth=DEPTH, heads=HEADS)
    return ViTConfig(**{**sizes, "mlp_dim": MLP, **fields})


def randomize(model: nn.Module, width: int, seed: int = 0) -> nn.Module:
    """Seeded random values in every parameter, biases and LayerNorm included, so that any
    swapped, transposed or dropped tensor changes the outputs. Scales (LayerNorm / LayerScale
    weights) are drawn around 1, everything else with std 0.5 / sqrt(width)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_scale = name.endswith("lambda1") or (name.endswith("weight") and p.ndim == 1)
            p.copy_(1 + 0.1 * noise if is_scale else 0.5 * width**-0.5 * noise)
    return model.eval()


def round_to_fp16_(model: nn.Module) -> nn.Module:
    """In place: the model an fp16 file describes (same weights rounded to half precision)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def hub_weights(model: transformers.PreTrainedModel, directory: Path) -> dict[str, torch.Tensor]:
    """Weights under the names Hugging Face writes to disk (the names of real Hub files)."""
    model.save_pretrained(directory)
    return load_file(directory / "model.safetensors")


def pixels(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(7))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def assert_matches_clip(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    """Pooled output == HF ``pooler_output``; last block's tokens == ``last_hidden_state``."""
    with torch.no_grad():
        expected = reference(pixel_values=x)
        assert_close(model(x), expected.pooler_output)
        assert_close(model.forward_tokens(x)[0], expected.last_hidden_state)


def assert_matches_post_norm(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    """For HF ViT / DINOv2, whose ``last_hidden_state`` is taken after the final norm."""
    with torch.no_grad():
        expected = reference(pixel_values=x).last_hidden_state
        assert_close(model(x), expected[:, 0])
        assert_close(model.norm(model.forward_tokens(x)[0]), expected)


# --- CLIP: the reference and its re-layouts ----------------------------------------------------


def clip_vision_config(**fields) -> transformers.CLIPVisionConfig:
    sizes = dict(
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        image_size=IMAGE,
        patch_size=PATCH,
    )
    return transformers.CLIPVisionConfig(**{**sizes, **fields})


def openai_visual(hf: dict, projection: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """HF CLIP vision weights (names without ``vision_model.``) as OpenAI's ``visual`` module."""
    out = {
        "class_embedding": hf["embeddings.class_embedding"],
        "positional_embedding": hf["embeddings.position_embedding.weight"],
        "conv1.weight": hf["embeddings.patch_embedding.weight"],
        "ln_pre.weight": hf["pre_layrnorm.weight"],
        "ln_pre.bias": hf["pre_layrnorm.bias"],
        "ln_post.weight": hf["post_layernorm.weight"],
        "ln_post.bias": hf["post_layernorm.bias"],
    }
    if projection is not None:
        out["proj"] = projection
    block_names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    return {**out, **fused_blocks(hf, "transformer.resblocks.{i}.", "attn.in_proj_", block_names)}


def timm_clip_layout(hf: dict, projection: torch.Tensor) -> dict[str, torch.Tensor]:
    """HF CLIP vision weights as timm's ``vit_*_clip_*.openai`` (fused qkv, head = proj.T)."""
    out = {
        "cls_token": hf["embeddings.class_embedding"].reshape(1, 1, -1),
        "pos_embed": hf["embeddings.position_embedding.weight"][None],
        "patch_embed.proj.weight": hf["embeddings.patch_embedding.weight"],
        "norm_pre.weight": hf["pre_layrnorm.weight"],
        "norm_pre.bias": hf["pre_layrnorm.bias"],
        "norm.weight": hf["post_layernorm.weight"],
        "norm.bias": hf["post_layernorm.bias"],
        "head.weight": projection.T.contiguous(),
        "head.bias": torch.zeros(projection.shape[1]),
    }
    block_names = {
        "layer_norm1": "norm1",
        "layer_norm2": "norm2",
        "self_attn.out_proj": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    return {**out, **fused_blocks(hf, "blocks.{i}.", "attn.qkv.", block_names)}


def fused_blocks(
    hf: dict, block: str, qkv: str, block_names: dict[str, str]
) -> dict[str, torch.Tensor]:
    """HF CLIP encoder layers under ``block`` (with ``{i}``) names: q, k and v stacked into one
    ``{qkv}weight`` / ``{qkv}bias``, the other tensors renamed by ``block_names``."""
    depth = len({k.split(".")[2] for k in hf if k.startswith("encoder.layers.")})
    out = {}
    for i in range(depth):
        hf_block, ours = f"encoder.layers.{i}.", block.format(i=i)
        for kind in ("weight", "bias"):
            out[f"{ours}{qkv}{kind}"] = torch.cat(
                [hf[f"{hf_block}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            )
            for hf_name, name in block_names.items():
                out[f"{ours}{name}.{kind}"] = hf[f"{hf_block}{hf_name}.{kind}"]
    return out


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """OpenAI CLIP's block: its submodule names are the names in OpenAI files."""

    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        layers = OrderedDict(
            c_fc=nn.Linear(width, mlp), gelu=QuickGELU(), c_proj=nn.Linear(mlp, width)
        )
        self.mlp = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, B, D]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, mlp) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class OpenAIVisual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        grid = IMAGE // PATCH
        self.conv1 = nn.Conv2d(3, WIDTH, PATCH, PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(WIDTH))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, WIDTH))
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = Transformer(WIDTH, DEPTH, HEADS, MLP)
        self.ln_post = nn.LayerNorm(WIDTH)
        self.proj = nn.Parameter(torch.zeros(WIDTH, EMBED))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding  # [B, 1 + N, D]
        x = self.transformer(self.ln_pre(x).transpose(0, 1))  # [1 + N, B, D]
        return self.ln_post(x[0]) @ self.proj


class OpenAICLIP(nn.Module):
    """A small model with OpenAI CLIP's module tree: both towers and the int bookkeeping entries."""

    def __init__(self) -> None:
        super().__init__()
        text_width, context, vocab = 64, 7, 50
        self.visual = OpenAIVisual()
        self.token_embedding = nn.Embedding(vocab, text_width)
        self.positional_embedding = nn.Parameter(torch.randn(context, text_width))
        self.transformer = Transformer(text_width, 1, 1, 2 * text_width)
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.randn(text_width, EMBED))
        self.logit_scale = nn.Parameter(torch.tensor(4.6))
        self.register_buffer("input_resolution", torch.tensor(IMAGE))
        self.register_buffer("context_length", torch.tensor(context))
        self.register_buffer("vocab_size", torch.tensor(vocab))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


@pytest.fixture(scope="module")
def clip():
    """The HF reference, a projection [D, E], and the same weights in OpenAI's module tree."""
    reference = randomize(transformers.CLIPVisionModel(clip_vision_config()), WIDTH)
    hf = {k.removeprefix("vision_model."): v for k, v in reference.state_dict().items()}
    projection = torch.randn(WIDTH, EMBED, generator=torch.Generator().manual_seed(1)) / 8
    openai = OpenAICLIP().eval()
    openai.visual.load_state_dict(openai_visual(hf, projection))
    return dict(reference=reference, hf=hf, projection=projection, openai=openai)


def write_openai_state_dict(clip, path):
    torch.save(clip["openai"].state_dict(), path)


def write_openai_state_dict_fp16(clip, path):
    torch.save(copy.deepcopy(clip["openai"]).half().state_dict(), path)


def write_openai_torchscript(clip, path):
    traced = torch.jit.trace(copy.deepcopy(clip["openai"]), pixels(IMAGE, batch=1))
    torch.jit.save(traced.half(), path)


def write_open_clip_safetensors(clip, path):
    save_file({f"module.{k}": v.contiguous() for k, v in clip["openai"].state_dict().items()}, path)


def write_open_clip_training_checkpoint(clip, path):
    state = {f"module.{k}": v for k, v in clip["openai"].state_dict().items()}
    torch.save({"epoch": 3, "name": "tiny", "state_dict": state}, path)


def write_timm_clip(clip, path):
    save_file(timm_clip_layout(clip["hf"], clip["projection"]), path)


CLIP_WRITERS = {  # name: (writer, file name, weights stored in fp16)
    "openai_state_dict": (write_openai_state_dict, "ViT.pt", False),
    "openai_state_dict_fp16": (write_openai_state_dict_fp16, "ViT.pt", True),
    "openai_torchscript_fp16": (write_openai_torchscript, "ViT.pt", True),
    "open_clip_safetensors": (write_open_clip_safetensors, "open_clip_model.safetensors", False),
    "open_clip_checkpoint": (write_open_clip_training_checkpoint, "epoch_3.pt", False),
    "timm_clip": (write_timm_clip, "model.safetensors", False),
}


@pytest.mark.parametrize("source", CLIP_WRITERS)
def test_clip_files_match_hf_reference(source, clip, tmp_path):
    write, name, fp16 = CLIP_WRITERS[source]
    write(clip, tmp_path / name)
    model = load_image_encoder(tmp_path / name)

    reference, projection = clip["reference"], clip["projection"]
    if fp16:
        reference = round_to_fp16_(copy.deepcopy(reference))
        projection = projection.half().float()
    x = pixels(IMAGE)
    assert model.cfg == small_config(embed_dim=EMBED)
    assert next(model.parameters()).dtype == torch.float32
    assert_matches_clip(model, reference, x)
    with torch.no_grad():
        assert_close(model.encode(x), reference(pixel_values=x).pooler_output @ projection)


def test_torchscript_archive_read_without_jit_or_torch_load(clip, tmp_path, monkeypatch):
    write_openai_torchscript(clip, tmp_path / "ViT.pt")

    def forbidden(*args, **kwargs):
        raise AssertionError(
            "TorchScript archives must be read without torch.load / torch.jit.load"
        )

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.jit, "load", forbidden)
    checkpoint = read_checkpoint(tmp_path / "ViT.pt")

    expected = copy.deepcopy(clip["openai"]).half().state_dict()
    assert checkpoint.layout == "openai_clip"
    assert checkpoint.state_dict.keys() == expected.keys()  # text tower and int entries included
    for key, value in expected.items():
        assert checkpoint.state_dict[key].dtype == value.dtype, key
        assert torch.equal(checkpoint.state_dict[key], value), key


def test_vit_b16_sized_openai_fp16(tmp_path):
    """Real ViT-B/16 shapes; HF's own seeded init as weights (the small cases randomize all)."""
    torch.manual_seed(0)
    config = clip_vision_config(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    )
    reference = round_to_fp16_(transformers.CLIPVisionModel(config).eval())
    hf = {k.removeprefix("vision_model."): v for k, v in reference.state_dict().items()}
    visual = openai_visual(hf, projection=torch.randn(768, 512) / 32)
    torch.save({f"visual.{k}": v.half() for k, v in visual.items()}, tmp_path / "ViT-B-16.pt")

    model = load_image_encoder(tmp_path / "ViT-B-16.pt")

    assert model.cfg == preset_config("vit_b16_clip")
    x = pixels(224, batch=1)
    with torch.no_grad():  # one forward each: the pooled output depends on every weight
        assert_close(model(x), reference(pixel_values=x).pooler_output)


@pytest.mark.parametrize(("act", "eps"), [("quick_gelu", 1e-5), ("gelu", 1e-6)])
def test_hf_clip_vision_directory(act, eps, tmp_path):
    config = clip_vision_config(hidden_act=act, layer_norm_eps=eps)
    reference = randomize(transformers.CLIPVisionModel(config), WIDTH)
    reference.save_pretrained(tmp_path)

    model = load_image_encoder(tmp_path)

    assert model.cfg == small_config(act=act, norm_eps=eps)
    assert_matches_clip(model, reference, pixels(IMAGE))


def test_hf_clip_model_directory_ignores_text_tower(tmp_path):
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1)
    config = transformers.CLIPConfig(
        text_config=text, vision_config=clip_vision_config().to_dict(), projection_dim=EMBED
    )
    reference = randomize(transformers.CLIPModel(config), WIDTH)
    reference.save_pretrained(tmp_path)
    assert any(k.startswith("text_model.") for k in load_file(tmp_path / "model.safetensors"))

    model = load_image_encoder(tmp_path)

    x = pixels(IMAGE)
    assert_matches_clip(model, reference.vision_model, x)
    with torch.no_grad():
        pooled = reference.vision_model(pixel_values=x).pooler_output
        assert_close(model.encode(x), reference.visual_projection(pooled))


def test_heads_must_be_given_when_width_is_not_a_multiple_of_64(tmp_path):
    config = clip_vision_config(hidden_size=96, num_hidden_layers=1, num_attention_heads=2)
    reference = randomize(transformers.CLIPVisionModel(config), 96)
    hf = {k.removeprefix("vision_model."): v for k, v in reference.state_dict().items()}
    torch.save(openai_visual(hf, projection=None), tmp_path / "w96.pt")

    with pytest.raises(CheckpointError, match=r"w96\.pt: cannot infer the attention heads.*heads="):
        load_image_encoder(tmp_path / "w96.pt")
    assert_matches_clip(load_image_encoder(tmp_path / "w96.pt", heads=2), reference, pixels(IMAGE))


def test_create_backbone_checks_the_preset(clip, tmp_path):
    cfg = preset_config("vit_tiny")
    config = clip_vision_config(
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )
    reference = randomize(transformers.CLIPVisionModel(config), cfg.width)
    hf = {k.removeprefix("vision_model."): v for k, v in reference.state_dict().items()}
    torch.save({f"visual.{k}": v for k, v in openai_visual(hf, None).items()}, tmp_path / "tiny.pt")

    model = create_backbone("vit_tiny", pretrained=tmp_path / "tiny.pt")

    assert model.cfg == cfg
    assert_matches_clip(model, reference, pixels(cfg.image_size))
    assert create_backbone("vit_tiny").cfg == cfg

    write_openai_state_dict(clip, tmp_path / "small.pt")
    with pytest.raises(CheckpointError) as error:
        create_backbone("vit_b16_clip", pretrained=tmp_path / "small.pt")
    assert str(error.value) == (
        f"{tmp_path / 'small.pt'}: does not fit backbone 'vit_b16_clip' (preset vs file: "
        "patch_size 16 vs 8, width 768 vs 128, depth 12 vs 2, mlp_dim 3072 vs 256, "
        "embed_dim 512 vs 64); choose another preset or override those fields"
    )


# --- DINOv2 and ImageNet-21k ViT ----------------------------------------------------------------


def fused_qkv(hub: dict, attention: str, kind: str) -> torch.Tensor:
    """HF's separate query / key / value projections stacked as timm's qkv [3D, ...]."""
    return torch.cat([hub[f"{attention}.attention.{p}.{kind}"] for p in ("query", "key", "value")])


def hf_vit_embeddings(hub: dict) -> dict[str, torch.Tensor]:
    return {
        "cls_token": hub["embeddings.cls_token"],
        "pos_embed": hub["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hub["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hub["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hub["layernorm.weight"],
        "norm.bias": hub["layernorm.bias"],
    }


def dinov2_layout(hub: dict) -> dict[str, torch.Tensor]:
    """HF Dinov2 Hub weights as facebookresearch/dinov2 stores them."""
    out = hf_vit_embeddings(hub)
    out["mask_token"] = hub["embeddings.mask_token"]
    if "embeddings.register_tokens" in hub:
        out["register_tokens"] = hub["embeddings.register_tokens"]
    block_names = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for i in range(DEPTH):
        hf_block, block = f"encoder.layer.{i}.", f"blocks.{i}."
        out[f"{block}ls1.gamma"] = hub[f"{hf_block}layer_scale1.lambda1"]
        out[f"{block}ls2.gamma"] = hub[f"{hf_block}layer_scale2.lambda1"]
        for kind in ("weight", "bias"):
            out[f"{block}attn.qkv.{kind}"] = fused_qkv(hub, f"{hf_block}attention", kind)
            for hf_name, name in block_names.items():
                out[f"{block}{name}.{kind}"] = hub[f"{hf_block}{hf_name}.{kind}"]
    return out


def timm_augreg_layout(hub: dict, num_classes: int = 10) -> dict[str, torch.Tensor]:
    """HF ViTModel Hub weights as timm's augreg ViT, with an ImageNet-style classifier head."""
    out = hf_vit_embeddings(hub)
    block_names = {
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "attention.output.dense": "attn.proj",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }
    for i in range(DEPTH):
        hf_block, block = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{block}attn.qkv.{kind}"] = fused_qkv(hub, f"{hf_block}attention", kind)
            for hf_name, name in block_names.items():
                out[f"{block}{name}.{kind}"] = hub[f"{hf_block}{hf_name}.{kind}"]
    out["head.weight"] = torch.randn(num_classes, WIDTH)
    out["head.bias"] = torch.randn(num_classes)
    return out


def dinov2_reference(image_size: int, registers: int) -> transformers.PreTrainedModel:
    sizes = dict(
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        mlp_ratio=MLP // WIDTH,
        image_size=image_size,
        patch_size=14,
    )
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **sizes)
        return randomize(transformers.Dinov2WithRegistersModel(config), WIDTH)
    return randomize(transformers.Dinov2Model(transformers.Dinov2Config(**sizes)), WIDTH)


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_matches_hf_at_native_resolution(registers, tmp_path):
    reference = dinov2_reference(image_size=70, registers=registers)
    save_file(dinov2_layout(hub_weights(reference, tmp_path)), tmp_path / "dinov2.safetensors")

    model = load_image_encoder(tmp_path / "dinov2.safetensors", image_size=70)

    assert model.cfg == small_config(
        image_size=70,
        patch_size=14,
        act="gelu",
        norm_eps=1e-6,
        pre_norm=False,
        patch_bias=True,
        layer_scale=True,
        num_registers=registers,
    )
    assert_matches_post_norm(model, reference, pixels(70))


def test_dinov2_pos_embed_resampled_from_518_to_224(tmp_path):
    weights = dinov2_layout(hub_weights(dinov2_reference(image_size=518, registers=0), tmp_path))
    assert weights["pos_embed"].shape == (1, 1 + 37 * 37, WIDTH)
    save_file(weights, tmp_path / "dinov2.safetensors")

    model = load_image_encoder(tmp_path / "dinov2.safetensors")  # DINOv2 defaults to 224 px
    native = load_image_encoder(tmp_path / "dinov2.safetensors", image_size=518)

    assert (model.cfg.image_size, native.cfg.image_size) == (224, 518)
    assert model.pos_embed.shape == (1, 1 + 16 * 16, WIDTH)
    assert torch.equal(model.pos_embed.data, resample_pos_embed(weights["pos_embed"], (16, 16)))
    x = pixels(224, batch=1)
    with torch.no_grad():  # the native model resamples on the fly with the same function
        assert_close(model(x), native(x))


def test_in21k_timm_augreg_matches_hf_vit(tmp_path):
    config = transformers.ViTConfig(
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        image_size=IMAGE,
        patch_size=PATCH,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )
    reference = randomize(transformers.ViTModel(config, add_pooling_layer=False), WIDTH)
    save_file(timm_augreg_layout(hub_weights(reference, tmp_path)), tmp_path / "augreg.safetensors")

    model = load_image_encoder(tmp_path / "augreg.safetensors")

    # embed_dim None: the classifier head is dropped
    assert model.cfg == small_config(act="gelu", norm_eps=1e-6, pre_norm=False, patch_bias=True)
    assert_matches_post_norm(model, reference, pixels(IMAGE))


# --- errors ----------------------------------------------------------------------------------


def openai_file(clip, path, edit) -> None:
    state = clip["openai"].state_dict()
    edit(state)
    torch.save(state, path)


def test_missing_file(tmp_path):
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(tmp_path / 'nope.pt'))}: checkpoint file not found$",
    ):
        load_image_encoder(tmp_path / "nope.pt")


def test_directory_without_weights(tmp_path):
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(tmp_path))}: directory has no weights file \(model\.safetensors",
    ):
        load_image_encoder(tmp_path)


def test_unknown_layout(tmp_path):
    save_file({"encoder.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_image_encoder(tmp_path / "other.safetensors")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'other.safetensors'}: unknown checkpoint layout")
    assert "encoder.weight" in message and "supported: OpenAI / open_clip CLIP" in message


def test_missing_keys(clip, tmp_path):
    openai_file(clip, tmp_path / "m.pt", lambda s: s.pop("visual.ln_post.weight"))
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(tmp_path / 'm.pt'))}: missing keys .*: norm\.weight$",
    ):
        load_image_encoder(tmp_path / "m.pt")


def test_unexpected_keys(clip, tmp_path):
    extra = {f"visual.attnpool.k{i}": torch.zeros(1) for i in range(7)}
    openai_file(clip, tmp_path / "u.pt", lambda s: s.update(extra))
    with pytest.raises(CheckpointError) as error:
        load_image_encoder(tmp_path / "u.pt")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'u.pt'}: unexpected keys (vidadapt names): ")
    assert message.endswith(
        "attnpool.k0, attnpool.k1, attnpool.k2, attnpool.k3, attnpool.k4 (+2 more)"
    )


def test_shape_mismatch(clip, tmp_path):
    key = "visual.transformer.resblocks.1.mlp.c_fc.weight"
    openai_file(clip, tmp_path / "s.pt", lambda s: s.update({key: torch.zeros(MLP - 8, WIDTH)}))
    with pytest.raises(CheckpointError) as error:
        load_image_encoder(tmp_path / "s.pt")
    assert str(error.value) == (
        f"{tmp_path / 's.pt'}: shape mismatch for blocks.1.mlp.fc1.weight: "
        f"model expects [{MLP}, {WIDTH}], file has [{MLP - 8}, {WIDTH}]"
    )


@pytest.mark.parametrize("source", ["openai_state_dict", "openai_torchscript_fp16", "timm_clip"])
def test_truncated_file(source, clip, tmp_path):
    write, name, _ = CLIP_WRITERS[source]
    path = tmp_path / name
    write(clip, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(path))}: cannot read checkpoint .*download it again",
    ):
        load_image_encoder(path)


def test_garbage_file(tmp_path):
    (tmp_path / "ViT.pt").write_text("<html>404 Not Found</html>")
    with pytest.raises(
        CheckpointError, match=r"ViT\.pt: cannot read checkpoint .*download it again"
    ):
        load_image_encoder(tmp_path / "ViT.pt")


def test_pickled_objects_are_refused(clip, tmp_path):
    state = clip["openai"].state_dict()
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "train.pt")
    with pytest.raises(CheckpointError, match=r"train\.pt: holds a pickled argparse\.Namespace"):
        load_image_encoder(tmp_path / "train.pt")


class _RunsShellCommand:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_torchscript_code_is_never_run(tmp_path):
    marker = tmp_path / "executed"
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(_RunsShellCommand(marker), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(
        CheckpointError, match=r"evil\.pt: cannot read checkpoint \(refusing to load"
    ):
        load_image_encoder(tmp_path / "evil.pt")
    assert not marker.exists()


def test_unsupported_hf_activation(tmp_path):
    transformers.CLIPVisionModel(clip_vision_config(hidden_act="relu")).save_pretrained(tmp_path)
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(tmp_path))}: config\.json: hidden_act 'relu' is not supported",
    ):
        load_image_encoder(tmp_path)
