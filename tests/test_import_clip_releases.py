"""Released ActionCLIP and X-CLIP checkpoints in. ActionCLIP: the official layout (the whole
fine-tuned CLIP in OpenAI's names, the "Transf" fusion model under DataParallel names) with
random weights and the official test forward (16 templates, a fixed scale of 100, softmaxes
averaged) match the imported model to 1e-5. X-CLIP: Hugging Face's ``XCLIPModel`` follows the
official code's order; its random weights, renamed to the official names, import onto the same
tensors as the Hugging Face conversion and give its logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from official_clip import (
    DEPTH,
    FRAMES,
    IMAGE,
    WIDTH,
    ResidualAttentionBlock,
    TextTransformer,
    VisualTransformer,
    randomize,
    save_with_yacs_config,
)
from safetensors.torch import load_file
from test_clip_methods import CLASSES
from test_video_clip_methods import xclip_model  # the tiny X-CLIP of the HF parity test
from torch import nn

import vidadapt
from vidadapt.cli import main as cli
from vidadapt.clip import TEMPLATES, ClipTokenizer
from vidadapt.config import config_from_dict
from vidadapt.engine.build import build_model
from vidadapt.engine.checkpoint import load_adapter, read_adapter
from vidadapt.errors import CheckpointError, ConfigError
from vidadapt.methods.xclip import convert_hf_xclip, convert_xclip_release
from vidadapt.releases import import_release

NAMES = ["archery", "bowling", "juggling balls"]
PRETRAINED = "builtin:clip_tiny_synthetic"  # its shapes: width 128, text depth 3, vocabulary 667


class OfficialActionCLIP(nn.Module):
    """CLIP (``visual.*`` + the text tower at the top level) and the fusion model."""

    def __init__(self, fusion_layers: int = 2) -> None:
        super().__init__()
        self.visual = VisualTransformer([ResidualAttentionBlock() for _ in range(DEPTH)])
        self.text = TextTransformer(vocab=667, context=77, depth=3)
        self.logit_scale = nn.Parameter(torch.tensor(4.0))  # learned; the test ignores it
        self.frame_position_embeddings = nn.Embedding(77, WIDTH)
        self.fusion = nn.ModuleList(ResidualAttentionBlock(WIDTH, WIDTH // 64, eps=1e-12)
                                    for _ in range(fusion_layers))

    def forward(self, video, tokens):  # tokens: [16 * C, 77], template-major
        B = video.shape[0]
        frames = self.visual(video.flatten(0, 1)).view(B, FRAMES, -1)  # [B, T, E]
        x = frames + self.frame_position_embeddings(torch.arange(FRAMES))
        x = x.transpose(0, 1)  # [T, B, E]
        for block in self.fusion:
            x = block(x)
        video_embedding = F.normalize((x.transpose(0, 1) + frames).mean(dim=1), dim=-1)
        text = F.normalize(self.text(tokens), dim=-1)  # [16 * C, E]
        similarity = 100.0 * video_embedding @ text.T  # [B, 16 * C]
        return similarity.view(B, 16, len(NAMES)).softmax(dim=-1).mean(dim=1)  # [B, C]

    def release(self) -> dict:
        """``model_state_dict`` as saved (the plain CLIP) and the fusion model in DataParallel."""
        clip = {f"visual.{k}": v for k, v in self.visual.state_dict().items()}
        clip.update(self.text.state_dict())
        clip["logit_scale"] = self.logit_scale.detach()
        fusion = {"module.frame_position_embeddings.weight": self.frame_position_embeddings.weight}
        fusion.update({f"module.transformer.resblocks.{k}": v
                       for k, v in self.fusion.state_dict().items()})
        return {"epoch": 10, "model_state_dict": clip, "fusion_model_state_dict": fusion,
                "optimizer_state_dict": {"state": {}, "param_groups": []}}


def test_an_official_actionclip_checkpoint_gives_the_official_test_scores(tmp_path):
    official = randomize(OfficialActionCLIP())
    torch.save(official.release(), tmp_path / "actionclip.pt")
    model, cfg = import_release(tmp_path / "actionclip.pt", "actionclip", PRETRAINED,
                                "vit_tiny_clip", num_frames=FRAMES, classes=NAMES)
    with pytest.raises(ConfigError, match="does not record its frame count: pass --num-frames"):
        import_release(tmp_path / "actionclip.pt", "actionclip", PRETRAINED, "vit_tiny_clip",
                       classes=NAMES)
    options = cfg.method["actionclip"]
    assert (options.fusion, options.fusion_layers) == ("transformer", 2)
    assert options.tune_image_encoder and options.tune_text_encoder  # the official recipe

    tokens = model.head.tokenizer([t.format(n) for t in TEMPLATES["actionclip"] for n in NAMES],
                                  77)
    video = torch.randn(2, FRAMES, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = official(video, tokens)
        probabilities = model.eval()(video).exp()  # the head returns the log of the mean softmax
    torch.testing.assert_close(probabilities, expected, rtol=1e-5, atol=1e-5)


def test_actionclip_releases_vidadapt_cannot_reproduce_are_refused(tmp_path):
    release = randomize(OfficialActionCLIP()).release()
    release["fusion_model_state_dict"] = {
        "module.transformer.transformer_enc.layers.0.linear1.weight": torch.zeros(4, 4)}
    torch.save(release, tmp_path / "actionclip_cls.pt")
    with pytest.raises(CheckpointError, match="'Transf_cls', which vidadapt does not implement"):
        import_release(tmp_path / "actionclip_cls.pt", "actionclip", PRETRAINED,
                       "vit_tiny_clip", num_frames=FRAMES, classes=NAMES)
    release = randomize(OfficialActionCLIP()).release()
    clip = release["model_state_dict"]
    release["model_state_dict"] = {k.replace("resblocks.0.", "resblocks.0.net."): v
                                   for k, v in clip.items()}  # TSM's wrapped blocks
    torch.save(release, tmp_path / "actionclip_tsm.pt")
    with pytest.raises(CheckpointError, match="trained with TSM"):
        import_release(tmp_path / "actionclip_tsm.pt", "actionclip", PRETRAINED,
                       "vit_tiny_clip", num_frames=FRAMES, classes=NAMES)


# ---- X-CLIP -----------------------------------------------------------------------------------


def official_xclip_names(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An HF ``XCLIPModel`` state dict in the X-CLIP repository's names and shapes: OpenAI
    CLIP's packed attention (``in_proj_weight``), ``[in, out]`` projections, ``visual.*``."""
    renames = [
        ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
        ("vision_model.embeddings.patch_embedding.", "visual.conv1."),
        ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
        ("vision_model.pre_layernorm.", "visual.ln_pre."),
        ("vision_model.post_layernorm.", "visual.ln_post."),
        ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
        ("text_model.embeddings.token_embedding.", "token_embedding."),
        ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
        ("text_model.encoder.layers.", "transformer.resblocks."),
        ("text_model.final_layer_norm.", "ln_final."),
        ("mit.position_embedding", "mit.positional_embedding"),
        ("mit.encoder.layers.", "mit.resblocks."),
        ("prompts_visual_layernorm.", "prompts_visual_ln."),
        ("prompts_visual_projection", "prompts_visual_proj"),
        ("prompts_generator.layernorm.", "prompts_generator.norm."),
        (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."),
        (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."),
        (".self_attn.out_proj.", ".attn.out_proj."),
    ]
    out = {}
    for key, value in hf.items():
        if key.endswith("position_ids"):
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    out["visual.proj"] = out.pop("visual_projection.weight").T  # [D, E]
    out["text_projection"] = out.pop("text_projection.weight").T
    for q_key in [k for k in out if ".self_attn.q_proj." in k or ".message_attn.q_proj." in k]:
        q, k, v = (out.pop(q_key.replace("q_proj", p)) for p in ("q_proj", "k_proj", "v_proj"))
        packed = q_key.replace("self_attn", "attn").replace("q_proj.", "in_proj_")
        out[packed] = torch.cat([q, k, v])  # [3D, ...]
    return out


def hf_xclip(vocab: int, frames: int):
    transformers = pytest.importorskip("transformers")
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=16, patch_size=8, num_frames=frames,
                  mit_hidden_size=32, mit_intermediate_size=128, mit_num_hidden_layers=1,
                  mit_num_attention_heads=2)
    config = transformers.XCLIPConfig(text_config=text, vision_config=vision, projection_dim=32,
                                      prompt_layers=2, prompt_num_attention_heads=2)
    torch.manual_seed(0)
    hf = transformers.XCLIPModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return hf


def test_an_official_xclip_checkpoint_lands_where_the_hugging_face_conversion_does():
    tokenizer = ClipTokenizer.learn([c.replace("_", " ") for c in CLASSES])
    hf = hf_xclip(tokenizer.vocab_size, frames=3)
    official = official_xclip_names(hf.state_dict())
    assert {"visual.transformer.resblocks.1.message_attn.in_proj_weight", "logit_scale",
            "mit.positional_embedding", "prompts_generator.decoder.1.cross_attn.q_proj.weight",
            } <= set(official)

    state, facts = convert_xclip_release(official)
    assert (facts["num_frames"], facts["mit_layers"], facts["prompt_layers"]) == (3, 1, 2)
    visual, text, head = convert_hf_xclip(hf.state_dict())
    through_hf = {**{f"backbone.{k}": v for k, v in visual.items()},
                  **{f"head.text.{k}": v for k, v in text.items()}, **head,
                  "head.logit_scale": hf.logit_scale.detach()}
    assert state.keys() == through_hf.keys()
    for key, value in state.items():
        torch.testing.assert_close(value, through_hf[key], rtol=0, atol=0, msg=key)

    model = xclip_model(tokenizer)
    model.load_state_dict(state, strict=True)
    model.set_classes(model.head.classes)  # re-embed the class names with the loaded text tower
    video = torch.randn(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(input_ids=model.head.prompts.tokens, pixel_values=video).logits_per_video
        torch.testing.assert_close(model(video), expected, rtol=1e-5, atol=1e-5)


def test_import_checkpoint_reads_an_xclip_release_and_eval_rebuilds_it(tmp_path, monkeypatch):
    """The release as X-CLIP's code saves it (``model`` + a pickled yacs config), on the
    shapes of the built-in tiny CLIP, whose text tower it keeps frozen."""
    transformers = pytest.importorskip("transformers")
    text = dict(vocab_size=667, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=77)
    vision = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH,
                  num_attention_heads=4, image_size=IMAGE, patch_size=8, num_frames=FRAMES,
                  mit_hidden_size=WIDTH, mit_intermediate_size=4 * WIDTH,
                  mit_num_hidden_layers=1, mit_num_attention_heads=2)
    config = transformers.XCLIPConfig(text_config=text, vision_config=vision,
                                      projection_dim=WIDTH, prompt_layers=2,
                                      prompt_num_attention_heads=2)
    torch.manual_seed(0)
    hf = transformers.XCLIPModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    clip = load_file(str(Path(vidadapt.__file__).parent / "assets/clip_tiny_synthetic"
                         / "model.safetensors"))
    frozen_text = {k: v for k, v in clip.items()
                   if k.startswith(("text_model.", "text_projection.", "logit_scale"))}
    hf.load_state_dict(frozen_text, strict=False)  # trained with the text tower frozen
    save_with_yacs_config({"model": official_xclip_names(hf.state_dict()), "epoch": 30},
                          tmp_path / "xclip.pth", monkeypatch)
    (tmp_path / "classes.txt").write_text("\n".join(NAMES))

    assert 0 == cli(["import-checkpoint", str(tmp_path / "xclip.pth"), "--method", "xclip",
                     "--backbone", "vit_tiny_clip", "--pretrained", PRETRAINED,
                     "--classes", str(tmp_path / "classes.txt"), "--out", str(tmp_path / "out")])
    checkpoint = read_adapter(tmp_path / "out" / "imported.safetensors")
    cfg = config_from_dict(checkpoint.config)
    assert cfg.data.transform.normalize == "imagenet"
    xclip = cfg.method["xclip"]
    assert (xclip.mit_heads, xclip.prompt_heads, cfg.model.num_frames) == (2, 2, FRAMES)
    model = build_model(cfg, len(NAMES), checkpoint.classes)
    load_adapter(model, checkpoint)  # as eval, predict and export rebuild it
    video = torch.randn(2, FRAMES, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(input_ids=model.head.prompts.tokens, pixel_values=video).logits_per_video
        torch.testing.assert_close(model.eval()(video), expected, rtol=1e-5, atol=1e-5)
