"""state.pt, the resumable training state, in a form that loads without running code; and each process's part of
it (RNG, the epoch's sums so far), taken back under the same or another world size.

torch.load(weights_only=True) takes tensors, dicts, lists, tuples, numbers, strings and None, and nothing else.
The state's model/optimizer/scaler/EMA state dicts are already such; the RNG states are not (numpy's holds an
ndarray), so they are stored as tensors and plain numbers and turned back on load. Files of format 1 (before
this one: numpy states pickled as they are) are read with exactly the numpy globals they need allowed, never
with weights_only=False."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safe_read import first_line, pickled_global, refuse_code
from .runtime import Runtime, rng_state, set_rng_state

FORMAT = 2  # 1: written by plain torch.save of the raw RNG states (no "format" key)
REQUIRED = ("model", "optimizer", "scaler", "epoch", "batch", "step", "best_top1", "epoch_sums", "rng")


def _numpy_globals() -> list:
    """What a format-1 state.pt pickles for numpy's RNG state (and numpy scalars), under both numpy 1 and 2
    module names: array, dtype and scalar constructors; none of them calls anything a file names."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray

    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), multiarray._reconstruct, multiarray.scalar]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    return allowed


# --------------------------------------------------------------------------------------------- RNG states
def encode_rng(state: dict) -> dict:
    version, internal, gauss_next = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"][:5]
    out = {
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": state["torch"],
    }
    if "cuda" in state:
        out["cuda"] = list(state["cuda"])
    return out


def decode_rng(state: dict) -> dict:
    """The states random/numpy/torch take back; format-1 states (already raw) pass through."""
    if not isinstance(state.get("python"), dict):
        return state
    py, npy = state["python"], state["numpy"]
    out = {
        "python": (py["version"], tuple(py["internal"].tolist()), py["gauss_next"]),
        "numpy": (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                  npy["cached_gaussian"]),
        "torch": state["torch"],
    }
    if "cuda" in state:
        out["cuda"] = state["cuda"]
    return out


def _plain(value: Any) -> Any:
    """numpy scalars and arrays that crept in (a metric, a sum) as Python numbers and tensors."""
    if isinstance(value, dict):
        return type(value)((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


# --------------------------------------------------------------------------------------------- each process's part
def process_parts(rt: Runtime, epoch_sums: dict) -> dict:
    """The state's entries of the processes: rank 0's RNG and, under several processes, each one's RNG and sums
    of the epoch so far (gathered: every process calls this at the same step)."""
    return {
        "rng": rng_state(), "world_size": rt.world_size,
        "rng_by_rank": rt.gather_objects(rng_state()) if rt.distributed else None,
        # Each process's sums of the epoch so far: its losses are its own share of the batches.
        "epoch_sums_by_rank": rt.gather_objects(epoch_sums) if rt.distributed else None,
    }


def restore_process_parts(state: dict, rt: Runtime) -> dict:
    """This process's RNG taken back from `state`; returns its sums of the epoch so far."""
    epoch_sums = state["epoch_sums"]
    by_rank = state.get("rng_by_rank")
    if by_rank and len(by_rank) == rt.world_size:  # same world size: each process continues its own
        set_rng_state(by_rank[rt.rank])
    elif rt.rank == 0:  # another world size: rank 0 continues, the others keep their fresh seeds
        set_rng_state(state["rng"])
    sums = state.get("epoch_sums_by_rank")
    if sums and len(sums) == rt.world_size:
        epoch_sums = sums[rt.rank]
    elif sums:  # another world size: rank 0 takes every saved process's losses, so the epoch's mean stays whole
        summed = {k: sum(s.get(k, 0) for s in sums) if rt.rank == 0 else 0
                  for k in ("loss", "base", "distill", "n", "images")}
        epoch_sums = {**sums[0], **summed}
    return epoch_sums


# --------------------------------------------------------------------------------------------- the file
def encode_state(state: dict) -> dict:
    out = dict(state, format=FORMAT, rng=encode_rng(state["rng"]))
    if state.get("rng_by_rank"):
        out["rng_by_rank"] = [encode_rng(r) for r in state["rng_by_rank"]]
    out["epoch_sums"] = _plain(state.get("epoch_sums", {}))
    if state.get("epoch_sums_by_rank"):
        out["epoch_sums_by_rank"] = _plain(state["epoch_sums_by_rank"])
    out["best_top1"] = float(state["best_top1"])
    return out


def decode_state(state: dict) -> dict:
    out = dict(state, rng=decode_rng(state["rng"]))
    if state.get("rng_by_rank"):
        out["rng_by_rank"] = [decode_rng(r) for r in state["rng_by_rank"]]
    return out


def save_state(state: dict, path: Path) -> None:
    torch.save(encode_state(state), path)


def read_state(path: Path, device: torch.device | str = "cpu") -> dict:
    """The state in `path`, as Trainer.load_state_dict takes it; a ValueError naming the file for anything that
    is not a training state of a version this code reads (a crafted pickle is refused and nothing in it runs)."""

    path = Path(path)
    try:
        # Format 2 needs no allowed globals; the numpy ones are there for format-1 files only.
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        name = pickled_global(e)
        if name is not None:
            refuse_code(path, name)
            raise ValueError(f"{path} holds a pickled {name}, which no training state does; refused, nothing in "
                             "it was run") from None
        raise ValueError(f"{path} is not a readable training state: {first_line(e)}") from None
    except Exception as e:  # truncated or not a torch file at all
        raise ValueError(f"{path} is not a readable training state: {first_line(e)}") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise ValueError(f"{path} is not a training state of `deit train` (it lacks "
                         f"{', '.join(k for k in REQUIRED if not isinstance(state, dict) or k not in state)})")
    version = state.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise ValueError(f"{path} was written by a newer deit (state format {version}; this one reads up to "
                         f"{FORMAT}): resume it with that version")
    return decode_state(state)
