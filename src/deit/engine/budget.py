"""A time budget: the schedule (total optimizer steps, hence the cosine's length) sized to the throughput
measured in a run's first steps, so that the run ends within its minutes on any machine and a faster machine
trains longer; then planned again after every epoch from the pace of the last few, because a shared machine's
speed moves during a run (the pipeline's students ran 8-21 % over budgets planned from their first epoch alone)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass
from typing import Optional


@dataclass
class BudgetPlan:
    """What calibration measured and decided; recorded in config.json ("schedule")."""

    total_steps: int
    epochs: float  # total_steps / steps_per_epoch: the last epoch may be partial
    step_s: float  # median seconds per training step (data wait included)
    eval_s: float  # estimated seconds of one evaluation
    evaluations: int
    budget_s: float
    spent_s: float  # before the plan: setup and the steps so far
    first_total_steps: Optional[int] = None  # what calibration planned, before any re-plan

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_steps(warmup_steps: int, steps_per_epoch: int) -> int:
    """Measure during the whole warm-up (at most one epoch), whose learning rates do not depend on the
    schedule's length; at least 8 steps. The first steps run slower (allocation and other start-up costs):
    40 steps measured a step 9 % slower than the rest of the run, and the pipeline ended 6 % early."""
    return max(8, min(warmup_steps, steps_per_epoch))


def steady_step_s(step_times: list[float]) -> float:
    """The median step time without the first tenth of the steps (at least 2): the start-up steps."""
    skip = max(2, len(step_times) // 10)
    return statistics.median(step_times[skip:] if len(step_times) > 2 * skip else step_times)


def evaluations_in(total_steps: int, steps_per_epoch: int, eval_every: int, done_steps: int = 0) -> int:
    """Evaluations of a run of total_steps still to come after done_steps: every eval_every epochs, and always
    at the end."""
    epochs = math.ceil(total_steps / steps_per_epoch)
    done_epochs = min(done_steps // steps_per_epoch, epochs - 1)
    return len({e for e in range(done_epochs + 1, epochs + 1) if e % eval_every == 0} | {epochs})


class Pace:
    """Seconds a training step took over the last few epochs, evaluations left out, everything else in (data
    waits, logging, saves): what the rest of a run will take, as far as the recent past says."""

    def __init__(self, epochs: int = 3):
        self.recent: deque[tuple[float, int]] = deque(maxlen=epochs)

    def add(self, wall_s: float, steps: int) -> None:
        if steps > 0:
            self.recent.append((wall_s, steps))

    @property
    def step_s(self) -> Optional[float]:
        steps = sum(n for _, n in self.recent)
        return sum(s for s, _ in self.recent) / steps if steps else None


def plan_schedule(budget_s: float, spent_s: float, done_steps: int, step_s: float, eval_s: float,
                  steps_per_epoch: int, eval_every: int, reserve_s: float = 3.0) -> BudgetPlan:
    """The largest number of total steps whose remaining steps and evaluations fit in what is left of the
    budget (less reserve_s for the final writes); at least one step more than done_steps."""
    left = budget_s - spent_s - reserve_s
    total = done_steps + max(1, int(left / step_s))
    for _ in range(3):  # the number of evaluations depends on the length: settle it
        evals = evaluations_in(total, steps_per_epoch, eval_every, done_steps)
        total = done_steps + max(1, int((left - evals * eval_s) / step_s))
    return BudgetPlan(total, total / steps_per_epoch, step_s, eval_s,
                      evaluations_in(total, steps_per_epoch, eval_every, done_steps), budget_s, spent_s)
