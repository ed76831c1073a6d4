from __future__ import annotations

import dataclasses
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("predict", help="classify image files (or folders of them) with a trained run or a hub model")
    p.add_argument("model", metavar="MODEL", help="a run directory of `deit train`, a directory of `deit convert "
                   "--layout hf|timm`, or a hub name: hf-hub:ORG/NAME[@REVISION], timm:NAME[.TAG]")
    p.add_argument("images", nargs="+", help="image files or folders (every image under them)")
    p.add_argument("--weights", default="model", choices=["model", "best", "ema"], help="a run directory's weights")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--json", action="store_true", help="one JSON list, one object per image")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.hub import describe
    from deit.model_source import load_model_source
    from deit.predict import classify_files

    source = load_model_source(args.model, args.weights)  # a bad name is one line before any image is read
    predictions = classify_files(source, args.images, weights=args.weights, top_k=args.top_k,
                                 batch_size=args.batch_size, device=args.device, precision=args.precision)
    if source.hub is not None:  # what the name resolved to, once it worked (on stderr: stdout is the predictions)
        print(f"model: {describe(source.hub)}", file=sys.stderr)
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in predictions]))
        return 0
    for p in predictions:
        top = ", ".join(f"{name} {100 * prob:.1f} %" for name, prob in p.top)
        heads = f"  [class head: {p.cls_head}, distillation head: {p.dist_head}]" if p.cls_head else ""
        print(f"{p.file}: {top}{heads}")
    return 0
