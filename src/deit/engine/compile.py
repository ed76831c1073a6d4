"""--compile: the student's training step through torch.compile (inductor), decided and warmed up once at setup.

Only the module the training step calls is compiled; the Trainer keeps the plain module for everything else
(evaluation, EMA, weights, state), so no saved key ever carries torch.compile's `_orig_mod.` prefix. The compile
happens in a warm-up forward + backward on a random batch of the step's shape, before training: its seconds
count against a time budget like any setup, the first training step is an ordinary one, and a compiler that
fails falls back to eager with one line on stderr."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..config import TrainConfig
from ..fileio import read_machine_cache, update_machine_cache
from ..safe_read import first_line
from .precision import precision_name, probe_key
from .runtime import Runtime

COMPILE_CACHE = Path.home() / ".cache" / "deit" / "compile.json"  # steps compiled before: the inductor cache holds them
# Measured on the Zen 4 (2 cores, bf16; docs/performance.md, "torch.compile"): the pipeline's compiled student step
# ran at 0.86-0.89x the eager step's time; its first compile, with an empty inductor cache, took 120-180 s on the
# loaded machine (some 60 C++ kernels through g++), a compile from the cache 3-4 s.
SAVED_FRACTION = 0.12
COLD_COMPILE_S = 150.0


def compile_key(model_name: str, input_shape: tuple[int, ...], amp_dtype: Optional[torch.dtype]) -> str:
    """The precision probe's key (machine, ISA, torch, threads, model, step shape) and the precision."""
    return f"{probe_key(model_name, input_shape)}|{precision_name(amp_dtype)}"


def decide(config: TrainConfig, rt: Runtime, key: str) -> tuple[bool, str]:
    """Whether to compile, and why. auto compiles only where it was measured to pay: the project's ViTs in bf16 on
    a CPU in one process, when this very step was compiled before (the cache makes it a few seconds), or when the
    time budget is long enough that the step's saving covers a first compile."""
    from ..models import model_family

    if config.compile != "auto":
        return config.compile == "on", f"--compile {config.compile}"
    if rt.device.type != "cpu" or rt.amp_dtype != torch.bfloat16 or rt.distributed or model_family(config.model) != "vit":
        return False, "auto: measured to pay only for a ViT trained in bf16 on a CPU in one process"
    cached = read_machine_cache(COMPILE_CACHE).get(key)
    if cached is not None and Path(cached["cache_dir"]).is_dir():
        return True, f"auto: this step compiled before here ({cached['seconds']:.0f} s the last time)"
    budget_s = (config.time_budget_minutes or 0) * 60
    if budget_s * SAVED_FRACTION > COLD_COMPILE_S:
        return True, f"auto: a {budget_s / 60:g} min budget repays a first compile (~{COLD_COMPILE_S:.0f} s)"
    return False, (f"auto: off, a first compile of this step (~{COLD_COMPILE_S:.0f} s) costs more than it saves "
                   "in this run; --compile on once fills the cache, then auto compiles it in seconds")


def compile_student(student: nn.Module, model: nn.Module, config: TrainConfig, rt: Runtime,
                    input_shape: tuple[int, ...]) -> nn.Module:
    """`student` (the module the step calls: `model`, or `model` in DDP) compiled and warmed up, or `student` as it
    is when --compile decides against it or compiling fails."""
    key = compile_key(config.model, input_shape, rt.amp_dtype)
    on, reason = decide(config, rt, key)
    if not on:
        if config.compile == "auto" and "--compile on" in reason:
            rt.print(f"compile {reason}")
        return student
    # inductor imports torch's C++-extension helper, which warns on a CPU-only machine that no CUDA runtime is found
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    start = time.perf_counter()
    try:
        compiled = Compiled(student)
        _warm_up(compiled, model, input_shape, rt)
    except Exception as e:  # no C++ compiler, an unsupported op: training goes on uncompiled
        print(f"deit train: compiling the student failed ({type(e).__name__}: {first_line(e)}); training uncompiled",
              file=sys.stderr, flush=True)
        return student
    seconds = time.perf_counter() - start
    rt.print(f"compile: the student's step compiled in {seconds:.1f} s ({reason})")
    _remember(key, seconds)
    return compiled


class Compiled(nn.Module):
    """The student through torch.compile, its input in one memory layout: dynamo guards on strides, even on a dim
    of size 1, and batches differ there (RandAugment's gray batches have a channel stride of 0): without it the
    first real batch would compile again."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.compiled = torch.compile(student, dynamic=False)  # the step's shape never changes (full batches only)

    def forward(self, x: torch.Tensor):
        return self.compiled(x.clone(memory_format=torch.contiguous_format))

    def no_sync(self):  # DDP's, for gradient accumulation (engine/trainer.py)
        return self.compiled.no_sync()


def _warm_up(compiled: nn.Module, model: nn.Module, input_shape: tuple[int, ...], rt: Runtime) -> None:
    """One forward + backward of a random batch: compiles both graphs. Leaves no trace: gradients cleared, buffers
    (BatchNorm statistics) and the RNG (stochastic depth) restored."""
    buffers = [b.detach().clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    try:
        x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(rt.device)
        with rt.autocast():
            out = compiled(x)
        outputs = [out] if isinstance(out, torch.Tensor) else [t for t in vars(out).values() if t is not None]
        sum(t.float().mean() for t in outputs).backward()
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        torch.set_rng_state(rng)


def _remember(key: str, seconds: float) -> None:
    from torch._inductor.runtime.runtime_utils import cache_dir

    update_machine_cache(COMPILE_CACHE, key, {"seconds": round(seconds, 1), "cache_dir": cache_dir()})

