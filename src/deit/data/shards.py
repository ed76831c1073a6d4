"""WebDataset tar shards as a streamed split: "wds:DIR" (what `deit shards` writes) or "wds:TRAIN;VAL" (brace patterns
of tar files, e.g. 'wds:/data/imagenet-train-{000000..000146}.tar;/data/imagenet-val-{000000..000006}.tar').

A sample is the members of one key in a tar (webdataset's convention: the key is the member name up to the first dot
of its base name): one image (.jpg, .png, ...) and its class index (.cls, decimal text). Every shard is indexed once
(where each sample's image bytes lie, and its label): read from DIR/<split>/index.npz that `deit shards` wrote, or
by scanning the tar headers of shards written elsewhere. A worker then reads a sample's bytes with one pread at the
recorded offset, so the order of an epoch (data.sampler.ShardSampler) never depends on which worker reads what.

Plain tarfile + an index, not webdataset's iterating pipeline, for reading: that pipeline gives each rank and worker
whole shards (unequal sample counts across ranks, an order that changes with the worker count, which may change on
resume) and has no mid-epoch position to resume from. The shards are webdataset's format: webdataset, timm's wds
reader or `tar` read them as they are."""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .folder import EncodedImage, FolderData, _convert_image
from .listing import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, IMAGENET_MEAN, IMAGENET_STD, JPEG, OTHER, PNG

META = "meta.json"  # DIR/meta.json: classes, channels and the shards of each split
INDEX = "index.npz"  # DIR/<split>/index.npz: the samples of the split's shards
# Image members a sample may hold, in the order one is picked when it holds several.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm")
_KINDS = {"jpg": JPEG, "jpeg": JPEG, "png": PNG}


@dataclass(frozen=True)
class ShardIndex:
    """The samples of a split, in storage order (shard by shard, within a shard as written): sample i's image is
    size[i] bytes at byte offset[i] of shards[shard[i]]."""

    shards: tuple[str, ...]
    shard: np.ndarray  # int64 [N], non-decreasing
    offset: np.ndarray  # int64 [N]
    size: np.ndarray  # int64 [N]
    label: np.ndarray  # int64 [N]
    kind: np.ndarray  # uint8 [N]: JPEG, PNG or OTHER

    def __len__(self) -> int:
        return len(self.label)

    def shard_sizes(self) -> np.ndarray:
        """Samples per shard (int64 [num shards])."""
        return np.bincount(self.shard, minlength=len(self.shards)).astype(np.int64)

    def take(self, indices: np.ndarray) -> "ShardIndex":
        return replace(self, shard=self.shard[indices], offset=self.offset[indices], size=self.size[indices],
                       label=self.label[indices], kind=self.kind[indices])

    def save(self, path: Path, root: Path) -> None:
        """As index.npz (numpy arrays only: np.load reads it with allow_pickle=False), shard paths relative to root."""
        from ..fileio import atomic_write

        names = np.array([os.path.relpath(s, root) for s in self.shards])

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, shards=names, shard=self.shard, offset=self.offset, size=self.size, label=self.label,
                         kind=self.kind)
        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path, root: Path) -> "ShardIndex":
        with np.load(path, allow_pickle=False) as z:
            return cls(tuple(str(root / str(s)) for s in z["shards"]), z["shard"], z["offset"], z["size"],
                       z["label"], z["kind"])

    @classmethod
    def concat(cls, parts: list["ShardIndex"]) -> "ShardIndex":
        shards, arrays = [], {k: [] for k in ("shard", "offset", "size", "label", "kind")}
        for part in parts:
            arrays["shard"].append(part.shard + len(shards))
            shards.extend(part.shards)
            for k in ("offset", "size", "label", "kind"):
                arrays[k].append(getattr(part, k))
        return cls(tuple(shards), *(np.concatenate(arrays[k]) if parts else np.zeros(0, np.int64) for k in arrays))


def _split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member name by webdataset's rule: the key ends at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def scan_shard(path: str) -> ShardIndex:
    """Index one tar shard from its headers (plus each .cls member's few bytes). ValueError naming the shard and key
    of a sample without an image or a class."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:") as tar, open(path, "rb") as raw:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_member(member.name)
                sample = samples.setdefault(key, {})
                if ext == "cls":
                    raw.seek(member.offset_data)
                    sample["cls"] = raw.read(member.size)
                elif ext in IMAGE_EXTS:
                    sample.setdefault("images", {})[ext] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"{path}: not a readable tar shard ({e})") from e
    rows = []
    for key, sample in samples.items():
        if "images" not in sample or "cls" not in sample:
            missing = "an image (" + ", ".join(IMAGE_EXTS) + ")" if "images" not in sample else "a .cls member"
            raise ValueError(f"{path}: sample {key!r} has no {missing}; every sample needs an image and its class")
        ext = next(e for e in IMAGE_EXTS if e in sample["images"])
        try:
            label = int(sample["cls"].decode().strip())
        except ValueError:
            raise ValueError(f"{path}: sample {key!r}: .cls is {sample['cls'][:20]!r}, not a class index") from None
        rows.append((*sample["images"][ext], label, _KINDS.get(ext, OTHER)))
    rows.sort()  # storage order, whatever order the members of a key came in
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return ShardIndex((path,), np.zeros(len(rows), np.int64), arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(),
                      arr[:, 3].astype(np.uint8))


def expand_pattern(pattern: str) -> list[str]:
    """A brace pattern ("a-{000..009}.tar", "{x,y}.tar") -> the files it names, each checked to exist."""
    try:
        from braceexpand import braceexpand
    except ImportError:
        raise ModuleNotFoundError("wds: brace patterns need braceexpand: pip install 'deit[shards]'") from None

    files = list(braceexpand(os.path.expanduser(pattern)))
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"wds:{pattern}: {len(missing)} of its {len(files)} shards do not exist "
                                f"(first: {missing[0]})")
    return files


@dataclass
class ShardListing:
    """A FolderListing's fields for a split held in shards; `index` stands where a folder's file table would."""

    path: str  # as given after "wds:"
    split: str
    classes: list[str]
    index: ShardIndex
    grayscale: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)  # what the packer left out

    @property
    def labels(self) -> np.ndarray:
        return self.index.label

    @property
    def kinds(self) -> np.ndarray:
        return self.index.kind

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD) if self.grayscale else (IMAGENET_MEAN, IMAGENET_STD)


def list_shards(path: str, split: str) -> ShardListing:
    """The split of "wds:DIR" (DIR/meta.json from `deit shards`) or "wds:TRAIN_PATTERN;VAL_PATTERN"."""
    root = Path(os.path.expanduser(path))
    if root.is_dir():
        meta_file = root / META
        if not meta_file.is_file():
            raise FileNotFoundError(f"wds:{path}: no {META} in {root}; pack a folder with `deit shards "
                                    f"imagefolder:PATH {path}`, or name tar files by pattern: "
                                    "'wds:TRAIN_PATTERN;VAL_PATTERN'")
        meta = json.loads(meta_file.read_text())
        if split not in meta["splits"]:
            raise ValueError(f"wds:{path}: no {split} split in {meta_file}")
        index = ShardIndex.load(root / split / INDEX, root)
        skipped = [tuple(s) for s in meta.get("skipped", {}).get(split, [])]
        return ShardListing(path, split, list(meta["classes"]), index, bool(meta["grayscale"]), skipped)
    patterns = path.split(";")
    if len(patterns) == 1 and "{" not in path and not path.endswith(".tar"):
        raise FileNotFoundError(f"wds:{path}: no directory {root} (pack one with `deit shards imagefolder:PATH "
                                f"{path}`)")
    if len(patterns) != 2 or not all(patterns):
        raise ValueError(f"wds:{path}: give a directory written by `deit shards`, or the train and val shards as "
                         "two brace patterns separated by ';' (quoted), e.g. "
                         "'wds:/data/in-train-{000000..000146}.tar;/data/in-val-{000000..000006}.tar'")
    index = _scan(patterns[0 if split == "train" else 1])
    train_labels = index.label if split == "train" else _scan(patterns[0]).label
    num_classes = int(train_labels.max()) + 1 if len(train_labels) else 0
    if len(index) and (index.label.min() < 0 or index.label.max() >= num_classes):
        raise ValueError(f"wds:{path}: {split} labels span {index.label.min()}..{index.label.max()}, the train "
                         f"shards' 0..{num_classes - 1}; every val class needs train samples")
    # Shards written elsewhere carry class indices only: the class names are the indices.
    return ShardListing(path, split, [str(i) for i in range(num_classes)], index, grayscale=False)


_SCANNED: dict[str, ShardIndex] = {}  # pattern -> index: the train split's labels are needed again by val


def _scan(pattern: str) -> ShardIndex:
    if pattern not in _SCANNED:
        _SCANNED[pattern] = ShardIndex.concat([scan_shard(f) for f in expand_pattern(pattern)])
    return _SCANNED[pattern]


@dataclass(eq=False, repr=False)
class ShardData(FolderData):
    """A streamed split whose samples lie in tar shards: a FolderData (the same transforms, loader, description)
    reading each sample's encoded bytes from its shard instead of a file. Sample i is the index's i-th (storage
    order), which the loader's ShardSampler walks shard by shard."""

    listing: ShardListing

    def __post_init__(self):
        super().__post_init__()
        self.name = f"wds:{self.listing.path}"

    @property
    def index(self) -> ShardIndex:
        return self.listing.index

    def read_bytes(self, index: int) -> bytes:
        """The encoded image of sample `index`: one pread from its shard (file handles kept per process)."""
        ix = self.listing.index
        path = ix.shards[int(ix.shard[index])]
        data = os.pread(_open_shard(path), int(ix.size[index]), int(ix.offset[index]))
        if len(data) != ix.size[index]:
            raise ValueError(f"{path}: shorter than its index says (sample {index}); the shard was changed or cut "
                             "after packing: pack it again")
        return data

    def decode(self, index: int):
        """Sample `index` as a PIL image ("L" or "RGB", as a folder's files are converted) and its label."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(self.read_bytes(index))) as img:
                img.load()
                img = _convert_image(img, self.listing.grayscale)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            ix = self.listing.index
            raise ValueError(f"{ix.shards[int(ix.shard[index])]}: sample at byte {ix.offset[index]} is not a "
                             f"readable image ({e})") from e
        return img, int(self.listing.index.label[index])

    def encoded(self, index: int):
        """Sample `index` opened but not decoded (an EncodedImage over its bytes: the loader's transforms decode it
        at the scale their crop needs, as a folder's files) and its label."""
        ix = self.listing.index
        name = f"{ix.shards[int(ix.shard[index])]} (sample at byte {ix.offset[index]})"
        try:
            img = EncodedImage(io.BytesIO(self.read_bytes(index)), self.listing.grayscale, name=name)
        except ValueError as e:  # one line naming the shard and offset
            raise ValueError(f"{name} is not a readable image ({e.__cause__ or e})") from e
        return img, int(ix.label[index])

    def source(self, index: int) -> str:
        """Where sample `index` is read from: "<shard>@<byte offset of its image's data>"."""
        ix = self.listing.index
        return f"{ix.shards[int(ix.shard[index])]}@{int(ix.offset[index])}"

    def subset(self, indices) -> "ShardData":
        """The samples at `indices`, kept in storage order (sorted, each once), so the loader still reads shards
        front to back."""
        indices = np.unique(np.asarray(torch.as_tensor(indices, dtype=torch.long)))
        return replace(self, listing=replace(self.listing, index=self.listing.index.take(indices)))


_OPEN: dict[str, int] = {}  # path -> fd; pread ignores the file position, so forked workers may share these


def _open_shard(path: str) -> int:
    fd = _OPEN.get(path)
    if fd is None:
        if len(_OPEN) >= 64:  # an epoch's window touches a few shards at a time: keep the descriptors bounded
            for old in list(_OPEN)[:32]:
                os.close(_OPEN.pop(old))
        fd = _OPEN[path] = os.open(path, os.O_RDONLY)
    return fd


def load_shards(path: str, split: str, img_size: int | None, eval_crop_ratio: float = 0.875) -> ShardData:
    if img_size is None:
        raise ValueError(f"wds:{path} needs img_size (--img-size): the size its images are cropped to")
    if not 0 < eval_crop_ratio <= 1:
        raise ValueError(f"eval_crop_ratio must be in (0, 1], got {eval_crop_ratio}")
    return ShardData(list_shards(path, split), img_size, eval_crop_ratio)


def eval_range(num_samples: int, world_size: int, rank: int) -> torch.Tensor:
    """Rank's contiguous share of an evaluation pass over shards: together every sample exactly once, each rank
    reading its own run of shards (sizes differ by at most one)."""
    return torch.arange(rank * num_samples // world_size, (rank + 1) * num_samples // world_size)
