"""How long a study's runs will take on this machine, measured rather than guessed: a few real training steps of
a run's config (its model, its teacher's architecture with random weights, its data, augmentation and batch)
and one evaluation of its test set, scaled to the run's steps and evaluations."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..config import TrainConfig


def run_steps(config: TrainConfig, num_images: int) -> tuple[int, int]:
    """(optimizer steps, evaluations) of a whole single-process run on `num_images` training images (batches are
    dropped when incomplete, as the trainer does)."""
    epochs = int(config.epochs)
    steps = epochs * (num_images * config.repeats // config.batch_size)
    return steps, -(-epochs // config.eval_every)


def measure_run_seconds(config: TrainConfig, teacher_model: str | None, num_images: int, steps: int = 12) -> dict:
    """Seconds one run of `config` should take here: `steps` training steps of it timed through `deit train`
    (epochs=1 on steps x batch images) and one evaluation of its test split, scaled. Returns {"step_s", "eval_s",
    "total_s"}. The first steps run slower than the steady state: an estimate on the high side."""
    from ..checkpoint import load_checkpoint, save_model
    from ..data import load_split, make_loader
    from ..engine import fit
    from ..engine.evaluate import predict
    from ..engine.precision import resolve_precision
    from ..engine.runtime import resolve_device
    from ..teacher import _build_architecture

    with tempfile.TemporaryDirectory() as tmp:
        changes = dict(train_subset=steps * config.batch_size, epochs=1, warmup_epochs=0, eval_every=1,
                       keep_checkpoints=False, progress=False, output=str(Path(tmp) / "run"),
                       time_budget_minutes=None)
        if teacher_model is not None:  # its cost, not its knowledge: random weights of the teacher's architecture
            data = load_split(config, "val")
            teacher = _build_architecture(teacher_model, data.num_classes, data.images.shape[1])
            changes.update(teacher=teacher_model, teacher_weights=str(save_model(teacher, Path(tmp) / "teacher")))
        result = fit(config.replace(**changes))
        step_s = result.metrics["train_time_s"] / result.metrics["steps"]
        device = resolve_device(config.device)
        test = make_loader(load_split(config, "val"), config.eval_batch_size, train=False, device=device,
                           num_workers=None)
        start = time.perf_counter()
        predict(load_checkpoint(result.output).model.to(device), test, device,
                resolve_precision(config.precision, device))
        eval_s = time.perf_counter() - start
    total_steps, evaluations = run_steps(config, num_images)
    return {"step_s": step_s, "eval_s": eval_s, "total_s": total_steps * step_s + evaluations * eval_s}

