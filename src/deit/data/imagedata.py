"""ImageData: a whole split held in memory as uint8 [N, C, H, W] (Fashion-MNIST train is 47 MB), so a batch is a
tensor gather."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class ImageData:
    """A whole split held in memory."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    name: str
    split: str = "train"

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be int64 [{len(self.images)}], "
                             f"got {self.labels.dtype} {tuple(self.labels.shape)}")
        if not len(self.mean) == len(self.std) == self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} channel values, got {self.mean} / {self.std}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "ImageData":
        indices = torch.as_tensor(indices, dtype=torch.long)
        return replace(self, images=self.images[indices], labels=self.labels[indices])
