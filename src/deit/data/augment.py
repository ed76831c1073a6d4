"""The DeiT train-time augmentations done batch-wise, in timm's order: random-resized crop (bicubic) + flip →
RandAugment (timm, per image, PIL) → normalise → random erasing (pixel mode). Crop, flip, normalise and erasing run
on the whole batch at once; RandAugment here is the per-image reference (randaugment_batch), which the in-memory
BatchLoader replaces by deit.data.batch_randaugment (the same pixels, a batch at a time)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..config import TrainConfig
from .seeding import seeded_global_rng


@dataclass(frozen=True)
class AugmentConfig:
    crop: str = "rrc"  # "rrc": RandomResizedCrop (bicubic); "pad": pad-and-random-crop (CIFAR style); "none"
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    pad: int = 4
    hflip: float = 0.5  # probability
    randaugment: str | None = "rand-m9-mstd0.5-inc1"  # timm RandAugment string
    reprob: float = 0.25  # random erasing probability (pixel mode)

    def __post_init__(self):
        if self.crop not in ("rrc", "pad", "none"):
            raise ValueError(f"crop must be 'rrc', 'pad' or 'none', got {self.crop!r}")
        if not 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1:
            raise ValueError(f"rrc_scale must satisfy 0 < min <= max <= 1, got {self.rrc_scale}")
        if self.pad < 0 or not 0 <= self.hflip <= 1 or not 0 <= self.reprob <= 1:
            raise ValueError(f"need pad >= 0 and probabilities in [0, 1]: pad={self.pad}, hflip={self.hflip}, "
                             f"reprob={self.reprob}")
        if self.randaugment is not None and not self.randaugment.startswith("rand"):
            raise ValueError(f"randaugment must be a timm 'rand-...' string or None, got {self.randaugment!r}")


def _uniform(shape, low, high, generator):
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _randint_inclusive(high: torch.Tensor, generator) -> torch.Tensor:
    """Per-element uniform integer in [0, high] (like random.randint(0, high))."""
    return (torch.rand(high.shape, generator=generator, dtype=torch.float64) * (high + 1)).floor().long()


def _first_valid(ok: torch.Tensor, *values: torch.Tensor):
    """For each row, the values at the first attempt where ok holds (rows with none: anything), and whether any did."""
    first = ok.int().argmax(dim=1, keepdim=True)
    return ok.any(dim=1), *(v.gather(1, first).squeeze(1) for v in values)


def random_resized_crop_boxes(batch: int, height: int, width: int, scale: tuple[float, float], generator,
                              ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """timm's RandomResizedCrop.get_params for a whole batch: long [B, 4] rows (top, left, h, w)."""
    area = height * width
    target_area = _uniform((batch, attempts), *scale, generator) * area
    aspect = torch.exp(_uniform((batch, attempts), math.log(ratio[0]), math.log(ratio[1]), generator))
    w = torch.sqrt(target_area * aspect).round().long()
    h = torch.sqrt(target_area / aspect).round().long()
    found, h, w = _first_valid((w <= width) & (h <= height) & (w > 0) & (h > 0), h, w)
    top, left = _randint_inclusive(height - h, generator), _randint_inclusive(width - w, generator)
    # Fallback after 10 misses: the central crop of the whole image with its aspect ratio clamped to `ratio`.
    fallback_w, fallback_h = width, height
    if width / height < min(ratio):
        fallback_h = round(width / min(ratio))
    elif width / height > max(ratio):
        fallback_w = round(height * max(ratio))
    h = torch.where(found, h, fallback_h)
    w = torch.where(found, w, fallback_w)
    top = torch.where(found, top, (height - fallback_h) // 2)
    left = torch.where(found, left, (width - fallback_w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _bicubic_taps(t: torch.Tensor) -> torch.Tensor:
    """Weights of taps -1, 0, 1, 2 around a sample at fraction t of a pixel: Keys' cubic with a = -0.5 (PIL's bicubic)."""
    a, s = -0.5, 1 - t
    return torch.stack([a * t * s * s, ((a + 2) * t - (a + 3)) * t * t + 1,
                        ((a + 2) * s - (a + 3)) * s * s + 1, a * s * t * t], dim=-1)


def crop_resize_matrices(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                         flip: torch.Tensor | None = None) -> torch.Tensor:
    """[B, out_size, in_size] matrices that crop [start, start + length) of each row of pixels and resize it to
    out_size with PIL's bicubic (taps restricted to the crop and renormalised, as PIL resizing the cropped image does;
    only valid for enlarging, which a crop resized back to the image size always is), mirrored where `flip`."""
    start, length = start.double()[:, None], length.double()[:, None]
    centres = start + (torch.arange(out_size, dtype=torch.float64) + 0.5) * (length / out_size) - 0.5
    if flip is not None:
        centres = torch.where(flip[:, None], centres.flip(1), centres)
    first = centres.floor()
    taps = first[..., None] + torch.arange(-1, 3)  # [B, out, 4]
    weights = _bicubic_taps(centres - first) * ((taps >= start[..., None]) & (taps < (start + length)[..., None]))
    weights /= weights.sum(-1, keepdim=True)
    matrices = torch.zeros(*taps.shape[:2], in_size, dtype=torch.float64)
    return matrices.scatter_add_(2, taps.long().clamp_(0, in_size - 1), weights).float()


# Crops of images up to this size read their matrices from a table of every (start, length) (~10 MB at 40 px).
_TABLE_MAX_SIZE = 48


@functools.lru_cache(maxsize=4)
def _crop_resize_table(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """crop_resize_matrices for every crop of a row of in_size pixels, plain then mirrored: (matrices
    [2 n, out_size, in_size] float32, their index [flip, start, length] long; -1 where start + length > in_size)."""
    start, length = torch.triu_indices(in_size + 1, in_size + 1, offset=1)  # start < end <= in_size
    length = length - start
    index = torch.full((2, in_size, in_size + 1), -1, dtype=torch.long)
    index[0, start, length] = torch.arange(len(start))
    index[1, start, length] = torch.arange(len(start)) + len(start)
    matrices = crop_resize_matrices(start, length, in_size, out_size)
    return torch.cat([matrices, matrices.flip(1)]), index


def crop_resize_rows(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                     flip: torch.Tensor | None = None) -> torch.Tensor:
    """crop_resize_matrices, the same values: for small images looked up in a table of every crop (each matrix row is
    computed alone, so a batch's matrices do not depend on the batch; a mirror reverses the output rows) instead of
    ~15 tensor ops per batch."""
    if in_size > _TABLE_MAX_SIZE:
        return crop_resize_matrices(start, length, in_size, out_size, flip)
    table, index = _crop_resize_table(in_size, out_size)
    return table[index[0 if flip is None else flip.long(), start, length]]


def shift_matrices(offset: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """[B, size, size] 0/1 matrices: output pixel i takes input pixel offset + i, zero where that falls outside."""
    sources = offset[:, None] + torch.arange(size)
    if flip is not None:
        sources = torch.where(flip[:, None], sources.flip(1), sources)
    inside = ((sources >= 0) & (sources < size)).float()
    return torch.zeros(len(offset), size, size).scatter_(2, sources.clamp(0, size - 1)[..., None], inside[..., None])


def apply_separable(images: torch.Tensor, row_matrices: torch.Tensor, col_matrices: torch.Tensor) -> torch.Tensor:
    """out[b] = row_matrices[b] @ images[b] @ col_matrices[b]^T for every channel: any per-sample crop, resize,
    shift or mirror that acts on rows and columns separately, in two batched matmuls."""
    return row_matrices[:, None] @ images.float() @ col_matrices.transpose(1, 2)[:, None]


def random_resized_crop(images: torch.Tensor, scale: tuple[float, float], flip: torch.Tensor, generator):
    """timm's RandomResizedCropAndInterpolation (bicubic) + horizontal flip for a batch; float result in [0, 255]."""
    _, _, height, width = images.shape
    top, left, h, w = random_resized_crop_boxes(len(images), height, width, scale, generator).unbind(1)
    rows = crop_resize_rows(top, h, height, height)
    cols = crop_resize_rows(left, w, width, width, flip)
    return apply_separable(images, rows, cols).clamp_(0, 255)


def pad_random_crop(images: torch.Tensor, pad: int, flip: torch.Tensor, generator) -> torch.Tensor:
    """torchvision RandomCrop(size, padding=pad) (zero fill) + horizontal flip for a batch; float result."""
    batch, _, height, width = images.shape
    top = torch.randint(0, 2 * pad + 1, (batch,), generator=generator) - pad
    left = torch.randint(0, 2 * pad + 1, (batch,), generator=generator) - pad
    return apply_separable(images, shift_matrices(top, height), shift_matrices(left, width, flip))


def random_erase_(x: torch.Tensor, probability: float, generator, min_area: float = 0.02, max_area: float = 1 / 3,
                  min_aspect: float = 0.3, attempts: int = 10) -> torch.Tensor:
    """timm RandomErasing(mode="pixel", count 1) on a normalised batch, in place: with `probability` per image, one
    rectangle (area fraction U(min_area, max_area), log-uniform aspect in [min_aspect, 1/min_aspect], first of 10
    attempts that fits strictly inside) is replaced by per-pixel N(0, 1) noise."""
    batch, channels, height, width = x.shape
    chosen = torch.rand(batch, generator=generator) < probability
    target_area = _uniform((batch, attempts), min_area, max_area, generator) * (height * width)
    aspect = torch.exp(_uniform((batch, attempts), math.log(min_aspect), -math.log(min_aspect), generator))
    h = torch.sqrt(target_area * aspect).round().long()
    w = torch.sqrt(target_area / aspect).round().long()
    found, h, w = _first_valid((w < width) & (h < height), h, w)
    top, left = _randint_inclusive(height - h, generator), _randint_inclusive(width - w, generator)
    erased = (chosen & found).nonzero().flatten()
    if len(erased):  # one draw of whole images of noise for the erased ones, each keeping its rectangle
        noise = torch.randn((len(erased), channels, height, width), generator=generator, dtype=x.dtype)
        boxes = torch.stack([erased, top[erased], left[erased], h[erased], w[erased]], 1).tolist()
        for j, (i, t, l, hh, ww) in enumerate(boxes):
            x[i, :, t:t + hh, l:l + ww] = noise[j, :, t:t + hh, l:l + ww]
    return x


def erase_box(probability: float, height: int, width: int, min_area: float = 0.02, max_area: float = 1 / 3,
              min_aspect: float = 0.3) -> list[int]:
    """The rectangle timm's RandomErasing(probability, mode="pixel", count 1) erases in one image, drawn with its
    exact python-random draws, as [top, left, h, w, noise_seed] (h = 0: nothing erased); the per-pixel N(0, 1) noise
    comes later from noise_seed (erase_rectangles_), so a worker hands over five integers instead of erasing."""
    import random

    if random.random() > probability:
        return [0, 0, 0, 0, 0]
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target_area = random.uniform(min_area, max_area) * height * width
        aspect = math.exp(random.uniform(*log_aspect))
        h, w = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if w < width and h < height:
            top, left = random.randint(0, height - h), random.randint(0, width - w)
            return [top, left, h, w, random.getrandbits(62)]
    return [0, 0, 0, 0, 0]


def erase_rectangles_(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Apply erase_box's rectangles to a normalised batch in place: rows [top, left, h, w, noise_seed] of boxes
    (long [B, 5]); each rectangle gets per-pixel N(0, 1) noise from its own seed on x's device, so a sample's noise
    does not depend on the batch it is in (ranks, workers)."""
    for i in (boxes[:, 2] > 0).nonzero().flatten().tolist():
        top, left, h, w, noise_seed = boxes[i].tolist()
        generator = torch.Generator(x.device).manual_seed(noise_seed)
        x[i, :, top:top + h, left:left + w] = torch.randn((x.shape[1], h, w), generator=generator, device=x.device,
                                                          dtype=x.dtype)
    return x


def _posterize_any_bits(img, bits_to_keep, **_):
    """timm's posterize, valid for 0 bits: recent Pillow (13 here) raises on bits=0, which 'rand-m9-mstd0.5-inc1'
    asks for whenever the noisy magnitude reaches 10 (about 2 % of uses; a crash mid-training); older Pillow returned
    a black image, so do that."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, bits_to_keep)


def build_randaugment(config_str: str, img_size: tuple[int, int], mean: Sequence[float], opencv: bool = False):
    """timm's rand_augment_transform with the hyper-parameters timm's create_transform (and so DeiT) gives it;
    opencv: its geometric ops resample through OpenCV where installed (deit.data.warp: timm's draws and matrices,
    the whole transform ~2x faster on 224-px crops, bicubic pixels close to PIL's but not equal)."""
    from PIL import Image
    from timm.data import auto_augment

    fill = tuple(min(255, round(255 * m)) for m in mean)
    hparams = dict(translate_const=int(min(img_size) * 0.45), img_mean=fill if len(fill) > 1 else fill[0],
                   interpolation=Image.BICUBIC)
    transform = auto_augment.rand_augment_transform(config_str, hparams)
    for op in transform.ops:
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = _posterize_any_bits
    if opencv:
        from .warp import opencv_geometric_ops

        opencv_geometric_ops(transform)
    return transform


def randaugment_batch(images: torch.Tensor, transform, seed: int) -> torch.Tensor:
    """Apply a PIL transform to each uint8 image of a batch, its global-RNG draws seeded by `seed` and then undone."""
    from PIL import Image

    pixels = images.permute(0, 2, 3, 1).numpy()  # [B, H, W, C]
    gray = pixels.shape[-1] == 1
    with seeded_global_rng(seed):
        out = [np.asarray(transform(Image.fromarray(p[..., 0] if gray else p))) for p in pixels]
    out = np.stack(out)
    return torch.from_numpy(out[..., None] if gray else out).permute(0, 3, 1, 2).contiguous()


def augment_config(config: TrainConfig) -> AugmentConfig:
    """The train-time augmentation a run config asks for."""
    return AugmentConfig(crop=config.crop, rrc_scale=(config.rrc_scale_min, 1.0), hflip=config.hflip,
                         randaugment=config.randaugment, reprob=config.reprob)
