"""An image folder of JPEGs cut from real photographs, for `deit bench --loader` and the decode measurements in
docs/performance.md (not for training: the classes mean nothing).

    python scripts/photo_folder.py OUT --files 400 --longer 400 500          # ImageNet-like
    python scripts/photo_folder.py OUT --files 120 --size 4000 3000          # phone-size

Sources: the photographs of Debian's mate-backgrounds package (`apt-get install mate-backgrounds`:
/usr/share/backgrounds/mate/nature/*.jpg, 11 photos of 1280x1024 to 2560x1920). Each file is a random crop of a
random photo (aspect 3:4 to 4:3, at least a quarter of the photo's area) resized (bicubic) to a random longer side
in --longer, or to exactly --size (phone-size files are enlarged crops: smoother than a camera's own 12 MP), saved
at JPEG quality --quality (4:2:0 chroma, as cameras and ImageNet's files), into OUT/{train,val}/<class>/."""

from __future__ import annotations

import argparse
import glob
import random
from pathlib import Path

PHOTOS = "/usr/share/backgrounds/mate/nature/*.jpg"


def cut(photo, rng: random.Random, longer: tuple[int, int] | None, size: tuple[int, int] | None):
    from PIL import Image

    w, h = photo.size
    aspect = size[0] / size[1] if size else rng.uniform(3 / 4, 4 / 3)
    area = rng.uniform(0.25, 1.0) * w * h
    cw, ch = min(w, round((area * aspect) ** 0.5)), min(h, round((area / aspect) ** 0.5))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = photo.crop((left, top, left + cw, top + ch))
    if size is None:
        side = rng.randint(*longer)
        size = (side, round(side * ch / cw)) if cw >= ch else (round(side * cw / ch), side)
    return crop.resize(size, Image.BICUBIC)


def main(argv=None) -> None:
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--files", type=int, default=400, help="train files (val gets a tenth, at least 8)")
    p.add_argument("--longer", type=int, nargs=2, default=(400, 500), metavar=("MIN", "MAX"))
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"), help="exact size instead")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--photos", default=PHOTOS, help="glob of source photographs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sources = sorted(glob.glob(args.photos))
    if not sources:
        raise SystemExit(f"no photographs match {args.photos}: apt-get install mate-backgrounds, or give --photos")
    photos = [Image.open(f).convert("RGB") for f in sources]
    rng = random.Random(args.seed)
    for split, count in (("train", args.files), ("val", max(8, args.files // 10))):
        for i in range(count):
            folder = Path(args.out) / split / f"class{i % args.classes}"
            folder.mkdir(parents=True, exist_ok=True)
            img = cut(rng.choice(photos), rng, args.longer, args.size)
            img.save(folder / f"{i:05d}.jpg", quality=args.quality, subsampling="4:2:0")
    print(f"{args.out}: {args.files} train + {max(8, args.files // 10)} val JPEGs from {len(sources)} photographs")


if __name__ == "__main__":
    main()
