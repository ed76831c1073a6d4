"""Paired comparisons of two study rows: the per-seed differences of runs that share a seed (same student init,
same data order: only the compared setting differs), their mean and its 95 % Student-t interval over seeds."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def t_two_sided_probability(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer `df` >= 1: the closed-form series of Abramowitz & Stegun 26.7.3
    (odd df) and 26.7.4 (even df), in theta = atan(t / sqrt(df)) (no scipy needed)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:  # 2/pi * (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df - 2 terms after 1
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0  # sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df / 2 terms
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| <= t) = confidence (the two-sided critical value: 12.706 for 95 % and df 1), by bisection."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    low, high = 0.0, 1.0
    while t_two_sided_probability(high, df) < confidence:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_probability(mid, df) < confidence else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class PairedDifference:
    """row − base over the seeds both have: per-seed differences, their mean and a t interval (None under 2 seeds)."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    std: float | None
    low: float | None
    high: float | None
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def paired_difference(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> PairedDifference | None:
    """a − b over the seeds both have (seed -> top-1): the mean difference and its t interval over seeds
    (mean ± t(confidence, n − 1) · std / √n); None without a common seed."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    differences = tuple(a[s] - b[s] for s in seeds)
    mean = statistics.mean(differences)
    if len(seeds) < 2:
        return PairedDifference(seeds, differences, mean, None, None, None, confidence)
    std = statistics.stdev(differences)
    half = t_quantile(confidence, len(seeds) - 1) * std / math.sqrt(len(seeds))
    return PairedDifference(seeds, differences, mean, std, mean - half, mean + half, confidence)
