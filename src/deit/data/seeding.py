"""Seeds derived from (seed, keys...), and a scoped seeding of the global RNGs that timm's PIL augmentations use.

Every random draw in the data pipeline starts from derive_seed, so a batch (or sample) is a pure function of the run
seed and its coordinates, never of the order in which batches or workers ran."""

from __future__ import annotations

import contextlib
import random
import zlib

import numpy as np
import torch


def derive_seed(seed: int, *keys) -> int:
    """A 64-bit seed that is a pure function of (seed, keys); string keys separate independent streams."""
    words = [int(seed) & 0xFFFFFFFFFFFFFFFF] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """Seed python `random` and numpy's global RNG (timm's RandAugment draws from them) and restore them after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Seed python `random`, numpy's global RNG and torch's CPU generator (timm's per-sample transforms draw from all
    three) and restore them after. torch's CUDA generators are left alone: torch.manual_seed would reseed them."""
    torch_state = torch.default_generator.get_state()
    torch.default_generator.manual_seed(seed)
    try:
        with seeded_global_rng(seed):
            yield
    finally:
        torch.default_generator.set_state(torch_state)
