from __future__ import annotations

import dataclasses
import json


def register(sub) -> None:
    p = sub.add_parser("predict", help="classify image files (or folders of them) with a trained run")
    p.add_argument("run_dir", help="a run directory of `deit train`")
    p.add_argument("images", nargs="+", help="image files or folders (every image under them)")
    p.add_argument("--weights", default="model", choices=["model", "best", "ema"])
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--json", action="store_true", help="one JSON list, one object per image")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.predict import classify_files

    predictions = classify_files(args.run_dir, args.images, weights=args.weights, top_k=args.top_k,
                                 batch_size=args.batch_size, device=args.device, precision=args.precision)
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in predictions]))
        return 0
    for p in predictions:
        top = ", ".join(f"{name} {100 * prob:.1f} %" for name, prob in p.top)
        heads = f"  [class head: {p.cls_head}, distillation head: {p.dist_head}]" if p.cls_head else ""
        print(f"{p.file}: {top}{heads}")
    return 0
