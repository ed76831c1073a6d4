"""Listing an image folder split (root/<split>/<class>/<image>) without decoding it: class names from the train split,
a cheap check of every file (header magic, end-of-file marker, channel count from the header), and a compact table of
paths that DataLoader workers can share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Image folders use the ImageNet statistics (what DeiT and pretrained weights expect); a grayscale folder uses their
# channel average, as timm does for in_chans=1. Fixed constants keep train and val normalised identically.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD = (0.449,), (0.226,)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}

JPEG, PNG, OTHER = 1, 2, 0  # file kinds: JPEGs may take the fast decoder
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TAIL = 1024  # bytes searched for the end marker; cameras may append a little after it


def _is_grayscale_mode(mode: str) -> bool:
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class BadImage(ValueError):
    """A file that is not a complete, readable image; the message names the file."""


def _jpeg_components(f, size: int) -> int:
    """Number of colour components from the JPEG's frame header (1: grayscale, 3: YCbCr/RGB, 4: CMYK)."""
    pos = 2
    while pos + 4 <= size:
        f.seek(pos)
        marker = f.read(4)
        if marker[0] != 0xFF:
            raise BadImage("corrupt JPEG header (no marker where one should be)")
        if marker[1] == 0xFF:  # fill byte
            pos += 1
            continue
        if marker[1] in _JPEG_SOF:
            f.seek(pos + 9)
            return f.read(1)[0]
        if marker[1] == 0xDA:  # start of scan before any frame header
            break
        if 0xD0 <= marker[1] <= 0xD7 or marker[1] == 0x01:
            pos += 2
            continue
        pos += 2 + int.from_bytes(marker[2:4], "big")
    raise BadImage("corrupt JPEG header (no frame header)")


def check_image_file(path: str) -> tuple[int, bool]:
    """(kind, grayscale) of an image file, read from its first bytes and last kilobyte only; BadImage (naming the
    problem) for an empty, truncated or non-image file. JPEG and PNG are checked for their end marker (a cut-off
    download lacks it); other formats by PIL's header parser."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise BadImage("empty file")
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
            if head.startswith(b"\xff\xd8\xff"):
                if b"\xff\xd9" not in tail:
                    raise BadImage("truncated JPEG (no end-of-image marker)")
                return JPEG, _jpeg_components(f, size) == 1
            if head.startswith(_PNG_MAGIC):
                if b"IEND" not in tail[-32:]:
                    raise BadImage("truncated PNG (no IEND chunk)")
                return PNG, head[16 + 9] in (0, 4)  # IHDR colour type: 0 gray, 4 gray + alpha
    except (OSError, IndexError) as e:
        raise BadImage(f"unreadable ({e})") from e
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # reads the header only
            if img.format == "GIF" and not tail.rstrip(b"\x00").endswith(b"\x3b"):
                raise BadImage("truncated GIF (no trailer)")
            return OTHER, _is_grayscale_mode(img.mode)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise BadImage(f"not a readable image ({e})") from e


@dataclass(frozen=True)
class FileTable:
    """Paths packed in numpy arrays (utf-8 bytes and offsets, relative to root): forked DataLoader workers share these
    pages, where a list of str or Path objects would be copied into every worker as their refcounts are touched."""

    root: str
    blob: np.ndarray  # uint8, the relative paths back to back
    offsets: np.ndarray  # int64 [N + 1]

    @classmethod
    def from_paths(cls, root: str, relative: list[str]) -> "FileTable":
        encoded = [os.fsencode(p) for p in relative]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(root, np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()))

    def take(self, indices) -> "FileTable":
        return FileTable.from_paths(self.root, [os.path.relpath(self[int(i)], self.root) for i in indices])


@dataclass
class FolderListing:
    """One split of an image folder, listed and checked: files in sorted order within sorted classes."""

    path: str  # as given after "imagefolder:"
    split: str
    classes: list[str]
    files: FileTable
    labels: np.ndarray  # int64 [N]
    kinds: np.ndarray  # uint8 [N]: JPEG, PNG or OTHER
    grayscale: bool  # decided by the train split, so both splits agree
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) left out with skip_bad_images

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD) if self.grayscale else (IMAGENET_MEAN, IMAGENET_STD)


# The train split's channel decision, so listing val after train does not read every train header again.
_GRAYSCALE_OF_TRAIN: dict[str, bool] = {}


def list_split(path: str, split: str, skip_bad_images: bool = False) -> FolderListing:
    """List and check root/<split>. Bad files are a BadImage naming the file, or with skip_bad_images are left out and
    recorded in .skipped; an empty class folder or a class absent from train is a ValueError."""
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
        raise ValueError(f"imagefolder:{path}: classes {unknown} in {split_dir} have no folder in {train_dir}; "
                         "every val class needs a train folder (labels are indices into the train classes)")
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    relative, labels, kinds, gray, skipped = [], [], [], [], []
    for label, name in enumerate(classes):
        if name not in split_classes:
            continue
        files = image_files(split_dir / name)
        if not files:
            raise ValueError(f"imagefolder:{path}: class folder {split_dir / name} holds no images ({extensions}); "
                             "add images or remove the folder")
        for f in files:
            try:
                kind, is_gray = check_image_file(str(f))
            except BadImage as e:
                if not skip_bad_images:
                    raise BadImage(f"{f}: {e}; remove or replace it, or pass --skip-bad-images") from e
                skipped.append((str(f), str(e)))
                continue
            relative.append(os.path.relpath(f, split_dir))
            labels.append(label)
            kinds.append(kind)
            gray.append(is_gray)
    if not relative:
        raise ValueError(f"imagefolder:{path}: no images ({extensions}) under {split_dir}")
    key = str(train_dir.resolve())
    if split == "train":
        _GRAYSCALE_OF_TRAIN[key] = all(gray)
    elif key not in _GRAYSCALE_OF_TRAIN:
        _GRAYSCALE_OF_TRAIN[key] = list_split(path, "train", skip_bad_images).grayscale
    return FolderListing(path, split, classes, FileTable.from_paths(str(split_dir), relative),
                         np.array(labels, dtype=np.int64), np.array(kinds, dtype=np.uint8),
                         _GRAYSCALE_OF_TRAIN[key], skipped)
