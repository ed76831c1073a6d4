"""Write Fashion-MNIST as an image folder (OUT/{train,val}/<class>/<index>.png, the real 28 px images), for checking
folder and shard streaming against each other on real data (docs/distributed.md, "Shards").

Usage: python scripts/fmnist_folder.py OUT [TRAIN_PER_CLASS] [VAL_PER_CLASS]   (default 1000 and 200: 12,000 files)
"""
import sys
from pathlib import Path

from PIL import Image

from deit.data import load_data

out = Path(sys.argv[1])
per_class = {"train": int(sys.argv[2]) if len(sys.argv) > 2 else 1000,
             "val": int(sys.argv[3]) if len(sys.argv) > 3 else 200}
for split, count in per_class.items():
    data = load_data("fashion-mnist", split)  # val: the official test set
    for label, name in enumerate(data.classes):
        folder = out / split / name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for i in (data.labels == label).nonzero().flatten()[:count].tolist():
            Image.fromarray(data.images[i, 0].numpy()).save(folder / f"{i:05d}.png")
    print(f"{split}: {count} x {len(data.classes)} images in {out / split}")
