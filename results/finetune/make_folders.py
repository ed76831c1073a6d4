"""The image folders of results/finetune, from real Fashion-MNIST images saved as PNG:
  pre6/   classes 0-5 (T-shirt/top .. Sandal): 2,000 train images per class (train split), 500 val (test split)
  new4/   the held-out classes 6-9 (Shirt, Sneaker, Bag, Ankle boot): 100 train images per class (train split),
          all 1,000 test images per class as val
  fm10/   all ten classes: 600 train images per class (train split), 100 val (test split)
Usage: python results/finetune/make_folders.py OUT_DIR [FASHION_MNIST_DIR] [FOLDER,...]"""

import sys
from pathlib import Path

from PIL import Image

from deit.data import load_data

# folder -> (classes, train images per class, val images per class; None: all)
FOLDERS = {"pre6": (range(6), 2000, 500), "new4": (range(6, 10), 100, None), "fm10": (range(10), 600, 100)}


def save(root: Path, data, labels: range, count: int | None) -> None:
    for label in labels:
        folder = root / data.classes[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for i in (data.labels == label).nonzero().flatten()[:count].tolist():
            Image.fromarray(data.images[i, 0].numpy(), mode="L").save(folder / f"{i}.png")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    data_dir = sys.argv[2] if len(sys.argv) > 2 else None
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(FOLDERS)
    train, test = (load_data("fashion-mnist", split, data_dir=data_dir) for split in ("train", "val"))
    for name in names:
        classes, n_train, n_val = FOLDERS[name]
        save(out / name / "train", train, classes, n_train)
        save(out / name / "val", test, classes, n_val)
