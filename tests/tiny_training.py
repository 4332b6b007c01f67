"""A tiny, fast, fully in-memory training setup shared by the engine, resume and DDP tests.

Run as a script it trains one such run, which is how the tests get a separate process to kill
(``--exit-after STEP``) or torchrun workers: ``python tests/tiny_training.py WORK_DIR [...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vidadapt import ViT, ViTConfig
from vidadapt.config import ExperimentConfig, config_from_dict
from vidadapt.data.synthetic import make_synthetic
from vidadapt.engine.distributed import init_distributed, shutdown_distributed
from vidadapt.engine.trainer import Trainer
from vidadapt.models import VideoModel, create_model

TINY = ViTConfig(image_size=32, patch_size=8, width=64, depth=2, heads=2, mlp_dim=128)
FRAMES, SIZE, CLASSES = 4, 32, 3


class TemplateClips(Dataset):
    """Noisy clips whose class is a fixed random pattern added to every frame (learnable)."""

    def __init__(self, num: int, seed: int, views: int = 0) -> None:
        pattern_rng = torch.Generator().manual_seed(99)  # the same classes in every split
        templates = torch.randn(CLASSES, 1, 3, SIZE, SIZE, generator=pattern_rng)
        self.labels = torch.arange(num) % CLASSES
        shape = (num, max(views, 1), FRAMES, 3, SIZE, SIZE)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        videos = templates[self.labels][:, None] + 2.0 * noise  # [N, V, T, 3, H, W]
        self.videos = videos if views else videos[:, 0]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"video": self.videos[index], "label": int(self.labels[index]), "index": index}


def synthetic_recipe(root: Path, head: str, *, frames: int = 8, size: int = 16,
                     counts: tuple[int, ...] = (13, 13), batch_size: int = 13,
                     test_clips: int = 1, data_extra: str = "", train_extra: str = "",
                     tail: str = "", work_dir: str = "run", name: str = "recipe.yaml") -> Path:
    """``root/name``: a one-epoch recipe over the synthetic set the caller made under
    ``root/videos`` with ``counts`` (train, val[, test]) videos of ``frames`` frames at
    ``size``. ``head``: the model (and method) sections; ``data_extra``: more lines of the data
    section (indented two spaces); ``train_extra``: more keys of the train mapping (from
    ``, ``); ``tail``: more sections; the work dir is ``root/work_dir``."""
    names = ("train", "val", "test")[:len(counts)]
    splits = ", ".join(f"num_{name}: {n}" for name, n in zip(names, counts, strict=True))
    config = root / name
    config.write_text(f"""
{head}
data:
  dataset: synthetic
  root: {root / 'videos'}
  synthetic: {{{splits}, frames: {frames}, size: {size}}}
  sampler: {{type: uniform}}
  transform: {{size: {size}, short_side: {size}, flip: false}}
  batch_size: {batch_size}
  num_workers: 0
  test_clips: {test_clips}
{data_extra}optim: {{epochs: 1, warmup_epochs: 0}}
train: {{amp: off, work_dir: {root / work_dir}{train_extra}}}
{tail}""")
    return config


def synthetic_pretrain_recipe(root: Path, objective: str, data_extra: str = "") -> Path:
    """``root/pretrain.yaml``: a one-step ``vidadapt pretrain`` of a small ST-Adapter on a
    13-video synthetic set made under ``root/videos`` (``data_extra`` as
    :func:`synthetic_recipe`'s); its work dir is ``root/pre``."""
    make_synthetic(root / "videos", 13, 13, frames=8, size=16, workers=1, progress=False)
    return synthetic_recipe(
        root, "model: {method: st_adapter, backbone: vit_tiny, num_frames: 4}\n"
        "method: {positions: [pre_mlp], width: 16}", data_extra=data_extra,
        tail=f"ssl: {{objective: {objective}, prototypes: 32}}\n", work_dir="pre",
        name="pretrain.yaml")


def tiny_config(work_dir: str, **sections: dict[str, Any]) -> ExperimentConfig:
    """A config for 2 epochs of 4 steps of 8 clips; ``sections`` update its sections."""
    data: dict[str, Any] = {
        "model": {"num_classes": CLASSES, "num_frames": FRAMES, "dropout": 0.3},
        "method": {"drop_path": 0.1},
        "data": {"batch_size": 8, "eval_batch_size": 5, "num_workers": 0,
                 "transform": {"size": SIZE, "short_side": SIZE}},
        "optim": {"lr": 3e-3, "epochs": 2, "warmup_epochs": 0.5},
        "train": {"work_dir": work_dir, "log_every": 2, "amp": "off"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return config_from_dict(data)


def tiny_backbone() -> ViT:
    """A random tiny ViT whose class token depends on the input, as a pretrained one's does
    (at the default init, std 0.02, attention is near uniform and the token barely changes)."""
    vit = ViT(TINY)
    for module in vit.blocks.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=TINY.width**-0.5)
    return vit


def tiny_model(cfg: ExperimentConfig) -> VideoModel:
    """The model of ``cfg.model`` / ``cfg.method`` on the tiny backbone, fixed by the seed."""
    torch.manual_seed(cfg.train.seed)
    return create_model(
        cfg.model.method, backbone=tiny_backbone(), num_classes=CLASSES, num_frames=FRAMES,
        dropout=cfg.model.dropout, **cfg.method_configs(),
    )


def train_tiny(cfg: ExperimentConfig, resume: bool = False, exit_after: int | None = None):
    """Train on 32 clips, validate on 9 (2 views each); returns (trainer, summary)."""
    torch.set_num_threads(1)  # same float reductions in every process
    dist = init_distributed()
    train_set, val_set = TemplateClips(32, seed=0), TemplateClips(9, seed=1, views=2)
    trainer = Trainer(cfg, tiny_model(cfg), train_set, val_set, ["a", "b", "c"], dist)

    def crash(step: int) -> None:  # a kill -9 right after this step: nothing else runs
        if step == exit_after:
            sys.stdout.flush()
            os._exit(1)

    summary = trainer.fit(resume=resume, on_step=crash)
    return trainer, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--exit-after", type=int)
    parser.add_argument("--sections", default="{}", help="JSON: tiny_config's section updates")
    args = parser.parse_args()
    cfg = tiny_config(args.work_dir, **json.loads(args.sections))
    train_tiny(cfg, args.resume, args.exit_after)
    shutdown_distributed()


if __name__ == "__main__":
    main()
