"""Training steps fed from disk, ours vs timm's loader (issue 27's GPU check; prepared, run it where CUDA is):
images/s of a bf16 training step of timm's deit_small_patch16_224 (the model is the same for both: the loaders are
what is compared) with 2, 4 and 8 workers, DeiT's train recipe. Ours: StreamLoader, uint8 crops to the device,
normalise and erase there. timm: create_loader with use_prefetcher=True (its normalise and erasing on the device too:
timm at its best on CUDA).

    python scripts/photo_folder.py data/photos --files 1500          # here (mate-backgrounds), ~50 MB
    # device tool: carry ["data/photos"], then
    python scripts/gpu_loader_bench.py imagefolder:data/photos --workers 2 4 8 --steps 40

Smoke test on a CPU (tiny): --device cpu --model deit_tiny_patch16_224 --batch-size 8 --steps 2 --warmup 1 --workers 1.
Prints one line per (workers, loader) and a JSON line at the end."""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from deit.bench_data import RECIPE, _posterize_fix
from deit.data import AugmentConfig, load_data, make_loader
from deit.data.listing import IMAGENET_MEAN, IMAGENET_STD


def ours(data: str, batch: int, workers: int, device):
    folder = load_data(data, "train", img_size=224)
    augment = AugmentConfig(rrc_scale=RECIPE["scale"], hflip=RECIPE["hflip"], randaugment=RECIPE["auto_augment"],
                            reprob=RECIPE["re_prob"])
    loader = make_loader(folder, batch, train=True, augment=augment, device=device, num_workers=workers)
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def timm_loader(data: str, batch: int, workers: int, device):
    from timm.data import ImageDataset, create_loader

    dataset = ImageDataset(str(Path(data.split(":", 1)[1]) / "train"))
    loader = create_loader(dataset, input_size=(3, 224, 224), batch_size=batch, is_training=True,
                           use_prefetcher=device.type == "cuda", scale=RECIPE["scale"], hflip=RECIPE["hflip"],
                           color_jitter=None, auto_augment=RECIPE["auto_augment"], interpolation="bicubic",
                           re_prob=RECIPE["re_prob"], re_mode="pixel", re_count=1, mean=IMAGENET_MEAN,
                           std=IMAGENET_STD, num_workers=workers, device=device, persistent_workers=True)
    _posterize_fix(dataset.transform)
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def steps_per_second(batches, model, optimizer, warmup: int, steps: int, device) -> float:
    dtype = torch.bfloat16
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i == warmup + steps - 1:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main(argv=None) -> None:
    import timm

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():  # before any work: one line, not a traceback
        raise SystemExit("gpu_loader_bench: no CUDA device here (torch.cuda.is_available() is False); run it on a "
                         "GPU machine, or check it on a CPU with --device cpu (see the smoke test in the header)")
    try:  # a wrong folder: one line before the model is built
        load_data(args.data, "train", img_size=224)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"gpu_loader_bench: {e}") from None
    model = timm.create_model(args.model, num_classes=1000).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    results = {}
    for i, workers in enumerate(args.workers):
        order = (("ours", ours), ("timm", timm_loader))
        for name, make in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
            batches = make(args.data, args.batch_size, workers, device)
            rate = args.batch_size * steps_per_second(batches, model, optimizer, args.warmup, args.steps, device)
            batches.close()
            del batches
            gc.collect()  # ends this loader's workers here, before the next loader forks its own
            results[f"{name}_{workers}"] = rate
            print(f"{args.model} {args.device} batch {args.batch_size}, {workers} workers, {name}: {rate:.1f} images/s",
                  flush=True)
        print(f"  ours / timm at {workers} workers: {results[f'ours_{workers}'] / results[f'timm_{workers}']:.2f}x",
              flush=True)
    print(json.dumps({"config": vars(args), "images_per_s": results}))


if __name__ == "__main__":
    main()
