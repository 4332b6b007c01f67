"""``data.gpu_augment``: workers crop and flip in uint8 and draw the rest of the augmentation's
parameters; the training step applies them to the batch where the model is. Checked here on
CPU tensors: the batched device path gives what the worker path gives clip by clip, follows
the same distributions, and trains to the same weights."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidadapt.cli import main as cli
from vidadapt.data.dataset import collate_samples
from vidadapt.data.transforms import (
    RAND_AUGMENT_OPS,
    DeviceAugment,
    PlannedClip,
    RandAugment,
    RandomErasing,
    TransformConfig,
    build_transform,
    device_augment,
)
from vidadapt.engine.data import video_on_device

AUGMENTED = TransformConfig(
    size=32, short_side=40, color_jitter=(0.4, 0.4, 0.4, 0.1), rand_augment=(4, 9),
    random_erasing=0.5,
)


def clips(count: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish content with different ranges per clip, so every op has something to change.
    return [(torch.rand(3, 3, 48, 64, generator=g) * (120 + 10 * i) + i).to(torch.uint8)
            for i in range(count)]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_device_batch_equals_the_worker_clip_by_clip():
    worker = build_transform(AUGMENTED, train=True)
    deferred = build_transform(AUGMENTED, train=True, defer=True)
    inputs = clips(24)
    expected = [worker(clip, 0, seeded(i))[0] for i, clip in enumerate(inputs)]
    planned = [deferred(clip, 0, seeded(i))[0] for i, clip in enumerate(inputs)]
    assert all(isinstance(p, PlannedClip) and p.clip.dtype == torch.uint8 for p in planned)
    assert planned[0].clip.shape == (3, 3, 32, 32)
    # The draws cover most RandAugment ops, so the grouped batch path is really exercised.
    names = {name for p in planned for name, _ in p.plans[1]}
    assert len(names) >= 12
    batch = torch.stack([p.clip for p in planned])  # [B, T, 3, H, W] uint8
    out = device_augment(AUGMENTED)(batch, [p.plans for p in planned])
    assert out.dtype == torch.float32 and out.shape == (24, 3, 3, 32, 32)
    one_level = 1 / (255 * 0.2613)  # a grey level after the CLIP normalisation
    difference = (out - torch.stack(expected)).abs()
    # Batched reductions can round a value the other way: at most one level, very rarely.
    assert difference.max() <= one_level * 1.01
    assert (difference > 1e-5).float().mean() < 1e-4


def test_the_same_parameters_whatever_the_batch_order():
    deferred = build_transform(AUGMENTED, train=True, defer=True)
    planned = [deferred(clip, 0, seeded(i))[0] for i, clip in enumerate(clips(8))]
    augment = device_augment(AUGMENTED)
    batch, plans = torch.stack([p.clip for p in planned]), [p.plans for p in planned]
    forward = augment(batch, plans)
    backward = augment(batch.flip(0), plans[::-1]).flip(0)
    torch.testing.assert_close(forward, backward, rtol=0, atol=1e-5)


def test_rand_augment_draws_every_op_alike():
    augment = RandAugment(num_ops=2, magnitude=9)
    clip = clips(1)[0]
    counts = Counter(name for i in range(2800) for name, _ in augment.draw(clip, seeded(i)))
    expected = 2 * 2800 / len(RAND_AUGMENT_OPS)  # 400 per op
    assert set(counts) == set(RAND_AUGMENT_OPS)
    # Binomial standard deviation ~19: five of them either side.
    assert all(abs(n - expected) < 5 * math.sqrt(expected) for n in counts.values()), counts
    signs = Counter(argument > 0 for i in range(2800)
                    for name, argument in augment.draw(clip, seeded(i)) if name == "rotate")
    assert abs(signs[True] - signs[False]) < 0.2 * sum(signs.values())


def test_erasing_on_a_batch_has_the_rate_and_noise_of_the_worker():
    erasing = RandomErasing(p=0.25)
    batch = torch.zeros(400, 2, 3, 32, 32)
    plans = [erasing.draw(batch[0], seeded(i)) for i in range(400)]
    out = erasing.apply_batch(batch, plans)
    erased = (out != 0).flatten(1).any(1)
    assert erased.tolist() == [plan is not None for plan in plans]
    assert 0.19 < erased.float().mean() < 0.31  # p = 0.25, 400 clips
    noise = out[out != 0]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02  # standard normal
    torch.testing.assert_close(out[:, 0], out[:, 1])  # the same box and noise in every frame


def test_a_batch_with_plans_but_no_augment_is_refused():
    batch = collate_samples([{"video": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "label": 0,
                              "index": 0, "skipped": [], "augment": (None,)}])
    assert batch["augment"] == [(None,)]
    with pytest.raises(ValueError, match="data.gpu_augment"):
        video_on_device(batch, torch.device("cpu"), None)
    with pytest.raises(ValueError, match="plans"):
        DeviceAugment([])(batch["video"], batch["augment"])


RECIPES = Path(__file__).resolve().parents[1] / "configs/synthetic"
SMALL = ["--set", "data.synthetic.num_train=26", "--set", "data.synthetic.num_val=13",
         "--set", "data.batch_size=13", "--set", "optim.epochs=1",
         "--set", "data.transform.rand_augment=[2,9]", "--set", "data.transform.random_erasing=0.5",
         "--set", "data.transform.color_jitter=[0.4,0.4,0.4,0.1]"]


# st_adapter trains through the backbone (the trainer's step); linear trains on cached features
# (the feature encoder's pass).
@pytest.mark.parametrize("method", ["st_adapter", "linear"])
def test_training_with_gpu_augment_ends_where_the_worker_path_ends(tmp_path, monkeypatch,
                                                                   method):
    monkeypatch.chdir(tmp_path)  # the synthetic set is generated under .cache/ here
    batches = []
    apply = DeviceAugment.__call__
    monkeypatch.setattr(DeviceAugment, "__call__",
                        lambda self, video, plans: batches.append(video.dtype)
                        or apply(self, video, plans))
    weights = {}
    for on in (False, True):
        work_dir = tmp_path / f"gpu_augment_{on}"
        assert 0 == cli(["train", str(RECIPES / f"{method}.yaml"), "--work-dir", str(work_dir),
                         *SMALL, "--set", f"data.gpu_augment={str(on).lower()}"])
        weights[on] = load_file(str(work_dir / "last.safetensors"))
    assert batches == [torch.uint8] * 2  # two batches of 13, both augmented on the "device"
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=1e-4, atol=1e-5, msg=key)
