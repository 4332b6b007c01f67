"""Feature caching: a frozen encoder runs once per video view, training on the features gives
the weights that training on the videos gives, and the disk cache is keyed by everything the
features depend on."""

from __future__ import annotations

import shutil

import pytest
import torch
from tiny_training import FRAMES, SIZE, TemplateClips, tiny_backbone
from torch import nn

from vidadapt.config import config_from_dict
from vidadapt.data.synthetic import make_synthetic
from vidadapt.engine.build import build_dataset, resolve_data
from vidadapt.engine.features import (
    FeatureSet,
    _cache_path,
    _read_cache,
    cache_key,
    cached_features,
)
from vidadapt.engine.trainer import Trainer
from vidadapt.models import create_model


class ClipCounter:
    """Counts the clips of ``frames`` frames a ViT encodes (a hook on its patch embedding)."""

    def __init__(self, backbone: nn.Module, frames: int) -> None:
        self.clips, self.frames = 0, frames
        backbone.patch_embed.register_forward_pre_hook(self.count)

    def count(self, module, args) -> None:
        self.clips += args[0].shape[0] // self.frames  # [clips * frames, 3, H, W]


def linear_probe(cfg):
    torch.manual_seed(cfg.train.seed)
    return create_model("linear", tiny_backbone(), num_classes=3, num_frames=FRAMES,
                        dropout=cfg.model.dropout)


def probe_config(work_dir, **train):
    return config_from_dict({
        "model": {"method": "linear", "num_classes": 3, "num_frames": FRAMES, "dropout": 0.3},
        "data": {"batch_size": 8, "eval_batch_size": 5, "num_workers": 0,
                 "transform": {"size": SIZE, "short_side": SIZE}},
        "optim": {"lr": 1e-2, "epochs": 3, "warmup_epochs": 0.5},
        "train": {"work_dir": str(work_dir), "amp": "off", "feature_cache": "memory", **train},
    })


def test_training_on_features_encodes_once_and_matches_training_on_videos(tmp_path):
    cfg = probe_config(tmp_path / "features")
    model = linear_probe(cfg)
    counter = ClipCounter(model.backbone, FRAMES)
    trainer = Trainer(cfg, model, TemplateClips(32, seed=0), TemplateClips(9, seed=1, views=2))
    assert isinstance(trainer.train_set, FeatureSet) and trainer.train_set.features.shape == (
        32, 1, 64)
    assert counter.clips == 32 + 9 * 2  # every training video once, every test view once
    summary = trainer.fit()
    assert counter.clips == 32 + 9 * 2  # three epochs and three validations later

    video_cfg = probe_config(tmp_path / "videos", feature_cache="off")
    on_videos = Trainer(video_cfg, linear_probe(video_cfg), TemplateClips(32, seed=0),
                        TemplateClips(9, seed=1, views=2))
    assert isinstance(on_videos.train_set, TemplateClips)
    video_summary = on_videos.fit()
    for name, value in model.trainable_state_dict().items():
        torch.testing.assert_close(value, on_videos.model.trainable_state_dict()[name],
                                   rtol=0, atol=1e-5)
    assert summary["val"] == video_summary["val"]


def test_feature_views_cycle_with_the_epoch():
    features = torch.arange(12.0).view(2, 3, 2)  # 2 videos, 3 views
    labels = torch.tensor([[0, 0, 1], [1, 1, 1]])  # a flip may swap a view's label
    train = FeatureSet(features, labels, train=True, classes=["a", "b"])
    train.set_epoch(5)  # view 5 % 3 = 2
    assert train[0]["video"].tolist() == [4.0, 5.0] and train[0]["label"] == 1
    test = FeatureSet(features, labels, train=False, classes=["a", "b"])
    assert test[1]["video"].shape == (3, 2) and test[1]["label"] == 1


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, 13, 13, frames=6, size=16, workers=1, progress=False)
    return root


def synthetic_config(root, **data):
    cfg = config_from_dict({
        "model": {"method": "linear", "backbone": "vit_tiny", "num_frames": 2},
        "data": {"dataset": "synthetic", "root": str(root), "sampler": {"type": "uniform"},
                 "transform": {"size": 16, "short_side": 16, "flip": False},
                 "batch_size": 13, "eval_batch_size": 13, "num_workers": 0, **data},
        "train": {"amp": "off", "feature_views": 2},
    })
    cfg.data = resolve_data(cfg.data)
    return cfg


def test_disk_cache_is_reused_and_keyed_by_everything(synthetic, tmp_path):
    cfg = synthetic_config(synthetic)
    torch.manual_seed(0)
    model = create_model("linear", "vit_tiny", num_classes=13, num_frames=2, image_size=16)
    counter = ClipCounter(model.backbone, frames=2)
    train_set = build_dataset(cfg, "train", train=True)
    device = torch.device("cpu")

    first = cached_features(cfg, model, train_set, True, device, root=tmp_path)
    assert first.features.shape == (13, 2, 128)  # two augmented views per video
    assert not torch.equal(first.features[:, 0], first.features[:, 1])  # random frame offsets
    assert counter.clips == 1 + 13 * 2  # the probe clip, then every view
    again = cached_features(cfg, model, train_set, True, device, root=tmp_path)
    assert counter.clips == 1 + 13 * 2 + 1  # only the probe: the rest came from disk
    assert torch.equal(again.features, first.features) and torch.equal(again.labels,
                                                                         first.labels)
    assert len(list(tmp_path.iterdir())) == 1

    key = cache_key(model, train_set, [0, 1])
    variants = {
        "records": cache_key(model, build_dataset(synthetic_config(
            synthetic, class_subset="base"), "train", train=True), [0, 1]),
        "sampler": cache_key(model, build_dataset(synthetic_config(
            synthetic, sampler={"type": "dense", "interval": 2}), "train", train=True), [0, 1]),
        "view": cache_key(model, build_dataset(synthetic_config(
            synthetic, transform={"size": 16, "short_side": 20, "flip": False}), "train",
            train=True), [0, 1]),
        "epochs": cache_key(model, train_set, [0, 1, 2]),
    }
    with torch.no_grad():
        model.backbone.blocks[0].mlp.fc2.bias.add_(0.01)
    variants["backbone"] = cache_key(model, train_set, [0, 1])
    paths = {_cache_path(k, tmp_path) for k in [key, *variants.values()]}
    assert len(paths) == 1 + len(variants)

    # A file whose stored key is another's (a hand-copied file) is not used.
    (stored,) = tmp_path.iterdir()
    shutil.copy(stored, _cache_path(variants["epochs"], tmp_path))
    assert _read_cache(_cache_path(variants["epochs"], tmp_path), variants["epochs"]) is None


def test_cache_keeps_the_skip_report(synthetic, tmp_path):
    copy = tmp_path / "videos"
    shutil.copytree(synthetic, copy)
    broken = copy / "val" / "00002.mp4"
    broken.write_bytes(b"truncated")
    cfg = synthetic_config(copy)
    torch.manual_seed(0)
    model = create_model("linear", "vit_tiny", num_classes=13, num_frames=2, image_size=16)
    val_set = build_dataset(cfg, "val", train=False)
    device = torch.device("cpu")
    encoded = cached_features(cfg, model, val_set, False, device, root=tmp_path / "cache")
    assert list(encoded.skipped()) == [str(broken)] and encoded.features.shape == (12, 1, 128)
    fresh_set = build_dataset(cfg, "val", train=False)  # a new run: nothing skipped yet
    read = cached_features(cfg, model, fresh_set, False, device, root=tmp_path / "cache")
    assert read.skipped() == encoded.skipped() and fresh_set.skipped() == {}


@pytest.mark.parametrize("check", ["stat", "content"])
def test_a_changed_video_is_encoded_again(synthetic, tmp_path, check):
    copy = tmp_path / "videos"
    shutil.copytree(synthetic, copy)
    cfg = synthetic_config(copy)
    cfg.train.feature_cache_check = check
    cfg.train.feature_cache_dir = str(tmp_path / "cache")
    torch.manual_seed(0)
    model = create_model("linear", "vit_tiny", num_classes=13, num_frames=2, image_size=16)
    counter = ClipCounter(model.backbone, frames=2)
    device = torch.device("cpu")
    first = cached_features(cfg, model, build_dataset(cfg, "val", train=False), False, device)
    assert counter.clips == 1 + 13 and len(list((tmp_path / "cache").iterdir())) == 1
    video = copy / "val" / "00004.mp4"
    video.write_bytes(video.read_bytes()[:100])  # truncated in place (same name)
    again = cached_features(cfg, model, build_dataset(cfg, "val", train=False), False, device)
    assert counter.clips == 1 + 13 + 1 + 12  # encoded again (the broken one cannot be), not read
    assert list(again.skipped()) == [str(video)] and again.features.shape[0] == 12
    assert len(list((tmp_path / "cache").iterdir())) == 2 and first.features.shape[0] == 13


def test_encoding_reports_progress_when_not_on_a_terminal(synthetic, tmp_path, vidadapt_log):
    """Encoding K400 takes hours: without a terminal (CI, nohup) progress comes as log lines."""
    cfg = synthetic_config(synthetic)
    cfg.train.feature_cache_dir = str(tmp_path)
    torch.manual_seed(0)
    model = create_model("linear", "vit_tiny", num_classes=13, num_frames=2, image_size=16)
    cached_features(cfg, model, build_dataset(cfg, "train", train=True), True,
                    torch.device("cpu"))
    progress = [line for line in vidadapt_log if line.startswith("encoding features")]
    assert progress[-1].startswith("encoding features (view 2 of 2): 1/1 batch (100%), ")
    assert progress[-1].endswith("0:00 left")


def test_the_reader_is_chosen_by_the_config_and_keys_the_cache(synthetic):
    pytest.importorskip("decord")
    cfg = synthetic_config(synthetic)
    torch.manual_seed(0)
    model = create_model("linear", "vit_tiny", num_classes=13, num_frames=2, image_size=16)
    pyav = build_dataset(cfg, "val", train=False)
    cfg.data.reader = "decord"
    decord = build_dataset(cfg, "val", train=False)
    assert type(pyav.reader).__name__ == "PyAVReader"
    assert type(decord.reader).__name__ == "DecordReader"
    assert cache_key(model, pyav, [0]) != cache_key(model, decord, [0])
