"""DistillationLoss: the official DeiT loss wrapper, extended to every row of the paper's Table 3.

total = (1 - alpha) * base(cls_logits, targets) + alpha * distill(student_logits, teacher_logits)
(without a teacher, a model with a distillation token trains both heads on the label: the mean of both bases)

The distillation term is applied to the distillation head when the model has one (DeiT with a token),
else to the class head ("usual" soft or hard distillation without a token, which the official code refuses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .models.vit import DeiTOutput

DISTILLATION_TYPES = ("none", "soft", "hard")
KL_REDUCTIONS = ("official", "batchmean")


@dataclass
class LossOutput:
    total: torch.Tensor
    base: torch.Tensor
    distill: Optional[torch.Tensor] = None

    @staticmethod
    def mean(parts: list["LossOutput"]) -> "LossOutput":
        """The losses of equal micro-batches as the whole batch's (detached: for logging and checks)."""
        if len(parts) == 1:
            return parts[0]
        mean = lambda values: torch.stack([v.detach().float() for v in values]).mean()
        distill = mean([p.distill for p in parts]) if parts[0].distill is not None else None
        return LossOutput(mean([p.total for p in parts]), mean([p.base for p in parts]), distill)


def soft_distillation_loss(student_logits, teacher_logits, tau: float, reduction: str = "official"):
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)).

    official: summed and divided by batch x classes (what the DeiT code does);
    batchmean: divided by the batch size (the textbook KL; larger by a factor num_classes).
    """
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / tau, dim=1),
        F.log_softmax(teacher_logits.float() / tau, dim=1),
        reduction="sum",
        log_target=True,
    )
    if reduction == "official":
        return kl * (tau * tau) / student_logits.numel()
    if reduction == "batchmean":
        return kl * (tau * tau) / student_logits.shape[0]
    raise ValueError(f"kl reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")


def hard_distillation_loss(student_logits, teacher_logits):
    """Cross-entropy on the teacher's argmax; no label smoothing (the paper)."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=1))


class DistillationLoss:
    """Callable loss: `loss(outputs, targets, teacher_logits) -> LossOutput`.

    base_criterion takes (logits, targets); targets may be class indices or soft (mixed) targets.
    """

    def __init__(self, base_criterion: nn.Module, distillation_type: str = "none", alpha: float = 0.5,
                 tau: float = 1.0, kl_reduction: str = "official"):
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"distillation tau must be > 0, got {tau}")
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
        self.base_criterion = base_criterion
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.kl_reduction = kl_reduction

    def __call__(self, outputs, targets, teacher_logits: torch.Tensor | None = None) -> LossOutput:
        if isinstance(outputs, torch.Tensor):  # a model that returns plain logits (timm, torchvision)
            outputs = DeiTOutput(logits=outputs, cls_logits=outputs)
        base = self.base_criterion(outputs.cls_logits.float(), targets)
        if self.distillation_type == "none":
            if outputs.dist_logits is not None:
                # No teacher: the distillation head learns from the label as well (as timm's distilled ViT
                # does), instead of staying at its initialisation while evaluation averages it in.
                base = 0.5 * (base + self.base_criterion(outputs.dist_logits.float(), targets))
            return LossOutput(total=base, base=base)
        if teacher_logits is None:
            raise ValueError(f"{self.distillation_type} distillation needs teacher logits")
        student = outputs.dist_logits if outputs.dist_logits is not None else outputs.cls_logits
        if self.distillation_type == "soft":
            distill = soft_distillation_loss(student, teacher_logits, self.tau, self.kl_reduction)
        else:
            distill = hard_distillation_loss(student, teacher_logits)
        return LossOutput(total=(1 - self.alpha) * base + self.alpha * distill, base=base, distill=distill)
