"""A/B: the pipeline's undistilled student (bf16, its threads) with its batches built on the training process
(num_workers 0) or in one worker process (1): median images/s and data-wait fraction of epochs 2-4, the two
alternating `--reps` times. Run on a quiet machine: `python scripts/pipeline_workers_ab.py [--reps 2]`."""

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from deit.engine import fit
from deit.pipeline import pipeline_configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp())
    results: dict[int, list] = {}
    try:
        for rep in range(args.reps):
            for workers in (0, 1):
                config = pipeline_configs("small", base / f"p{rep}{workers}", progress=False)["none"].replace(
                    num_workers=workers, epochs=args.epochs, eval_every=100, precision="bf16",
                    output=str(base / f"r{rep}{workers}"))
                fit(config)
                rows = [json.loads(line) for line in (Path(config.output) / "log.jsonl").read_text().splitlines()]
                ims = statistics.median(r["images_per_s"] for r in rows[1:])
                wait = statistics.median(r["data_wait_fraction"] for r in rows[1:])
                results.setdefault(workers, []).append((ims, wait))
                print(f"rep {rep} workers {workers}: {ims:.0f} im/s, data wait {wait:.3f}", flush=True)
    finally:
        shutil.rmtree(base)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
