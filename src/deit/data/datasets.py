"""Which data a name means: load_data turns "fashion-mnist", "cifar10", "cifar100" or "imagefolder:PATH" into a split,
load_split applies a run config's data options (size, subset), describe says what a run records about it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from .builtin import CIFAR_STATS, load_cifar, load_fashion_mnist
from .folder import load_imagefolder
from .imagedata import ImageData
from .subsets import stratified_subset

SPLITS = ("train", "val")




def describe(data: ImageData, val: ImageData | None = None) -> dict:
    """What a run config records about its data."""
    sizes = {data.split: len(data)}
    if val is not None:
        sizes[val.split] = len(val)
    return {"name": data.name, "sizes": sizes, "num_classes": data.num_classes, "in_chans": data.in_chans,
            "img_size": list(data.img_size), "mean": list(data.mean), "std": list(data.std),
            "classes": list(data.classes)}


def load_data(name: str, split: str = "train", data_dir: str | None = None,
              img_size: int | None = None, download: bool = True) -> ImageData:
    """Load a split ("train" or "val") of "fashion-mnist", "cifar10", "cifar100" or "imagefolder:PATH" into memory.

    For fashion-mnist and cifar the val split is the official test set. img_size resizes at load (bilinear, antialiased)
    when it differs from the native size; imagefolder needs it (every image is decoded once at that size)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    key = name.lower()
    if key.startswith("imagefolder:"):
        return load_imagefolder(name.split(":", 1)[1], split, img_size)
    if key in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        data = load_fashion_mnist(split, data_dir, download)
    elif key in CIFAR_STATS:
        data = load_cifar(key, split, data_dir, download)
    else:
        raise ValueError(f"unknown data set {name!r}: use 'fashion-mnist', 'cifar10', 'cifar100' or 'imagefolder:PATH'")
    if img_size is not None and data.img_size != (img_size, img_size):
        data.images = _resize_uint8(data.images, img_size)
    return data


def _resize_uint8(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):  # chunked: the float copy of a whole upscaled split can be huge
        part = images[start:start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out




def load_split(config: TrainConfig, split: str, download: bool = True):
    """The split a run trains or evaluates on: load_data with the config's data options, then its train subset."""
    data = load_data(config.data, split, data_dir=config.data_dir, img_size=config.img_size, download=download)
    if split == "train" and config.train_subset is not None:
        size = int(config.train_subset) if config.train_subset > 1 else float(config.train_subset)
        data = data.subset(stratified_subset(data.labels, size, config.seed))
    return data
