"""The main job: train a CNN teacher, then a distilled DeiT student from it (distillation token, hard
distillation), evaluate both and print one table, within a time budget: the teacher gets TEACHER_SHARE of the
minutes, the student what is left, each run sizing its schedule to its share from its own measured speed.
A second run reuses what is finished."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .config import preset_config
from .engine import fit_or_reuse

TEACHER_SHARE = 0.25  # of the pipeline's minutes (the 8-epoch teacher took 4.1 of 16.6 min: 92.1 %)
FINAL_RESERVE_S = 15  # after the student: the table, process exit
MIN_STUDENT_S = 60  # a student budget below this would train a few steps only


def pipeline_configs(output: str | Path = "runs/pipeline", **common: Any):
    """(teacher, student) TrainConfigs of the pipeline. `common` options (data, data_dir, seed, device,
    precision, progress, train_subset, threads) apply to both; teacher_*/student_* prefixed ones to one."""
    output = Path(output)
    teacher_opts = {k[len("teacher_"):]: v for k, v in common.items() if k.startswith("teacher_")}
    student_opts = {k[len("student_"):]: v for k, v in common.items() if k.startswith("student_")}
    shared = {k: v for k, v in common.items() if not k.startswith(("teacher_", "student_"))}
    teacher = preset_config("cnn-small", output=str(output / "teacher"), **{**shared, **teacher_opts})
    student = preset_config("fmnist-cpu", output=str(output / "student"), teacher=str(output / "teacher"),
                            distillation="hard", alpha=0.5, **{**shared, **student_opts})
    return teacher, student


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | prediction | top-1 % | top-5 % | params | epochs | train time | train im/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['prediction']} | {r['top1']:.2f} | {r['top5']:.2f} | "
                     f"{r['params']:,} | {r['epochs']:.2f} | {r['train_time_s'] / 60:.1f} min | "
                     f"{r['images_per_s']:.0f} |")
    return "\n".join(lines)


def run_pipeline(output: str | Path = "runs/pipeline", minutes: float | None = 20.0, **options: Any) -> dict[str, Any]:
    """Teacher then student. With `minutes`, both schedules are sized to fit the budget (None: the presets'
    epochs); an explicit teacher_epochs / student_epochs fixes that run's length instead."""
    started = time.monotonic()
    teacher_config, student_config = pipeline_configs(output, **options)
    if minutes is not None and "teacher_epochs" not in options:
        teacher_config = teacher_config.replace(time_budget_minutes=minutes * TEACHER_SHARE)
    teacher = fit_or_reuse(teacher_config).metrics
    if minutes is not None and "student_epochs" not in options:
        left_s = minutes * 60 - (time.monotonic() - started) - FINAL_RESERVE_S
        if left_s < MIN_STUDENT_S:
            print(f"deit pipeline: the teacher left {max(left_s, 0):.0f} s of the {minutes:g} min; the student "
                  f"gets {MIN_STUDENT_S} s and the pipeline will run over (give more --minutes)", flush=True)
        student_config = student_config.replace(time_budget_minutes=max(left_s, MIN_STUDENT_S) / 60)
    student = fit_or_reuse(student_config).metrics
    common_t = dict(model=teacher_config.model, params=teacher["params"], train_time_s=teacher["train_time_s"],
                    images_per_s=teacher["images_per_s"], epochs=teacher["epochs"])
    common_s = dict(model=student_config.model, params=student["params"], train_time_s=student["train_time_s"],
                    images_per_s=student["images_per_s"], epochs=student["epochs"])
    rows = [
        {**common_t, "prediction": "teacher", "top1": teacher["top1"], "top5": teacher["top5"]},
        {**common_s, "prediction": "class head", "top1": student["top1_cls"], "top5": student["top5_cls"]},
        {**common_s, "prediction": "distillation head", "top1": student["top1_dist"], "top5": student["top5_dist"]},
        {**common_s, "prediction": f"combined ({student_config.combine})", "top1": student["top1"],
         "top5": student["top5"]},
    ]
    table = format_table(rows)
    result = {"rows": rows, "table": table, "minutes": minutes, "teacher_dir": teacher_config.output,
              "student_dir": student_config.output,
              "disagreement_student_teacher": student.get("disagree_logits_teacher")}
    Path(output, "pipeline.json").write_text(json.dumps(result, indent=2))
    Path(output, "pipeline.md").write_text(table + "\n")
    return result
