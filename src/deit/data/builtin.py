"""The built-in data sets, loaded whole into memory: Fashion-MNIST (from its IDX files) and CIFAR-10/100 (through
torchvision)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .imagedata import ImageData

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
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049


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


def load_fashion_mnist(split: str, data_dir: str | None, download: bool) -> ImageData:
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


def load_cifar(name: str, split: str, data_dir: str | None, download: bool) -> ImageData:
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
