"""The main job: what the distillation token is for, in one command. A convnet teacher, the transformer student
without distillation, and the same student with the distillation token taught by that teacher (hard
distillation), on the same images, recipe and seed; one table whose last line is the gain in points (token
combined - no distillation).

The default setting is the regime where the paper's claim holds: little data (4,000 Fashion-MNIST images) on a
40x40 canvas, where the student cannot learn the convnet's bias alone (docs/results.md, "The main job"). The
setting "full" is the earlier pipeline: a teacher and a distilled student on all 60,000 images.

With a time budget the teacher gets its share of the minutes, and the students, when the first of them starts,
their shares of what is left, fixed then: equal minutes for both students whatever the first one did, so that the
comparison stays fair (giving the second student what the first left over gave the undistilled student twice the
token student's epochs once). Each run sizes its schedule to its budget from its own measured pace, again after
every epoch (engine/budget.py), which keeps the end. A second call reuses what is finished; every run directory is
<output>/<setting>-s<seed>/<run>."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .config import TrainConfig, preset_config
from .engine import fit_or_reuse
from .engine.run_dir import read_run_config
from .fileio import write_json, write_text
from .reproduce.studies import (SMALL_CANVAS_DISTILLED, SMALL_CANVAS_RECIPE, SMALL_CANVAS_STUDENT,
                                SMALL_CANVAS_TEACHER)

# Shares of the minutes, in training order. Small canvas: the first try (issue 24) on a Zen 4 in bf16,
# teacher / none / token at 4 / 7.5 / 7.5 of 19 min, gave teacher resnet8_tiny 86.49 % (55 epochs), none 63.14 %,
# token combined 65.96 % (+2.82): at a fifth of the time the teacher is already 23 points above the students, so
# the rest goes to them, in equal minutes (the token student's step also runs its teacher's forward, so it trains
# fewer epochs in them: the comparison is at equal cost, which does not favour the token).
SMALL_SHARES = {"teacher": 0.20, "none": 0.375, "token": 0.375}
# Full data: the 8-epoch teacher took 4.1 of 16.6 min (92.1 %).
FULL_SHARES = {"teacher": 0.25, "token": 0.75}
SETTINGS = {"small": SMALL_SHARES, "full": FULL_SHARES}
FINAL_RESERVE_S = 5  # after the last run: the table, the process's exit
MIN_RUN_S = 20  # a budget below this would train a few steps only
LABELS = {"teacher": "teacher", "none": "no distillation", "token": "distillation token"}


def pipeline_dir(output: str | Path, setting: str, seed: int) -> Path:
    """Where one pipeline's runs and table go: a seed or a setting of its own never meets another's runs."""
    return Path(output) / f"{setting}-s{seed}"


def pipeline_configs(setting: str = "small", output: str | Path = "runs/pipeline", **options: Any
                     ) -> dict[str, TrainConfig]:
    """The pipeline's TrainConfigs by run name, in training order (the teacher first). `options` (data, data_dir,
    seed, device, precision, progress, train_subset, threads) apply to every run; teacher_* / student_* prefixed
    ones to the teacher / to every student."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown --setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    teacher_opts = {k[len("teacher_"):]: v for k, v in options.items() if k.startswith("teacher_")}
    student_opts = {k[len("student_"):]: v for k, v in options.items() if k.startswith("student_")}
    shared = {k: v for k, v in options.items() if not k.startswith(("teacher_", "student_"))}
    base = pipeline_dir(output, setting, shared.get("seed", TrainConfig.seed))
    teacher_dir = str(base / "teacher")
    token = dict(teacher=teacher_dir, distillation="hard", alpha=0.5)
    if setting == "full":
        return {"teacher": preset_config("cnn-small", **{**shared, **teacher_opts, "output": teacher_dir}),
                "token": preset_config("fmnist-cpu", **{**shared, **student_opts, **token,
                                                        "output": str(base / "token")})}
    # Evaluations every 10 epochs, as the students: every epoch would cost the teacher a fifth of its minutes.
    teacher = {**SMALL_CANVAS_TEACHER, "eval_every": 10, **shared, **teacher_opts, "output": teacher_dir}
    student = {**SMALL_CANVAS_RECIPE, **shared, **student_opts}
    return {"teacher": preset_config("cnn-small", **teacher),
            "none": preset_config("fmnist-cpu", **student, model=SMALL_CANVAS_STUDENT, output=str(base / "none")),
            "token": preset_config("fmnist-cpu", **student, **token, model=SMALL_CANVAS_DISTILLED,
                                   output=str(base / "token"))}


def table_rows(configs: dict[str, TrainConfig], metrics: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per prediction: the teacher, the undistilled student, the token student's three heads."""
    rows = []
    for name, config in configs.items():
        m = metrics[name]
        run = dict(run=name, model=config.model, params=m["params"], epochs=m["epochs"],
                   train_time_s=m["train_time_s"], images_per_s=m["images_per_s"], mfu=m.get("mfu"))
        if name == "token":
            heads = (("class head", "_cls"), ("distillation head", "_dist"), (f"combined ({config.combine})", ""))
            rows += [{**run, "prediction": f"{LABELS[name]}: {head}", "top1": m[f"top1{key}"], "top5": m[f"top5{key}"]}
                     for head, key in heads]
        else:
            rows.append({**run, "prediction": LABELS[name], "top1": m["top1"], "top5": m["top5"]})
    return rows


def format_table(rows: list[dict[str, Any]], gain: float | None = None) -> str:
    lines = ["| model | prediction | top-1 % | top-5 % | params | epochs | train time | train im/s | of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "–"
        lines.append(f"| {r['model']} | {r['prediction']} | {r['top1']:.2f} | {r['top5']:.2f} | "
                     f"{r['params']:,} | {r['epochs']:.2f} | {r['train_time_s'] / 60:.1f} min | "
                     f"{r['images_per_s']:.0f} | {mfu} |")
    if any(r.get("mfu") is not None for r in rows):
        lines += ["", "Of matmul peak (MFU): images/s x the nominal FLOPs an image of the run's step (forward and "
                      "backward, plus the teacher's forward for the token student) / the matmul peak of the run's "
                      "precision, measured on this machine once per process (at the end of its first run)."]
    if gain is not None:
        lines += ["", f"**Gain of the distillation token: {gain:+.2f} points** (token combined − no distillation). "
                      "It is how many points of test top-1 the convnet teacher adds, through the distillation "
                      "token, to the same transformer trained without it on the same images with the same recipe, "
                      "seed and minutes (or epochs); one seed says little (the small-canvas study's seeds differed "
                      "by about ±1.2 points)."]
    return "\n".join(lines)


def run_budgets(name: str, order: list[str], shares: dict[str, float], left_s: float) -> dict[str, float]:
    """Seconds for the run `name` about to start and, if it is the first student, for every student: their shares
    of the left_s seconds shared with every run still to come (the teacher with all; the students among
    themselves)."""
    later = order[order.index(name):]
    group = [name] if name == "teacher" else later
    return {n: left_s * shares[n] / sum(shares[m] for m in later) for n in group}


def run_pipeline(output: str | Path = "runs/pipeline", minutes: float | None = 20.0, setting: str = "small",
                 started: float | None = None, **options: Any) -> dict[str, Any]:
    """Train the setting's runs in order and write pipeline.md / pipeline.json. With `minutes` (counted from
    `started`, a time.monotonic(); default: now), each run gets a budget (run_budgets; None: the presets'
    epochs); an explicit teacher_epochs / student_epochs fixes those runs' length instead."""
    started = time.monotonic() if started is None else started
    configs = pipeline_configs(setting, output, **options)
    shares = SETTINGS[setting]
    fixed = {"teacher": "teacher_epochs" in options, "none": "student_epochs" in options,
             "token": "student_epochs" in options}
    end = started + (minutes or 0) * 60 - FINAL_RESERVE_S
    metrics, timing, budgets = {}, {}, {}
    for name, config in configs.items():
        now = time.monotonic()
        if minutes is not None and name not in budgets:
            budgets.update(run_budgets(name, list(configs), shares, end - now))
        budget_s = budgets.get(name) if not fixed[name] else None
        if budget_s is not None:
            if budget_s < MIN_RUN_S:
                print(f"deit pipeline: {budget_s:.0f} s left for the {LABELS[name]} run of the {minutes:g} min; it "
                      f"gets {MIN_RUN_S} s and the pipeline will run over (give more --minutes)", flush=True)
                budget_s = MIN_RUN_S
            config = config.replace(time_budget_minutes=budget_s / 60)
        if name == "token" and "none" in metrics:
            # Both students in one precision (the probe, run per model, may choose apart: a noisy machine, or the
            # teacher's forward in the token student's step) and both compiled or neither (--compile auto decides
            # per step): they differ only in the token and its teacher.
            none_run = read_run_config(configs["none"].output)
            if config.precision == "auto":
                config = config.replace(precision=none_run["precision"])
            if config.compile == "auto":
                config = config.replace(compile="on" if none_run.get("compiled") else "off")
        metrics[name] = fit_or_reuse(config).metrics
        # where the minutes went (this call's: a reused run takes none)
        timing[name] = {"start_s": now - started, "budget_s": budget_s, "wall_s": time.monotonic() - now}
    rows = table_rows(configs, metrics)
    gain = metrics["token"]["top1"] - metrics["none"]["top1"] if "none" in metrics else None
    table = format_table(rows, gain)
    base = pipeline_dir(output, setting, configs["teacher"].seed)
    result = {"setting": setting, "seed": configs["teacher"].seed, "minutes": minutes, "rows": rows, "gain": gain,
              "table": table, "run_dirs": {name: c.output for name, c in configs.items()}, "timing": timing,
              "disagreement_student_teacher": metrics["token"].get("disagree_logits_teacher"), "dir": str(base)}
    write_json(base / "pipeline.json", result)
    write_text(base / "pipeline.md", table + "\n")
    return result
