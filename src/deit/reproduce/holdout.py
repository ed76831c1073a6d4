"""A validation split held out of the training images: the training split's images that a run's --train-subset
leaves unused, a class-stratified seeded draw of them (deit.data.subsets.held_out_subset), placed on the run's
canvas exactly as its training images are. Teachers are matched by their accuracy here, never on the test set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import TrainConfig


def holdout_split(config: TrainConfig, size: int, seed: int):
    """The held-out images of a run's config: `size` images of the training split outside its train subset."""
    from ..data import load_split
    from ..data.subsets import held_out_subset, stratified_subset

    if config.train_subset is None:
        raise ValueError("a held-out validation split needs a run with --train-subset (images it does not train on)")
    full = load_split(config.replace(train_subset=None), "train")  # canvas positions do not depend on the subset
    subset = int(config.train_subset) if config.train_subset > 1 else float(config.train_subset)
    train = stratified_subset(full.labels, subset, config.seed if config.subset_seed is None else config.subset_seed)
    return full.subset(held_out_subset(full.labels, train, size, seed))


def holdout_top1(run_dir: Path, size: int, seed: int, **execution: Any) -> float:
    """Top-1 % of a finished run on the held-out split of its own config (its class+dist prediction for a
    distilled model, as its test top-1)."""
    from ..checkpoint import load_checkpoint
    from ..data import make_loader
    from ..engine.evaluate import predict
    from ..engine.precision import resolve_precision
    from ..engine.runtime import resolve_device

    config = TrainConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text())["train"])
    device = resolve_device(execution.get("device", "auto"))
    amp = resolve_precision(execution.get("precision", "auto"), device)
    loader = make_loader(holdout_split(config, size, seed), 500, train=False, device=device, num_workers=None)
    pred = predict(load_checkpoint(run_dir).model.to(device), loader, device, amp)
    return round(100 * float((pred["logits"].argmax(1) == pred["targets"]).float().mean()), 2)


def closest_teacher(accuracies: dict[str, float], target: float) -> str:
    """The teacher whose held-out top-1 is closest to `target` (the first listed on a tie)."""
    if not accuracies:
        raise ValueError("no teacher to choose from")
    order = list(accuracies)
    return min(order, key=lambda key: (abs(accuracies[key] - target), order.index(key)))
