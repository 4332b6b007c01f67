"""The training engine: parameter groups, schedule, sampler, mixing, metrics, checkpoints and
a full tiny run through the Trainer and the train/eval/predict commands."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from tiny_training import (
    CLASSES,
    TemplateClips,
    synthetic_recipe,
    tiny_config,
    tiny_model,
    train_tiny,
)
from torch.utils.data import DataLoader

from vidadapt.cli import main as cli
from vidadapt.data.annotations import Annotation, VideoRecord
from vidadapt.data.synthetic import make_synthetic
from vidadapt.engine.build import keep_shots
from vidadapt.engine.checkpoint import (
    backbone_fingerprint,
    load_adapter,
    read_adapter,
    save_adapter,
)
from vidadapt.engine.data import ShardedSampler
from vidadapt.engine.evaluate import Scores, classification_metrics, predict, view_average
from vidadapt.engine.logs import read_log
from vidadapt.engine.mixup import mix_clips
from vidadapt.engine.optim import build_optimizer, lr_factor, param_groups
from vidadapt.engine.trainer import DivergedError, Trainer, micro_batch_size
from vidadapt.errors import CheckpointError, ConfigError


def test_param_groups_skip_decay_on_biases_norms_embeddings():
    model = tiny_model(tiny_config("unused"))
    groups = param_groups(model, weight_decay=0.05, lr_mult={r"^backbone\.": 0.1})
    by_name = {n: g for g in groups for n in g["names"]}
    assert len(by_name) == sum(p.requires_grad for p in model.parameters())
    decayed = sorted(n for n, g in by_name.items() if g["weight_decay"] == 0.05)
    assert decayed == sorted(
        n for n, p in model.named_parameters() if p.requires_grad and p.ndim == 2
        and "temporal_embedding" not in n
    )
    for name in ("backbone.embed_sites.0.temporal_embedding", "backbone.norm.weight",
                 "backbone.blocks.0.pre_attn.0.adapter.down.bias", "head.bias"):
        assert by_name[name]["weight_decay"] == 0.0
    assert by_name["head.weight"]["lr_mult"] == 1.0
    assert by_name["backbone.blocks.1.parallel_mlp.0.adapter.up.weight"]["lr_mult"] == 0.1
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, lr_mult={r"^backbone\.": 0.1})
    assert len(optimizer.param_groups) == 4  # (decay, no decay) x (backbone, head)


def test_warmup_then_cosine_to_zero():
    factors = [lr_factor(step, warmup_steps=4, total_steps=12) for step in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0
    assert factors[8] == pytest.approx(0.5)
    assert factors[11] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(12, 4, 12) == 0.0
    assert lr_factor(0, 0, 10) == 1.0


def test_shards_interleave_so_any_world_size_sees_the_same_global_batches():
    one = ShardedSampler(10, shuffle=True, seed=3, samples_per_epoch=8)
    ranks = [ShardedSampler(10, shuffle=True, seed=3, rank=r, world_size=2, samples_per_epoch=8)
             for r in range(2)]
    order = list(one)
    shards = [list(s) for s in ranks]
    assert [len(s) for s in shards] == [4, 4] and len(order) == 8
    # the first global batch of 4 is the first 2 samples of each rank
    assert sorted(shards[0][:2] + shards[1][:2]) == sorted(order[:4])
    one.set_epoch(1)
    assert list(one) != order
    one.set_epoch(0, start=5)
    assert list(one) == order[5:] and len(one) == 3
    evaluation = [list(ShardedSampler(5, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert evaluation == [[0, 2, 4], [1, 3]]  # no padding, nothing twice


def test_micro_batch_must_divide():
    assert micro_batch_size(64, world_size=4, accum_steps=2) == 8
    with pytest.raises(ConfigError, match="does not split over 3 process"):
        micro_batch_size(64, world_size=3, accum_steps=1)


def test_cutmix_pastes_one_box_on_every_frame_and_mixes_targets_by_area():
    video = torch.stack([torch.zeros(3, 3, 8, 8), torch.ones(3, 3, 8, 8)])  # [B=2, T, 3, H, W]
    labels = torch.tensor([0, 1])
    mixed, targets = mix_clips(video, labels, 3, 0.0, 1.0, 0.0, np.random.default_rng(0))
    pasted = mixed[0, 0, 0]  # ones where clip 1 was pasted into clip 0
    assert all(torch.equal(mixed[0, t, c], pasted) for t in range(3) for c in range(3))
    share = pasted.mean().item()
    assert 0 < share < 1
    assert targets[0].tolist() == pytest.approx([1 - share, share, 0.0])
    assert targets.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])
    blended, soft = mix_clips(video, labels, 3, 0.4, 0.0, 0.1, np.random.default_rng(0))
    lam = 1 - blended[0].mean().item()
    assert soft[0].tolist() == pytest.approx(
        [lam * (0.9 + 0.1 / 3) + (1 - lam) * 0.1 / 3, (1 - lam) * (0.9 + 0.1 / 3) + lam * 0.1 / 3,
         0.1 / 3], abs=1e-6)


def test_metrics_top_k_mean_class_and_confusion():
    probs = torch.tensor([[0.6, 0.3, 0.1],  # true 0, right
                          [0.2, 0.5, 0.3],  # true 0, wrong (top-2 hit)
                          [0.1, 0.7, 0.2],  # true 1, right
                          [0.5, 0.1, 0.4]])  # true 2, wrong (top-2 hit)
    scores = Scores(probs, torch.tensor([0, 0, 1, 2]), torch.arange(4), probs.log())
    metrics = classification_metrics(scores, ["a", "b", "c"])
    assert metrics["top1"] == 50.0
    assert metrics["top5"] == 100.0  # 3 classes: top-3
    assert metrics["per_class_accuracy"] == {"a": 50.0, "b": 100.0, "c": 0.0}
    assert metrics["mean_class_accuracy"] == 50.0
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_views_average_softmax_scores_and_logits():
    model = tiny_model(tiny_config("unused")).eval()
    video = torch.randn(2, 3, 4, 3, 32, 32)  # [B, V, T, 3, H, W]
    with torch.no_grad():
        logits = torch.stack([model(video[:, v]) for v in range(3)])  # [V, B, C]
        probs, mean_logits = view_average(model, video)
    torch.testing.assert_close(probs, logits.softmax(-1).mean(0))
    torch.testing.assert_close(mean_logits, logits.mean(0))


def test_adapter_checkpoint_is_small_and_refuses_another_backbone(tmp_path):
    model = tiny_model(tiny_config("unused"))
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, model, backbone_fingerprint(model), {"any": "config"}, ["a", "b", "c"])
    checkpoint = read_adapter(path)
    assert set(checkpoint.state) == set(model.trainable_state_dict())
    assert (checkpoint.classes, checkpoint.config) == (["a", "b", "c"], {"any": "config"})

    other = tiny_model(tiny_config("unused"))
    with torch.no_grad():
        other.backbone.blocks[1].attn.qkv.weight.mul_(1.01)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} was trained on backbone "
                       rf"{checkpoint.fingerprint}, this model's is [0-9a-f]{{16}}; pass the same"):
        load_adapter(other, path)

    fewer_classes = tiny_model(tiny_config("unused"))
    fewer_classes.spec.num_classes = 2
    with pytest.raises(CheckpointError, match="trained with num_classes=3, this model has num_"):
        load_adapter(fewer_classes, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_adapter(tmp_path / "junk.safetensors")


def test_tiny_run_learns_logs_and_keeps_the_best_checkpoint(tmp_path):
    trainer, summary = train_tiny(tiny_config(str(tmp_path), optim={"epochs": 3}))
    assert summary["steps"] == 12
    assert summary["val"]["top1"] > 100 / CLASSES  # the templates are learnable
    train_records = read_log(tmp_path, "train")
    assert [r["step"] for r in train_records] == [2, 4, 6, 8, 10, 12]
    assert train_records[-1]["lr"] < train_records[0]["lr"]
    val_records = read_log(tmp_path, "val")
    assert [r["epoch"] for r in val_records] == [1, 2, 3]
    assert summary["best_top1"] == max(r["top1"] for r in val_records)

    # The best checkpoint reproduces its logged accuracy on a freshly built model.
    best = read_adapter(tmp_path / "best.safetensors")
    assert best.info["metrics"]["top1"] == summary["best_top1"]
    model = tiny_model(trainer.cfg)
    load_adapter(model, best)
    val_batches = DataLoader(TemplateClips(9, seed=1, views=2), batch_size=4)
    scores = predict(model, val_batches, torch.device("cpu"))
    assert classification_metrics(scores, ["a", "b", "c"])["top1"] == summary["best_top1"]
    assert json.loads((tmp_path / "val.json").read_text())["num_videos"] == 9
    assert {p.name for p in tmp_path.iterdir()} >= {
        "best.safetensors", "last.safetensors", "resume.pt", "log.jsonl", "config.yaml",
        "val.json", "val_confusion.png", "val_per_class.png"}


def test_accumulation_gives_the_same_step_as_one_big_batch(tmp_path):
    no_noise = {"model": {"dropout": 0.0}, "method": {"drop_path": 0.0}}
    whole, _ = train_tiny(tiny_config(str(tmp_path / "a"), **no_noise, optim={"epochs": 1}))
    parts, _ = train_tiny(tiny_config(str(tmp_path / "b"), **no_noise,
                                      optim={"epochs": 1, "accum_steps": 4}))
    reference = whole.model.trainable_state_dict()
    for name, value in parts.model.trainable_state_dict().items():
        # Adam divides by sqrt(v): where a gradient is ~0, float summation order shows up as
        # ~1e-5 differences in the update (lr 3e-3); anything else would be orders larger.
        torch.testing.assert_close(value, reference[name], atol=5e-5, rtol=1e-4)


class PoisonedClips(TemplateClips):
    """Clip 5 turns into NaNs: the loss of whichever step draws it is NaN."""

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        if index == 5:
            sample["video"] = torch.full_like(sample["video"], float("nan"))
        return sample


def test_non_finite_loss_stops_with_the_last_good_state_intact(tmp_path):
    cfg = tiny_config(str(tmp_path), train={"save_every_steps": 1})
    trainer = Trainer(cfg, tiny_model(cfg), PoisonedClips(32, seed=0))
    before = {}
    with pytest.raises(DivergedError, match=r"loss is nan at step (\d+); stopped before updating "
                       r"the weights; the last good state is .*resume.pt, at step \d+ \(continue "
                       r"with --resume\). Try a lower optim.lr") as err:
        trainer.fit(on_step=lambda step: before.update(trainer.model.trainable_state_dict()))
    step = int(err.value.args[0].split("step ")[1].split(";")[0])
    saved = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert saved["progress"]["step"] == step - 1
    for name, value in trainer.model.trainable_state_dict().items():
        assert torch.isfinite(value).all()
        assert torch.equal(saved["model"][name], value)


def test_non_finite_loss_before_any_save_names_no_missing_file(tmp_path):
    cfg = tiny_config(str(tmp_path))  # saves at epoch ends only; clip 5 is in the first epoch
    with pytest.raises(DivergedError, match=r"stopped before updating the weights; no state of "
                                            r"this run was saved yet"):
        Trainer(cfg, tiny_model(cfg), PoisonedClips(32, seed=0)).fit()
    assert not (tmp_path / "resume.pt").exists()


def test_few_shot_keeps_k_videos_per_class_reproducibly():
    records = [VideoRecord(f"{i}.mp4", label=i % 3) for i in range(30)]
    annotation = Annotation(records, ["a", "b", "c"], "test")
    kept = keep_shots(annotation, shots=4, seed=0)
    assert Counter(r.label for r in kept.records) == {0: 4, 1: 4, 2: 4}
    assert kept.records == keep_shots(annotation, shots=4, seed=0).records
    assert kept.records != keep_shots(annotation, shots=4, seed=1).records
    numbers = [int(r.path.removesuffix(".mp4")) for r in kept.records]
    assert numbers == sorted(numbers)  # the annotation's order is kept


def test_train_eval_predict_commands_on_the_synthetic_set(tmp_path, capsys):
    # The set exists already (so `dataset: synthetic` reuses it), with one broken training video.
    make_synthetic(tmp_path / "videos", 13, 13, frames=8, size=32, workers=1, progress=False)
    broken = tmp_path / "videos" / "train" / "00003.mp4"
    broken.write_bytes(b"truncated download")
    config = synthetic_recipe(tmp_path, "model: {method: aim, backbone: vit_tiny, num_frames: 4}",
                              size=32, test_clips=2, name="synthetic.yaml")
    assert cli(["train", str(config)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 1
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert list(skipped) == [str(broken)]
    assert read_log(tmp_path / "run", "skipped")[0]["files"] == 1

    best = tmp_path / "run" / "best.safetensors"
    assert cli(["eval", "--checkpoint", str(best), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval_val.json").read_text())
    assert metrics["num_videos"] == 13 and metrics["views"] == {"clips": 2, "crops": 1}
    assert len(metrics["confusion_matrix"]) == 13 and metrics["skipped"] == {}

    # An --out that cannot be written stops before the evaluation, not after it.
    assert cli(["eval", "--checkpoint", str(best), "--out", str(broken / "eval")]) == 2
    assert "choose another --out" in capsys.readouterr().err

    # An unreadable test video is left out and listed, never scored in another's place.
    broken_val = tmp_path / "videos" / "val" / "00005.mp4"
    broken_val.write_bytes(b"")
    assert cli(["eval", "--checkpoint", str(best), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval_val.json").read_text())
    assert metrics["num_videos"] == 12 and list(metrics["skipped"]) == [str(broken_val)]
    assert sum(map(sum, metrics["confusion_matrix"])) == 12

    capsys.readouterr()
    video = tmp_path / "videos" / "val" / "00000.mp4"
    assert cli(["predict", str(video), "--checkpoint", str(best), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(video) and len(lines) == 4
    probs = [float(line.split()[0]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert cli(["predict", str(tmp_path / "missing.mp4"), "--checkpoint", str(best)]) == 1
