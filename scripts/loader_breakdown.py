"""Where a data worker's time goes, per image and stage, for timm's DeiT train transform and ours, on the same
files with the same per-sample seeds, in one process on one thread (time.process_time); and the PSNR of our
reduced-scale decode against a full decode with the same crop; or RandAugment's ops one by one (--ops: PIL's and
ours, OpenCV's warps). Numbers for docs/performance.md.

    PYTHONPATH=src python scripts/loader_breakdown.py /tmp/photos_in --files 200 [--psnr | --ops]
"""

from __future__ import annotations

import argparse
import glob
import io
import math
import random
import statistics
import time
from collections import defaultdict

import numpy as np
import torch


def _timm_steps(size: int):
    from timm.data import create_transform

    from deit.bench_data import RECIPE, _posterize_fix

    t = create_transform(size, is_training=True, scale=RECIPE["scale"], hflip=RECIPE["hflip"], color_jitter=None,
                         auto_augment=RECIPE["auto_augment"], interpolation="bicubic", re_prob=RECIPE["re_prob"],
                         re_mode="pixel", re_count=1)
    _posterize_fix(t)
    return t.transforms  # rrc, flip, randaugment, to tensor, normalize, erasing


def breakdown(files, size: int, batch: int = 64) -> dict:
    from PIL import Image

    from deit.bench_data import RECIPE
    from deit.data.augment import build_randaugment, erase_box, erase_rectangles_
    from deit.data.folder import EncodedImage
    from deit.data.listing import IMAGENET_MEAN, IMAGENET_STD
    from deit.data.stream import _collate
    from deit.data.transforms import DecodeRandomResizedCrop, ToUint8Tensor

    rrc, flip, randaug, to_tensor, normalize, erasing = _timm_steps(size)
    ours_rrc, to_uint8 = DecodeRandomResizedCrop(size, rrc.scale, rrc.ratio), ToUint8Tensor()
    ours_randaug = build_randaugment(RECIPE["auto_augment"], (size, size), IMAGENET_MEAN, opencv=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)
    t = {"timm": defaultdict(float), "ours": defaultdict(float)}

    def clock(who, stage, fn, *args):
        start = time.process_time()
        out = fn(*args)
        t[who][stage] += time.process_time() - start
        return out

    outs = {"timm": [], "ours": []}
    for n, f in enumerate(files):
        for who in ("timm", "ours"):
            random.seed(n), np.random.seed(n), torch.manual_seed(n)
            data = clock(who, "file read", lambda: open(f, "rb").read())
            if who == "timm":
                img = clock(who, "JPEG decode", lambda: Image.open(io.BytesIO(data)).convert("RGB"))
                img = clock(who, "RandomResizedCrop + resize", rrc, img)
            else:
                enc = clock(who, "header", EncodedImage, io.BytesIO(data), False)
                box, need = clock(who, "header", ours_rrc.plan, enc)
                img, box = clock(who, "JPEG decode", enc.decode, need, box, True)
                img = clock(who, "RandomResizedCrop + resize", ours_rrc.crop_resize, img, box)
            img = clock(who, "flip", flip, img)
            img = clock(who, "RandAugment", randaug if who == "timm" else ours_randaug, img)
            if who == "timm":
                x = clock(who, "ToTensor", to_tensor, img)
                x = clock(who, "normalize", normalize, x)
                x = clock(who, "random erasing", erasing, x)
                outs[who].append(x)
            else:
                x = clock(who, "ToTensor", to_uint8, img)
                e = clock(who, "random erasing", lambda: torch.tensor(erase_box(0.25, size, size)))
                outs[who].append((x, e))
        if len(outs["timm"]) == batch or n == len(files) - 1:
            clock("timm", "collate", torch.utils.data.default_collate, outs["timm"])
            xs, _, es = clock("ours", "collate", _collate, [(x, 0, e) for x, e in outs["ours"]])
            x = clock("ours", "normalize", lambda: xs.float().div_(255).sub_(mean).div_(std))  # batch stage
            clock("ours", "random erasing", erase_rectangles_, x, es)
            outs = {"timm": [], "ours": []}
    return {who: {k: 1e3 * v / len(files) for k, v in d.items()} for who, d in t.items()}


def psnr(files, size: int, seeds: int = 3) -> dict:
    """Median PSNR (dB) of reduced-scale vs full decode, same box and resize, over the samples where the reduction
    applied (train: DeiT's RandomResizedCrop; eval: resize to size / 0.875 + centre crop), and how often it did."""
    from deit.data.folder import EncodedImage
    from deit.data.transforms import DecodeRandomResizedCrop, DecodeResizeCenterCrop

    def db(a, b):
        mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
        return 10 * math.log10(255 ** 2 / mse) if mse else float("inf")

    out = {}
    resize = int(size / 0.875)
    crops = {"train": (DecodeRandomResizedCrop(size, (0.08, 1.0)), DecodeRandomResizedCrop(size, (0.08, 1.0), fast=False)),
             "eval": (DecodeResizeCenterCrop(resize, size), DecodeResizeCenterCrop(resize, size, fast=False))}
    for name, (reduced, full) in crops.items():
        values, total = [], 0
        for n, f in enumerate(files):
            for s in range(seeds if name == "train" else 1):
                imgs = []
                for crop in (reduced, full):
                    random.seed(1000 * n + s)
                    imgs.append(crop(EncodedImage(f, False)))
                total += 1
                value = db(*imgs)
                if value != float("inf"):
                    values.append(value)
        out[name] = {"median_db": statistics.median(values) if values else None,
                     "p10_db": float(np.percentile(values, 10)) if values else None,
                     "reduced_share": len(values) / total}
    return out


def randaugment_ops(files, size: int, repeats: int = 3) -> dict:
    """Per RandAugment op, applied alone (probability forced to 1) to a DeiT train crop of each file (timm's
    RandomResizedCrop, PIL): ms per call with timm's PIL ops and with ours (geometric ops through OpenCV,
    deit.data.warp), and for the geometric ops the PSNR of ours against PIL's at magnitude 9 (no noise, random sign)
    per crop, median and 10th percentile; and ms per image of the whole transform (2 ops, each with p = 0.5)."""
    from deit.bench_data import RECIPE
    from deit.data.augment import build_randaugment
    from deit.data.listing import IMAGENET_MEAN
    from deit.data.folder import EncodedImage
    from deit.data.transforms import DecodeRandomResizedCrop

    crop = DecodeRandomResizedCrop(size, RECIPE["scale"], fast=False)
    images = []
    for n, f in enumerate(files):
        random.seed(n)
        images.append(crop(EncodedImage(f, False)))
    transforms = {who: build_randaugment(RECIPE["auto_augment"], (size, size), IMAGENET_MEAN, opencv=who == "ours")
                  for who in ("timm", "ours")}
    ms, db = defaultdict(lambda: defaultdict(float)), defaultdict(list)
    for r in range(repeats):
        for who, transform in transforms.items():
            for op in transform.ops:
                prob, op.prob = op.prob, 1.0
                random.seed(r)
                start = time.process_time()
                for img in images:
                    op(img)
                ms[op.name][who] += time.process_time() - start
                op.prob = prob
            start = time.process_time()
            for img in images:
                transform(img)
            ms["whole transform"][who] += time.process_time() - start
    for pil_op, cv_op in zip(transforms["timm"].ops, transforms["ours"].ops):
        if cv_op.aug_fn is pil_op.aug_fn:
            continue
        for n, img in enumerate(images):
            random.seed(n)
            args = pil_op.level_fn(9, pil_op.hparams)
            a, b = (np.asarray(op.aug_fn(img, *args, **op.kwargs), np.float64) for op in (pil_op, cv_op))
            mse = np.mean((a - b) ** 2)
            db[pil_op.name].append(10 * math.log10(255 ** 2 / mse) if mse else float("inf"))
    out = {}
    for name, t in ms.items():
        row = {who: 1e3 * v / (repeats * len(images)) for who, v in t.items()}
        if db[name]:
            row.update(psnr_median=statistics.median(db[name]), psnr_p10=float(np.percentile(db[name], 10)))
        out[name] = row
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--psnr", action="store_true")
    p.add_argument("--ops", action="store_true", help="ms per call of each RandAugment op instead")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    files = sorted(glob.glob(f"{args.folder}/train/*/*.jpg"))[:args.files]
    if args.ops:
        print(f"{len(files)} files of {args.folder}, {args.img_size}-px train crops; ms per call (whole transform: "
              f"per image); PSNR of ours against PIL's at magnitude 9\n| op | timm (PIL) ms | ours ms | PSNR median / "
              f"p10 dB |\n|---|---|---|---|")
        for name, r in randaugment_ops(files, args.img_size).items():
            db = f"{r['psnr_median']:.1f} / {r['psnr_p10']:.1f}" if "psnr_median" in r else "same op"
            print(f"| {name} | {r['timm']:.3f} | {r['ours']:.3f} | {db} |")
        return
    if args.psnr:
        for name, r in psnr(files, args.img_size).items():
            print(f"{name}: fast differs from exact in {100 * r['reduced_share']:.0f} % of samples; PSNR vs exact "
                  f"median {r['median_db']} dB, 10th percentile {r['p10_db']} dB")
        return
    result = breakdown(files, args.img_size)
    stages = list(dict.fromkeys([*result["timm"], *result["ours"]]))
    print(f"{len(files)} files of {args.folder}, {args.img_size} px, ms of CPU per image")
    print("| stage | timm | ours |\n|---|---|---|")
    for s in stages:
        print(f"| {s} | {result['timm'].get(s, 0):.3f} | {result['ours'].get(s, 0):.3f} |")
    tt, to = sum(result["timm"].values()), sum(result["ours"].values())
    print(f"| **total** | **{tt:.2f}** | **{to:.2f}** ({tt / to:.2f}x) |")


if __name__ == "__main__":
    main()
