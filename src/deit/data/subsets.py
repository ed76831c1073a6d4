"""Class-stratified random subsets (train on a fraction of a data set with its class balance)."""

from __future__ import annotations

import math

import torch

from .seeding import derive_seed


def stratified_subset(labels: torch.Tensor, size: int | float, seed: int) -> torch.Tensor:
    """Sorted indices of a class-stratified random subset: `size` samples (int >= 1) or that fraction (float in (0, 1]).

    Per-class counts are proportional with largest-remainder rounding, so the total is exact; when size >= the number
    of classes, every class present keeps at least one sample. Deterministic given seed."""
    labels = torch.as_tensor(labels).long()
    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"subset size must be an int count or a float fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 < size <= 1.0:
            raise ValueError(f"subset fraction must be in (0, 1], got {size}")
        total = max(1, round(size * n))
    else:
        total = size
    if not 1 <= total <= n:
        raise ValueError(f"subset size must be between 1 and {n} (the number of samples), got {size}")

    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * total / n
    alloc = quota.floor().long()
    remainder = total - int(alloc.sum())
    by_fraction = torch.sort(quota - alloc, descending=True, stable=True).indices  # ties: lower class first
    alloc[by_fraction[:remainder]] += 1
    if total >= len(classes):
        for empty in torch.nonzero(alloc == 0).flatten().tolist():
            surplus = torch.where(alloc > 1, alloc - quota, torch.full_like(quota, -math.inf))
            alloc[int(surplus.argmax())] -= 1  # the class most over its exact share gives one up
            alloc[empty] = 1

    generator = torch.Generator().manual_seed(derive_seed(seed, "subset"))
    chosen = []
    for c, k in zip(classes.tolist(), alloc.tolist()):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.sort(torch.cat(chosen)).values


def held_out_subset(labels: torch.Tensor, excluded: torch.Tensor, size: int | float, seed: int) -> torch.Tensor:
    """Sorted indices of a class-stratified random subset of the samples *not* in `excluded` (e.g. a validation
    split held out of the training images a run's --train-subset leaves unused): `size` as in stratified_subset,
    counted over the remaining samples. Drawn with its own seed stream, so it never mirrors the excluded draw."""
    labels = torch.as_tensor(labels).long()
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[torch.as_tensor(excluded).long()] = False
    pool = torch.nonzero(keep).flatten()
    if len(pool) == 0:
        raise ValueError("no sample is left to hold out: the excluded indices cover the whole split")
    return pool[stratified_subset(labels[pool], size, derive_seed(seed, "held-out"))]
