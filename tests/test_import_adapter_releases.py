"""Released ST-Adapter and EVL checkpoints in: their official layouts (names and shapes as the
official code defines them) with random weights, and forwards in the official code's order;
the imported vidadapt model gives the same logits to 1e-5. Both releases hold only what
trained, so the frozen image model comes from the CLIP file given."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from official_clip import (
    CLASSES,
    DEPTH,
    FRAMES,
    GRID,
    HEADS,
    IMAGE,
    WIDTH,
    QuickGELU,
    ResidualAttentionBlock,
    VisualTransformer,
    randomize,
)
from safetensors.torch import save_file
from torch import nn

from vidadapt.cli import main as cli
from vidadapt.config import config_from_dict
from vidadapt.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from vidadapt.engine.build import build_model
from vidadapt.engine.checkpoint import load_adapter, read_adapter
from vidadapt.errors import CheckpointError, ConfigError
from vidadapt.releases import import_release

# ---- ST-Adapter ---------------------------------------------------------------------------------


class STAdapterModule(nn.Module):
    """fc1 → depthwise Conv3d (3, 1, 1) over [B, C, T, h, w] → fc2, added to the patch tokens."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, width)
        self.conv = nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0), groups=width)
        self.fc2 = nn.Linear(width, WIDTH)

    def forward(self, x):  # [B*T, L, D]
        BT, L, D = x.shape
        z = self.fc1(x[:, 1:])  # [B*T, P, C]
        C = z.shape[-1]
        z = z.view(BT // FRAMES, FRAMES, GRID, GRID, C).permute(0, 4, 1, 2, 3)
        z = self.conv(z).permute(0, 2, 3, 4, 1).reshape(BT, L - 1, C)
        x = x.clone()
        x[:, 1:] += self.fc2(z)
        return x


class STAdapterBlock(ResidualAttentionBlock):
    def __init__(self, both: bool, width: int) -> None:
        super().__init__()
        if both:
            self.adapter_pre_attn = STAdapterModule(width)
        self.adapter_pre_mlp = STAdapterModule(width)

    def forward(self, x):  # [B*T, L, D], batch first as the official block runs
        if hasattr(self, "adapter_pre_attn"):
            x = self.adapter_pre_attn(x)
        h = self.ln_1(x).transpose(0, 1)
        x = x + self.attn(h, h, h, need_weights=False)[0].transpose(0, 1)
        x = self.adapter_pre_mlp(x)
        return x + self.mlp(self.ln_2(x))


class OfficialSTAdapter(nn.Module):
    """The repository's VisionTransformer: CLIP's names, adapters per block, ``fc`` head on the
    frame-averaged class token after ``ln_post``."""

    def __init__(self, both: bool, width: int = 24) -> None:
        super().__init__()
        self.visual = VisualTransformer([STAdapterBlock(both, width) for _ in range(DEPTH)])
        self.fc = nn.Linear(WIDTH, CLASSES)

    def forward(self, video):  # [B, T, 3, H, W]
        B = video.shape[0]
        x = self.visual.ln_pre(self.visual.embed(video.flatten(0, 1)))  # [B*T, L, D]
        for block in self.visual.transformer.resblocks:
            x = block(x)
        cls = x.view(B, FRAMES, -1, WIDTH)[:, :, 0].mean(dim=1)  # [B, D]: mean, then ln_post
        return self.fc(self.visual.ln_post(cls))

    def release(self) -> dict[str, torch.Tensor]:
        """What the repository saves: the trained tensors only, under ``model``."""
        state = {k.removeprefix("visual."): v for k, v in self.state_dict().items()}
        return {"model": {k: v for k, v in state.items() if "adapter" in k or k.startswith("fc.")},
                "optimizer": {}, "next_epoch": 30}


def clip_file(visual: VisualTransformer, path) -> str:
    """The CLIP file the release's frozen image model came from, in OpenAI's layout."""
    clip = {f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()
            if "adapter" not in k}
    save_file(clip, str(path))
    return str(path)


def assert_same_logits(model: nn.Module, official: nn.Module) -> None:
    video = torch.randn(2, FRAMES, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(video), official(video), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("both", [False, True], ids=["12x_pre_mlp", "24x_both"])
def test_an_official_st_adapter_checkpoint_gives_the_official_logits(both, tmp_path):
    official = randomize(OfficialSTAdapter(both))
    torch.save(official.release(), tmp_path / "st_adapter.pth")
    pretrained = clip_file(official.visual, tmp_path / "clip.safetensors")

    model, cfg = import_release(tmp_path / "st_adapter.pth", "st_adapter", pretrained,
                                "vit_tiny_clip", num_frames=FRAMES)
    st = cfg.method["st_adapter"]
    assert (st.positions, st.width, st.kernel) == (
        ("pre_attn", "pre_mlp") if both else ("pre_mlp",), 24, (3, 1, 1))
    assert cfg.data.transform.size == IMAGE  # the preset's: the file holds no position table
    assert_same_logits(model, official)


def test_an_st_adapter_release_needs_the_frame_count_and_its_clip_file(tmp_path):
    official = randomize(OfficialSTAdapter(False))
    torch.save(official.release(), tmp_path / "st_adapter.pth")
    pretrained = clip_file(official.visual, tmp_path / "clip.safetensors")
    with pytest.raises(ConfigError, match="does not record its frame count: pass --num-frames"):
        import_release(tmp_path / "st_adapter.pth", "st_adapter", pretrained, "vit_tiny_clip")
    with pytest.raises(CheckpointError, match="is not a release of aim: no key"):
        import_release(tmp_path / "st_adapter.pth", "aim", pretrained, "vit_tiny_clip",
                       num_frames=FRAMES)


# ---- EVL ----------------------------------------------------------------------------------------


class DecoderAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(WIDTH, WIDTH) for _ in range(4))

    def forward(self, q, k, v):  # [B, Lq, D], [B, Lk, D]
        def heads(x):
            return x.view(x.shape[0], x.shape[1], HEADS, -1).transpose(1, 2)  # [B, H, L, d]
        q, k, v = heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v))
        weights = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = DecoderAttention()
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(WIDTH) for _ in range(3))

    def forward(self, x, y):
        y = self.norm3(y)
        x = x + self.attn(self.norm1(x), y, y)
        return x + self.mlp.fc2(QuickGELU()(self.mlp.fc1(self.norm2(x))))


class TemporalCrossAttention(nn.Module):
    """w1: frame t's queries on frame t-1's keys; w2: on frame t+1's; vectors indexed by the
    2-D offset between query and key patch, mixed by the head-averaged attention."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros((2 * GRID - 1) ** 2, WIDTH))
        self.w2 = nn.Parameter(torch.zeros((2 * GRID - 1) ** 2, WIDTH))
        rows = torch.arange(GRID).repeat_interleave(GRID)
        cols = torch.arange(GRID).repeat(GRID)
        self.idx = ((rows[:, None] - rows[None] + GRID - 1) * (2 * GRID - 1)
                    + cols[:, None] - cols[None] + GRID - 1)  # [P, P]

    def half(self, q, k, w):  # q, k: [B, T', L, H, d] → [B, T', P, D]
        q, k = q[:, :, 1:], k[:, :, 1:]
        attn = torch.einsum("ntqhd,ntkhd->ntqkh", q / q.shape[-1] ** 0.5, k)
        attn = attn.softmax(dim=-2).mean(dim=-1)  # [B, T', P, P]
        return torch.einsum("ntqk,qkc->ntqc", attn, w[self.idx])

    def forward(self, q, k):
        B, T, L, _, _ = q.shape
        ret = torch.zeros(B, T, L, WIDTH)
        ret[:, 1:, 1:] += self.half(q[:, 1:], k[:, :-1], self.w1)
        ret[:, :-1, 1:] += self.half(q[:, :-1], k[:, 1:], self.w2)
        return ret


class EVLDecoder(nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(WIDTH))
        self.decoder_layers = nn.ModuleList(DecoderLayer() for _ in range(layers))
        self.temporal_conv = nn.ModuleList(
            nn.Conv1d(WIDTH, WIDTH, 3, 1, 1, groups=WIDTH) for _ in range(layers))
        self.temporal_pos_embed = nn.ParameterList(
            nn.Parameter(torch.zeros(FRAMES, WIDTH)) for _ in range(layers))
        self.cross_attention = nn.ModuleList(TemporalCrossAttention() for _ in range(layers))

    def forward(self, features):  # per layer: (out [B, T, L, D], q, k [B, T, L, H, d])
        B = features[0][0].shape[0]
        x = self.cls_token.view(1, 1, -1).repeat(B, 1, 1)
        for i, (out, q, k) in enumerate(features):
            ff = out.clone()
            conv_in = out.permute(0, 2, 3, 1).flatten(0, 1)  # [B*L, D, T]
            conv = self.temporal_conv[i](conv_in).view(B, -1, WIDTH, FRAMES).permute(0, 3, 1, 2)
            ff = ff + conv + self.temporal_pos_embed[i].view(1, FRAMES, 1, WIDTH)
            ff = ff + self.cross_attention[i](q, k)
            x = self.decoder_layers[i](x, ff.flatten(1, 2))
        return x


class OfficialEVL(nn.Module):
    """The frozen CLIP image model (not saved), its last ``layers`` blocks' outputs and q, k
    read by the decoder, and ``proj`` = LayerNorm, Dropout, Linear."""

    def __init__(self, layers: int = 2, classes: int = CLASSES) -> None:
        super().__init__()
        self.visual = VisualTransformer([ResidualAttentionBlock() for _ in range(DEPTH)])
        self.decoder = EVLDecoder(layers)
        self.proj = nn.Sequential(nn.LayerNorm(WIDTH), nn.Dropout(0.5), nn.Linear(WIDTH, classes))
        self.layers = layers

    def forward(self, video):  # [B, T, 3, H, W]
        B = video.shape[0]
        x = self.visual.ln_pre(self.visual.embed(video.flatten(0, 1))).transpose(0, 1)
        features = []  # per block: output [B, T, L, D], q and k [B, T, L, H, d]
        for block in self.visual.transformer.resblocks:
            h = block.ln_1(x).transpose(0, 1)  # [B*T, L, D]
            q, k, _ = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, -1)
            x = block(x)
            per_frame = (B, FRAMES, h.shape[1])
            features.append((x.transpose(0, 1).reshape(*per_frame, WIDTH),
                             q.reshape(*per_frame, HEADS, -1), k.reshape(*per_frame, HEADS, -1)))
        x = self.decoder(features[-self.layers:])
        return self.proj(x[:, 0])

    def release(self) -> dict:
        """The repository's checkpoint: DDP names, the backbone left out."""
        state = {f"module.{k}": v for k, v in self.state_dict().items()
                 if not k.startswith("visual.")}
        return {"model": state, "optimizer": {}, "next_step": 50000}


def test_an_official_evl_checkpoint_gives_the_official_logits(tmp_path):
    official = randomize(OfficialEVL(layers=2))
    torch.save(official.release(), tmp_path / "evl.pth")
    pretrained = clip_file(official.visual, tmp_path / "clip.safetensors")

    model, cfg = import_release(tmp_path / "evl.pth", "evl", pretrained, "vit_tiny_clip")
    evl = cfg.method["evl"]
    assert (evl.num_layers, evl.mlp_ratio, cfg.model.num_frames) == (2, 4.0, FRAMES)
    assert cfg.data.transform.size == IMAGE  # read off the cross-frame offset table
    assert_same_logits(model, official)


def test_import_checkpoint_writes_an_evl_checkpoint_that_eval_rebuilds(tmp_path):
    official = randomize(OfficialEVL(layers=1))
    torch.save(official.release(), tmp_path / "evl.pth")
    pretrained = clip_file(official.visual, tmp_path / "clip.safetensors")
    assert 0 == cli(["import-checkpoint", str(tmp_path / "evl.pth"), "--method", "evl",
                     "--backbone", "vit_tiny_clip", "--pretrained", pretrained,
                     "--out", str(tmp_path / "out")])
    checkpoint = read_adapter(tmp_path / "out" / "imported.safetensors")
    model = build_model(config_from_dict(checkpoint.config), CLASSES)
    load_adapter(model, checkpoint)
    assert_same_logits(model, official)


def test_counts_given_that_contradict_the_file_are_refused(tmp_path):
    official = randomize(OfficialEVL(layers=1))
    torch.save(official.release(), tmp_path / "evl.pth")
    pretrained = clip_file(official.visual, tmp_path / "clip.safetensors")
    with pytest.raises(ConfigError, match="the release's class count is 3, --classes gives 2"):
        import_release(tmp_path / "evl.pth", "evl", pretrained, "vit_tiny_clip",
                       classes=["a", "b"])
    with pytest.raises(ConfigError, match="frame count is 4, --num-frames gives 8"):
        import_release(tmp_path / "evl.pth", "evl", pretrained, "vit_tiny_clip", num_frames=8)
    torch.save({"model": official.visual.state_dict()}, tmp_path / "clip.pth")
    with pytest.raises(CheckpointError, match="is not a release of st_adapter: it holds no "
                                              "ST-Adapter adapters"):
        import_release(tmp_path / "clip.pth", "st_adapter", pretrained, "vit_tiny_clip",
                       num_frames=FRAMES)


def test_train_resume_from_continues_an_imported_release(tmp_path, monkeypatch):
    """Fine-tune an imported EVL release on the synthetic set (its 13 classes): at a learning
    rate of 1e-12 the run ends where the release started."""
    monkeypatch.chdir(tmp_path)  # the synthetic set is generated under .cache/ here
    official = randomize(OfficialEVL(layers=1, classes=len(SYNTHETIC_CLASSES)))
    torch.save(official.release(), tmp_path / "evl.pth")
    pretrained = clip_file(official.visual, tmp_path / "clip.safetensors")
    (tmp_path / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES))
    assert 0 == cli(["import-checkpoint", str(tmp_path / "evl.pth"), "--method", "evl",
                     "--backbone", "vit_tiny_clip", "--pretrained", pretrained,
                     "--classes", str(tmp_path / "classes.txt"), "--out", "imported"])
    imported = read_adapter("imported/imported.safetensors")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(imported.config))
    synthetic = {"num_train": 26, "num_val": 13, "frames": 8, "size": IMAGE}
    overrides = ["data.dataset=synthetic", f"data.synthetic={json.dumps(synthetic)}",
                 "data.batch_size=13", "data.num_workers=0", "optim.epochs=1", "optim.lr=1e-12"]
    assert 0 == cli(["train", "recipe.yaml", "--work-dir", "tuned", "--resume-from",
                     "imported/imported.safetensors",
                     *[arg for override in overrides for arg in ("--set", override)]])
    tuned = read_adapter("tuned/last.safetensors")
    assert tuned.classes == SYNTHETIC_CLASSES and tuned.state.keys() == imported.state.keys()
    for key, value in imported.state.items():
        torch.testing.assert_close(tuned.state[key], value, rtol=0, atol=1e-9, msg=key)
