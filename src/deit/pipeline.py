"""The main job: train a CNN teacher, then a distilled DeiT student from it (distillation token, hard
distillation), evaluate both and print one table. A second run reuses what is finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import preset_config
from .engine import fit_or_reuse


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
    lines = ["| model | prediction | top-1 % | top-5 % | params | train time | train im/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['prediction']} | {r['top1']:.2f} | {r['top5']:.2f} | "
                     f"{r['params']:,} | {r['train_time_s'] / 60:.1f} min | {r['images_per_s']:.0f} |")
    return "\n".join(lines)


def run_pipeline(output: str | Path = "runs/pipeline", **options: Any) -> dict[str, Any]:
    teacher_config, student_config = pipeline_configs(output, **options)
    teacher = fit_or_reuse(teacher_config).metrics
    student = fit_or_reuse(student_config).metrics
    common_t = dict(model=teacher_config.model, params=teacher["params"], train_time_s=teacher["train_time_s"],
                    images_per_s=teacher["images_per_s"])
    common_s = dict(model=student_config.model, params=student["params"], train_time_s=student["train_time_s"],
                    images_per_s=student["images_per_s"])
    rows = [
        {**common_t, "prediction": "teacher", "top1": teacher["top1"], "top5": teacher["top5"]},
        {**common_s, "prediction": "class head", "top1": student["top1_cls"], "top5": student["top5_cls"]},
        {**common_s, "prediction": "distillation head", "top1": student["top1_dist"], "top5": student["top5_dist"]},
        {**common_s, "prediction": f"combined ({student_config.combine})", "top1": student["top1"],
         "top5": student["top5"]},
    ]
    table = format_table(rows)
    result = {"rows": rows, "table": table, "teacher_dir": teacher_config.output,
              "student_dir": student_config.output,
              "disagreement_student_teacher": student.get("disagree_logits_teacher")}
    Path(output, "pipeline.json").write_text(json.dumps(result, indent=2))
    Path(output, "pipeline.md").write_text(table + "\n")
    return result
