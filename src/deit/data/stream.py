"""StreamLoader: batches of a streamed image folder, each sample decoded and transformed in DataLoader workers up to
its uint8 crop (RandAugment included); normalising and random erasing run once per batch, on the loader's device.

The same contract as BatchLoader (len, set_epoch, iterate(start_batch), __iter__; float32 normalised images and int64
labels on `device`): train order from RepeatAugSampler, this rank's share rank::world_size, drop_last; eval order
arange(rank, N, world_size), last partial batch kept. Every sample's augmentation is seeded by (seed, epoch, its
position in the epoch's global order), so batch k of epoch e is a pure function of (seed, e, k, rank), and a sample is
augmented identically whatever the world size or worker count. A ShardData (tar shards) is read in ShardSampler's
order (each rank its own shards front to back, through a shuffle buffer) and evaluated in contiguous runs per rank:
batch k is still a pure function of (seed, e, k, rank), but the order depends on the world size."""

from __future__ import annotations

import math
import os
import random
import weakref

import numpy as np
import torch

from .augment import AugmentConfig, erase_box, erase_rectangles_
from .epochs import EpochLoader, init_worker
from .folder import FolderData
from .sample_log import sample_log
from .sampler import RepeatAugSampler, ShardSampler
from .seeding import derive_seed, seeded_rngs
from .shards import ShardData, eval_range
from .transforms import eval_transform, train_transform


_NO_ERASE = torch.zeros(5, dtype=torch.int64)


class _SampleReader(torch.utils.data.Dataset):
    """Item (epoch, position, index): sample `index` decoded and transformed to a uint8 crop, its label and its
    erasing rectangle (augment.erase_box, drawn after the transform as timm's RandomErasing draws), all random draws
    seeded by (seed, epoch, position) (timm's transforms draw from the python, numpy and torch global RNGs)."""

    def __init__(self, data: FolderData, transform, seed: int, random: bool, reprob: float = 0.0):
        self.data, self.transform, self.seed, self.random, self.reprob = data, transform, seed, random, reprob

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, position, index = key
        img, label = self.data.encoded(index)
        if not self.random:
            return self.transform(img), label, _NO_ERASE
        seed = derive_seed(self.seed, "sample", epoch, position)
        if torch.utils.data.get_worker_info() is not None:  # a worker's RNGs are its own: seed, no need to restore
            random.seed(seed), np.random.seed(seed % 2**32), torch.default_generator.manual_seed(seed)
            return self._augment(img, label)
        with seeded_rngs(seed):
            return self._augment(img, label)

    def _augment(self, img, label):
        crop = self.transform(img)
        erase = erase_box(self.reprob, *crop.shape[1:]) if self.reprob > 0 else _NO_ERASE
        return crop, label, torch.as_tensor(erase, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.data)


def _collate(samples):
    """Stacked uint8 images, int64 labels and erasing rectangles. In a worker, default_collate stacks straight into
    shared memory, so the batch crosses to the training process as a handle; a plain torch.stack would be copied
    into shared memory once more."""
    images, labels, erase = zip(*samples)
    return (torch.utils.data.default_collate(images), torch.tensor(labels, dtype=torch.int64),
            torch.utils.data.default_collate(erase))


def default_num_workers(data) -> int:
    """Worker processes when none are asked for: a streamed folder decodes in min(8, usable cores - 1) workers (the
    training process keeps a core); an in-memory split builds its batches in the training process (0)."""
    if not isinstance(data, FolderData):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - 1))


class _BatchKeys(torch.utils.data.Sampler):
    """Yields the sample keys of batches start.. of the current epoch; the loader sets epoch/start before each pass
    (it runs in the main process, so this works with persistent workers)."""

    def __init__(self, loader: "StreamLoader"):
        # A weak reference: a strong one makes a cycle (loader -> DataLoader -> this -> loader) that only the garbage
        # collector frees, and it clears the index queues' finalizers first, so the workers never get their stop
        # message and each cost two 5 s join timeouts (20 s a loader with 2 workers).
        self.loader, self.epoch, self.start = weakref.proxy(loader), 0, 0

    def __iter__(self):
        return (self.loader.batch_keys(self.epoch, k) for k in range(self.start, len(self.loader)))

    def __len__(self) -> int:
        return len(self.loader) - self.start


class StreamLoader(EpochLoader):
    """Iterates batches of a FolderData: images float32 normalised [B, C, img_size, img_size] on `device`, labels
    int64 [B]. batch_size is per rank. num_workers > 0 decodes in persistent worker processes (prefetch_factor
    batches ahead each; persistent=False: started per pass and ended with it), 0 in this process. Workers hand over
    uint8 crops; this process moves them to the device and normalises and erases there (_finish)."""

    def __init__(self, data: FolderData, batch_size: int, *, train: bool, augment: AugmentConfig | None = None,
                 repeats: int = 1, seed: int = 0, device="cpu", num_workers: int | None = 0, world_size: int = 1,
                 rank: int = 0, drop_last: bool | None = None, channels_last: bool = False, prefetch_factor: int = 2,
                 persistent: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(data) == 0:
            raise ValueError(f"{data.name} {data.split}: empty data set")
        self.data, self.batch_size, self.train, self.seed = data, batch_size, train, seed
        self.world_size, self.rank = world_size, rank
        self.device, self.channels_last = torch.device(device), channels_last
        self.drop_last = train if drop_last is None else drop_last
        self.epoch, self._epoch_indices = 0, None
        shards = isinstance(data, ShardData)  # read shard by shard: contiguous runs per rank (ShardSampler)
        if train:
            self.sampler = (ShardSampler(data.index.shard_sizes(), repeats, world_size, rank, seed) if shards
                            else RepeatAugSampler(len(data), repeats, world_size, rank, seed))
            num_indices = len(self.sampler)
        else:
            self.sampler = None
            self.eval_indices = (eval_range(len(data), world_size, rank) if shards
                                 else torch.arange(rank, len(data), world_size))
            num_indices = len(self.eval_indices)
        self.num_batches = num_indices // batch_size if self.drop_last else math.ceil(num_indices / batch_size)
        if self.num_batches == 0:
            raise ValueError(f"{data.name} {data.split}: {num_indices} samples per replica give no batch of "
                             f"{batch_size} with drop_last; use a smaller batch or drop_last=False")
        size = data.img_size[0]
        if train:
            transform = train_transform(augment, size, data.mean, data.fast_decode)
        else:
            transform = eval_transform(size, data.eval_crop_ratio, data.fast_decode)
        augmented = train and augment is not None
        self.reader = _SampleReader(data, transform, seed, random=augmented, reprob=augment.reprob if augmented else 0)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.num_workers = num_workers = default_num_workers(data) if num_workers is None else num_workers
        self._worker_order = _BatchKeys(self)
        self._sample_log = sample_log(data.split, rank) if train else None  # DEIT_LOG_SAMPLES (data.sample_log)
        self._worker_loader = None
        if num_workers > 0:
            self._worker_loader = torch.utils.data.DataLoader(
                self.reader, batch_sampler=self._worker_order, num_workers=num_workers, collate_fn=_collate,
                persistent_workers=persistent, worker_init_fn=init_worker, pin_memory=self.device.type == "cuda",
                prefetch_factor=prefetch_factor,
                generator=torch.Generator())  # its own generator: the base-seed draw must not touch the global RNG

    def batch_keys(self, epoch: int, k: int) -> list[tuple[int, int, int]]:
        """(epoch, global position, sample index) of each sample of this rank's batch k."""
        local = range(k * self.batch_size, min((k + 1) * self.batch_size, self._num_indices()))
        if self.sampler is None:
            return [(epoch, 0, int(self.eval_indices[j])) for j in local]
        if self._epoch_indices is None or self._epoch_indices[0] != epoch:
            self._epoch_indices = (epoch, self.sampler.indices(epoch).tolist())
        indices = self._epoch_indices[1]
        return [(epoch, self.rank + j * self.world_size, indices[j]) for j in local]

    def iterate(self, start_batch: int = 0):
        batches = super().iterate(start_batch)
        return batches if self._sample_log is None else self._logged(batches, start_batch)

    def _logged(self, batches, start_batch: int):
        """Each batch recorded in the sample log as it is handed over (its labels: those the workers read)."""
        for k, (images, labels) in enumerate(batches, start_batch):
            sources = [self.data.source(index) for _, _, index in self.batch_keys(self.epoch, k)]
            self._sample_log.write(self.epoch, k, sources, labels.tolist())
            yield images, labels

    def _num_indices(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.eval_indices)

    def _build_batch(self, epoch: int, k: int):
        return _collate([self.reader[key] for key in self.batch_keys(epoch, k)])

    def _finish(self, batch):
        """uint8 crops to the device, then ToTensor + Normalize's float32 operations in their order (x / 255, - mean,
        / std: the per-sample transform's bits) and the samples' erasing rectangles, for the whole batch at once."""
        images, labels, erase = batch
        x = self._to_device(images).float().div_(255).sub_(self.mean).div_(self.std)
        return erase_rectangles_(x, erase), self._to_device(labels)
