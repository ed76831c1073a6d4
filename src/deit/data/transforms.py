"""Per-sample transforms for streamed image folders: the official DeiT build_transform (timm's create_transform),
up to the uint8 crop; normalising and random erasing run once per batch (stream.py, augment.erase_rectangles_).

Train (crop "rrc"): random-resized crop (bicubic) and flip in one step → RandAugment → uint8 tensor; the erasing
rectangle is drawn here with timm's draws (augment.erase_box) and applied to the batch. Eval: resize the shorter side
to int(img_size / eval_crop_ratio) (bicubic), centre crop. Both take an EncodedImage: the crop is chosen from the
header's size, and a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the crop at the
output size, and a full-scale crop is resized by torch's uint8 bicubic (antialiased, 5x faster than PIL's; values
within 1 of PIL's but for ~0.1 % at sharp edges), and RandAugment's geometric ops resample through OpenCV where
installed (deit.data.warp: timm's draws and matrices, bicubic close to PIL's); fast=False: timm's pixels exactly,
PIL decoding, resizing and warping everything). No colour jitter: DeiT's RandAugment turns it off in
create_transform, and AugmentConfig has none for the in-memory path either."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .augment import AugmentConfig, build_randaugment
from .folder import EncodedImage, _resize_center_crop


def _decoded(img, at_least=None, box=None, array=False):
    """(PIL image, box in it) of an EncodedImage decoded (see EncodedImage.decode) or of a PIL image."""
    if isinstance(img, EncodedImage):
        return img.decode(at_least, box, array)
    return img, box or (0, 0, *img.size)


class DecodeRandomResizedCrop:
    """timm's RandomResizedCropAndInterpolation (bicubic), its box drawn from the header's size by timm's own
    get_params (the same python-random draws). fast: the file decoded at the smallest DCT scale at which the box
    still covers `size` and the box (scaled, fractional) resized from there by PIL; at full scale the box resized by
    torch's uint8 bicubic with antialiasing (5x faster here; values within 1 of PIL's but for ~0.1 % at sharp
    edges, where the two round their intermediate pass differently). fast=False: timm's pixels
    exactly (full decode, PIL crop + resize). PSNR against timm's pixels in docs/performance.md."""

    def __init__(self, size: int, scale: tuple[float, float], ratio=(3 / 4, 4 / 3), fast: bool = True,
                 hflip: float = 0.0):
        self.size, self.scale, self.ratio, self.fast = (size, size), tuple(scale), tuple(ratio), fast
        self.hflip = hflip  # torchvision's RandomHorizontalFlip(hflip) folded in: its torch.rand draw, after the box's

    def __call__(self, img):
        box, at_least = self.plan(img)
        flip = self.hflip > 0 and bool(torch.rand(1) < self.hflip)
        return self.crop_resize(*_decoded(img, at_least, box, array=self.fast), flip=flip)

    def plan(self, header):
        """The crop box (left, top, right, bottom) by timm's get_params on the size of `header` (an EncodedImage or a
        PIL image), and the whole image's size at which the box would be `size` (what the decoder must cover; None:
        decode in full)."""
        from timm.data.transforms import RandomResizedCropAndInterpolation

        width, height = header.size
        size_only = torch.empty(1, dtype=torch.uint8).expand(height, width)  # get_params reads only the size
        top, left, h, w = RandomResizedCropAndInterpolation.get_params(size_only, self.scale, self.ratio)
        at_least = (math.ceil(width * self.size[0] / w), math.ceil(height * self.size[1] / h)) if self.fast else None
        return (left, top, left + w, top + h), at_least

    def crop_resize(self, img, box, flip: bool = False):
        """The box of img (a PIL image, or fast: a uint8 [H, W, C] array; box in its pixels) resized to size,
        bicubic (see the class), mirrored left-right if flip."""
        from PIL import Image

        if not all(float(b).is_integer() for b in box):  # reduced scale: PIL resamples the fractional box
            out = img.resize(self.size, Image.BICUBIC, box=box)
            return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out
        left, top, right, bottom = (int(b) for b in box)
        if not self.fast:  # torchvision's F.resized_crop on PIL, as timm calls it, and F.hflip
            out = img.crop((left, top, right, bottom)).resize(self.size, Image.BICUBIC)
            return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out
        pixels = (img if isinstance(img, np.ndarray) else np.array(img))[top:bottom, left:right]  # writable
        pixels = torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1)[None]
        # channels-last contiguous in: torch's vectorised uint8 kernel, and a channels-last result that is PIL's layout
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        out = torch.nn.functional.interpolate(pixels, size=self.size, mode="bicubic", antialias=True)
        out = (out.flip(3) if flip else out)[0].permute(1, 2, 0).numpy()  # flip keeps channels-last: PIL's layout
        return Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out)

    def __repr__(self) -> str:
        return (f"DecodeRandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, fast={self.fast}, "
                f"hflip={self.hflip})")


class DecodeResizeCenterCrop:
    """DeiT's eval crop, torchvision's Resize(resize_to, bicubic) + CenterCrop(size), from a file decoded at the
    smallest DCT scale still at least twice the resized size (fast=False, or a file too small for it: exactly
    torchvision's pixels)."""

    def __init__(self, resize_to: int, size: int, fast: bool = True):
        from torchvision import transforms

        self.resize_to, self.size, self.fast = resize_to, size, fast
        bicubic = transforms.InterpolationMode.BICUBIC
        self.crop = transforms.Compose([transforms.Resize(resize_to, interpolation=bicubic), transforms.CenterCrop(size)])

    def __call__(self, img):
        at_least = None
        if self.fast and isinstance(img, EncodedImage):
            w, h = img.size  # torchvision Resize(int): the shorter side to resize_to, the longer truncated; twice
            # that, so PIL's antialiased resize still does the last >= 2x (eval PSNR: docs/performance.md)
            at_least = (2 * self.resize_to, 2 * int(self.resize_to * h / w)) if w <= h else \
                (2 * int(self.resize_to * w / h), 2 * self.resize_to)
        return self.crop(_decoded(img, at_least)[0])

    def __repr__(self) -> str:
        return f"DecodeResizeCenterCrop(resize_to={self.resize_to}, size={self.size}, fast={self.fast})"


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


def train_transform(augment: AugmentConfig | None, img_size: int, mean: Sequence[float], fast: bool = True):
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
    if augment.crop == "rrc" and type(steps[1]).__name__ == "RandomHorizontalFlip":  # folded in: a copy fewer
        steps[0:2] = [DecodeRandomResizedCrop(img_size, augment.rrc_scale, steps[0].ratio, fast, augment.hflip)]
    else:
        steps[0] = DecodeRandomResizedCrop(img_size, augment.rrc_scale, steps[0].ratio, fast)
    for i, step in enumerate(steps):
        if isinstance(step, RandAugment):  # ours: posterize valid at 0 bits, a fill value for grayscale images,
            # fast: the geometric ops warped by OpenCV (deit.data.warp)
            steps[i] = build_randaugment(augment.randaugment, (img_size, img_size), mean, opencv=fast)
    if augment.crop == "none":
        steps[0] = ResizeCenterCrop(img_size)
    elif augment.crop == "pad":
        steps[0:1] = [ResizeCenterCrop(img_size), transforms.RandomCrop(img_size, padding=augment.pad)]
    tail = [type(step).__name__ for step in steps[-2:]]
    if tail not in (["ToTensor", "Normalize"], ["MaybeToTensor", "Normalize"]):
        raise RuntimeError(f"create_transform no longer ends in ToTensor + Normalize: {transform}")
    steps[-2:] = [ToUint8Tensor()]
    return transform


def eval_transform(img_size: int, crop_ratio: float, fast: bool = True):
    """DeiT's eval transform up to the uint8 crop: Resize(int(img_size / crop_ratio), bicubic) → CenterCrop(img_size)
    (what timm's create_transform builds), EncodedImage (or PIL image) -> uint8 [C, H, W]."""
    from torchvision import transforms

    if not 0 < crop_ratio <= 1:
        raise ValueError(f"eval_crop_ratio must be in (0, 1], got {crop_ratio}")
    return transforms.Compose([DecodeResizeCenterCrop(int(img_size / crop_ratio), img_size, fast), ToUint8Tensor()])


def eval_pixels(data, indices) -> torch.Tensor:
    """uint8 [N, C, img_size, img_size]: samples of a streamed split as its eval transform crops them, before
    normalising (for pictures of what the model saw; normalised, these are the model's input)."""
    crop = eval_transform(data.img_size[0], data.eval_crop_ratio, data.fast_decode)
    return torch.stack([crop(data.encoded(int(i))[0]) for i in indices])
