"""BatchLoader: batches of an in-memory split, each a pure function of (seed, epoch, batch index, rank), built in
the training process or in DataLoader workers; make_loader picks it or the StreamLoader of a streamed folder."""

from __future__ import annotations

import contextlib
import math

import torch

from .augment import (AugmentConfig, build_randaugment, pad_random_crop, random_erase_, random_resized_crop,
                      randaugment_batch)
from .batch_randaugment import BatchRandAugment, supports
from .epochs import EpochLoader, init_worker
from .folder import FolderData
from .imagedata import ImageData
from .sampler import RepeatAugSampler
from .seeding import derive_seed
from .stream import StreamLoader, default_num_workers


@contextlib.contextmanager
def _single_threaded():
    """Run batch building on one intra-op thread. Its tensors are small (a 28 px batch is 200k values): a second
    OpenMP thread buys nothing, and when the other core is busy (training, other processes) the threads' hand-offs
    made these ops up to 100x slower in measurements on a shared 2-core machine. Toggling the setting costs < 1 us."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _BatchBuilder(torch.utils.data.Dataset):
    """Builds batch k of an epoch from scratch. Item (epoch, k) is a pure function of (seed, epoch, k, rank), which
    makes resuming exact and lets DataLoader workers build whole batches in any order."""

    def __init__(self, data: ImageData, batch_size: int, augment: AugmentConfig | None, sampler, eval_indices,
                 seed: int, rank: int):
        self.images, self.labels = data.images, data.labels
        self.batch_size, self.augment, self.sampler, self.seed, self.rank = batch_size, augment, sampler, seed, rank
        self.eval_indices = eval_indices
        self.mean = torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.randaugment = self.batch_randaugment = None
        if augment is not None and augment.randaugment:
            self.randaugment = build_randaugment(augment.randaugment, data.img_size, data.mean)
            if supports(self.randaugment) and data.images.shape[1] in (1, 3):  # else PIL per image (the reference)
                self.batch_randaugment = BatchRandAugment(self.randaugment)
        self._cached_epoch, self._cached_indices = None, None

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        if self.sampler is None:
            return self.eval_indices
        if self._cached_epoch != epoch:
            self._cached_epoch, self._cached_indices = epoch, self.sampler.indices(epoch)
        return self._cached_indices

    def __getitem__(self, item: tuple[int, int]):
        epoch, k = item
        indices = self.epoch_indices(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        with _single_threaded():
            images, labels = self.images[indices], self.labels[indices]
            if self.augment is None:
                return self._normalise(images), labels
            return self._augment(images, derive_seed(self.seed, "batch", epoch, k, self.rank)), labels

    def _augment(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        cfg, generator = self.augment, torch.Generator().manual_seed(seed)
        flip = torch.rand(len(images), generator=generator) < cfg.hflip
        if cfg.crop == "rrc":
            images = random_resized_crop(images, cfg.rrc_scale, flip, generator)
        elif cfg.crop == "pad":
            images = pad_random_crop(images, cfg.pad, flip, generator)
        else:
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.randaugment is not None:  # PIL works on uint8: quantise the (float) crop as timm's PIL crop does
            images = images.round().to(torch.uint8) if images.is_floating_point() else images
            if self.batch_randaugment is not None:
                images = self.batch_randaugment(images, seed)
            else:
                images = randaugment_batch(images, self.randaugment, seed)
        images = self._normalise(images)
        if cfg.reprob > 0:
            random_erase_(images, cfg.reprob, generator)
        return images

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255).sub_(self.mean).div_(self.std)  # the order of ToTensor + Normalize


class _EpochBatches(torch.utils.data.Sampler):
    """Yields (epoch, k) for the batches of one pass; the loader sets epoch/start before each pass (workers never
    read it, so this works with persistent workers)."""

    def __init__(self, num_batches: int):
        self.num_batches, self.epoch, self.start = num_batches, 0, 0

    def __iter__(self):
        return ((self.epoch, k) for k in range(self.start, self.num_batches))

    def __len__(self) -> int:
        return self.num_batches - self.start


class BatchLoader(EpochLoader):
    """Iterates batches: images float32 normalised [B, C, H, W] on `device`, labels int64 [B].

    train=True: a seeded per-epoch shuffle (with `repeats` > 1, repeated augmentation), sharded by (world_size, rank),
    augmented per `augment` (None: no augmentation), drop_last by default. train=False: sequential order (rank's shard
    rank::world_size), no augmentation, last partial batch kept. Batch k of epoch e is a pure function of
    (seed, e, k, rank) and never touches the global torch / numpy / python RNGs of this process. num_workers > 0
    builds whole batches in persistent DataLoader worker processes, overlapping RandAugment with training."""

    def __init__(self, data: ImageData, batch_size: int, *, train: bool, augment: AugmentConfig | None = None,
                 repeats: int = 1, seed: int = 0, device="cpu", num_workers: int | None = 0,
                 drop_last: bool | None = None,
                 world_size: int = 1, rank: int = 0, channels_last: bool = False):
        if not isinstance(data, ImageData):
            raise TypeError(f"BatchLoader needs an in-memory ImageData, got {type(data).__name__} ({data.name}): use "
                            "make_loader, which streams a folder with StreamLoader")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(data) == 0:
            raise ValueError(f"{data.name} {data.split}: empty data set")
        self.data, self.batch_size, self.train = data, batch_size, train
        self.device, self.channels_last = torch.device(device), channels_last
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = 0
        if train:
            self.sampler = RepeatAugSampler(len(data), repeats, world_size, rank, seed)
            num_indices, eval_indices = len(self.sampler), None
        else:
            self.sampler = None
            eval_indices = torch.arange(rank, len(data), world_size)
            num_indices = len(eval_indices)
        self.num_batches = num_indices // batch_size if self.drop_last else math.ceil(num_indices / batch_size)
        if self.num_batches == 0:
            raise ValueError(f"{data.name} {data.split}: {num_indices} samples per replica give no batch of "
                             f"{batch_size} with drop_last; use a smaller batch or drop_last=False")
        self.builder = _BatchBuilder(data, batch_size, augment if train else None, self.sampler, eval_indices,
                                     seed, rank)
        self.num_workers = num_workers = num_workers or 0  # None: in memory, the default is 0
        self._worker_loader = None
        if num_workers > 0:
            self._worker_order = _EpochBatches(self.num_batches)
            self._worker_loader = torch.utils.data.DataLoader(
                self.builder, batch_size=None, sampler=self._worker_order, num_workers=num_workers,
                persistent_workers=True, worker_init_fn=init_worker, pin_memory=self.device.type == "cuda",
                generator=torch.Generator())  # its own generator: the base-seed draw must not touch the global RNG

    def _build_batch(self, epoch: int, k: int):
        return self.builder[epoch, k]


def make_loader(data, batch_size: int, *, train: bool, augment: AugmentConfig | None = None, repeats: int = 1,
                seed: int = 0, device="cpu", num_workers: int | None = 0, world_size: int = 1, rank: int = 0, **kwargs):
    """BatchLoader for an in-memory ImageData, StreamLoader for a streamed FolderData; the same contract (batch_size is
    per rank). num_workers=None: default_num_workers(data)."""
    if num_workers is None:
        num_workers = default_num_workers(data)
    loader_class = StreamLoader if isinstance(data, FolderData) else BatchLoader
    return loader_class(data, batch_size, train=train, augment=augment, repeats=repeats, seed=seed, device=device,
                        num_workers=num_workers, world_size=world_size, rank=rank, **kwargs)
