"""Per-sample transforms for streamed image folders: the official DeiT build_transform, i.e. timm's create_transform.

Train (crop "rrc"): random-resized crop from the full-resolution image (bicubic) → flip → RandAugment → normalise
→ random erasing (pixel mode). Eval: resize the shorter side to int(img_size / eval_crop_ratio) (bicubic), centre crop.
No colour jitter: DeiT's RandAugment turns it off in create_transform, and AugmentConfig has none for the in-memory
path either."""

from __future__ import annotations

from typing import Sequence

from .augment import AugmentConfig, build_randaugment
from .folder import _resize_center_crop


class ResizeCenterCrop:
    """Shorter side to `size` (bicubic), centre crop: how the in-memory path decodes a folder, so a streamed split
    without augmentation gives the same pixels."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):
        return _resize_center_crop(img, self.size)

    def __repr__(self) -> str:
        return f"ResizeCenterCrop({self.size})"


def train_transform(augment: AugmentConfig | None, img_size: int, mean: Sequence[float], std: Sequence[float]):
    """The per-sample train transform; augment=None: resize + centre crop + normalise only."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment
    from torchvision import transforms

    if augment is None:
        tail = create_transform(img_size, is_training=False, mean=mean, std=std).transforms[-2:]  # tensor, normalise
        return transforms.Compose([ResizeCenterCrop(img_size), *tail])
    transform = create_transform(img_size, is_training=True, scale=augment.rrc_scale, hflip=augment.hflip,
                                 auto_augment=augment.randaugment, color_jitter=None, interpolation="bicubic",
                                 re_prob=augment.reprob, re_mode="pixel", re_count=1, mean=mean, std=std)
    steps = transform.transforms
    for i, step in enumerate(steps):
        if isinstance(step, RandAugment):  # ours: posterize valid at 0 bits, a fill value for grayscale images
            steps[i] = build_randaugment(augment.randaugment, (img_size, img_size), mean)
    if augment.crop == "none":
        steps[0] = ResizeCenterCrop(img_size)
    elif augment.crop == "pad":
        steps[0:1] = [ResizeCenterCrop(img_size), transforms.RandomCrop(img_size, padding=augment.pad)]
    return transform


def eval_transform(img_size: int, crop_ratio: float, mean: Sequence[float], std: Sequence[float]):
    """DeiT's eval transform: Resize(int(img_size / crop_ratio), bicubic) → CenterCrop(img_size) → normalise."""
    from timm.data import create_transform

    if not 0 < crop_ratio <= 1:
        raise ValueError(f"eval_crop_ratio must be in (0, 1], got {crop_ratio}")
    return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=crop_ratio, mean=mean,
                            std=std)
