"""How long the save at a stop signal takes: RunWriter.state (state.pt: weights, AdamW moments, EMA, RNG; written
atomically with fsync), the one write a stop makes, for deit_tiny/small/base. Median of 3 (docs/reliability.md).

Usage: python scripts/save_time.py [DIR]   (DIR: where to write, default a temporary directory; pick the file
system the runs use)"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from timm.utils import ModelEmaV3

from deit.engine.run_dir import STATE, RunWriter
from deit.engine.runtime import rng_state
from deit.models import create_model

MODELS = ("deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224")


def training_state(name: str) -> dict:
    """What Trainer.state_dict holds for this model after a step: weights, AdamW's two moments, an EMA."""
    model = create_model(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates exp_avg and exp_avg_sq
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "ema": ModelEmaV3(model).state_dict(), "epoch": 1, "batch": 100, "step": 1000, "best_top1": 0.0,
            "epoch_sums": {"loss": 0.0, "n": 0}, "rng": rng_state(), "world_size": 1, "rng_by_rank": None}


def main(folder: Path) -> None:
    for name in MODELS:
        state = training_state(name)
        writer = RunWriter(folder)
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            writer.state(state)
            seconds.append(time.perf_counter() - start)
        size = (folder / STATE).stat().st_size / 2**20
        print(f"{name}: state.pt {size:.0f} MiB, save {statistics.median(seconds):.2f} s (median of 3: "
              + ", ".join(f"{s:.2f}" for s in seconds) + ")", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
