from __future__ import annotations

import time


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="the main job: a convnet teacher, a DeiT student without and with the "
                                        "distillation token; one table with the gain")
    p.add_argument("--setting", default="small", choices=["small", "full"],
                   help="small: 4,000 Fashion-MNIST images on a 40x40 canvas, teacher + student without and with the "
                        "distillation token (where distillation pays off); full: all 60,000 images, teacher + "
                        "distilled student")
    p.add_argument("--output", default="runs/pipeline",
                   help="artifacts go to OUTPUT/SETTING-sSEED (one folder per run, pipeline.md, pipeline.json)")
    p.add_argument("--minutes", type=float, default=20.0,
                   help="finish within this many minutes (small: 20 %% teacher, 37.5 %% each student; full: 25 / "
                        "75 %%), each schedule sized to the speed measured in its first steps (0: the presets' epochs)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-subset", type=float, default=None,
                   help="stratified subset: count or fraction (default: the setting's, small: 4000)")
    p.add_argument("--seed", type=int, default=0, help="seed of all the runs (teacher and students)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", dest="student_compile", default=None, choices=["auto", "on", "off"],
                   help="the students' --compile (deit train --help); auto compiles them where this machine compiled "
                        "their steps before, the token student as the undistilled one")
    p.add_argument("--teacher-model", default=None, help="teacher architecture (default: resnet8_tiny)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="a fixed length instead of its share of minutes")
    p.add_argument("--student-epochs", type=int, default=None, help="the same, for every student")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args) -> int:
    started = time.monotonic()  # the budget counts the imports below too
    from deit.pipeline import run_pipeline

    options = {k: v for k, v in vars(args).items()
               if k not in ("func", "command", "output", "minutes", "setting") and v is not None}
    result = run_pipeline(args.output, minutes=args.minutes or None, setting=args.setting, started=started, **options)
    print()
    print(result["table"])
    print(f"\npipeline finished in {(time.monotonic() - started) / 60:.1f} min; artifacts in {result['dir']}")
    return 0
