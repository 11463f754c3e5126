"""The order of training batches: reproducible from a seed, resumable at any step, shardable.

Training must be able to stop and resume *exactly* (same batches, same flips) and to split
each batch over several processes. A :class:`TrainSampler` therefore derives everything
from ``(seed, epoch)``: the shuffled order of the epoch and a horizontal-flip coin per item.
Step ``s`` is batch ``s mod steps_per_epoch`` of epoch ``s // steps_per_epoch``, so the
stream can start at any step without replaying the ones before, and replica ``rank`` takes
every ``world_size``-th item of the global batch.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset

from .transforms import hflip

__all__ = ["FlipByKey", "TrainSampler"]


class TrainSampler:
    """Endless batches of ``(index, flip)`` keys for ``DataLoader(batch_sampler=...)``.

    Args:
        num_items: dataset size; batch_size: the *global* batch (all replicas together).
        seed: fixes every epoch's order and flips. start_step: the first step to yield.
        rank, world_size: this replica's share (batch_size must divide evenly).
        flip: draw a flip coin per item (False: never flip).
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, start_step: int = 0, rank: int = 0,
                 world_size: int = 1, flip: bool = True):
        if batch_size < 1 or num_items < batch_size:
            raise ValueError("need 1 <= batch_size <= number of items, "
                             f"got batch_size {batch_size} for {num_items} items")
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must split evenly over {world_size} replicas (rank {rank})")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.rank, self.world_size, self.flip = start_step, rank, world_size, flip
        self.steps_per_epoch = num_items // batch_size  # the last partial batch of an epoch is dropped

    def epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's item order (num_items,) and flip coins (num_items,) bool."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=g)
        flips = (torch.rand(self.num_items, generator=g) < 0.5 if self.flip
                 else torch.zeros(self.num_items, dtype=torch.bool))
        return order, flips

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        step, cached = self.start_step, (None, None)
        while True:
            epoch, k = divmod(step, self.steps_per_epoch)
            if cached[0] != epoch:
                cached = (epoch, self.epoch(epoch))
            order, flips = cached[1]
            batch = order[k * self.batch_size : (k + 1) * self.batch_size][self.rank :: self.world_size]
            yield [(int(i), bool(flips[i])) for i in batch]
            step += 1


class FlipByKey(Dataset):
    """``dataset[(index, flip)]``: item ``index``, mirrored when ``flip`` (see :class:`TrainSampler`)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]):
        index, flip = key
        image, target = self.dataset[index]
        return hflip(image, target) if flip else (image, target)
