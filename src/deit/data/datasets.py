"""Which data a name means: load_data turns "fashion-mnist", "cifar10", "cifar100", "imagefolder:PATH" or "wds:..."
(tar shards, data.shards) into a split,
load_split applies a run config's data options (size, subset), describe says what a run records about it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from .builtin import CIFAR_STATS, load_cifar, load_fashion_mnist
from .canvas import place_on_canvas
from .folder import FolderData, load_imagefolder
from .imagedata import ImageData
from .listing import list_split
from .shards import load_shards
from .subsets import stratified_subset

SPLITS = ("train", "val")


def describe(data: ImageData | FolderData, val: ImageData | FolderData | None = None) -> dict:
    """What a run config records about its data; a streamed folder adds its eval crop ratio and skipped files."""
    sizes = {data.split: len(data)}
    if val is not None:
        sizes[val.split] = len(val)
    record = {"name": data.name, "sizes": sizes, "num_classes": data.num_classes, "in_chans": data.in_chans,
              "img_size": list(data.img_size), "mean": list(data.mean), "std": list(data.std),
              "classes": list(data.classes)}
    streamed = [d for d in (data, val) if isinstance(d, FolderData)]
    if streamed:
        record["stream"] = {"eval_crop_ratio": streamed[0].eval_crop_ratio,
                            "fast_decode": streamed[0].fast_decode,
                            "skipped": {d.split: len(d.skipped) for d in streamed}}
    return record


def load_data(name: str, split: str = "train", data_dir: str | None = None, img_size: int | None = None,
              download: bool = True, *, cache_images: bool = False, eval_crop_ratio: float = 0.875,
              skip_bad_images: bool = False, fast_decode: bool = True) -> ImageData | FolderData:
    """Load a split ("train" or "val") of "fashion-mnist", "cifar10", "cifar100", "imagefolder:PATH" or "wds:DIR" /
    "wds:TRAIN_PATTERN;VAL_PATTERN" (WebDataset shards, streamed as an image folder is: data.shards).

    For fashion-mnist and cifar the val split is the official test set, held in memory. img_size resizes at load
    (bilinear, antialiased) when it differs from the native size. An image folder needs img_size: it is listed and
    checked, and streamed (a FolderData, decoded per sample by the loader at img_size, eval crops at eval_crop_ratio),
    or with cache_images decoded once into memory at img_size. skip_bad_images leaves out files that fail the check
    (listed in .skipped of a FolderData) instead of raising; fast_decode=False decodes and resizes streamed JPEGs
    exactly as timm."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    key = name.lower()
    if key.startswith("wds:"):
        if cache_images:
            raise ValueError(f"{name}: --cache-images reads image folders only; shards are streamed")
        return load_shards(name.split(":", 1)[1], split, img_size, eval_crop_ratio)
    if key.startswith("imagefolder:"):
        path = name.split(":", 1)[1]
        if cache_images:
            return load_imagefolder(path, split, img_size, skip_bad_images)
        if img_size is None:
            raise ValueError(f"imagefolder:{path} needs img_size (--img-size): the size its images are cropped to")
        if not 0 < eval_crop_ratio <= 1:
            raise ValueError(f"eval_crop_ratio must be in (0, 1], got {eval_crop_ratio}")
        return FolderData(list_split(path, split, skip_bad_images), img_size, eval_crop_ratio,
                          fast_decode=fast_decode)
    if key in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        data = load_fashion_mnist(split, data_dir, download)
    elif key in CIFAR_STATS:
        data = load_cifar(key, split, data_dir, download)
    else:
        raise ValueError(f"unknown data set {name!r}: use 'fashion-mnist', 'cifar10', 'cifar100', 'imagefolder:PATH' "
                         "or 'wds:DIR'")
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
    """The split a run trains or evaluates on: load_data with the config's data options, its canvas (positions
    drawn over the whole split, so they never depend on the subset), then its train subset."""
    data = load_data(config.data, split, data_dir=config.data_dir, img_size=config.img_size, download=download,
                     cache_images=config.cache_images, eval_crop_ratio=config.eval_crop_ratio,
                     skip_bad_images=config.skip_bad_images, fast_decode=not config.exact_decode)
    if config.canvas is not None:
        if not isinstance(data, ImageData):
            raise ValueError("--canvas needs data held in memory (a built-in set, or an image folder with "
                             "--cache-images)")
        data = place_on_canvas(data, config.canvas)
    if split == "train" and config.train_subset is not None:
        size = int(config.train_subset) if config.train_subset > 1 else float(config.train_subset)
        seed = config.seed if config.subset_seed is None else config.subset_seed
        data = data.subset(stratified_subset(data.labels, size, seed))
    return data
