"""The time budget's arithmetic (deit.engine.budget), with hand-computed answers."""

import pytest

from deit.engine.budget import Pace, calibration_steps, evaluations_in, plan_schedule, steady_step_s


def test_calibration_spans_the_warm_up_but_at_most_one_epoch_and_at_least_8_steps():
    assert calibration_steps(warmup_steps=470, steps_per_epoch=937) == 470
    assert calibration_steps(warmup_steps=4685, steps_per_epoch=937) == 937
    assert calibration_steps(warmup_steps=3, steps_per_epoch=937) == 8


def test_the_steady_step_time_leaves_out_the_start_up_steps():
    times = [5.0, 3.0] + [0.2] * 8  # 10 steps: the first 2 are left out
    assert steady_step_s(times) == 0.2
    times = [1.0] * 10 + [0.5] * 90  # 100 steps: the first 10 are left out
    assert steady_step_s(times) == 0.5
    assert steady_step_s([0.3, 0.1, 0.2]) == 0.2  # too few to leave any out


def test_evaluations_count_every_eval_every_epochs_and_the_last():
    assert evaluations_in(total_steps=250, steps_per_epoch=100, eval_every=1) == 3  # epochs 1, 2, 3 (partial)
    assert evaluations_in(total_steps=1000, steps_per_epoch=100, eval_every=4) == 3  # epochs 4, 8, 10
    # still to come after 5 epochs: 8 and 10; after 9 epochs (or in the 10th): only the last
    assert evaluations_in(total_steps=1000, steps_per_epoch=100, eval_every=4, done_steps=500) == 2
    assert evaluations_in(total_steps=1000, steps_per_epoch=100, eval_every=4, done_steps=950) == 1


def test_the_pace_is_the_step_time_of_the_last_epochs():
    pace = Pace(epochs=2)
    assert pace.step_s is None
    pace.add(10.0, 100)  # 0.1 s a step
    pace.add(0.0, 0)  # an epoch of no step says nothing
    assert pace.step_s == pytest.approx(0.1)
    pace.add(30.0, 100)  # the machine slowed down: (10 + 30) / 200
    assert pace.step_s == pytest.approx(0.2)
    pace.add(30.0, 50)  # the first epoch leaves the window: (30 + 30) / 150
    assert pace.step_s == pytest.approx(0.4)


def test_the_plan_fills_what_is_left_with_steps_and_evaluations():
    # 100 s budget, 10 s spent, 3 s reserve: 87 s left; 0.1 s a step, 2 s an evaluation after each of 100 steps.
    plan = plan_schedule(100.0, 10.0, done_steps=20, step_s=0.1, eval_s=2.0, steps_per_epoch=100,
                         eval_every=1)
    # n more steps, e = ceil((20 + n) / 100) evaluations, 0.1 n + 2 e <= 87: n = 710, e = 8 fills it exactly
    # (n = 711 would need 87.1 s), 730 steps in all
    assert (plan.total_steps, plan.evaluations) == (730, 8)
    assert plan.epochs == pytest.approx(7.3) and plan.step_s == pytest.approx(0.1)
    spent = plan_schedule(100.0, 99.0, done_steps=20, step_s=0.1, eval_s=2.0, steps_per_epoch=100,
                          eval_every=1)
    assert spent.total_steps == 21  # over budget already: one more step, never fewer than were done


def test_a_replan_after_some_epochs_fits_the_rest_to_the_pace_and_counts_only_evaluations_to_come():
    # 100 s budget, 60 s spent after 300 steps (3 epochs of 100), 3 s reserve: 37 s left; the pace is now 0.2 s a
    # step (slower than calibration's 0.1), 2 s an evaluation every 2 epochs and at the end.
    plan = plan_schedule(100.0, 60.0, done_steps=300, step_s=0.2, eval_s=2.0, steps_per_epoch=100, eval_every=2)
    # n more steps end in epoch e = ceil((300 + n) / 100); evaluations to come: epochs 4 and e (if e > 4):
    # n = 165 -> e = 5, 2 evaluations: 0.2 * 165 + 4 = 37 fills it; the 3 evaluations done are not counted again
    assert (plan.total_steps, plan.evaluations) == (465, 2)
