"""``vidadapt train --resume-from CHECKPOINT``: training starts from an adapter checkpoint's
tuned tensors (an imported release, another run's result) on a fresh optimizer."""

from __future__ import annotations

from dataclasses import replace as replaced
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidadapt.cli import main as cli
from vidadapt.engine.checkpoint import (
    backbone_fingerprint,
    load_adapter,
    read_adapter,
    save_adapter,
)
from vidadapt.errors import CheckpointError
from vidadapt.models import create_model

RECIPE = str(Path(__file__).resolve().parents[1] / "configs/synthetic/st_adapter.yaml")
SMALL = ["--set", "data.synthetic.num_train=26", "--set", "data.synthetic.num_val=13",
         "--set", "data.batch_size=13", "--set", "optim.epochs=1"]


def train(tmp_path, name: str, *args: str) -> dict:
    work_dir = tmp_path / name
    assert 0 == cli(["train", RECIPE, "--work-dir", str(work_dir), *SMALL, *args])
    return load_file(str(work_dir / "last.safetensors"))


def test_training_starts_from_the_checkpoint_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the synthetic set is generated under .cache/ here
    first = train(tmp_path, "first")
    resumed = train(tmp_path, "resumed", "--resume-from",
                    str(tmp_path / "first" / "last.safetensors"), "--set", "optim.lr=1e-12")
    fresh = train(tmp_path, "fresh", "--set", "optim.lr=1e-12")
    adapter = next(k for k in first if k.endswith("pre_mlp.0.conv.weight"))
    assert first[adapter].abs().sum() > 0  # trained off its zero init
    for key, value in first.items():  # at lr 1e-12 a run keeps what it started from
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-9, msg=key)
    assert fresh[adapter].abs().max() < 1e-9


def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    train(tmp_path, "first")
    checkpoint = str(tmp_path / "first" / "last.safetensors")
    assert 2 == cli(["train", RECIPE, "--work-dir", str(tmp_path / "wider"), *SMALL,
                     "--resume-from", checkpoint, "--set", "method.width=32"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"vidadapt train: error: checkpoint {checkpoint} was trained with")
    assert "'width': 64" in error and "'width': 32" in error


def test_a_checkpoint_from_before_an_option_existed_loads_with_its_default(tmp_path):
    def model(**options):
        torch.manual_seed(0)
        return create_model("side_network", "vit_tiny", num_classes=3, num_frames=4,
                            side_network={"temporal_width": 16, **options})

    trained = model()
    save_adapter(tmp_path / "a.safetensors", trained, backbone_fingerprint(trained))
    old = read_adapter(tmp_path / "a.safetensors")
    options = {k: v for k, v in old.spec.options["side_network"].items() if k != "frame_stride"}
    old.spec = replaced(old.spec, options={"side_network": options})  # written before it existed
    load_adapter(model(), old)
    with pytest.raises(CheckpointError, match="was trained with options="):
        load_adapter(model(frame_stride=2), old)  # a value other than the default is a change
