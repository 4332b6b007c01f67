"""CLIP text side: tokenizer and text tower against Hugging Face references, and ``load_clip``
on every file layout (OpenAI ``.pt``, open_clip safetensors, HF ``CLIPModel`` folder).

No vocabulary can be downloaded here, so the tokenizers share a small vocabulary learned from
class-name prompts; the text towers are HF models with seeded random weights, re-laid out in
this file the way OpenAI and open_clip store them (docs/methods.md).
"""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
import transformers
from safetensors.torch import save_file
from torch import nn

from vidadapt import load_clip
from vidadapt.checkpoints import read_checkpoint
from vidadapt.clip import ClipTokenizer, TextConfig, TextTransformer, learn_bpe
from vidadapt.clip.prompts import TEMPLATES
from vidadapt.clip.save import save_clip
from vidadapt.clip.tokenizer import CONTEXT_LENGTH, OPENAI_VOCAB_FILE
from vidadapt.clip.towers import load_text_encoder
from vidadapt.data.synthetic import CLASSES
from vidadapt.errors import CheckpointError

KINETICS_NAMES = ["abseiling", "air drumming", "answering questions", "playing bass guitar",
                  "riding or walking with horse", "tai chi", "jumping into pool", "yoga"]
PROMPTS = [t.format(c) for c in CLASSES + KINETICS_NAMES for t in TEMPLATES["kinetics"][:3]]
TRICKY = ["Rotating  Counter-Clockwise!", "  a photo of 3 cats & 12 dogs ", "don't STOP",
          "café naïve", "tab\tand\nnewline", "x" * 40, "<|endoftext|> inside"]
WIDTH, DEPTH, HEADS, MLP, EMBED, PATCH, IMAGE = 128, 2, 2, 256, 64, 8, 32
ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer.learn(PROMPTS, num_merges=300)


# ---- tokenizer ---------------------------------------------------------------------------------


def test_learn_bpe_merges_most_frequent_pair_first():
    # low(1) lower(1) lowest(1): "l o" is in all three words, then ties go to the sorted-first.
    assert learn_bpe(["low lower lowest"], num_merges=100) == [
        ("l", "o"), ("lo", "w"), ("low", "e"), ("lo", "w</w>"), ("lowe", "r</w>"),
        ("lowe", "s"), ("lowes", "t</w>"),
    ]
    tok = ClipTokenizer.learn(["low lower lowest"])
    assert len(tok.encode("low lower lowest")) == 3  # every word became one token
    assert tok.vocab_size == 2 * 256 + 7 + 2


def test_tokenizer_matches_hf_clip_tokenizer(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    reference = transformers.CLIPTokenizer(
        vocab=json.loads((tmp_path / "vocab.json").read_text()),
        merges=[tuple(line.split()) for line in (tmp_path / "merges.txt").read_text()
                .splitlines()[1:]],
    )
    texts = PROMPTS + TRICKY
    ours = tokenizer(texts)
    assert ours.shape == (len(texts), CONTEXT_LENGTH) and ours.dtype == torch.long
    for text, row in zip(texts, ours, strict=True):
        expected = reference(text)["input_ids"]
        assert row[: len(expected)].tolist() == expected, text
        assert not row[len(expected) :].any()  # zero padding (OpenAI's convention)


def test_tokenizer_reads_openai_gz_and_hf_folder(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "hf")
    merges = "".join(f"{a} {b}\n" for a, b in tokenizer.merges)
    (tmp_path / OPENAI_VOCAB_FILE).write_bytes(gzip.compress(f"#header\n{merges}".encode()))
    for source in (tmp_path / "hf", tmp_path / OPENAI_VOCAB_FILE, tmp_path):
        loaded = ClipTokenizer.from_path(source)
        assert loaded.encoder == tokenizer.encoder
        assert torch.equal(loaded(PROMPTS), tokenizer(PROMPTS))
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        ClipTokenizer.from_path(tmp_path / "hf" / "missing")


def test_tokenizer_ids_and_truncation(tokenizer):
    ids = tokenizer("a video of moving left.")[0]
    assert ids[0] == tokenizer.sot_token_id
    assert tokenizer.eot_token_id == tokenizer.vocab_size - 1  # the largest id, found by argmax
    long = tokenizer(" ".join(["growing"] * 200))[0]
    assert long[-1] == tokenizer.eot_token_id and long.argmax() == CONTEXT_LENGTH - 1
    assert tokenizer("x", context_length=5).shape == (1, 5)
    # OpenAI's cleaning unescapes HTML entities (HF's fast tokenizer does not).
    assert torch.equal(tokenizer("cats &amp; dogs"), tokenizer("cats & dogs"))


# ---- text tower ----------------------------------------------------------------------------


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded values in every parameter (biases and norms included): a swapped, transposed or
    dropped tensor changes the outputs. LayerNorm weights around 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_scale = name.endswith("weight") and p.ndim == 1
            p.copy_(1 + 0.1 * noise if is_scale else 0.5 * WIDTH**-0.5 * noise)
        model.logit_scale.fill_(math.log(50.0))
    return model.eval()


def hf_clip(tokenizer: ClipTokenizer, eos_token_id: int) -> transformers.CLIPModel:
    text = transformers.CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=WIDTH, intermediate_size=MLP,
        num_hidden_layers=DEPTH, num_attention_heads=HEADS, max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=tokenizer.sot_token_id, eos_token_id=eos_token_id, pad_token_id=0,
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH,
        num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH,
    )
    config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                     projection_dim=EMBED)
    return randomize(transformers.CLIPModel(config))


@pytest.fixture(scope="module")
def reference(tokenizer) -> transformers.CLIPModel:
    return hf_clip(tokenizer, eos_token_id=tokenizer.eot_token_id)


def hf_text_features(model: transformers.CLIPModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.text_projection(model.text_model(input_ids=ids).pooler_output)


def hf_image_features(model: transformers.CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)


def openai_layout(model: transformers.CLIPModel) -> dict[str, torch.Tensor]:
    """The HF weights under OpenAI's names (the layout open_clip also saves)."""
    hf = model.state_dict()
    out = {
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].T,  # [D, E], applied as x @ proj
        "logit_scale": hf["logit_scale"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.proj": hf["visual_projection.weight"].T,
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for kind in ("weight", "bias"):
            out[f"visual.{ours}.{kind}"] = hf[f"vision_model.{theirs}.{kind}"]
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for hf_tower, tower in (("text_model", ""), ("vision_model", "visual.")):
        for i in range(DEPTH):
            theirs, ours = f"{hf_tower}.encoder.layers.{i}.", f"{tower}transformer.resblocks.{i}."
            for hf_name, name in names.items():
                for kind in ("weight", "bias"):
                    out[f"{ours}{name}.{kind}"] = hf[f"{theirs}{hf_name}.{kind}"]
            for kind in ("weight", "bias"):
                qkv = [hf[f"{theirs}self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{ours}attn.in_proj_{kind}"] = torch.cat(qkv)
    for i in range(DEPTH):  # what a TorchScript archive also holds: each text block's mask
        out[f"transformer.resblocks.{i}.attn_mask"] = torch.full((77, 77), -math.inf).triu(1)
    return out


@pytest.mark.parametrize("legacy_eos", [False, True], ids=["eos_token_id", "argmax"])
def test_text_tower_matches_hf_text_model(tokenizer, reference, legacy_eos, tmp_path):
    # HF pools at the first eos_token_id, or (legacy configs with eos_token_id 2) at the
    # largest id; with zero padding both are the end token, where we read the feature.
    model = hf_clip(tokenizer, eos_token_id=2) if legacy_eos else reference
    model.save_pretrained(tmp_path)
    text = load_text_encoder(read_checkpoint(tmp_path))
    assert text.cfg == TextConfig(vocab_size=tokenizer.vocab_size, width=WIDTH, depth=DEPTH,
                                  heads=HEADS, mlp_dim=MLP, embed_dim=EMBED)
    ids = tokenizer(PROMPTS[:12] + TRICKY)
    with torch.no_grad():
        torch.testing.assert_close(text(ids), hf_text_features(model, ids), rtol=0, atol=ATOL)


def write_openai_pt(model, path):
    torch.save(openai_layout(model), path)


def write_open_clip_safetensors(model, path):
    layout = {f"module.{k}": v.contiguous() for k, v in openai_layout(model).items()}
    save_file(layout, path)


def write_hf_folder(model, path):
    model.save_pretrained(path)


WRITERS = {
    "openai_pt": (write_openai_pt, "ViT-tiny.pt"),
    "open_clip_safetensors": (write_open_clip_safetensors, "open_clip_model.safetensors"),
    "hf_folder": (write_hf_folder, "clip-tiny"),
}


@pytest.mark.parametrize("source", WRITERS)
def test_load_clip_matches_hf_clip_model(source, tokenizer, reference, tmp_path):
    write, name = WRITERS[source]
    write(reference, tmp_path / name)
    tokenizer.save(tmp_path / name if source == "hf_folder" else tmp_path)
    clip = load_clip(tmp_path / name)

    ids = tokenizer(PROMPTS[:8])
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(clip.text(ids), hf_text_features(reference, ids),
                                   rtol=0, atol=ATOL)
        torch.testing.assert_close(clip.visual.encode(pixels),
                                   hf_image_features(reference, pixels), rtol=0, atol=ATOL)
    assert clip.logit_scale == pytest.approx(math.log(50.0))
    assert clip.tokenizer.encoder == tokenizer.encoder
    assert clip.visual.proj.shape == clip.text.proj.shape == (WIDTH, EMBED)


def test_save_clip_writes_the_hf_clip_model_it_loaded(tokenizer, reference, tmp_path):
    write_hf_folder(reference, tmp_path / "source")
    tokenizer.save(tmp_path / "source")
    save_clip(load_clip(tmp_path / "source"), tmp_path / "saved")

    saved = transformers.CLIPModel.from_pretrained(tmp_path / "saved").eval()
    expected = reference.state_dict()
    assert saved.state_dict().keys() == expected.keys()
    for key, value in saved.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert saved.config.text_config.eos_token_id == tokenizer.eot_token_id
    assert ClipTokenizer.from_path(tmp_path / "saved").encoder == tokenizer.encoder
    hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(tmp_path / "saved")
    assert hf_tokenizer(PROMPTS[:4]).input_ids == [
        [tokenizer.sot_token_id, *tokenizer.encode(p), tokenizer.eot_token_id]
        for p in PROMPTS[:4]
    ]


def test_load_clip_errors(tokenizer, reference, tmp_path):
    write_openai_pt(reference, tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match="no tokenizer beside the checkpoint"):
        load_clip(tmp_path / "clip.pt")
    tokenizer.save(tmp_path / "vocab")
    assert load_clip(tmp_path / "clip.pt", tokenizer=tmp_path / "vocab").text.cfg.depth == DEPTH
    image_only = {k.removeprefix("visual."): v for k, v in openai_layout(reference).items()
                  if k.startswith("visual.")}
    timm_like = {"patch_embed.proj.weight": image_only["conv1.weight"], "norm_pre.weight":
                 image_only["ln_pre.weight"]}
    save_file(timm_like, tmp_path / "timm.safetensors")
    with pytest.raises(CheckpointError, match="holds no CLIP text tower"):
        load_text_encoder(read_checkpoint(tmp_path / "timm.safetensors"))


def test_text_tower_is_causal(tokenizer):
    torch.manual_seed(0)
    text = TextTransformer(TextConfig(vocab_size=tokenizer.vocab_size, width=64, depth=2,
                                      heads=2, mlp_dim=128, embed_dim=32)).eval()
    ids = tokenizer(["a video of growing."])
    changed = ids.clone()
    end = int(ids.argmax())
    changed[0, end + 1 :] = 7  # tokens after the end token cannot reach it
    with torch.no_grad():
        torch.testing.assert_close(text(changed), text(ids), rtol=0, atol=0)
        before = ids.clone()
        before[0, 1] = 9  # a token before it does
        assert not torch.allclose(text(before), text(ids))
