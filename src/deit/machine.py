"""The machine a measurement ran on, and what it can do: CPU name and ISA flags, the practical matmul peak (for
MFU), the memory one step takes. One place for these, so that every report names its machine the same way."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import platform
import statistics
import time
from typing import Callable, Optional

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_info() -> tuple[str, set[str]]:
    """(model name, ISA flags) from /proc/cpuinfo; (platform's name, no flags) where it is absent."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return name, flags


def machine_info(device: torch.device) -> dict:
    """What every measurement is reported with: the device (GPU name, or CPU name, cores, vector ISA and bf16
    instructions), threads and library versions."""
    info = {"device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        return info
    model_name, flags = cpu_info()
    info.update(cpu=model_name, cores=os.cpu_count(), isa=torch.backends.cpu.get_cpu_capability(),
                avx512_bf16="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags)
    return info


def matmul_peak_tflops(dtype: torch.dtype, device: torch.device, n: Optional[int] = None, reps: int = 5,
                       max_seconds: float = 0.25) -> float:
    """Achieved TFLOP/s of an n x n matmul in `dtype`: the machine's practical peak for MFU (median of reps).
    Without n: 8192 on CUDA, 2048 on a CPU, shrunk (by halves, down to 256) until one product takes at most
    max_seconds, so that a dtype the CPU only emulates (bf16 without bf16 instructions: 100x slower) does not
    take minutes."""
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
        while n > 256 and _matmul_seconds(n // 4, dtype, device) * 64 > max_seconds:
            n //= 2
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times = []
    for i in range(reps + 2):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e12


@functools.lru_cache(maxsize=None)
def process_matmul_peak_tflops(dtype: torch.dtype, device: torch.device) -> float:
    """matmul_peak_tflops, measured once per process, dtype and device (every run of a process, e.g. the three of
    `deit pipeline`, is scored against the same measurement)."""
    return matmul_peak_tflops(dtype, device)


def _matmul_seconds(n: int, dtype: torch.dtype, device: torch.device) -> float:
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b  # first call: allocation, kernel choice
    sync(device)
    start = time.perf_counter()
    a @ b
    sync(device)
    return time.perf_counter() - start


def _proc_status_kb(key: str) -> Optional[int]:
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def measure_peak_memory_mb(step: Callable[[], None], device: torch.device) -> Optional[float]:
    """CUDA: torch.cuda.max_memory_allocated over one step (weights, optimizer state and activations).
    CPU: growth of the resident set over one step (peak RSS after resetting the high-water mark, minus RSS
    before): activations and temporaries, not what was already resident. None where Linux's /proc is absent."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages so they count again
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _proc_status_kb("VmRSS")
    step()
    peak = _proc_status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) / 1024
