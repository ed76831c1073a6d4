from __future__ import annotations


def register(sub) -> None:
    from deit.reproduce import STUDIES

    p = sub.add_parser("reproduce", help="the paper's distillation tables at small scale (resumable)")
    p.add_argument("--preset", required=True, choices=sorted(STUDIES))
    p.add_argument("--output", default=None, help="tables and plot (default results/<preset>)")
    p.add_argument("--runs-dir", default=None, help="training runs (default runs/reproduce/<preset>)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.reproduce import run_study

    execution = {k: getattr(args, k) for k in ("data_dir", "device", "precision", "threads", "progress")
                 if getattr(args, k) is not None}
    results = run_study(args.preset, args.output, args.runs_dir, **execution)
    print(results["table"])
    return 0
