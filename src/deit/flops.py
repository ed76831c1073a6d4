"""Nominal FLOPs of a model's forward and of its training step, as `deit bench` scores them and as a run's MFU
(the fraction of the machine's matmul peak it reached) counts them: every token through every block (the training
forward's shortcuts, such as the last block's query for the two output tokens only, are not subtracted), the
matmuls, convolutions and attention torch's FLOP counter sees."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of the matmuls, convolutions and attention that `fn` runs (torch.utils.flop_counter). Attention runs
    as its two matmuls (SDPA's math backend): torch's counter has no formula for SDPA's CPU kernels (it would count
    them as 0), and a fused backward's recomputation is not nominal work."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


def nominal_forward(model: nn.Module, x: torch.Tensor):
    """The model's nominal computation (every token through every block): the FLOPs both sides are scored on."""
    if hasattr(model, "forward_features"):
        return model.forward_head(model.forward_features(x))
    return model(x)


def forward_flops_per_image(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs an image of the model's nominal forward on the batch `x` (no gradients)."""
    with torch.no_grad():
        return count_flops(lambda: nominal_forward(model, x)) / len(x)


def train_flops_per_image(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs an image of a training step's forward and backward through every head (on a copy in train mode, so
    the model's gradients and statistics stay as they are, and with the random state restored after: stochastic
    depth draws from it, and a run's draws must not depend on being counted). A teacher's forward is not
    included: add forward_flops_per_image(teacher, x)."""
    student = copy.deepcopy(model).train()

    def step() -> None:
        out = nominal_forward(student, x)
        logits = [out] if isinstance(out, torch.Tensor) else \
            [t for t in (getattr(out, "cls_logits", None), getattr(out, "dist_logits", None)) if t is not None]
        sum(t.float().sum() for t in logits).backward()

    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        return count_flops(step) / len(x)


def training_utilisation(flops_per_image: float, images_per_s: float, dtype: torch.dtype, device: torch.device,
                         world_size: int = 1) -> dict[str, float]:
    """A run's MFU: images/s of the whole job x the nominal FLOPs an image of its step (train_flops_per_image, plus
    its teacher's forward) over the matmul peak of its precision on its device, measured once per process, times
    the processes."""
    from .machine import process_matmul_peak_tflops

    peak = process_matmul_peak_tflops(dtype, device)
    return {"flops_per_image": flops_per_image, "matmul_peak_tflops": peak,
            "mfu": images_per_s * flops_per_image / (peak * 1e12 * world_size)}
