import random

import numpy as np
import pytest

from vidadapt.data.sampling import DenseSampler, UniformSampler


def test_dense_test_clips_are_evenly_spread_like_mmaction2():
    # mmaction2 SampleFrames(clip_len=4, frame_interval=2, num_clips=3, test_mode=True) on 30
    # frames: avg_interval = (30 - 8 + 1) / 3, offsets = int(k * avg + avg / 2) = 3, 11, 19.
    clips = DenseSampler(4, interval=2, num_clips=3).sample(30, train=False, rng=random.Random())
    assert clips == [[3, 5, 7, 9], [11, 13, 15, 17], [19, 21, 23, 25]]


def test_dense_training_start_covers_every_valid_start_and_nothing_else():
    sampler = DenseSampler(2, interval=2)  # occupies 4 frames
    rng = random.Random(0)
    starts = {sampler.sample(10, train=True, rng=rng)[0][0] for _ in range(500)}
    assert starts == set(range(7))  # 0 .. 10 - 4


def test_dense_training_clips_stay_in_their_span():
    sampler = DenseSampler(2, interval=1, num_clips=2)  # spans of (20 - 2 + 1) / 2 = 9.5
    rng = np.random.default_rng(0)
    for _ in range(200):
        first, second = sampler.sample(20, train=True, rng=rng)
        assert 0 <= first[0] <= 9 and 9 <= second[0] <= 18
        assert first[1] - first[0] == 1 and second[1] - second[0] == 1


@pytest.mark.parametrize("rng_type", ["python", "numpy"])
def test_training_samples_repeat_for_the_same_seed(rng_type):
    def make(seed):
        return random.Random(seed) if rng_type == "python" else np.random.default_rng(seed)

    for sampler in (DenseSampler(8, interval=4), UniformSampler(8)):
        first = [sampler.sample(300, train=True, rng=make(seed)) for seed in range(5)]
        again = [sampler.sample(300, train=True, rng=make(seed)) for seed in range(5)]
        assert first == again
        assert len({str(c) for c in first}) == 5  # different seeds, different clips


@pytest.mark.parametrize(
    "short_video, expected", [("loop", [0, 2, 4, 1]), ("repeat", [0, 2, 4, 4])]
)
def test_dense_short_video_loops_or_repeats_the_last_frame(short_video, expected):
    sampler = DenseSampler(4, interval=2, num_clips=2, short_video=short_video)
    for train in (True, False):
        assert sampler.sample(5, train=train, rng=random.Random(0)) == [expected, expected]


def test_uniform_test_takes_segment_centres():
    assert UniformSampler(8).sample(80, train=False, rng=random.Random()) == [
        [5, 15, 25, 35, 45, 55, 65, 75]
    ]


def test_uniform_test_clips_take_evenly_spaced_offsets_in_each_segment():
    clips = UniformSampler(4, num_clips=3).sample(40, train=False, rng=random.Random())
    # offsets 1/4, 2/4, 3/4 of 10-frame segments
    assert clips == [[2, 12, 22, 32], [5, 15, 25, 35], [7, 17, 27, 37]]


def test_uniform_training_takes_one_frame_per_segment_reaching_both_segment_ends():
    sampler = UniformSampler(4)
    rng = random.Random(0)
    seen = [set() for _ in range(4)]
    for _ in range(400):
        (clip,) = sampler.sample(40, train=True, rng=rng)
        for i, frame in enumerate(clip):
            seen[i].add(frame)
    assert seen == [set(range(10 * i, 10 * i + 10)) for i in range(4)]


def test_uniform_short_video_repeats_frames_in_order():
    (clip,) = UniformSampler(8).sample(3, train=False, rng=random.Random())
    assert clip == [0, 0, 0, 1, 1, 2, 2, 2]
    rng = random.Random(0)
    for _ in range(100):
        (clip,) = UniformSampler(8).sample(3, train=True, rng=rng)
        assert clip == sorted(clip) and 0 <= min(clip) and max(clip) <= 2


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="0 frames"):
        UniformSampler(8).sample(0, train=False, rng=random.Random())
    with pytest.raises(ValueError, match="short_video"):
        DenseSampler(8, short_video="wrap")
