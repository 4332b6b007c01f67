"""Exact resumption: a run killed mid-epoch and resumed ends bit-identical to an uninterrupted
one; data order and loader workers are pure functions of (seed, epoch); saves are atomic."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_training import TemplateClips, tiny_config, tiny_model, train_tiny
from torch.utils.data import Dataset

from vidadapt.engine.checkpoint import atomic_write, load_resume_state
from vidadapt.engine.data import EpochKeyed, EpochStream, ShardedSampler, make_loader
from vidadapt.engine.logs import read_log
from vidadapt.engine.trainer import Trainer
from vidadapt.engine.workdir import WorkDirError, claim
from vidadapt.errors import CheckpointError, Interrupted, StorageError

HELPER = Path(__file__).with_name("tiny_training.py")
# Dropout, drop-path and mixup all draw random numbers, so any RNG slip would show.
SECTIONS = {"train": {"save_every_steps": 3}, "optim": {"mixup_alpha": 0.8}}


def without_timing(records: list[dict]) -> list[dict]:
    timing = ("time", "clips_per_s", "data_s")
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


def test_killed_run_resumes_to_identical_weights_and_metrics(tmp_path):
    reference, ref_summary = train_tiny(tiny_config(str(tmp_path / "ref"), **SECTIONS))

    # 2 epochs x 4 steps; states are saved at steps 3, 4 (epoch end), 6, 8. The process dies
    # right after step 7, so step 7 is lost and must be redone from the mid-epoch save at 6.
    work_dir = tmp_path / "run"
    command = [sys.executable, str(HELPER), str(work_dir), "--exit-after", "7",
               "--sections", json.dumps(SECTIONS)]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 1, killed.stderr
    progress = load_resume_state(work_dir / "resume.pt")["progress"]
    assert (progress["epoch"], progress["step"], progress["step_in_epoch"]) == (1, 6, 2)
    assert [r["step"] for r in read_log(work_dir, "train")] == [2, 4, 6]  # 8 never happened

    resumed, summary = train_tiny(tiny_config(str(work_dir), **SECTIONS), resume=True)

    assert summary == ref_summary
    assert summary["steps"] == 8
    ref_weights = reference.model.trainable_state_dict()
    for name, value in resumed.model.trainable_state_dict().items():
        assert torch.equal(value, ref_weights[name]), name
    # The log holds each step once, with the very same losses and validation results.
    assert without_timing(read_log(work_dir)) == without_timing(read_log(tmp_path / "ref"))
    assert [r["step"] for r in read_log(work_dir, "val")] == [4, 8]


def test_a_fresh_run_in_an_old_work_dir_starts_a_new_log(tmp_path):
    cfg = tiny_config(str(tmp_path), optim={"epochs": 1}, train={"log_every": 1})
    train_tiny(cfg)
    train_tiny(cfg)
    assert [r["step"] for r in read_log(tmp_path, "train")] == [1, 2, 3, 4]


def test_resume_refuses_another_backbone_or_batch_size(tmp_path):
    cfg = tiny_config(str(tmp_path), train={"save_every_steps": 2}, optim={"epochs": 1})
    train_tiny(cfg)
    other = tiny_model(cfg)
    with torch.no_grad():
        other.backbone.blocks[0].mlp.fc1.weight.add_(1.0)
    trainer = Trainer(cfg, other, TemplateClips(32, seed=0))
    with pytest.raises(CheckpointError, match="trained on backbone .* pass the same --set"):
        trainer.fit(resume=True)

    bigger = tiny_config(str(tmp_path), data={"batch_size": 16}, optim={"epochs": 1})
    trainer = Trainer(bigger, tiny_model(bigger), TemplateClips(32, seed=0))
    with pytest.raises(CheckpointError, match="4 steps per epoch, this run 2"):
        trainer.fit(resume=True)


def test_resume_without_a_saved_state_says_so(tmp_path):
    cfg = tiny_config(str(tmp_path))
    with pytest.raises(CheckpointError, match="no resume state"):
        Trainer(cfg, tiny_model(cfg), TemplateClips(8, seed=0)).fit(resume=True)


class RandomDraws(Dataset):
    """Each item is a draw from the global torch RNG of whichever process loads it."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> dict:
        return {"draw": torch.rand(()), "index": index}


def epoch_draws(epoch: int, num_workers: int, start: int = 0) -> tuple[list[int], list[float]]:
    sampler = ShardedSampler(12, shuffle=True, seed=5, samples_per_epoch=12)
    sampler.set_epoch(epoch, start)
    batches = list(make_loader(RandomDraws(), sampler, 3, num_workers, seed=5))
    return (torch.cat([b["index"] for b in batches]).tolist(),
            torch.cat([b["draw"] for b in batches]).tolist())


def test_data_order_and_worker_seeds_depend_only_on_seed_and_epoch():
    rng_before = torch.get_rng_state()
    order, draws = epoch_draws(epoch=0, num_workers=2)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training RNG is untouched
    assert epoch_draws(epoch=0, num_workers=2) == (order, draws)
    assert sorted(order) == list(range(12))
    other_order, other_draws = epoch_draws(epoch=1, num_workers=2)
    assert other_order != order and other_draws != draws
    # A resumed epoch skips what was consumed and continues the same order.
    assert epoch_draws(epoch=0, num_workers=0, start=6)[0] == order[6:]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "state.pt"
    atomic_write(path, lambda tmp: torch.save({"step": 1}, tmp))

    def dies_halfway(tmp: Path) -> None:
        tmp.write_bytes(b"half a checkp")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_halfway)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    # what safetensors' writer raises (torch.save's wraps it likewise)
    RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                 "\"No space left on device\" })"),
])
def test_a_full_disk_is_one_line_naming_the_file_and_the_space_left(tmp_path, error):
    path = tmp_path / "best.safetensors"
    atomic_write(path, lambda tmp: save_file({"w": torch.ones(2)}, tmp))

    def disk_full(tmp: Path) -> None:
        tmp.write_bytes(b"part of a checkp")
        raise error

    with pytest.raises(StorageError, match=rf"^cannot write {path}: no space left on its disk "
                                           r"\(\d+ MiB free\); free some space"):
        atomic_write(path, disk_full)
    assert torch.equal(load_file(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


def test_saved_files_are_readable_by_the_group(tmp_path):
    """safetensors writes 0600 files; checkpoints and exports are shared on a cluster."""
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.safetensors", lambda tmp: save_file({"w": torch.ones(1)}, tmp))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.safetensors").st_mode) == 0o644


class EpochTagged(Dataset):
    """Items say which epoch the dataset was set to when they were read."""

    def __init__(self) -> None:
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> dict:
        return {"epoch": self.epoch, "index": index}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_loader_streams_the_epochs_in_order_and_tells_the_dataset_each_epoch(num_workers):
    """A resumed run at epoch 1, position 6, of 3 epochs: the rest of epoch 1, then epoch 2,
    from one loader whose workers learn each item's epoch (they may run ahead of training)."""
    sampler = ShardedSampler(12, shuffle=True, seed=5, samples_per_epoch=12)
    expected = []
    for epoch, start in ((1, 6), (2, 0)):
        sampler.set_epoch(epoch, start)
        expected += [(epoch, i) for i in sampler]
    stream = EpochStream(sampler, first=1, last=3, start=6)
    assert len(stream) == len(expected) == 18
    batches = list(make_loader(EpochKeyed(EpochTagged()), stream, 3, num_workers, seed=5))
    got = [(int(e), int(i)) for b in batches for e, i in zip(b["epoch"], b["index"], strict=True)]
    assert got == expected


def interrupt_at(step: int):
    def on_step(done: int) -> None:
        if done == step:
            raise KeyboardInterrupt

    return on_step


def test_ctrl_c_ends_with_one_line_naming_the_state_to_resume_from(tmp_path):
    cfg = tiny_config(str(tmp_path), train={"save_every_steps": 2})
    with pytest.raises(Interrupted) as err:
        Trainer(cfg, tiny_model(cfg), TemplateClips(32, seed=0)).fit(on_step=interrupt_at(3))
    assert str(err.value) == (f"interrupted at step 3; the last good state is "
                              f"{tmp_path / 'resume.pt'}, at step 2 (continue with --resume)")
    assert load_resume_state(tmp_path / "resume.pt")["progress"]["step"] == 2


def test_interrupted_before_any_save_says_nothing_was_saved(tmp_path):
    cfg = tiny_config(str(tmp_path))
    with pytest.raises(Interrupted, match=r"^interrupted at step 1; no state of this run was "
                                          r"saved yet \(train.save_every_steps"):
        Trainer(cfg, tiny_model(cfg), TemplateClips(32, seed=0)).fit(on_step=interrupt_at(1))


def test_cli_reports_an_interrupt_in_one_line_with_status_130(monkeypatch, capsys):
    from vidadapt import cli
    from vidadapt.commands import check_data

    def stopped(args):
        raise Interrupted("interrupted at step 5; the last good state is r/resume.pt, at step 4")

    monkeypatch.setattr(check_data, "run", stopped)
    assert cli.main(["check-data", "x.txt"]) == 130
    err = capsys.readouterr().err
    assert err == ("vidadapt check-data: interrupted at step 5; the last good state is "
                   "r/resume.pt, at step 4\n")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 half of a zip archive"])
def test_a_damaged_resume_state_is_one_line_without_torch_advice(tmp_path, content):
    (tmp_path / "resume.pt").write_bytes(content)
    cfg = tiny_config(str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg, tiny_model(cfg), TemplateClips(8, seed=0)).fit(resume=True)
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message
    assert message.startswith(f"cannot read resume state {tmp_path / 'resume.pt'} (")
    assert message.endswith("delete it and start without --resume")


def test_resuming_with_another_method_blames_the_method(tmp_path):
    train_tiny(tiny_config(str(tmp_path)))
    cfg = tiny_config(str(tmp_path))
    cfg.model.method, cfg.method = "st_adapter", {}
    with pytest.raises(CheckpointError, match=r"was trained with method aim, this run builds "
                                              r"st_adapter; resume with --set model.method=aim"):
        Trainer(cfg, tiny_model(cfg), TemplateClips(8, seed=0)).fit(resume=True)


def test_one_run_per_work_dir(tmp_path):
    with claim(tmp_path):
        with pytest.raises(WorkDirError, match=rf"^{tmp_path} is in use by another run \(pid "
                                               rf"{os.getpid()} on .+\); wait for it"):
            with claim(tmp_path):
                pass
        cfg = tiny_config(str(tmp_path))
        with pytest.raises(WorkDirError, match="is in use by another run"):
            Trainer(cfg, tiny_model(cfg), TemplateClips(8, seed=0)).fit()
        assert not (tmp_path / "log.jsonl").exists()
    with claim(tmp_path):  # released with its run
        pass


def test_an_unwritable_work_dir_fails_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    cfg = tiny_config(str(tmp_path / "file" / "run"))
    with pytest.raises(WorkDirError, match=r"^cannot write to .*file/run \(Not a directory\); "
                                           r"choose another train.work_dir"):
        Trainer(cfg, tiny_model(cfg), TemplateClips(8, seed=0)).fit()


def test_the_work_dir_is_free_again_after_a_run_with_persistent_workers(tmp_path):
    """Validation workers persist between validations; they inherit the work dir's lock, so
    they must end with the run, or a second run in this process would find the dir taken."""
    cfg = tiny_config(str(tmp_path), data={"num_workers": 1})
    trainer = Trainer(cfg, tiny_model(cfg), TemplateClips(16, seed=0), TemplateClips(6, seed=1),
                      ["a", "b", "c"])
    trainer.fit()
    with claim(tmp_path):
        pass


def test_a_taken_work_dir_fails_before_any_feature_encoding(tmp_path):
    cfg = tiny_config(str(tmp_path))
    with claim(tmp_path), pytest.raises(WorkDirError, match="is in use by another run"):
        Trainer(cfg, tiny_model(cfg), TemplateClips(8, seed=0))
