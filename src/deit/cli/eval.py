from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a run directory (or a hub model) on validation data")
    p.add_argument("--checkpoint", required=True, metavar="MODEL", help="a run directory of `deit train`, a directory "
                   "of `deit convert --layout hf|timm`, or a hub name: hf-hub:ORG/NAME[@REVISION], timm:NAME[.TAG]")
    p.add_argument("--data", default=None, help="data set (default: the run's; needed for any other model, whose "
                   "classes must be the data's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--weights", default="model", choices=["model", "best", "ema"], help="a run directory's weights")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--teacher", default=None, help="also evaluate a teacher and the disagreement rates: a run "
                   "directory, a hub name (hf-hub:ORG/NAME[@REVISION], timm:NAME[.TAG]) or an architecture name")
    p.add_argument("--teacher-weights", default=None, help="an architecture-name teacher's weights: a file or a hub name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.engine import evaluate_run
    from deit.hub import describe
    from deit.model_source import load_model_source

    source = load_model_source(args.checkpoint, args.weights)  # a bad name is one line before any data is read
    metrics = evaluate_run(source, data=args.data, data_dir=args.data_dir, weights=args.weights,
                           batch_size=args.batch_size, device=args.device, precision=args.precision,
                           teacher=args.teacher, teacher_weights=args.teacher_weights, progress=not args.json)
    if source.hub is not None:  # what the name resolved to, once it worked (on stderr: stdout is the metrics)
        print(f"model: {describe(source.hub)}", file=sys.stderr)
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")
    return 0
