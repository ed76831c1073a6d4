"""Per-sample transforms for streamed image folders: the official DeiT build_transform (timm's create_transform),
up to the uint8 crop; normalising and random erasing run once per batch (stream.py, augment.erase_rectangles_).

Train (crop "rrc"): random-resized crop (bicubic) → flip → RandAugment → uint8 tensor; the erasing rectangle is drawn
here with timm's draws (augment.erase_box) and applied to the batch. Eval: resize the shorter side to
int(img_size / eval_crop_ratio) (bicubic), centre crop. Both take an EncodedImage: the crop is chosen from the
header's size, and a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the crop at the
output size (reduce=False: in full, timm's pixels exactly). No colour jitter: DeiT's RandAugment turns it off in
create_transform, and AugmentConfig has none for the in-memory path either."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .augment import AugmentConfig, build_randaugment
from .folder import EncodedImage, _resize_center_crop


def _decoded(img, at_least=None):
    """(PIL image, reduction factor) of an EncodedImage decoded (at_least: see EncodedImage.decode) or a PIL image."""
    return img.decode(at_least) if isinstance(img, EncodedImage) else (img, 1)


class DecodeRandomResizedCrop:
    """timm's RandomResizedCropAndInterpolation (bicubic), its box drawn from the header's size by timm's own
    get_params (the same python-random draws), then the file decoded at the smallest scale at which the box still
    covers `size` and the box (scaled) resized from there. At scale 1 (small files, or reduce=False) the pixels are
    timm's exactly; reduced, they differ by the DCT scaling (PSNR in docs/performance.md)."""

    def __init__(self, size: int, scale: tuple[float, float], ratio=(3 / 4, 4 / 3), reduce: bool = True):
        self.size, self.scale, self.ratio, self.reduce = (size, size), tuple(scale), tuple(ratio), reduce

    def __call__(self, img):
        from PIL import Image
        from timm.data.transforms import RandomResizedCropAndInterpolation

        header = img.header if isinstance(img, EncodedImage) else img
        top, left, h, w = RandomResizedCropAndInterpolation.get_params(header, self.scale, self.ratio)
        width, height = header.size
        at_least = (math.ceil(width * self.size[0] / w), math.ceil(height * self.size[1] / h)) if self.reduce else None
        img, f = _decoded(img, at_least)  # the whole file at the size where the box is >= size
        if f == 1:  # torchvision's F.resized_crop on PIL, as timm calls it
            return img.crop((left, top, left + w, top + h)).resize(self.size, Image.BICUBIC)
        return img.resize(self.size, Image.BICUBIC, box=(left / f, top / f, (left + w) / f, (top + h) / f))

    def __repr__(self) -> str:
        return f"DecodeRandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, reduce={self.reduce})"


class DecodeResizeCenterCrop:
    """DeiT's eval crop, torchvision's Resize(resize_to, bicubic) + CenterCrop(size), from a file decoded at the
    smallest DCT scale still at least the resized size (reduce=False, or a file too small for it: exactly
    torchvision's pixels)."""

    def __init__(self, resize_to: int, size: int, reduce: bool = True):
        from torchvision import transforms

        self.resize_to, self.size, self.reduce = resize_to, size, reduce
        self.crop = transforms.Compose([transforms.Resize(resize_to, interpolation=transforms.InterpolationMode.BICUBIC),
                                        transforms.CenterCrop(size)])

    def __call__(self, img):
        at_least = None
        if self.reduce and isinstance(img, EncodedImage):
            w, h = img.size  # torchvision Resize(int): the shorter side to resize_to, the longer truncated
            at_least = (self.resize_to, int(self.resize_to * h / w)) if w <= h else \
                (int(self.resize_to * w / h), self.resize_to)
        return self.crop(_decoded(img, at_least)[0])

    def __repr__(self) -> str:
        return f"DecodeResizeCenterCrop(resize_to={self.resize_to}, size={self.size}, reduce={self.reduce})"


class ToUint8Tensor:
    """A PIL image ("L" or "RGB") as uint8 [C, H, W] (torchvision's PILToTensor): what a worker hands to the batch,
    a quarter of the bytes of a float image; normalising runs once per batch."""

    def __call__(self, img) -> torch.Tensor:
        pixels = np.asarray(img)
        pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)  # L: [H, W] -> [H, W, 1]
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())  # PIL arrays are read-only

    def __repr__(self) -> str:
        return "ToUint8Tensor()"


class ResizeCenterCrop:
    """Shorter side to `size` (bicubic), centre crop: how the in-memory path decodes a folder, so a streamed split
    without augmentation gives the same pixels."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):
        return _resize_center_crop(_decoded(img)[0], self.size)

    def __repr__(self) -> str:
        return f"ResizeCenterCrop({self.size})"


def train_transform(augment: AugmentConfig | None, img_size: int, mean: Sequence[float], reduce: bool = True):
    """The per-sample train transform, EncodedImage (or PIL image) -> uint8 [C, H, W]; augment=None: resize + centre
    crop only. timm's create_transform with its ToTensor, Normalize and RandomErasing left to the batch."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment
    from torchvision import transforms

    if augment is None:
        return transforms.Compose([ResizeCenterCrop(img_size), ToUint8Tensor()])
    transform = create_transform(img_size, is_training=True, scale=augment.rrc_scale, hflip=augment.hflip,
                                 auto_augment=augment.randaugment, color_jitter=None, interpolation="bicubic",
                                 re_prob=0.0, mean=mean)
    steps = transform.transforms
    steps[0] = DecodeRandomResizedCrop(img_size, augment.rrc_scale, steps[0].ratio, reduce)
    for i, step in enumerate(steps):
        if isinstance(step, RandAugment):  # ours: posterize valid at 0 bits, a fill value for grayscale images
            steps[i] = build_randaugment(augment.randaugment, (img_size, img_size), mean)
    if augment.crop == "none":
        steps[0] = ResizeCenterCrop(img_size)
    elif augment.crop == "pad":
        steps[0:1] = [ResizeCenterCrop(img_size), transforms.RandomCrop(img_size, padding=augment.pad)]
    tail = [type(step).__name__ for step in steps[-2:]]
    if tail not in (["ToTensor", "Normalize"], ["MaybeToTensor", "Normalize"]):
        raise RuntimeError(f"create_transform no longer ends in ToTensor + Normalize: {transform}")
    steps[-2:] = [ToUint8Tensor()]
    return transform


def eval_transform(img_size: int, crop_ratio: float, reduce: bool = True):
    """DeiT's eval transform up to the uint8 crop: Resize(int(img_size / crop_ratio), bicubic) → CenterCrop(img_size)
    (what timm's create_transform builds), EncodedImage (or PIL image) -> uint8 [C, H, W]."""
    from torchvision import transforms

    if not 0 < crop_ratio <= 1:
        raise ValueError(f"eval_crop_ratio must be in (0, 1], got {crop_ratio}")
    return transforms.Compose([DecodeResizeCenterCrop(int(img_size / crop_ratio), img_size, reduce), ToUint8Tensor()])


def eval_pixels(data, indices) -> torch.Tensor:
    """uint8 [N, C, img_size, img_size]: samples of a streamed split as its eval transform crops them, before
    normalising (for pictures of what the model saw; normalised, these are the model's input)."""
    crop = eval_transform(data.img_size[0], data.eval_crop_ratio, data.reduced_decode)
    return torch.stack([crop(data.encoded(int(i))[0]) for i in indices])
