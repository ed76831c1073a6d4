"""How a run's evaluation sees one image file, read from the run's config.json: what `deit predict` decodes files
with, and what the serving exports describe (an HF preprocessor_config.json, timm's pretrained_cfg)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .listing import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class EvalPreprocessing:
    """Converted to L (in_chans 1) or RGB, the shorter side resized to `resize` (bicubic), centre-cropped to
    img_size, then (x / 255 - mean) / std per channel."""

    img_size: int
    crop_ratio: float  # img_size / resize: a streamed folder's eval_crop_ratio, 1.0 for data held in memory
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    streamed: bool  # a streamed folder's run: timm's eval transform (FolderData); else decoded as in memory
    interpolation: str = "bicubic"
    fast_decode: bool = False  # a streamed run's JPEGs decoded at a reduced DCT scale where it covers the crop

    @property
    def resize(self) -> int:
        return math.floor(self.img_size / self.crop_ratio)  # as timm's create_transform computes it


def eval_preprocessing(run_config: dict, source: str = "the run") -> EvalPreprocessing:
    """The evaluation transform a run's config.json records: a streamed folder's (resize to img_size /
    eval_crop_ratio, centre crop) or an in-memory data set's (shorter side to img_size, centre crop)."""
    prep = run_config.get("preprocessing")
    if not prep:
        raise ValueError(f"{source} records no preprocessing (mean, std, size): it was not written by `deit train`")
    height, width = prep["img_size"]
    if height != width:
        raise ValueError(f"{source} trained on {height}x{width} images; only square images are supported")
    stream = run_config.get("data", {}).get("stream")
    return EvalPreprocessing(img_size=height, crop_ratio=stream["eval_crop_ratio"] if stream else 1.0,
                             in_chans=prep["in_chans"], mean=tuple(prep["mean"]), std=tuple(prep["std"]),
                             streamed=bool(stream), fast_decode=bool(stream and stream.get("fast_decode", False)))


def run_classes(run_config: dict) -> list[str]:
    """The class names a run recorded (a folder's names, a data set's), else their indices as text."""
    data = run_config.get("data", {})
    return data.get("classes") or [str(i) for i in range(data["num_classes"])]


def assumed_imagenet_preprocessing(img_size: int, in_chans: int) -> EvalPreprocessing:
    """For a checkpoint without a run's record (official DeiT, timm): DeiT's ImageNet evaluation (resize to
    img_size / 0.875, centre crop, ImageNet statistics), what those models were trained and evaluated with."""
    mean, std = (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD) if in_chans == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    return EvalPreprocessing(img_size=img_size, crop_ratio=0.875, in_chans=in_chans, mean=mean, std=std, streamed=True)
