"""DistillationLoss against values computed by hand (plain math, no torch losses)."""

import math

import pytest
import torch
from torch import nn

from deit.losses import DistillationLoss, hard_distillation_loss, soft_distillation_loss
from deit.models import DeiTOutput

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[0.2, 0.1, 2.0], [1.5, 0.0, 0.3]]
LABELS = [1, 2]


def softmax(row, tau=1.0):
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def ce(row, label):
    return -math.log(softmax(row)[label])


def kl_by_hand(tau):
    """sum over batch and classes of p_t * (log p_t - log p_s), at temperature tau."""
    total = 0.0
    for s, t in zip(STUDENT, TEACHER):
        ps, pt = softmax(s, tau), softmax(t, tau)
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return total


def outputs(distilled: bool, cls=STUDENT, dist=None):
    cls_t = torch.tensor(cls)
    dist_t = torch.tensor(dist) if dist is not None else (torch.tensor(cls) if distilled else None)
    return DeiTOutput(logits=cls_t, cls_logits=cls_t, dist_logits=dist_t)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_official_normalisation(tau):
    expected = kl_by_hand(tau) * tau**2 / 6  # divided by batch x classes = 2 x 3
    got = soft_distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), tau, "official")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_soft_batchmean_normalisation():
    expected = kl_by_hand(3.0) * 9 / 2
    got = soft_distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), 3.0, "batchmean")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_hard_is_ce_on_teacher_argmax_without_smoothing():
    teacher_labels = [2, 0]
    expected = sum(ce(s, t) for s, t in zip(STUDENT, teacher_labels)) / 2
    assert hard_distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER)).item() == pytest.approx(expected, rel=1e-6)


def test_none_is_base_only_on_class_head():
    loss = DistillationLoss(nn.CrossEntropyLoss(), "none")
    out = loss(outputs(False), torch.tensor(LABELS))
    assert out.total.item() == pytest.approx(sum(ce(s, y) for s, y in zip(STUDENT, LABELS)) / 2, rel=1e-6)
    assert out.distill is None


def test_none_with_a_token_trains_both_heads_on_the_label():
    dist = [[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    loss = DistillationLoss(nn.CrossEntropyLoss(), "none")
    out = loss(outputs(True, dist=dist), torch.tensor(LABELS))
    cls_ce = sum(ce(s, y) for s, y in zip(STUDENT, LABELS)) / 2
    dist_ce = sum(ce(s, y) for s, y in zip(dist, LABELS)) / 2
    assert out.total.item() == pytest.approx(0.5 * (cls_ce + dist_ce), rel=1e-6)
    assert out.distill is None


def test_token_hard_distillation_uses_dist_head():
    dist = [[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    loss = DistillationLoss(nn.CrossEntropyLoss(), "hard", alpha=0.5)
    out = loss(outputs(True, dist=dist), torch.tensor(LABELS), torch.tensor(TEACHER))
    base = sum(ce(s, y) for s, y in zip(STUDENT, LABELS)) / 2
    distill = (ce(dist[0], 2) + ce(dist[1], 0)) / 2
    assert out.base.item() == pytest.approx(base, rel=1e-6)
    assert out.distill.item() == pytest.approx(distill, rel=1e-6)
    assert out.total.item() == pytest.approx(0.5 * base + 0.5 * distill, rel=1e-6)


def test_usual_soft_distillation_without_token_uses_class_head():
    """Table 3 row 'usual distillation': tau 3, lambda 0.1, on the class head."""
    loss = DistillationLoss(nn.CrossEntropyLoss(), "soft", alpha=0.1, tau=3.0)
    out = loss(outputs(False), torch.tensor(LABELS), torch.tensor(TEACHER))
    base = sum(ce(s, y) for s, y in zip(STUDENT, LABELS)) / 2
    expected = 0.9 * base + 0.1 * kl_by_hand(3.0) * 9 / 6
    assert out.total.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_base_with_hard_distillation():
    from timm.loss import LabelSmoothingCrossEntropy

    eps = 0.1
    loss = DistillationLoss(LabelSmoothingCrossEntropy(eps), "hard", alpha=0.5)
    out = loss(outputs(False), torch.tensor(LABELS), torch.tensor(TEACHER))
    smoothed = 0.0
    for s, y in zip(STUDENT, LABELS):
        logp = [math.log(p) for p in softmax(s)]
        smoothed += (1 - eps) * -logp[y] + eps * -sum(logp) / 3
    assert out.base.item() == pytest.approx(smoothed / 2, rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(distillation_type="medium"), "distillation type"),
    (dict(distillation_type="hard", alpha=1.5), "alpha"),
    (dict(distillation_type="soft", tau=0.0), "tau"),
    (dict(distillation_type="soft", kl_reduction="mean"), "kl reduction"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(nn.CrossEntropyLoss(), **kwargs)


def test_distillation_without_teacher_logits_is_an_error():
    with pytest.raises(ValueError, match="teacher logits"):
        DistillationLoss(nn.CrossEntropyLoss(), "hard")(outputs(True), torch.tensor(LABELS))
