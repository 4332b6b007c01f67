"""Self-supervised pretext tasks (`vidadapt pretrain`) and starting training from them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_training import synthetic_pretrain_recipe
from torch.utils.data import Dataset

from vidadapt.cli import main as cli
from vidadapt.config import config_from_dict
from vidadapt.engine.checkpoint import read_adapter
from vidadapt.engine.experiment import check_pretrainable
from vidadapt.engine.pretext import PretextClips, is_pretext, pretext_classes
from vidadapt.errors import ConfigError


class Numbered(Dataset):
    """Clips whose frame t is filled with the value t: what a pretext did is readable."""

    def __init__(self, frames: int, views: int = 0) -> None:
        values = torch.arange(frames, dtype=torch.float32)[:, None, None, None]
        clip = values.expand(frames, 3, 2, 2)  # [T, 3, 2, 2]
        self.clip = clip.expand(views, *clip.shape) if views else clip

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> dict:
        return {"video": self.clip, "label": 5, "index": index, "skipped": []}


def frames_of(video: torch.Tensor) -> list[int]:
    return video[..., 0, 0, 0].flatten().long().tolist()


def test_order_and_arrow_change_the_frames_as_their_label_says():
    order = PretextClips(Numbered(6), "order", 6, seed=0)
    seen = set()
    for i in range(len(order)):
        sample = order[i]
        frames = frames_of(sample["video"])
        assert sorted(frames) == list(range(6))
        assert (frames == list(range(6))) == (sample["label"] == 0)  # shuffled: never identity
        seen.add(sample["label"])
    assert seen == {0, 1}
    arrow = PretextClips(Numbered(4, views=2), "arrow", 4, seed=0)  # test views [V, T, ...]
    for i in range(len(arrow)):
        sample = arrow[i]
        expected = [0, 1, 2, 3] if sample["label"] == 0 else [3, 2, 1, 0]
        assert frames_of(sample["video"]) == expected * 2


def test_speed_takes_every_step_th_frame_of_the_long_clip():
    speed = PretextClips(Numbered(16), "speed", 4, seed=1, max_speed=4)
    assert speed.classes == ["pretext: 1x", "pretext: 2x", "pretext: 4x"]
    steps = set()
    for i in range(len(speed)):
        sample = speed[i]
        frames = frames_of(sample["video"])
        step = 2 ** sample["label"]
        assert len(frames) == 4 and np.diff(frames).tolist() == [step] * 3
        steps.add(step)
    assert steps == {1, 2, 4}


def test_draws_follow_seed_epoch_and_index():
    a, b = PretextClips(Numbered(5), "order", 5, seed=3), PretextClips(Numbered(5), "order", 5, 3)
    assert [frames_of(a[i]["video"]) for i in range(8)] == \
        [frames_of(b[i]["video"]) for i in range(8)]
    b.set_epoch(1)
    assert [frames_of(a[i]["video"]) for i in range(8)] != \
        [frames_of(b[i]["video"]) for i in range(8)]


def test_pretext_classes_and_settings_that_cannot_work():
    assert is_pretext(pretext_classes("order")) and not is_pretext(["a", "b"])
    with pytest.raises(ConfigError, match="ssl.max_speed must be a power of 2"):
        config_from_dict({"ssl": {"max_speed": 3}})
    refused = {
        "data.motion: motion maps are computed before": {
            "model": {"backbone": "vit_tiny", "method": "motion_prompt"}},
        "pretraining reads the clip features of an image-side method": {
            "model": {"backbone": "vit_tiny_clip", "method": "lora+coop"}},
        "init_from is for vidadapt train": {"model": {"init_from": "x.safetensors"}},
        "interval: 6 is not a multiple of 4, the times longer ssl.objective speed": {
            "ssl": {"objective": "speed"}, "data": {"sampler": {"interval": 6}}},
    }
    for message, data in refused.items():
        with pytest.raises(ConfigError, match=message):
            check_pretrainable(config_from_dict(data))


def test_pretrain_then_train_from_its_adapters(tmp_path, capsys):
    config = synthetic_pretrain_recipe(tmp_path, "order", "  gpu_augment: true\n")
    # A broken training video and a broken validation one, and augmentation left to the device:
    # the pretext's batches go through the dataset's own collation.
    (tmp_path / "videos" / "train" / "00003.mp4").write_bytes(b"truncated")
    (tmp_path / "videos" / "val" / "00004.mp4").write_bytes(b"")
    assert cli(["pretrain", str(config)]) == 0
    pretrained = read_adapter(tmp_path / "pre" / "best.safetensors")
    assert pretrained.classes == ["pretext: in order", "pretext: shuffled"]
    adapters = {k: v for k, v in pretrained.state.items() if not k.startswith("head.")}
    capsys.readouterr()
    # Training starts from the adapters, with a head for the 13 classes.
    assert cli(["train", str(config), "--resume-from", str(tmp_path / "pre" / "best.safetensors"),
                "--set", "optim.lr_mult={'^backbone[.]': 0.0}",
                "--set", f"train.work_dir={tmp_path / 'run'}"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1
    trained = read_adapter(tmp_path / "run" / "last.safetensors")
    assert trained.state["head.weight"].shape[0] == 13
    for key, value in adapters.items():  # lr x 0: the adapters as pretrained
        torch.testing.assert_close(trained.state[key], value)
    # A method with nothing before its head has nothing to pretrain.
    linear = tmp_path / "linear.yaml"
    linear.write_text(config.read_text().replace("method: {positions: [pre_mlp], width: 16}\n",
                                                 "").replace("st_adapter", "linear"))
    assert cli(["pretrain", str(linear), "--set", f"train.work_dir={tmp_path / 'lin'}"]) == 2
    assert "trains nothing that makes the clips' features" in capsys.readouterr().err
