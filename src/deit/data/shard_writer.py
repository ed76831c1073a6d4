"""`deit shards`: pack an image folder into WebDataset tar shards that "wds:OUT" streams.

OUT/meta.json (classes, channels, the shards and sample counts of each split, files left out), OUT/<split>/
<split>-NNNNNN.tar, and OUT/<split>/index.npz (where each sample's image lies: see data.shards). A sample is the
file's encoded bytes as they were (<key>.<ext>, no re-encoding) and its class index (<key>.cls); keys are the
sample's position in the split's packing order. That order is a seeded permutation of the listing (files of one
class would otherwise share shards, and a shuffle buffer could not mix them), so the same folder and seed give
byte-identical shards (members dated 0, owner fixed)."""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import numpy as np

from .listing import list_split
from .shards import INDEX, META, ShardIndex, scan_shard

_BLOCK = tarfile.BLOCKSIZE  # 512
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """"1GB" (10**9), "512MiB" (2**29), "1e9", "1000000" -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    try:
        value = float(match.group(1)) * _UNITS[match.group(2).lower()] if match else None
    except (KeyError, ValueError):
        value = None
    if value is None or value < 1:
        raise ValueError(f"--shard-size {text!r}: give a size such as 1GB, 500MB, 256MiB or a number of bytes")
    return int(value)


def _member_bytes(size: int) -> int:
    """A member's bytes in a USTAR archive: its header block and its data padded to whole blocks."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _tar_bytes(members: int) -> int:
    """The file size tarfile writes for members of these bytes: two zero end blocks, padded to a whole record."""
    return -(-(members + 2 * _BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _write_tar(path: Path, samples: list[tuple[str, str, int]]) -> None:
    """samples: (key, image file, label), read one at a time; written atomically and reproducibly."""
    try:
        from webdataset import TarWriter
    except ImportError:
        raise ModuleNotFoundError("deit shards writes with webdataset: pip install 'deit[shards]' "
                                  "(or webdataset)") from None
    from ..fileio import atomic_write

    def write(tmp):
        with TarWriter(str(tmp), encoder=False, mtime=0, user="deit", group="deit") as sink:
            for key, file, label in samples:
                sink.write({"__key__": key, _extension(file): Path(file).read_bytes(), "cls": str(label).encode()})
    atomic_write(path, write)


def _extension(file: str) -> str:
    return Path(file).suffix.lower().lstrip(".")


def _sample_bytes(file_size: int, label: int) -> int:
    return _member_bytes(file_size) + _member_bytes(len(str(label)))


def plan_shards(sizes: list[int], labels: list[int], shard_size: int) -> list[list[int]]:
    """Positions of the samples (in packing order) of each shard: as many as fit in shard_size bytes, at least one."""
    shards, used = [[]], 0
    for position, (size, label) in enumerate(zip(sizes, labels)):
        sample = _sample_bytes(size, label)
        if shards[-1] and _tar_bytes(used + sample) > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(position)
        used += sample
    return shards


def write_split(folder: str, split: str, out: Path, shard_size: int, seed: int, skip_bad_images: bool,
                on_shard=None):
    """Pack one split; returns (its ShardIndex, the listing's skipped files, its classes, grayscale).
    on_shard(path, samples) is called after each shard is written."""
    listing = list_split(folder, split, skip_bad_images)
    order = np.random.default_rng([seed, 0 if split == "train" else 1]).permutation(len(listing.labels)).tolist()
    files = [listing.files[i] for i in order]
    labels = [int(listing.labels[i]) for i in order]
    width = len(str(len(order)))
    (out / split).mkdir(parents=True, exist_ok=True)
    parts = []
    for n, positions in enumerate(plan_shards([os.path.getsize(f) for f in files], labels, shard_size)):
        path = out / split / f"{split}-{n:06d}.tar"
        _write_tar(path, [(f"{p:0{width}d}", files[p], labels[p]) for p in positions])
        planned = _tar_bytes(sum(_sample_bytes(os.path.getsize(files[p]), labels[p]) for p in positions))
        if path.stat().st_size != planned:  # a file changed while packing (or our size rule is wrong)
            raise ValueError(f"{path}: {path.stat().st_size} bytes written, {planned} planned; did files in "
                             f"{folder} change while packing? Pack again into a new directory")
        parts.append(scan_shard(str(path)))
        if on_shard is not None:
            on_shard(path, len(positions))
    return ShardIndex.concat(parts), listing.skipped, listing.classes, listing.grayscale


def write_shards(source: str, out: str | Path, shard_size: int | str = "1GB", seed: int = 0,
                 skip_bad_images: bool = False, on_shard=None) -> dict:
    """Pack "imagefolder:PATH" (its train and val splits) into shards in the new directory `out`; returns the meta
    record written to out/meta.json. Each shard holds at most shard_size bytes (a lone sample larger than that gets a
    shard of its own). on_shard(path, samples): called after each shard (progress)."""
    from ..fileio import check_writable, write_json

    if not source.lower().startswith("imagefolder:"):
        raise ValueError(f"deit shards packs an image folder: give imagefolder:PATH, got {source!r}")
    folder = source.split(":", 1)[1]
    shard_size = parse_size(shard_size) if isinstance(shard_size, str) else int(shard_size)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; shards are written into a new (or empty) directory")
    check_writable(out, "OUT")
    meta = {"format": "webdataset", "source": source, "seed": seed, "shard_size": shard_size, "splits": {},
            "skipped": {}}
    for split in ("train", "val"):
        index, skipped, classes, grayscale = write_split(folder, split, out, shard_size, seed, skip_bad_images,
                                                         on_shard)
        index.save(out / split / INDEX, out)
        meta.update(classes=list(classes), grayscale=grayscale)
        meta["splits"][split] = {"samples": len(index), "shards": [str(Path(s).relative_to(out)) for s in index.shards],
                                 "shard_samples": index.shard_sizes().tolist()}
        meta["skipped"][split] = [list(s) for s in skipped]
    write_json(out / META, meta)
    return meta
