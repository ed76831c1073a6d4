"""A time budget: the schedule (total optimizer steps, hence the cosine's length) sized to the throughput
measured in a run's first steps, then fixed, so that the run ends within its minutes on any machine and a
faster machine trains longer."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass


@dataclass
class BudgetPlan:
    """What calibration measured and decided; recorded in config.json ("schedule")."""

    total_steps: int
    epochs: float  # total_steps / steps_per_epoch: the last epoch may be partial
    step_s: float  # median seconds per training step (data wait included)
    eval_s: float  # estimated seconds of one evaluation
    evaluations: int
    budget_s: float
    spent_s: float  # before the plan: setup and calibration steps

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


def evaluations_in(total_steps: int, steps_per_epoch: int, eval_every: int) -> int:
    """Evaluations of a run of total_steps: every eval_every epochs, and always at the end."""
    epochs = math.ceil(total_steps / steps_per_epoch)
    return len({e for e in range(1, epochs + 1) if e % eval_every == 0} | {epochs})


def plan_schedule(budget_s: float, spent_s: float, done_steps: int, step_times: list[float], eval_s: float,
                  steps_per_epoch: int, eval_every: int, reserve_s: float = 3.0) -> BudgetPlan:
    """The largest number of total steps whose remaining steps and evaluations fit in what is left of the
    budget (less reserve_s for the final writes); at least one step past the calibration."""
    step_s = steady_step_s(step_times)
    left = budget_s - spent_s - reserve_s
    total = done_steps + max(1, int(left / step_s))
    for _ in range(3):  # the number of evaluations depends on the length: settle it
        evals = evaluations_in(total, steps_per_epoch, eval_every)
        total = done_steps + max(1, int((left - evals * eval_s) / step_s))
    return BudgetPlan(total, total / steps_per_epoch, step_s, eval_s, evaluations_in(total, steps_per_epoch, eval_every),
                      budget_s, spent_s)
