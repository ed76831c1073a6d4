"""The training task: student, frozen teacher, Mixup/CutMix and DistillationLoss bundled into one loss call.

Only the student trains (and only it is wrapped for distributed training); the teacher sees the student's
mixed input, as in the official code."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..losses import DistillationLoss, LossOutput


def build_criterion(config: TrainConfig) -> DistillationLoss:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if config.mixing:
        base = SoftTargetCrossEntropy()  # Mixup already smooths the mixed targets
    elif config.smoothing > 0:
        base = LabelSmoothingCrossEntropy(config.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    return DistillationLoss(base, config.distillation, config.alpha, config.tau, config.kl_reduction)


class SeededMixup:
    """timm's Mixup/CutMix, made a pure function of (seed, step, rank): timm draws from numpy's global RNG, so
    we seed it per step and restore it afterwards. Each rank draws its own mix, as each process of the official
    code does."""

    def __init__(self, config: TrainConfig, num_classes: int, rank: int = 0):
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                           switch_prob=config.mixup_switch_prob, mode="batch",
                           label_smoothing=config.smoothing, num_classes=num_classes)
        self.seed, self.rank = config.seed, rank

    def __call__(self, x, y, step: int):
        saved = np.random.get_state()
        np.random.seed((self.seed * 1_000_003 + step + self.rank * 0x9E3779B1) % 2**32)
        try:
            return self.mixup(x, y)
        finally:
            np.random.set_state(saved)


class DistillationTask:
    """mix(x, y, step): Mixup/CutMix of a batch; loss(x, y): the teacher's logits on the (mixed) images and the
    Table 3 loss. Split so that a mixed batch can be cut into micro-batches (gradient accumulation): the pairs
    Mixup/CutMix form span the whole batch, as without accumulation."""

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], criterion: DistillationLoss,
                 mixup: Optional[SeededMixup] = None):
        self.student, self.teacher, self.criterion, self.mixup = student, teacher, criterion, mixup

    def mix(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixup(x, y, step) if self.mixup is not None else (x, y)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x).float()
        return self.criterion(self.student(x), y, teacher_logits)
