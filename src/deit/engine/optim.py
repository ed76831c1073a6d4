"""Optimisation: AdamW parameter groups, the learning-rate rule and its per-step schedule."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..config import TrainConfig


def scaled_lr(config: TrainConfig) -> float:
    """The paper's rule, lr x global batch / 512: --batch-size is the global batch, so a recipe means the same
    at any number of processes."""
    return config.lr * config.batch_size / 512


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, warmup_lr: float, min_lr: float) -> float:
    """Linear warm-up from warmup_lr to peak, then cosine to min_lr; a pure function of the step, so resuming
    needs no scheduler state (the official code steps per epoch and lags by one)."""
    if step < warmup_steps:
        return warmup_lr + (peak - warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on 1-D parameters (norms, biases) and the model's named exemptions (pos_embed,
    tokens). Give it the plain model, not a DDP wrapper (which hides no_weight_decay)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer_fast(params: Iterable, **kwargs) -> torch.optim.AdamW:
    """torch.optim.AdamW with the fused kernel (one kernel for all tensors; CPU and CUDA since torch 2.4),
    else the foreach one. Same update as the default AdamW; kwargs as AdamW's (lr, weight_decay, betas, eps)."""
    params = list(params)
    for impl in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.AdamW(params, **kwargs, **impl)
        except (RuntimeError, ValueError, TypeError):
            continue
    raise AssertionError("unreachable: plain AdamW always builds")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return make_optimizer_fast(param_groups(model, config.weight_decay), lr=scaled_lr(config),
                               eps=config.opt_eps, betas=(0.9, 0.999))
