"""Image folders (root/{train,val}/<class>/<image>): listing, decoding any PIL mode to L or RGB, and loading a split
into memory at one size (also how `deit predict` decodes its inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .imagedata import ImageData

# Image folders use the ImageNet statistics (what DeiT and pretrained weights expect); a grayscale folder uses their
# channel average, as timm does for in_chans=1. Fixed constants keep train and val normalised identically.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD = (0.449,), (0.226,)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


def _is_grayscale_mode(mode: str) -> bool:
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _convert_image(img, grayscale: bool):
    """Bring any PIL mode to "L" (grayscale=True) or "RGB": 16-bit scaled down, transparency composited on white."""
    from PIL import Image

    if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit grayscale (PNG): scale, don't clip, to 8 bits
        img = Image.fromarray((np.asarray(img, dtype=np.float32) / 257.0).round().clip(0, 255).astype(np.uint8))
    has_alpha = img.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    target = "L" if grayscale else "RGB"
    if img.mode != target:
        img = img.convert(target)  # CMYK, P, YCbCr, ... use PIL's conversions
    return img


def _resize_center_crop(img, size: int):
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_imagefolder(path: str, split: str, img_size: int | None) -> ImageData:
    if img_size is None:
        raise ValueError(f"imagefolder:{path} needs img_size: every image is decoded once into memory at that size")
    root = Path(path).expanduser()
    train_dir, split_dir = root / "train", root / split
    for folder in {train_dir, split_dir}:
        if not folder.is_dir():
            raise FileNotFoundError(f"imagefolder:{path}: expected {folder} with one sub-folder per class")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"imagefolder:{path}: no class folders in {train_dir}")
    split_classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    unknown = sorted(set(split_classes) - set(classes))
    if unknown:
        raise ValueError(f"imagefolder:{path}: classes {unknown} in {split_dir} have no folder in {train_dir}")
    files = [(f, label) for label, c in enumerate(classes) for f in image_files(split_dir / c)]
    if not files:
        raise ValueError(f"imagefolder:{path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {split_dir}")

    # The channel count is decided by the train split (headers only), so both splits agree.
    train_files = [f for c in classes for f in image_files(train_dir / c)] if split != "train" else [f for f, _ in files]
    grayscale = all(_is_grayscale_mode(_image_mode(f)) for f in train_files)
    images = read_images([f for f, _ in files], img_size, grayscale)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    mean, std = (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD) if grayscale else (IMAGENET_MEAN, IMAGENET_STD)
    return ImageData(images, labels, classes, mean, std, f"imagefolder:{path}", split)


def read_images(files, img_size: int, grayscale: bool) -> torch.Tensor:
    """Image files -> uint8 [N, C, img_size, img_size] (C = 1 if grayscale else 3): any mode converted, the shorter
    side resized to img_size (bicubic), then centre-cropped; the same decoding for training data and prediction."""
    channels = 1 if grayscale else 3
    images = torch.empty((len(files), channels, img_size, img_size), dtype=torch.uint8)
    for i, f in enumerate(files):
        with _open_image(Path(f)) as img:
            pixels = np.asarray(_resize_center_crop(_convert_image(img, grayscale), img_size))
        images[i] = torch.from_numpy(pixels.reshape(img_size, img_size, channels).transpose(2, 0, 1).copy())
    return images


def _image_mode(path: Path) -> str:
    with _open_image(path) as img:  # reads the header only
        return img.mode


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
