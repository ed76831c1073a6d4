"""`deit bench`: a thin wrapper over deit.bench.run_bench."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("bench", help="throughput, memory, FLOPs and MFU of inference / a training step; "
                                     "optionally against timm, interleaved in one process")
    p.add_argument("--model", default=None, help="registered model name (`deit models`); required unless --loader")
    p.add_argument("--loader", default=None, metavar="imagefolder:PATH",
                   help="instead of a model: the streamed image-folder loader against timm's create_loader on this "
                        "folder's train split (DeiT's train transforms): images/s and images/s per CPU core, ratios")
    p.add_argument("--workers", type=int, default=2, help="--loader: DataLoader worker processes (both loaders)")
    p.add_argument("--batches", type=int, default=0, help="--loader: timed batches per window (default 4 per worker)")
    p.add_argument("--img-size", type=int, default=None, help="override the model's input size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--ours-precision", choices=["fp32", "bf16"], default=None,
                   help="run ours in another precision than timm (default: --precision)")
    p.add_argument("--teacher-precision", choices=["fp32", "bf16", "int8"], default=None,
                   help="our teacher's precision (default: ours); int8 = post-training quantization")
    p.add_argument("--mode", choices=["infer", "train", "both"], default="infer")
    p.add_argument("--compare", choices=["timm"], default=None, help="also time timm's model of the same "
                                                                     "architecture and print ours/timm")
    p.add_argument("--teacher", default=None, help="registered teacher (random init): a distilled training step")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (compile time reported)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--windows", type=int, default=5, help="timed windows per candidate (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per candidate")
    p.add_argument("--min-window-s", type=float, default=1.0, help="seconds a timed window lasts at least")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.loader:
        return run_loader(args)
    if not args.model:
        print("deit bench: error: give --model NAME (or --loader imagefolder:PATH to time data loading)",
              file=sys.stderr)
        return 2
    from deit.bench import BenchConfig, format_report, run_bench

    cfg = BenchConfig(model=args.model, img_size=args.img_size, batch_size=args.batch_size,
                      precision=args.precision, ours_precision=args.ours_precision,
                      teacher_precision=args.teacher_precision, mode=args.mode, compare=args.compare, teacher=args.teacher,
                      threads=args.threads, compile=args.compile, device=args.device, warmup=args.warmup,
                      windows=args.windows, min_window_s=args.min_window_s)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.json else (lambda s: None)
    result = run_bench(cfg, log=log)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def run_loader(args) -> int:
    from deit.bench_data import LoaderBenchConfig, format_loader_report, run_loader_bench

    cfg = LoaderBenchConfig(data=args.loader, workers=args.workers, batch_size=args.batch_size,
                            img_size=args.img_size or 224, windows=args.windows, batches=args.batches)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.json else (lambda s: None)
    try:
        result = run_loader_bench(cfg, log=log)
    except (ValueError, FileNotFoundError) as e:
        print(f"deit bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_loader_report(result))
    return 0
