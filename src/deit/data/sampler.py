"""RepeatAugSampler: the epoch's order of a data set (seeded shuffle, repeated augmentation, sharding by rank);
ShardSampler: the same for a split stored in shards (shard order, contiguous runs per rank, a shuffle buffer)."""

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


class ShardSampler:
    """The epoch's order of a split stored in shards, for sequential reads: each epoch a seeded permutation of the
    shards, their samples back to back; replica `rank` takes the rank-th contiguous run of that stream (wrapping
    around to pad, as RepeatAugSampler pads); each sample of the run repeated `repeats` times consecutively; then a
    seeded shuffle buffer of `buffer` samples mixes the run. So a rank reads its own shards front to back, and a batch
    draws on a window of about `buffer` samples of them.

    The same length as RepeatAugSampler (ceil(num_samples / world_size) per replica), and the same reading of
    `repeats`: an epoch takes ceil(len / repeats) distinct samples per replica. With repeats=1 the replicas together
    see every sample once per epoch (the world_size - 1 at most of the padding twice). The order is a pure function
    of (seed, epoch, shard sizes, world_size, rank, buffer): not of the worker count."""

    def __init__(self, shard_sizes, repeats: int = 1, world_size: int = 1, rank: int = 0, seed: int = 0,
                 buffer: int = 10_000):
        self.shard_sizes = torch.as_tensor(shard_sizes, dtype=torch.int64)
        self.num_samples = int(self.shard_sizes.sum())
        if self.num_samples < 1 or repeats < 1 or world_size < 1 or not 0 <= rank < world_size or buffer < 1:
            raise ValueError(f"need samples >= 1, repeats >= 1, buffer >= 1, 0 <= rank < world_size; got samples="
                             f"{self.num_samples}, repeats={repeats}, buffer={buffer}, world_size={world_size}, "
                             f"rank={rank}")
        self.repeats, self.world_size, self.rank, self.seed, self.buffer = repeats, world_size, rank, seed, buffer
        self.epoch = 0
        self.starts = torch.cumsum(self.shard_sizes, 0) - self.shard_sizes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def stream(self, epoch: int) -> torch.Tensor:
        """All samples in the epoch's shard order, identical on every rank."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "shards", epoch))
        order = torch.randperm(len(self.shard_sizes), generator=generator)
        return torch.cat([torch.arange(int(self.starts[s]), int(self.starts[s] + self.shard_sizes[s])) for s in order])

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This replica's sample indices for an epoch (the current one by default)."""
        epoch = self.epoch if epoch is None else epoch
        distinct = math.ceil(len(self) / self.repeats)
        positions = (self.rank * distinct + torch.arange(distinct)) % self.num_samples
        run = self.stream(epoch)[positions].repeat_interleave(self.repeats)[:len(self)]
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "buffer", epoch, self.rank))
        return shuffle_buffer(run, self.buffer, generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)


def shuffle_buffer(items: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """webdataset's shuffle: fill a buffer of `size` items; then for each further item emit a random slot of the
    buffer and put the item there; at the end emit what is left in random order. Output position i holds an item
    from input positions < i + size: reading runs at most `size` samples ahead of what is consumed."""
    size = min(size, len(items))
    buffer, rest = items[:size].tolist(), items[size:].tolist()
    slots = torch.randint(0, size, (len(rest),), generator=generator).tolist()
    out = []
    for slot, item in zip(slots, rest):  # 1.3 M items (ImageNet, one rank) in well under a second
        out.append(buffer[slot])
        buffer[slot] = item
    tail = torch.tensor(buffer, dtype=torch.int64)[torch.randperm(size, generator=generator)]
    return torch.cat([torch.tensor(out, dtype=torch.int64), tail])
