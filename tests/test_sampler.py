"""fl_lab.data.sampler: reproducible, resumable, shardable batch order."""

import itertools

import pytest
import torch

from fl_lab.data import Shapes
from fl_lab.data.sampler import FlipByKey, TrainSampler
from fl_lab.data.transforms import hflip


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_same_seed_same_stream_and_epochs_are_permutations():
    a, b = take(TrainSampler(10, 4, seed=3), 6), take(TrainSampler(10, 4, seed=3), 6)
    assert a == b and a != take(TrainSampler(10, 4, seed=4), 6)
    # 10 items, batch 4: 2 steps per epoch (the last partial batch is dropped), no repeats inside an epoch
    for epoch in range(3):
        indices = [i for i, _ in a[2 * epoch] + a[2 * epoch + 1]]
        assert len(set(indices)) == 8
    assert a[0] != a[2]  # a new order each epoch
    flips = [f for batch in take(TrainSampler(100, 10, seed=0), 10) for _, f in batch]
    assert 30 < sum(flips) < 70
    assert not any(f for batch in take(TrainSampler(10, 5, flip=False), 4) for _, f in batch)


def test_starting_at_a_step_continues_the_same_stream():
    straight = take(TrainSampler(13, 3, seed=1), 12)
    assert take(TrainSampler(13, 3, seed=1, start_step=7), 5) == straight[7:]


def test_replicas_split_each_global_batch():
    whole = take(TrainSampler(20, 6, seed=2), 5)
    parts = [take(TrainSampler(20, 6, seed=2, rank=r, world_size=3), 5) for r in range(3)]
    for step in range(5):
        shards = [parts[r][step] for r in range(3)]
        assert all(len(s) == 2 for s in shards)
        assert sorted(k for s in shards for k in s) == sorted(whole[step])


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_items=3, batch_size=4), "batch_size"),
    (dict(num_items=8, batch_size=4, rank=0, world_size=3), "split evenly"),
    (dict(num_items=8, batch_size=4, rank=2, world_size=2), "rank 2"),
    (dict(num_items=8, batch_size=4, start_step=-1), "start_step"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainSampler(**kwargs)


def test_flip_by_key():
    data = Shapes(2, image_size=64)
    keyed = FlipByKey(data)
    assert len(keyed) == 2
    image, target = keyed[(1, False)]
    assert torch.equal(image, data[1][0])
    flipped, flipped_target = keyed[(1, True)]
    expected_image, expected_target = hflip(*data[1])
    assert torch.equal(flipped, expected_image) and torch.equal(flipped_target["boxes"], expected_target["boxes"])
    assert torch.equal(flipped.flip(-1), image)
