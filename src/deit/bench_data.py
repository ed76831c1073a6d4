"""`deit bench --loader imagefolder:PATH`: the streamed image-folder loader against timm's create_loader on the same
folder, transforms (DeiT's train recipe), batch size and worker count, as a ratio measured in one run.

Each window starts fresh worker processes for one candidate only (no other candidate's workers run meanwhile), skips
the first round of batches (worker start-up and the pipeline filling), and times the next ones; candidates alternate
window by window and the median images/s is reported.

Per core: images per CPU-second, the CPU time of the workers (/proc/PID/stat) plus this process (time.process_time:
ours normalises and erases here, on a CPU device) over the timed batches; "workers only" leaves this process out
(on CUDA our batch stage runs on the GPU). Load on the machine moves wall-clock images/s far more than CPU time, so
per-core rates are what to compare across runs; the ratio to timm is measured within one run. timm runs twice: as
create_loader with use_prefetcher=False (every step in its workers) and True (uint8 workers, normalise and erase per
batch in this process, as timm trains on CUDA: the like of ours)."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .machine import cpu_info

RECIPE = dict(scale=(0.08, 1.0), hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)


@dataclass(frozen=True)
class LoaderBenchConfig:
    data: str  # "imagefolder:PATH"
    workers: int = 2
    batch_size: int = 64
    img_size: int = 224
    windows: int = 3
    batches: int = 0  # timed batches per window; 0: 4 per worker
    seed: int = 0
    candidates: tuple[str, ...] = ("ours", "timm", "timm_prefetcher")


def process_tree_pss(pid: int | None = None) -> int:
    """Proportional set size in bytes of a process and all its descendants (shared pages split among sharers), from
    /proc/*/smaps_rollup (Linux)."""
    pid = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _ours(cfg: LoaderBenchConfig):
    from .data import AugmentConfig, StreamLoader, load_data

    data = load_data(cfg.data, "train", img_size=cfg.img_size)
    augment = AugmentConfig(rrc_scale=RECIPE["scale"], hflip=RECIPE["hflip"], randaugment=RECIPE["auto_augment"],
                            reprob=RECIPE["re_prob"])
    loader = StreamLoader(data, cfg.batch_size, train=True, augment=augment, seed=cfg.seed, num_workers=cfg.workers,
                          persistent=False)
    return loader.iterate, len(data)


def _timm(cfg: LoaderBenchConfig, prefetcher: bool = False):
    """timm's create_loader; prefetcher=True: its uint8 workers and batch-wise normalise + erase in this process (how
    timm trains on CUDA, where that runs on the GPU: the like of ours)."""
    import torch
    from timm.data import ImageDataset, create_loader

    from .data.listing import IMAGENET_MEAN, IMAGENET_STD

    dataset = ImageDataset(str(Path(cfg.data.split(":", 1)[1]).expanduser() / "train"))
    loader = create_loader(dataset, input_size=(3, cfg.img_size, cfg.img_size), batch_size=cfg.batch_size,
                           is_training=True, use_prefetcher=prefetcher, scale=RECIPE["scale"], hflip=RECIPE["hflip"],
                           color_jitter=None, auto_augment=RECIPE["auto_augment"], interpolation="bicubic",
                           re_prob=RECIPE["re_prob"], re_mode="pixel", re_count=1, mean=IMAGENET_MEAN,
                           std=IMAGENET_STD, num_workers=cfg.workers, persistent_workers=False,
                           device=torch.device("cpu"))
    _posterize_fix(dataset.transform)
    return lambda: iter(loader), len(dataset)


def _posterize_fix(transform) -> None:
    """timm's posterize raises on 0 bits with Pillow >= 13 (see augment._posterize_any_bits): the same fix as ours, so
    the reference does not crash mid-run; the cost is the same."""
    from timm.data import auto_augment

    from .data.augment import _posterize_any_bits

    for step in transform.transforms:
        for op in getattr(step, "ops", []):
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = _posterize_any_bits


def _cpu_seconds(pids) -> float:
    """User + system CPU time of these processes so far (/proc/PID/stat), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def _worker_pids() -> list[int]:
    """This process's children (/proc/*/stat): the DataLoader workers of the one candidate a window runs."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def _window(make_iterator, skip: int, timed: int, batch_size: int, pss: list, cpu: dict) -> float:
    iterator = make_iterator()
    for _ in range(skip):
        next(iterator)
    pids = _worker_pids()
    start, start_workers, start_main = time.perf_counter(), _cpu_seconds(pids), time.process_time()
    for _ in range(timed):
        next(iterator)
    elapsed = time.perf_counter() - start
    images = timed * batch_size
    workers, main = _cpu_seconds(pids) - start_workers, time.process_time() - start_main
    cpu["workers"].append(images / workers if pids and workers > 0 else float("nan"))
    cpu["all"].append(images / (workers + main) if workers + main > 0 else float("nan"))
    pss.append(process_tree_pss())
    if hasattr(iterator, "close"):
        iterator.close()
    del iterator  # shuts this candidate's workers down before the next window
    return images / elapsed


def run_loader_bench(cfg: LoaderBenchConfig, log=print) -> dict:
    import torch

    if not cfg.data.lower().startswith("imagefolder:"):
        raise ValueError(f"--loader needs imagefolder:PATH, got {cfg.data!r}")
    if cfg.workers < 1:
        raise ValueError(f"--workers must be >= 1 (worker processes decode), got {cfg.workers}")
    torch.set_num_threads(1)
    builders = {"ours": lambda: _ours(cfg), "timm": lambda: _timm(cfg),
                "timm_prefetcher": lambda: _timm(cfg, prefetcher=True)}
    unknown = set(cfg.candidates) - set(builders)
    if unknown:
        raise ValueError(f"unknown candidates {sorted(unknown)}; choose from {sorted(builders)}")
    made = {name: builders[name]() for name in cfg.candidates}
    timed = cfg.batches or 4 * cfg.workers
    images = next(iter(made.values()))[1]
    # one batch more than are read: timm's prefetcher reads a batch ahead, and an epoch read to its end stops the
    # workers before their CPU time is read
    if images < cfg.batch_size * (cfg.workers + timed + 1):
        raise ValueError(f"{cfg.data}: {images} train images are too few for {cfg.workers + timed + 1} batches of "
                         f"{cfg.batch_size}; use a smaller --batch-size or --batches")
    rates: dict[str, list[float]] = {name: [] for name in made}
    pss: dict[str, list[int]] = {name: [] for name in made}
    cpu: dict[str, dict] = {name: {"all": [], "workers": []} for name in made}
    for w in range(cfg.windows):
        for name, (make_iterator, _) in made.items():
            rates[name].append(_window(make_iterator, cfg.workers, timed, cfg.batch_size, pss[name], cpu[name]))
            log(f"window {w + 1}/{cfg.windows} {name}: {rates[name][-1]:.1f} images/s, "
                f"{cpu[name]['all'][-1]:.1f} per core ({cpu[name]['workers'][-1]:.1f} workers only)")
    medians = {name: statistics.median(r) for name, r in rates.items()}
    per_core = {name: statistics.median(c["all"]) for name, c in cpu.items()}
    per_core_workers = {name: statistics.median(c["workers"]) for name, c in cpu.items()}
    result = {"config": {**cfg.__dict__, "candidates": list(cfg.candidates), "timed_batches": timed},
              "images_per_s": medians, "per_worker": {k: v / cfg.workers for k, v in medians.items()},
              "images_per_s_per_core": per_core, "images_per_s_per_core_workers_only": per_core_workers,
              "windows": rates, "windows_per_core": {k: c["all"] for k, c in cpu.items()},
              "peak_pss_gb": {k: max(v) / 2**30 for k, v in pss.items()}, "cpu": cpu_info()[0]}
    if "timm" in medians:
        # images/s ratio of the medians; the median of each window's ratio to timm's window next to it (less
        # sensitive to load that changes between windows); per core: images per CPU-second (load-insensitive)
        result["ratio_vs_timm"] = {k: v / medians["timm"] for k, v in medians.items() if k != "timm"}
        result["paired_ratio_vs_timm"] = {k: statistics.median(a / b for a, b in zip(rates[k], rates["timm"]))
                                          for k in medians if k != "timm"}
        result["per_core_ratio_vs_timm"] = {k: v / per_core["timm"] for k, v in per_core.items() if k != "timm"}
        result["per_core_workers_only_ratio_vs_timm"] = {
            k: v / per_core_workers["timm"] for k, v in per_core_workers.items() if k != "timm"}
    if "timm_prefetcher" in medians and "ours" in medians:  # both normalise and erase per batch outside the workers
        result["ours_vs_timm_prefetcher"] = {
            "per_core": per_core["ours"] / per_core["timm_prefetcher"],
            "per_core_workers_only": per_core_workers["ours"] / per_core_workers["timm_prefetcher"]}
    return result


def format_loader_report(result: dict) -> str:
    c = result["config"]
    lines = [f"{c['data']} train, {c['img_size']} px, batch {c['batch_size']}, {c['workers']} workers, "
             f"{c['timed_batches']} timed batches x {c['windows']} windows ({result['cpu']})"]
    for name, rate in result["images_per_s"].items():
        ratio = result.get("ratio_vs_timm", {}).get(name)
        paired = result.get("paired_ratio_vs_timm", {}).get(name)
        lines.append(f"  {name:15s} {rate:8.1f} images/s  process tree {result['peak_pss_gb'][name]:.2f} GB PSS"
                     + (f"  {ratio:.2f}x timm (window-paired {paired:.2f}x)" if ratio is not None else ""))
    for name, rate in result["images_per_s_per_core"].items():
        ratio = result.get("per_core_ratio_vs_timm", {}).get(name)
        workers = result["images_per_s_per_core_workers_only"][name]
        workers_ratio = result.get("per_core_workers_only_ratio_vs_timm", {}).get(name)
        lines.append(f"  {name:15s} {rate:8.1f} images/s per core" + (f"  {ratio:.2f}x timm" if ratio else "")
                     + f"   workers only {workers:.1f}" + (f"  {workers_ratio:.2f}x timm" if workers_ratio else ""))
    if "ours_vs_timm_prefetcher" in result:
        r = result["ours_vs_timm_prefetcher"]
        lines.append(f"  ours / timm_prefetcher: {r['per_core']:.2f}x per core, {r['per_core_workers_only']:.2f}x "
                     "workers only")
    return "\n".join(lines)
