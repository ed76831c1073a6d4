"""Where the pipeline's undistilled student loses its step (docs/performance.md, "The Trainer's step against the bf16
peak"). Each mode trains the student of `pipeline_configs("small")` (bf16, compiled as --compile says) for a few
epochs and prints the median images/s and data wait of its epochs (the first, with the compile and warm-up, left
out). Run on a quiet machine, from the repository root with PYTHONPATH=src:

  python scripts/pipeline_step_ab.py build --modes serial,thread,worker [--reps 2]
      batches built on the training process (serial), in a prefetch thread, or in one worker process
  python scripts/pipeline_step_ab.py alternate [--epochs 13]
      one run, odd epochs building batches the per-image way (PIL RandAugment, crop matrices computed), even epochs
      the batched way: the same batches, so the two compare without run-to-run drift
  python scripts/pipeline_step_ab.py profile
      torch.profiler's self CPU time per op over steps 30-50 of one run
  python scripts/pipeline_step_ab.py batch
      no training: ms to build one batch of the student's, whole and by part (median of 40 batches)
  python scripts/pipeline_step_ab.py host [--windows 40]
      windows of 8 compiled training steps (the same 24 batches over and over), each after probes of the machine
      at that moment: the 2048^2 bf16 matmul peak, one of the step's GEMMs (1664 x 192 @ 192 x 576) and a 512 KB
      copy, both at the step's threads: does the step's speed follow the machine's?

The prefetch thread is a timing prototype only: its RandAugment and the training process's Mixup share numpy's
global RNG, so its batches are not reproducible."""

import argparse
import json
import queue
import shutil
import statistics
import tempfile
import threading
from pathlib import Path

import torch

from deit.data import augment, epochs
from deit.engine import fit
from deit.engine import trainer as trainer_module
from deit.pipeline import pipeline_configs


def student_config(base: Path, name: str, epochs_: int, compile_: str, workers: int = 0):
    return pipeline_configs("small", base / "pipeline", progress=False)["none"].replace(
        num_workers=workers, epochs=epochs_, time_budget_minutes=None, eval_every=1000, precision="bf16",
        compile=compile_, output=str(base / name))


def epoch_rows(config) -> list[dict]:
    rows = [json.loads(line) for line in (Path(config.output) / "log.jsonl").read_text().splitlines()]
    return rows[1:-1] if len(rows) > 2 else rows[1:]  # not the compile's epoch, nor the evaluation's


def summary(rows: list[dict]) -> str:
    ims = statistics.median(r["images_per_s"] for r in rows)
    wait = statistics.median(r["data_wait_fraction"] for r in rows)
    compute = statistics.median((1 - r["data_wait_fraction"]) / r["images_per_s"] * 1e3 for r in rows)
    return f"{len(rows)} epochs: {ims:.0f} im/s, data wait {wait:.3f}, step {compute:.3f} ms an image"


def threaded_iterate(self, start_batch: int = 0):
    """EpochLoader.iterate with the batches built one ahead in a thread (1 intra-op thread of its own)."""
    if self._worker_loader is not None:
        yield from ORIGINAL_ITERATE(self, start_batch)
        return
    built, epoch = queue.Queue(maxsize=2), self.epoch

    def build():
        torch.set_num_threads(1)  # this thread's OpenMP setting only: the training thread keeps its own
        for k in range(start_batch, self.num_batches):
            built.put(self._build_batch(epoch, k))
        built.put(None)

    threading.Thread(target=build, daemon=True).start()
    while (batch := built.get()) is not None:
        yield self._finish(batch)


ORIGINAL_ITERATE = epochs.EpochLoader.iterate


def run_build(base: Path, args) -> None:
    for rep in range(args.reps):
        for mode in args.modes.split(","):
            epochs.EpochLoader.iterate = threaded_iterate if mode == "thread" else ORIGINAL_ITERATE
            config = student_config(base, f"{mode}{rep}", args.epochs, args.compile, workers=int(mode == "worker"))
            fit(config)
            print(f"rep {rep} {mode}: {summary(epoch_rows(config))}", flush=True)
    epochs.EpochLoader.iterate = ORIGINAL_ITERATE


def run_alternate(base: Path, args) -> None:
    original, batched = trainer_module.Trainer.train_epoch, {}

    def train_epoch(self, epoch, *rest):
        builder = self.train_loader.builder
        batched.setdefault("randaugment", builder.batch_randaugment)
        per_image = epoch % 2 == 1
        builder.batch_randaugment = None if per_image else batched["randaugment"]
        augment._TABLE_MAX_SIZE = 0 if per_image else 48  # crop matrices computed, or read from the table
        return original(self, epoch, *rest)

    trainer_module.Trainer.train_epoch = train_epoch
    try:
        config = student_config(base, "alternate", args.epochs, args.compile)
        fit(config)
    finally:
        trainer_module.Trainer.train_epoch = original
    rows = epoch_rows(config)
    print("batched build: " + summary([r for r in rows if r["epoch"] % 2 == 1]))
    print("per-image build: " + summary([r for r in rows if r["epoch"] % 2 == 0]))


def run_profile(base: Path, args) -> None:
    from torch.profiler import ProfilerActivity, profile

    original, calls = trainer_module.Trainer.train_step, {"n": 0}
    profiler = profile(activities=[ProfilerActivity.CPU])

    def train_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 30:
            profiler.__enter__()
        out = original(self, *a, **k)
        if calls["n"] == 50:
            profiler.__exit__(None, None, None)
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60))
        return out

    trainer_module.Trainer.train_step = train_step
    try:
        fit(student_config(base, "profile", 2, args.compile))
    finally:
        trainer_module.Trainer.train_step = original


def run_batch(base: Path, args) -> None:
    import time

    from deit.data import augment_config, load_split, make_loader

    config = student_config(base, "batch", 1, "off")
    loader = make_loader(load_split(config, "train"), config.batch_size, train=True, augment=augment_config(config))
    builder = loader.builder
    images = builder.images[builder.epoch_indices(0)[:config.batch_size]]
    flip = torch.rand(len(images), generator=torch.Generator().manual_seed(0)) < 0.5
    crop = augment.random_resized_crop(images, (config.rrc_scale_min, 1.0), flip, torch.Generator())
    crop = crop.round().to(torch.uint8)

    def ms(fn) -> float:
        times = []
        for k in range(40):
            start = time.perf_counter()
            fn(k)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    parts = {"whole batch": lambda k: builder[0, k % loader.num_batches],
             "crop": lambda k: augment.random_resized_crop(images, (config.rrc_scale_min, 1.0), flip,
                                                           torch.Generator().manual_seed(k)),
             "RandAugment, per image (PIL)": lambda k: augment.randaugment_batch(crop, builder.randaugment, k),
             "erasing": lambda k: augment.random_erase_(builder._normalise(crop), config.reprob,
                                                        torch.Generator().manual_seed(k))}
    if builder.batch_randaugment is not None:
        parts["RandAugment, batched"] = lambda k: builder.batch_randaugment(crop, k)
    for name, fn in parts.items():
        print(f"{name}: {ms(fn):.2f} ms a batch of {len(images)}")


def run_host(base: Path, args) -> None:
    import time

    from deit.engine.runtime import setup_runtime
    from deit.flops import train_flops_per_image
    from deit.machine import matmul_peak_tflops

    config = student_config(base, "host", 1, "off")
    tr = trainer_module.Trainer(config, config.output, setup_runtime(config.device, config.precision, config.threads))
    tr.model.train()
    tr.train_loader.set_epoch(0)
    batches = tr.train_loader.iterate(0)
    data = [next(batches) for _ in range(24)]

    def step(k: int) -> None:
        x, y = data[k % len(data)]
        tr.train_step(x.clone(), y.clone(), 0, 0).total.item()  # timm's Mixup mixes in place

    flops = train_flops_per_image(tr.model, data[0][0])  # nominal FLOPs of one image, forward + backward
    tr.task.student = torch.compile(tr.model, dynamic=False)  # what --compile on does (deit.engine.compile)

    def seconds(fn, reps: int) -> float:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for k in range(5):
        step(k)
    print(f"{flops / 1e9:.4f} GFLOP an image (forward + backward, nominal)")
    a, b = torch.randn(1664, 192).bfloat16(), torch.randn(192, 576).bfloat16()
    src, dst = torch.randn(2**18).bfloat16(), torch.empty(2**18, dtype=torch.bfloat16)
    rows = []
    for w in range(args.windows):
        peak = matmul_peak_tflops(torch.bfloat16, torch.device("cpu"), n=2048)
        small = 2 * 1664 * 192 * 576 / seconds(lambda: a @ b, 50) / 1e12
        copy_gbps = 2 * src.numel() * 2 / seconds(lambda: dst.copy_(src), 200) / 1e9
        step_s = seconds(lambda: [step(w * 8 + i) for i in range(8)], 1) / 8
        rows.append((step_s, peak, small, copy_gbps))
        print(f"window {w:2d}: {step_s * 1e3:5.1f} ms a step ({64 / step_s:4.0f} im/s, "
              f"{64 / step_s * flops / 1e12 / peak * 100:4.1f} % of this window's peak {peak:.3f} TFLOP/s); "
              f"step-shaped GEMM {small:.3f} TFLOP/s; 512 KB copy {copy_gbps:5.1f} GB/s", flush=True)
    cut = (min(r[0] for r in rows) + max(r[0] for r in rows)) / 2  # fast and slow windows, split halfway
    for label, group in (("fast", [r for r in rows if r[0] < cut]), ("slow", [r for r in rows if r[0] >= cut])):
        if group:
            med = [statistics.median(r[i] for r in group) for i in range(4)]
            print(f"{label} windows ({len(group)}): step {med[0] * 1e3:.1f} ms ({64 / med[0] * flops / 1e12 / med[1] * 100:.1f} % "
                  f"of the peak), peak {med[1]:.3f}, step-shaped GEMM {med[2]:.3f} TFLOP/s, copy {med[3]:.1f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("build", "alternate", "profile", "batch", "host"))
    parser.add_argument("--modes", default="serial,thread,worker")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="default: 7 (build), 13 (alternate)")
    parser.add_argument("--compile", default="on", choices=("on", "off", "auto"))
    parser.add_argument("--windows", type=int, default=40)
    args = parser.parse_args()
    args.epochs = args.epochs or (13 if args.what == "alternate" else 7)
    base = Path(tempfile.mkdtemp())
    try:
        {"build": run_build, "alternate": run_alternate, "profile": run_profile, "batch": run_batch,
         "host": run_host}[args.what](base, args)
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
