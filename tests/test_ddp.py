"""DDP: two CPU processes (torchrun, gloo) train like one process at the same global batch, and
gather every validation video exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_training import tiny_config, train_tiny

from vidadapt.engine.checkpoint import read_adapter
from vidadapt.engine.logs import read_log

HELPER = Path(__file__).with_name("tiny_training.py")
# Dropout masks differ with the number of processes (one RNG stream per rank), so they are off.
SECTIONS = {"model": {"dropout": 0.0}, "method": {"drop_path": 0.0},
            "train": {"save_every_steps": 2}}


def test_two_processes_match_one_process(tmp_path):
    one, summary = train_tiny(tiny_config(str(tmp_path / "one"), **SECTIONS))

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(HELPER), str(tmp_path / "two"),
               "--sections", json.dumps(SECTIONS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-3000:]

    two = read_adapter(tmp_path / "two" / "last.safetensors")
    for name, value in one.model.trainable_state_dict().items():
        # Same batches; only the order of float sums differs (Adam amplifies it where a
        # gradient is ~0, see test_engine's accumulation test).
        torch.testing.assert_close(two.state[name], value, atol=5e-5, rtol=1e-4)

    one_log, two_log = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log]
    for a, b in zip(one_log, two_log, strict=True):
        if a["kind"] == "train":  # rank 0 logs the loss averaged over both processes
            assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        else:
            assert b["top1"] == a["top1"] and b["top5"] == a["top5"]
    # 9 videos over 2 ranks (5 + 4): every one scored once, none padded in twice.
    assert json.loads((tmp_path / "two" / "val.json").read_text())["num_videos"] == 9
    assert summary["val"]["top1"] == two_log[-1]["top1"]
    state = torch.load(tmp_path / "two" / "resume.pt", weights_only=True)
    assert len(state["rng"]) == 2  # each rank's RNG streams, for an exact resume
