"""Released checkpoints in: an official AIM checkpoint (mmaction2 ViT_CLIP backbone with AIM's
adapters + I3D head), built here with random weights in the official key names and shapes,
gives the same logits through vidadapt as a forward in the official code's order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from official_clip import (
    CLASSES,
    DEPTH,
    FRAMES,
    HEADS,
    IMAGE,
    PATCH,
    WIDTH,
    ResidualAttentionBlock,
    VisualTransformer,
    randomize,
)
from safetensors.torch import save_file
from torch import nn

from vidadapt.backbones import ViT, ViTConfig
from vidadapt.cli import main as cli
from vidadapt.config import config_from_dict
from vidadapt.engine.build import build_model
from vidadapt.engine.checkpoint import load_adapter, read_adapter
from vidadapt.errors import CheckpointError
from vidadapt.methods.aim import convert_aim_release
from vidadapt.models import create_model
from vidadapt.releases import import_release


class Adapter(nn.Module):
    """The release's adapter: D_fc1 → GELU → D_fc2, optionally plus its input."""

    def __init__(self, dim: int, skip: bool) -> None:
        super().__init__()
        self.skip = skip
        self.D_fc1 = nn.Linear(dim, dim // 4)
        self.D_fc2 = nn.Linear(dim // 4, dim)

    def forward(self, x):
        out = self.D_fc2(F.gelu(self.D_fc1(x)))
        return x + out if self.skip else out


class OfficialBlock(ResidualAttentionBlock):
    def __init__(self, num_tadapter: int, scale: float) -> None:
        super().__init__()
        self.MLP_Adapter = Adapter(WIDTH, skip=False)
        self.S_Adapter = Adapter(WIDTH, skip=True)
        self.T_Adapter = Adapter(WIDTH, skip=False)
        if num_tadapter == 2:
            self.T_Adapter_in = Adapter(WIDTH, skip=True)
        self.num_tadapter, self.scale = num_tadapter, scale

    def forward(self, x):  # [N, B*T, D], as the official code runs it
        n, bt, d = x.shape
        xt = x.view(n, bt // FRAMES, FRAMES, d).permute(2, 1, 0, 3).reshape(FRAMES, -1, d)
        if self.num_tadapter == 2:
            xt = self.T_Adapter(self.attention(self.T_Adapter_in(self.ln_1(xt))))
        else:
            xt = self.T_Adapter(self.attention(self.ln_1(xt)))
        xt = xt.view(FRAMES, bt // FRAMES, n, d).permute(2, 1, 0, 3).reshape(n, bt, d)
        x = x + xt
        x = x + self.S_Adapter(self.attention(self.ln_1(x)))
        xn = self.ln_2(x)
        return x + self.mlp(xn) + self.scale * self.MLP_Adapter(xn)


class OfficialAIM(VisualTransformer):
    """ViT_CLIP with AIM's adapters, and the I3D head (average over frames, fc_cls)."""

    def __init__(self, num_tadapter: int, scale: float) -> None:
        super().__init__([OfficialBlock(num_tadapter, scale) for _ in range(DEPTH)])
        self.temporal_embedding = nn.Parameter(torch.randn(1, FRAMES, WIDTH))
        self.fc_cls = nn.Linear(WIDTH, CLASSES)

    def forward(self, video):  # [B, T, 3, H, W]
        B = video.shape[0]
        x = self.embed(video.flatten(0, 1))  # [B*T, N, D]
        n = x.shape[1]
        x = x.view(B, FRAMES, n, WIDTH).transpose(1, 2) + self.temporal_embedding[:, None]
        x = self.ln_pre(x.transpose(1, 2).reshape(B * FRAMES, n, WIDTH))
        x = x.transpose(0, 1)  # [N, B*T, D]
        for block in self.transformer.resblocks:
            x = block(x)
        cls = self.ln_post(x[0]).view(B, FRAMES, WIDTH)  # [B, T, D]
        return self.fc_cls(cls.mean(dim=1))  # the I3D head: average over time, then fc

    def release_state_dict(self) -> dict[str, torch.Tensor]:
        """Keys as the release's checkpoints name them."""
        state = {}
        for key, value in self.state_dict().items():
            state[f"cls_head.{key}" if key.startswith("fc_cls.") else f"backbone.{key}"] = value
        return state


def random_official(num_tadapter: int, scale: float) -> OfficialAIM:
    return randomize(OfficialAIM(num_tadapter, scale))


def write_release(official: OfficialAIM, path) -> None:
    """A .pth as the release's mmaction2 runner writes it."""
    torch.save({"meta": {"epoch": 30}, "state_dict": official.release_state_dict()}, path)


def assert_official_logits(model: nn.Module, official: OfficialAIM) -> None:
    video = torch.randn(2, FRAMES, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(video), official(video), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_tadapter, scale", [(1, 0.5), (2, 1.0)])
def test_an_official_aim_checkpoint_gives_the_official_logits(num_tadapter, scale, tmp_path):
    official = random_official(num_tadapter, scale)
    path = tmp_path / "aim_release.pth"
    write_release(official, path)

    release = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    state, facts = convert_aim_release(release)
    assert facts == {"num_frames": FRAMES, "num_tadapter": num_tadapter, "num_classes": CLASSES}
    vit = ViT(ViTConfig(image_size=IMAGE, patch_size=PATCH, width=WIDTH, depth=DEPTH,
                        heads=HEADS, mlp_dim=4 * WIDTH))
    model = create_model("aim", vit, num_classes=CLASSES, num_frames=FRAMES,
                         num_tadapter=num_tadapter, adapter_scale=scale)
    model.load_state_dict(state, strict=True)
    assert_official_logits(model, official)


def test_import_checkpoint_writes_an_adapter_checkpoint_that_eval_rebuilds(tmp_path):
    official = random_official(2, 1.0)
    release = tmp_path / "aim_ssv2.pth"
    write_release(official, release)
    # The CLIP file the release's frozen image model came from, in OpenAI's layout.
    adapters = ("Adapter", "temporal_embedding", "fc_cls")
    clip = {f"visual.{k}": v.contiguous() for k, v in official.state_dict().items()
            if not any(a in k for a in adapters)}
    save_file(clip, str(tmp_path / "clip.safetensors"))
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    assert 0 == cli([
        "import-checkpoint", str(release), "--method", "aim", "--backbone", "vit_tiny_clip",
        "--pretrained", str(tmp_path / "clip.safetensors"), "--classes",
        str(tmp_path / "classes.txt"), "--set", "method.adapter_scale=1.0",
        "--out", str(tmp_path / "out")])

    checkpoint = read_adapter(tmp_path / "out" / "imported.safetensors")
    assert checkpoint.classes == ["a", "b", "c"]
    assert checkpoint.spec.options["aim"]["num_tadapter"] == 2
    model = build_model(config_from_dict(checkpoint.config), 3, checkpoint.classes)
    load_adapter(model, checkpoint)  # as eval, predict and export rebuild it
    assert_official_logits(model, official)


def test_a_release_on_other_frozen_weights_is_refused(tmp_path):
    official = random_official(1, 0.5)
    release = tmp_path / "aim.pth"
    write_release(official, release)
    with pytest.raises(CheckpointError, match="the frozen weights in .* differ from"):
        import_release(release, "aim", "builtin:clip_tiny_synthetic", "vit_tiny_clip")


def test_one_frozen_element_off_the_clip_file_is_refused(tmp_path):
    official = random_official(1, 0.5)
    release = tmp_path / "aim.pth"
    state = official.release_state_dict()
    pretrained = tmp_path / "clip.safetensors"
    save_file({f"visual.{k.removeprefix('backbone.')}": v.contiguous() for k, v in state.items()
               if k.startswith("backbone.") and "Adapter" not in k and "temporal" not in k},
              str(pretrained))
    state["backbone.transformer.resblocks.2.mlp.c_fc.weight"][17, 5] += 1e-3
    torch.save({"state_dict": state}, release)
    with pytest.raises(CheckpointError, match=r"differ from .* \(first: "
                                              r"backbone\.blocks\.2\.mlp\.fc1\.weight\)"):
        import_release(release, "aim", str(pretrained), "vit_tiny_clip")
