"""Data: in-memory image splits, class-stratified subsets, the DeiT augmentations done batch-wise, and a loader whose
every batch is a pure function of (seed, epoch, batch index, rank).

Whole splits are held in memory as uint8 [N, C, H, W] (Fashion-MNIST train is 47 MB), so a batch is a tensor gather.
Train-time augmentation follows the DeiT recipe (facts §4) in timm's order: random-resized crop (bicubic) + flip →
RandAugment (timm, per image, PIL) → normalise → random erasing (pixel mode). Crop, flip, normalise and erasing run on
the whole batch at once; RandAugment is the per-image cost and can move into DataLoader worker processes.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import random
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

CACHE_DIR = Path.home() / ".cache" / "deit"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Train-split statistics; used for both splits so train and val are normalised identically.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
# Image folders use the ImageNet statistics (what DeiT and pretrained weights expect); a grayscale folder uses their
# channel average, as timm does for in_chans=1. Fixed constants keep train and val normalised identically.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD = (0.449,), (0.226,)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
SPLITS = ("train", "val")
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049


# ----------------------------------------------------------------------------------------------------- data sets


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
        return _load_imagefolder(name.split(":", 1)[1], split, img_size)
    if key in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        data = _load_fashion_mnist(split, data_dir, download)
    elif key in CIFAR_STATS:
        data = _load_cifar(key, split, data_dir, download)
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


# Fashion-MNIST ------------------------------------------------------------------------------------------------


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Parse a (gzipped) IDX file of uint8 data; any inconsistency is a ValueError naming the file."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: truncated or corrupt compressed file ({e}); download it again") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: file too short ({len(raw)} bytes) to be an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: bad IDX magic number {magic}, expected {expected_magic} "
                         f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'} file)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise ValueError(f"{path}: shape {shape} needs {expected} data bytes, found {len(raw) - header} "
                         "(truncated or corrupt file)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _missing_fashion_mnist(searched: list[Path], cause: str = "") -> FileNotFoundError:
    names = ", ".join(f"{stem}.gz" for pair in FASHION_MNIST_FILES.values() for stem in pair)
    return FileNotFoundError(
        f"Fashion-MNIST not found (looked in {', '.join(map(str, searched))}){cause}. Get it by installing the Debian "
        f"package (sudo apt-get install dataset-fashion-mnist, which puts the files in {FASHION_MNIST_SYSTEM_DIR}), "
        f"or by putting the four files {names} (from {FASHION_MNIST_URL} or "
        "https://github.com/zalandoresearch/fashion-mnist/tree/master/data/fashion) in a folder and passing it as "
        "--data-dir, or by running once with internet access and download enabled (files go to "
        f"{CACHE_DIR}/FashionMNIST/raw).")


def _find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for stem in FASHION_MNIST_FILES[split]:
        path = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _load_fashion_mnist(split: str, data_dir: str | None, download: bool) -> ImageData:
    # An explicit data_dir is the only place searched (and the download target); otherwise the Debian package's folder
    # and then our cache. torchvision keeps its download under <root>/FashionMNIST/raw.
    root = Path(data_dir).expanduser() if data_dir else CACHE_DIR
    searched = [root if data_dir else FASHION_MNIST_SYSTEM_DIR, root / "FashionMNIST" / "raw"]
    pair = next(filter(None, (_find_idx_pair(folder, split) for folder in searched)), None)
    if pair is None and download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=split == "train", download=True)
        except Exception as e:  # offline, mirror down, ...: fall through to the explanation
            raise _missing_fashion_mnist(searched, f"; the download failed: {e}") from e
        pair = _find_idx_pair(root / "FashionMNIST" / "raw", split)
    if pair is None:
        raise _missing_fashion_mnist(searched)
    images_path, labels_path = pair
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected 28x28 images, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path}: label {labels.max()} outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return ImageData(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                     list(FASHION_MNIST_CLASSES), FASHION_MNIST_MEAN, FASHION_MNIST_STD, "fashion-mnist", split)


# CIFAR --------------------------------------------------------------------------------------------------------


def _load_cifar(name: str, split: str, data_dir: str | None, download: bool) -> ImageData:
    from torchvision import datasets

    root = Path(data_dir).expanduser() if data_dir else CACHE_DIR
    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        ds = dataset_class(str(root), train=split == "train", download=download)
    except (RuntimeError, OSError) as e:  # "Dataset not found or corrupted", URLError when offline
        raise FileNotFoundError(
            f"{name} not found under {root} ({e}). Run once with internet access and download enabled, or download "
            f"{dataset_class.url} and extract it into {root} (giving {root / dataset_class.base_folder}), "
            "then pass --data-dir if that is not the default folder.") from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # NHWC -> NCHW, uint8
    mean, std = CIFAR_STATS[name]
    return ImageData(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes), mean, std, name, split)


# Image folders ------------------------------------------------------------------------------------------------


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


def _load_imagefolder(path: str, split: str, img_size: int | None) -> ImageData:
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


# ------------------------------------------------------------------------------------------- stratified subsets


def stratified_subset(labels: torch.Tensor, size: int | float, seed: int) -> torch.Tensor:
    """Sorted indices of a class-stratified random subset: `size` samples (int >= 1) or that fraction (float in (0, 1]).

    Per-class counts are proportional with largest-remainder rounding, so the total is exact; when size >= the number
    of classes, every class present keeps at least one sample. Deterministic given seed."""
    labels = torch.as_tensor(labels).long()
    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"subset size must be an int count or a float fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 < size <= 1.0:
            raise ValueError(f"subset fraction must be in (0, 1], got {size}")
        total = max(1, round(size * n))
    else:
        total = size
    if not 1 <= total <= n:
        raise ValueError(f"subset size must be between 1 and {n} (the number of samples), got {size}")

    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * total / n
    alloc = quota.floor().long()
    remainder = total - int(alloc.sum())
    by_fraction = torch.sort(quota - alloc, descending=True, stable=True).indices  # ties: lower class first
    alloc[by_fraction[:remainder]] += 1
    if total >= len(classes):
        for empty in torch.nonzero(alloc == 0).flatten().tolist():
            surplus = torch.where(alloc > 1, alloc - quota, torch.full_like(quota, -math.inf))
            alloc[int(surplus.argmax())] -= 1  # the class most over its exact share gives one up
            alloc[empty] = 1

    generator = torch.Generator().manual_seed(_derive_seed(seed, "subset"))
    chosen = []
    for c, k in zip(classes.tolist(), alloc.tolist()):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.sort(torch.cat(chosen)).values


# ---------------------------------------------------------------------------------------------- randomness


def _derive_seed(seed: int, *keys) -> int:
    """A 64-bit seed that is a pure function of (seed, keys); string keys separate independent streams."""
    words = [int(seed) & 0xFFFFFFFFFFFFFFFF] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


@contextlib.contextmanager
def _seeded_global_rng(seed: int):
    """Seed python `random` and numpy's global RNG (timm's RandAugment draws from them) and restore them after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


# -------------------------------------------------------------------------------------------- augmentation


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
    rows = crop_resize_matrices(top, h, height, height)
    cols = crop_resize_matrices(left, w, width, width, flip)
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
    erase = chosen & found
    if erase.any():
        rows, cols = torch.arange(height), torch.arange(width)
        inside = ((rows >= top[:, None]) & (rows < (top + h)[:, None]))[:, :, None] & \
                 ((cols >= left[:, None]) & (cols < (left + w)[:, None]))[:, None, :]
        selected = x[erase]
        noise = torch.randn(selected.shape, generator=generator, dtype=x.dtype)
        x[erase] = torch.where(inside[erase][:, None], noise, selected)
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


def build_randaugment(config_str: str, img_size: tuple[int, int], mean: Sequence[float]):
    """timm's rand_augment_transform with the hyper-parameters timm's create_transform (and so DeiT) gives it."""
    from PIL import Image
    from timm.data import auto_augment

    fill = tuple(min(255, round(255 * m)) for m in mean)
    hparams = dict(translate_const=int(min(img_size) * 0.45), img_mean=fill if len(fill) > 1 else fill[0],
                   interpolation=Image.BICUBIC)
    transform = auto_augment.rand_augment_transform(config_str, hparams)
    for op in transform.ops:
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = _posterize_any_bits
    return transform


def _randaugment_batch(images: torch.Tensor, transform, seed: int) -> torch.Tensor:
    """Apply a PIL transform to each uint8 image of a batch, its global-RNG draws seeded by `seed` and then undone."""
    from PIL import Image

    pixels = images.permute(0, 2, 3, 1).numpy()  # [B, H, W, C]
    gray = pixels.shape[-1] == 1
    with _seeded_global_rng(seed):
        out = [np.asarray(transform(Image.fromarray(p[..., 0] if gray else p))) for p in pixels]
    out = np.stack(out)
    return torch.from_numpy(out[..., None] if gray else out).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------- sampling and loading


class RepeatAugSampler:
    """The official DeiT RASampler semantics (repeats=3): each epoch, a seeded permutation; every index repeated
    `repeats` times consecutively; padded to a multiple of world_size; replica `rank` takes indices[rank::world_size].
    The official code then keeps only floor(len // 256 * 256 / world_size) indices (a small data set gets an empty
    loader); we keep ceil(len / world_size) per replica, so one epoch sees about as many samples as the data set holds.
    With repeats=1 this is a plain seeded per-epoch shuffle (sharded when world_size > 1)."""

    def __init__(self, num_samples: int, repeats: int = 3, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if num_samples < 1 or repeats < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need num_samples >= 1, repeats >= 1, 0 <= rank < world_size; got num_samples="
                             f"{num_samples}, repeats={repeats}, world_size={world_size}, rank={rank}")
        self.num_samples, self.repeats, self.world_size, self.rank = num_samples, repeats, world_size, rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order of the data set, identical on every rank."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(_derive_seed(self.seed, "sampler", epoch))
        return torch.randperm(self.num_samples, generator=generator)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This replica's indices for an epoch (the current one by default)."""
        repeated = self.permutation(self.epoch if epoch is None else epoch).repeat_interleave(self.repeats)
        total = math.ceil(len(repeated) / self.world_size) * self.world_size
        padded = repeated[torch.arange(total) % len(repeated)]  # pad by wrapping around, as the official code does
        return padded[self.rank::self.world_size][:len(self)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)


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
        self.randaugment = None
        if augment is not None and augment.randaugment:
            self.randaugment = build_randaugment(augment.randaugment, data.img_size, data.mean)
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
            return self._augment(images, _derive_seed(self.seed, "batch", epoch, k, self.rank)), labels

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
            images = _randaugment_batch(images, self.randaugment, seed)
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


def _worker_init(_):
    torch.set_num_threads(1)  # one core per worker; the training process keeps the rest


class BatchLoader:
    """Iterates batches: images float32 normalised [B, C, H, W] on `device`, labels int64 [B].

    train=True: a seeded per-epoch shuffle (with `repeats` > 1, repeated augmentation), sharded by (world_size, rank),
    augmented per `augment` (None: no augmentation), drop_last by default. train=False: sequential order (rank's shard
    rank::world_size), no augmentation, last partial batch kept. Batch k of epoch e is a pure function of
    (seed, e, k, rank) and never touches the global torch / numpy / python RNGs of this process. num_workers > 0
    builds whole batches in persistent DataLoader worker processes, overlapping RandAugment with training."""

    def __init__(self, data: ImageData, batch_size: int, *, train: bool, augment: AugmentConfig | None = None,
                 repeats: int = 1, seed: int = 0, device="cpu", num_workers: int = 0, drop_last: bool | None = None,
                 world_size: int = 1, rank: int = 0, channels_last: bool = False):
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
        self.num_workers = num_workers
        self._worker_loader = None
        if num_workers > 0:
            self._batches = _EpochBatches(self.num_batches)
            self._worker_loader = torch.utils.data.DataLoader(
                self.builder, batch_size=None, sampler=self._batches, num_workers=num_workers,
                persistent_workers=True, worker_init_fn=_worker_init, pin_memory=self.device.type == "cuda",
                generator=torch.Generator())  # its own generator: the base-seed draw must not touch the global RNG

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        return self.iterate(0)

    def iterate(self, start_batch: int = 0):
        """Batches start_batch, start_batch + 1, ... of the current epoch (for exact mid-epoch resume)."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch must be in 0..{self.num_batches}, got {start_batch}")
        if self._worker_loader is None:
            built = (self.builder[self.epoch, k] for k in range(start_batch, self.num_batches))
        else:
            self._batches.epoch, self._batches.start = self.epoch, start_batch
            built = iter(self._worker_loader)
        for images, labels in built:
            yield self._to_device(images), self._to_device(labels)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=self.device.type == "cuda")
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor
