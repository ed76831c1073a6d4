"""CPU per image of reading and decoding a sample from tar shards against from its own file (docs/distributed.md,
"Shards"). Builds a folder of 300 train + 30 val JPEGs (quality 90) from the real Fashion-MNIST test images, each
upscaled (bicubic) to a random 320-448 px width and height, packs it, then times each way 5 times, interleaved.

Usage: python scripts/shard_read_cost.py [WORKDIR]   (default /tmp/shard-read-cost, replaced)
"""
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from deit.data import load_data, write_shards

root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/shard-read-cost")
shutil.rmtree(root, ignore_errors=True)
source, rng = load_data("fashion-mnist", "val"), np.random.default_rng(0)
for split, count, offset in (("train", 100, 0), ("val", 10, 100)):
    for label in (0, 1, 7):
        folder = root / "folder" / split / source.classes[label].replace("/", "-")
        folder.mkdir(parents=True)
        for i in (source.labels == label).nonzero().flatten()[offset:offset + count].tolist():
            size = tuple(int(s) for s in rng.integers(320, 449, 2))
            img = Image.fromarray(source.images[i, 0].numpy()).resize(size, Image.BICUBIC).convert("RGB")
            img.save(folder / f"{i}.jpg", quality=90)
write_shards(f"imagefolder:{root / 'folder'}", root / "wds", shard_size="1GB")
folder = load_data(f"imagefolder:{root / 'folder'}", "train", img_size=224)
shards = load_data(f"wds:{root / 'wds'}", "train", img_size=224)


def cpu_ms(data, read) -> float:
    start = time.process_time()
    for i in range(len(data)):
        read(data, i)
    return 1e3 * (time.process_time() - start) / len(data)


ways = {"folder: read bytes": (folder, lambda d, i: Path(d.listing.files[i]).read_bytes()),
        "shards: read bytes": (shards, lambda d, i: d.read_bytes(i)),
        "folder: decode": (folder, lambda d, i: d.decode(i)),
        "shards: decode": (shards, lambda d, i: d.decode(i))}
times = {name: [] for name in ways}
for _ in range(5):
    for name, (data, read) in ways.items():
        times[name].append(cpu_ms(data, read))
for name, values in times.items():
    print(f"{name}: median {statistics.median(values):.3f} ms CPU per image "
          f"({', '.join(f'{v:.3f}' for v in values)})")
