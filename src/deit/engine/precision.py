"""Precision: the one table of names and dtypes, autocast, and the one resolver of --precision (auto included)."""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..machine import cpu_info

# The one precision table: name -> the dtype of the computation (fp32: no autocast).
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(name: str) -> torch.dtype:
    if name not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_DTYPES)}, got {name!r}")
    return PRECISION_DTYPES[name]


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """The name of an autocast dtype (None: fp32)."""
    return {None: "fp32", **{d: n for n, d in PRECISION_DTYPES.items()}}[dtype]


def cpu_has_fast_bf16() -> bool:
    """bf16 pays off on CPUs with AMX tiles; with AVX-512-BF16 alone, fp32 matmuls measured faster here
    (docs/performance.md)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32. auto, before any measurement: bf16 on CUDA that has it (else
    fp16), bf16 on CPUs with AMX, fp32 on other CPUs; training on a CPU then measures
    (probe_training_precision) and keeps the faster."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs CUDA (a grad scaler); on CPU use --precision bf16 or fp32")
    dtype = precision_dtype(precision)
    return None if dtype == torch.float32 else dtype


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------- measured
PROBE_CACHE = Path.home() / ".cache" / "deit" / "precision-probe.json"
PROBE_CANDIDATES = ("fp32", "bf16")


@dataclass
class PrecisionProbe:
    """What the probe measured: median seconds of the model's training step in each precision."""

    choice: str
    seconds: dict[str, float]
    cached: bool = False

    @property
    def speedup(self) -> float:
        """fp32 time over the chosen precision's time (1.0 when fp32 is chosen)."""
        return self.seconds["fp32"] / self.seconds[self.choice]

    def summary(self) -> str:
        ratio = self.seconds["fp32"] / self.seconds["bf16"]
        verdict = "faster" if ratio >= 1 else "slower"
        return (f"precision auto -> {self.choice}: a bf16 training step ran {max(ratio, 1 / ratio):.2f}x {verdict} "
                f"than fp32 here{' (cached probe)' if self.cached else ''}")

    def to_dict(self) -> dict:
        return {"choice": self.choice, "seconds": self.seconds, "bf16_speedup": self.seconds["fp32"] / self.seconds["bf16"],
                "cached": self.cached}


def probe_key(model_name: str, input_shape: tuple[int, ...]) -> str:
    """Machine (its name and vector ISA: two EPYC generations share a name), torch version, threads and the
    step's shape: a cached answer is reused only for the same step."""
    return "|".join([cpu_info()[0], torch.backends.cpu.get_cpu_capability(), torch.__version__,
                     f"threads={torch.get_num_threads()}", model_name,
                     "x".join(map(str, input_shape))])


def probe_training_precision(model: nn.Module, input_shape: tuple[int, ...], model_name: str,
                             budget_s: float = 1.0, use_cache: bool = True) -> PrecisionProbe:
    """Time the model's own training step (forward + backward on a copy, random input) in fp32 and under
    bf16 autocast, interleaved, and choose the faster. It starts on a batch of 4: where one precision is
    clearly faster (1.5x) that decides it; otherwise it measures at the run's batch (up to 64) for about
    `budget_s`. Cached per machine, torch version, threads and step shape (PROBE_CACHE). Weights, buffers and
    the RNG are untouched."""
    from ..fileio import read_machine_cache, update_machine_cache

    key = probe_key(model_name, input_shape)
    if use_cache and key in (cache := read_machine_cache(PROBE_CACHE)):
        seconds = cache[key]
        return PrecisionProbe(min(seconds, key=seconds.get), seconds, cached=True)
    device = next(model.parameters()).device
    clone = copy.deepcopy(model).train()
    cpu_rng = torch.get_rng_state()
    try:
        seconds = _time_steps(clone, (min(4, input_shape[0]), *input_shape[1:]), device, rounds=1, budget_s=0)
        ratio = seconds["fp32"] / seconds["bf16"]
        if 1 / 1.5 < ratio < 1.5 and input_shape[0] > 4:  # close: measure the real step shape
            seconds = _time_steps(clone, (min(64, input_shape[0]), *input_shape[1:]), device, 2, budget_s)
    finally:
        torch.set_rng_state(cpu_rng)  # stochastic depth drew from it: a probed run and a cached one stay equal
    update_machine_cache(PROBE_CACHE, key, seconds)
    return PrecisionProbe(min(seconds, key=seconds.get), seconds)


def _time_steps(model: nn.Module, shape: tuple[int, ...], device: torch.device, rounds: int,
                budget_s: float) -> dict[str, float]:
    """Median seconds of a forward + backward per candidate precision: a warm-up call each (allocation,
    kernel choice), then interleaved rounds, at least `rounds`, more while within `budget_s` (at most 7).
    A gap of over 3x (plus 0.1 s) in the warm-up already decides: timing more would only cost time."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)

    def step(name: str) -> float:
        start = time.perf_counter()
        with autocast(device, None if name == "fp32" else PRECISION_DTYPES[name]):
            out = model(x)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        logits.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    warm = {name: step(name) for name in PROBE_CANDIDATES}
    if max(warm.values()) > 3 * min(warm.values()) + 0.1:  # e.g. bf16 emulated without bf16 instructions
        return warm
    times: dict[str, list[float]] = {name: [] for name in PROBE_CANDIDATES}
    start = time.perf_counter()
    while len(times["fp32"]) < rounds or (time.perf_counter() - start < budget_s and len(times["fp32"]) < 7):
        for name in PROBE_CANDIDATES:
            times[name].append(step(name))
    return {name: statistics.median(t) for name, t in times.items()}

