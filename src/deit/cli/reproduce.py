from __future__ import annotations


# How the runs execute (TrainConfig fields); of these, data_dir, device and precision enter a run's recorded settings.
EXECUTION = ("data_dir", "device", "precision", "threads", "num_workers", "progress")


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
    p.add_argument("--num-workers", type=int, default=None,
                   help="data worker processes building the augmented batches (default 0 for in-memory data: in the "
                        "training process); a GPU needs several to be fed")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--rows", type=_names, default=None,
                   help="train only these rows, comma-separated (e.g. none,token; a teacher row's name trains it); "
                        "the others' recorded results stay in the tables")
    p.add_argument("--seeds", type=_seeds, default=None, help="train only these seeds, comma-separated (e.g. 0)")
    p.add_argument("--merge", action="append", default=[], metavar="RESULTS",
                   help="take in the recorded runs of another results.json of this study (or the folder holding it), "
                        "e.g. rows trained on another machine; repeatable")
    p.add_argument("--plan", action="store_true",
                   help="train nothing: list every run and what this command would do with it")
    p.add_argument("--estimate-steps", type=int, default=12,
                   help="with --plan: time this many training steps of each kind of run to train and give the minutes "
                        "each should take here (0: no estimate)")
    p.set_defaults(func=run)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _seeds(text: str) -> list[int]:
    import argparse

    try:
        return [int(seed) for seed in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers separated by commas (e.g. 0,1), not {text!r}")


def run(args) -> int:
    from deit.reproduce import run_study

    execution = {k: getattr(args, k) for k in EXECUTION if getattr(args, k) is not None}
    results = run_study(args.preset, args.output, args.runs_dir, rows=args.rows, seeds=args.seeds, plan=args.plan,
                        merge=args.merge, estimate_steps=args.estimate_steps, **execution)
    if not args.plan:
        print(results["table"])
    return 0
