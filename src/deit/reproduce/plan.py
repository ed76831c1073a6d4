"""`deit reproduce --plan`: what a call would do with each run it reaches (reuse a record, resume, train), and
with --estimate-steps the minutes each run to train should take on this machine, measured (deit.reproduce.estimate)."""

from __future__ import annotations

from typing import Any

from ..config import preset_config
from .runner import StudyRun, row_options
from .studies import Row
from .teacher_choice import holdout_of, with_matched_teacher


def plan_study(state: StudyRun, order: list[tuple[Row, int]], chosen: set[tuple[str, int]], hint: str | None,
               estimate_steps: int) -> dict[str, Any]:
    """--plan: every run the call would reach (teachers first, then rows x seeds in training order), what it would do
    with each, and (estimate_steps > 0) the minutes each run to train should take on this machine, measured."""
    study = state.study
    needed = {key for key, _ in chosen}  # and their teachers, a matched row's candidates and target
    for key, _ in chosen:
        row = state.rows[key]
        needed |= {row.teacher, *row.match_candidates, row.match_to} - {None}
    lines, rows_of = [], {}
    for row, seed in order:
        if (row.key, seed) in chosen or (row in study.teachers and row.key in needed):
            resolved = with_matched_teacher(state, row, train=False)
            status = state.status(resolved, seed)
            if row.match_to is not None and resolved.teacher is None and status.startswith("to train"):
                status += f" (its teacher: the convnet nearest {row.match_to}-s0 on the held-out split, chosen " \
                          "once all have been evaluated)"
            elif row.match_to is not None:
                status += f" (teacher {resolved.teacher}, chosen by the held-out split)"
            teaches = row in study.teachers or any(r.match_to == row.key for r in study.rows)
            if study.holdout is not None and teaches and seed == 0:
                top1 = holdout_of(state, row, train=False)
                status += f"; held-out top-1 {top1:.2f} %" if top1 is not None else ""
            lines.append((f"{row.key}-s{seed}", status))
            rows_of[f"{row.key}-s{seed}"] = resolved
    minutes = estimate_minutes(state, {run: rows_of[run] for run, status in lines if status.startswith("to train")},
                               estimate_steps) if estimate_steps else {}
    width = max(len(run) for run, _ in lines)
    print("\n".join(f"{run:<{width}}  {status}" + (f"  [~{minutes[run]:.0f} min here]" if run in minutes else "")
                     for run, status in lines))
    print(f"{sum(s.startswith('to train') for _, s in lines)} of {len(lines)} runs to train "
          f"(teachers are trained first when a student needs their weights){state.pace()}")
    if minutes:
        import os

        load, cores = os.getloadavg()[0], os.cpu_count()
        busy = f"; measured under a load average of {load:.1f} on {cores} cores: other processes slowed it" \
            if load > cores else ""
        print(f"estimated here: {sum(minutes.values()) / 60:.1f} h of training for the runs to train, one after "
              f"another ({estimate_steps} steps of each kind timed now, with its evaluations{busy})")
    if hint:
        print(hint)
    return {"plan": lines, "minutes": minutes}


def estimate_minutes(state: StudyRun, runs: dict[str, Row], steps: int) -> dict[str, float]:
    """Minutes per run (name -> row) measured by deit.reproduce.estimate, once per kind of run (preset, model,
    teacher architecture); a matched row is timed with its first candidate (the strongest)."""
    from ..data import load_split
    from .estimate import measure_run_seconds

    measured: dict[tuple, float] = {}
    minutes = {}
    for name, row in runs.items():
        teacher = row.teacher or (row.match_candidates[0] if row.match_candidates else None)
        teacher_model = state.rows[teacher].options["model"] if teacher else None
        # the teacher's weights are random ones written when timed (measure_run_seconds)
        teacher_options = dict(teacher=teacher_model, teacher_weights="(random)") if teacher_model else {}
        config = preset_config(row.preset, **{**row_options(state.study, row), **state.execution, **teacher_options})
        kind = (row.preset, config.model, teacher_model)
        if kind not in measured:
            n = int(config.train_subset) if config.train_subset and config.train_subset > 1 else \
                len(load_split(config, "train"))
            print(f"timing {steps} steps of {config.model}" + (f" (teacher {teacher_model})" if teacher_model else ""),
                  flush=True)
            measured[kind] = measure_run_seconds(config, teacher_model, n, steps)["total_s"]
        minutes[name] = measured[kind] / 60
    return minutes
