"""A time budget as a run lives it (the arithmetic is deit.engine.budget): the step times measured while
calibrating, the plan adopted by every process and recorded in config.json, the pace of the epochs since, and
the evaluation times the plans read. The Trainer owns one and takes the schedule's length from it."""

from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn

from ..config import TrainConfig
from .budget import BudgetPlan, Pace, plan_schedule, steady_step_s
from .run_dir import RunWriter
from .runtime import Runtime


class BudgetControl:
    """The schedule a --time-budget-minutes run plans (total optimizer steps), once calibrated and after every
    epoch; inert without a budget."""

    def __init__(self, config: TrainConfig, rt: Runtime, writer: RunWriter, steps_per_epoch: int, started: float):
        """started: time.monotonic() when the run began (the budget counts from there)."""
        self.config, self.rt, self.writer = config, rt, writer
        self.steps_per_epoch, self.started = steps_per_epoch, started
        self.plan: Optional[BudgetPlan] = None
        self.step_times: list[float] = []  # while calibrating a time budget
        self.pace: Optional[Pace] = None  # after calibrating in this process: the schedule is planned again each epoch
        self.last_eval_s: Optional[float] = None  # the latest evaluation's seconds
        self.epoch_eval_s = 0.0

    @property
    def calibrating(self) -> bool:
        return self.config.time_budget_minutes is not None and self.plan is None

    def evaluated(self, seconds: float) -> None:
        """An evaluation took `seconds` (this epoch's: left out of its pace)."""
        self.last_eval_s = self.epoch_eval_s = seconds

    def restore(self, recorded: Optional[dict]) -> Optional[int]:
        """On resume: the schedule a time budget fixed (config.json), not a new calibration; its total steps
        (None when the run has no recorded schedule)."""
        if recorded is None:
            return None
        self.plan = BudgetPlan(**recorded)
        return self.plan.total_steps

    def calibrate(self, step: int, eval_s: float) -> int:
        """Size the schedule to the time budget from the steps measured so far (the main process decides); its
        total steps. eval_s: one evaluation's estimated seconds (estimate_eval_s)."""
        c = self.config
        plan = plan_schedule(c.time_budget_minutes * 60, time.monotonic() - self.started, step,
                             steady_step_s(self.step_times), eval_s, self.steps_per_epoch, c.eval_every)
        self._adopt(plan)
        self.pace = Pace()
        self.rt.print(f"time budget {c.time_budget_minutes:g} min: {plan.step_s * 1000:.0f} ms a step, "
                      f"~{plan.eval_s:.0f} s an evaluation -> {plan.epochs:.2f} epochs ({plan.total_steps} steps)")
        return plan.total_steps

    def replan(self, epoch_wall_s: float, steps: int, step: int) -> int:
        """After an epoch: size what is left of the schedule to what is left of the budget at the pace of the
        last epochs and the last evaluation's time; its total steps. A resumed run keeps its recorded schedule
        (no pace)."""
        c = self.config
        self.pace.add(epoch_wall_s, steps)
        eval_s = self.last_eval_s if self.last_eval_s is not None else self.plan.eval_s
        plan = plan_schedule(c.time_budget_minutes * 60, time.monotonic() - self.started, step,
                             self.pace.step_s, eval_s, self.steps_per_epoch, c.eval_every)
        plan.first_total_steps = self.plan.first_total_steps
        self._adopt(plan)
        return plan.total_steps

    def _adopt(self, plan: BudgetPlan) -> None:
        """Every process takes the main process's total (their clocks differ); recorded in config.json."""
        (total,) = self.rt.all_reduce([plan.total_steps if self.rt.is_main else 0])
        plan.total_steps, plan.epochs = int(total), int(total) / self.steps_per_epoch
        if plan.first_total_steps is None:  # calibration's plan
            plan.first_total_steps = plan.total_steps
        self.plan = plan
        self.writer.update_config({"schedule": plan.to_dict()})


@torch.no_grad()
def estimate_eval_s(models: list[nn.Module], val_loader, rt: Runtime) -> float:
    """One evaluation's seconds, from timing the second forward of the first val batch through each of `models`
    (those an evaluation runs: the student, its EMA, the teacher when the first evaluation computes its logits).
    Each model is left in the mode it was in."""
    x, _ = next(iter(val_loader))
    seconds = 0.0
    for model in models:
        was_training = model.training
        model.eval()
        with rt.autocast():
            model(x)
            start = time.perf_counter()
            model(x)
        seconds += time.perf_counter() - start
        model.train(was_training)
    return seconds * len(val_loader)
