"""RepeatAugSampler: the epoch's order of a data set (seeded shuffle, repeated augmentation, sharding by rank)."""

from __future__ import annotations

import math
from typing import Iterator

import torch

from .seeding import derive_seed


class RepeatAugSampler:
    """The official DeiT RASampler semantics (repeats=3): each epoch, a seeded permutation; every index repeated
    `repeats` times consecutively; padded to a multiple of world_size; replica `rank` takes indices[rank::world_size].
    The official code then keeps only floor(len // 256 * 256 / world_size) indices (a small data set gets an empty
    loader); we keep ceil(len / world_size) per replica, so one epoch sees about as many samples as the data set holds.
    With repeats=1 this is a plain seeded per-epoch shuffle (sharded when world_size > 1)."""

    def __init__(self, num_samples: int, repeats: int = 3, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if num_samples < 1 or repeats < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need num_samples >= 1, repeats >= 1, 0 <= rank < world_size; got num_samples="
                             f"{num_samples}, repeats={repeats}, world_size={world_size}, rank={rank}")
        self.num_samples, self.repeats, self.world_size, self.rank = num_samples, repeats, world_size, rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order of the data set, identical on every rank."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "sampler", epoch))
        return torch.randperm(self.num_samples, generator=generator)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This replica's indices for an epoch (the current one by default)."""
        repeated = self.permutation(self.epoch if epoch is None else epoch).repeat_interleave(self.repeats)
        total = math.ceil(len(repeated) / self.world_size) * self.world_size
        padded = repeated[torch.arange(total) % len(repeated)]  # pad by wrapping around, as the official code does
        return padded[self.rank::self.world_size][:len(self)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)
