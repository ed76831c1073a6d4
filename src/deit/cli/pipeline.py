from __future__ import annotations

import time


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="the main job: CNN teacher, then a distilled DeiT student; one table")
    p.add_argument("--output", default="runs/pipeline", help="artifacts go here (teacher/, student/, pipeline.md)")
    p.add_argument("--minutes", type=float, default=20.0,
                   help="finish within this many minutes: a quarter for the teacher, the rest for the student, each "
                        "schedule sized to the speed measured in its first steps (0: the presets' epochs)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-subset", type=float, default=None, help="stratified subset: count or fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--teacher-model", default=None, help="teacher architecture (default: the cnn-small preset's)")
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--student-model", default=None, help="student (default: the fmnist-cpu preset's)")
    p.add_argument("--student-epochs", type=int, default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.pipeline import run_pipeline

    options = {k: v for k, v in vars(args).items()
               if k not in ("func", "command", "output", "minutes") and v is not None}
    start = time.monotonic()
    result = run_pipeline(args.output, minutes=args.minutes or None, **options)
    print()
    print(result["table"])
    print(f"\npipeline finished in {(time.monotonic() - start) / 60:.1f} min; artifacts in {args.output}")
    return 0
