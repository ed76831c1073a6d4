"""`deit reproduce`: the paper's distillation tables (2, 3, 4) and a data-efficiency study at small scale.

Every row is an ordinary `deit train` run in runs/reproduce/<preset>/<row>-s<seed>; finished runs are
reused and interrupted ones resumed, so a preset can span sessions. Tables, a plot and the exact
commands go to results/<preset>/.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import PRESETS, TrainConfig, preset_config


@dataclass(frozen=True)
class Row:
    """One training run of a study: `key` names it, `options` override the student preset."""

    key: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None  # key of the teacher row it distils from (or of a student row: its seed-0 run)
    preset: str = "fmnist-cpu"
    # "matched:<row>": distil from the teacher's per-epoch checkpoint (--keep-checkpoints) whose val top-1 is
    # closest to that row's seed-0 top-1 (a teacher of matched accuracy)
    teacher_checkpoint: str | None = None
    table: int = 3  # 3: a distillation variant (Table 3); 2: only a teacher choice (Table 2)


@dataclass(frozen=True)
class Study:
    name: str
    seeds: tuple[int, ...]
    teachers: tuple[Row, ...]
    rows: tuple[Row, ...]
    common: dict[str, Any] = field(default_factory=dict)
    description: str = ""  # a paragraph under the README's title
    targets: bool = False  # render the targets (token - none, convnet vs transformer teacher, hard vs soft)


STUDENT = "deit_mini_patch7_28"
DISTILLED_STUDENT = "deit_mini_distilled_patch7_28"
CNN_TEACHER = PRESETS["cnn-small"]["model"]


def _table3_study(name: str, common: dict, teacher_options: dict, vit_teacher_options: dict) -> Study:
    teachers = (
        Row("teacher-cnn", f"convnet teacher ({teacher_options['model']})", teacher_options, preset="cnn-small"),
        Row("teacher-vit", f"transformer teacher ({vit_teacher_options['model']})", vit_teacher_options),
    )
    rows = (
        Row("none", "no distillation", dict(model=STUDENT)),
        Row("soft", "usual distillation (soft, class head)",
            dict(model=STUDENT, distillation="soft", tau=3.0, alpha=0.1), teacher="teacher-cnn"),
        Row("hard", "hard-label distillation (class head)",
            dict(model=STUDENT, distillation="hard", alpha=0.5), teacher="teacher-cnn"),
        Row("token", "distillation token (hard)",
            dict(model=DISTILLED_STUDENT, distillation="hard", alpha=0.5), teacher="teacher-cnn"),
        Row("token-vit-teacher", "distillation token, transformer teacher",
            dict(model=DISTILLED_STUDENT, distillation="hard", alpha=0.5), teacher="teacher-vit", table=2),
    )
    return Study(name, (0, 1), teachers, rows, common)


STUDIES: dict[str, Study] = {
    # The paper's Tables 2-4 on Fashion-MNIST within ~3 h of a 2-core CPU.
    "fmnist-cpu": _table3_study(
        "fmnist-cpu", {},
        teacher_options=dict(model=CNN_TEACHER),
        # A transformer teacher of about the convnet's accuracy: the student's architecture, trained twice as long.
        vit_teacher_options=dict(model=STUDENT, epochs=20),
    ),
    # The longest schedule we can afford: for a GPU, or a long CPU run.
    "fmnist-full": _table3_study(
        "fmnist-full", dict(epochs=100),
        teacher_options=dict(model="resnet20_wide", epochs=60),
        vit_teacher_options=dict(model="deit_tiny_patch4_28", epochs=100),
    ),
}

DATA_FRACTIONS = (0.1, 0.25, 1.0)


def data_efficiency_study(student_epochs: int = 10, teacher_epochs: int = 6) -> Study:
    """Student with and without distillation on 10/25/100 % of the training set, the same number of optimizer
    steps for every fraction (epochs scaled by 1/fraction). Each fraction has its own teacher trained on the
    same subset, so no run sees images the fraction excludes."""
    teachers, rows = [], []
    for fraction in DATA_FRACTIONS:
        pct = f"{int(fraction * 100)}pct"
        subset = None if fraction == 1.0 else fraction
        # Epochs and warm-up scale by 1/fraction, so every fraction takes the same optimizer steps.
        scaled = lambda epochs, preset: dict(epochs=int(round(epochs / fraction)),
                                             warmup_epochs=PRESETS[preset]["warmup_epochs"] / fraction,
                                             eval_every=int(round(1 / fraction)), train_subset=subset)
        teachers.append(Row(f"teacher-cnn-{pct}", f"convnet teacher ({CNN_TEACHER}), {fraction:.0%} of the data",
                            dict(model=CNN_TEACHER, **scaled(teacher_epochs, "cnn-small")), preset="cnn-small"))
        rows.append(Row(f"none-{pct}", f"no distillation, {fraction:.0%} of the data",
                        dict(model=STUDENT, **scaled(student_epochs, "fmnist-cpu"))))
        rows.append(Row(f"token-{pct}", f"distillation token, {fraction:.0%} of the data",
                        dict(model=DISTILLED_STUDENT, distillation="hard", alpha=0.5,
                             **scaled(student_epochs, "fmnist-cpu")),
                        teacher=f"teacher-cnn-{pct}"))
    return Study("fmnist-data-efficiency", (0,), tuple(teachers), tuple(rows))


STUDIES["fmnist-data-efficiency"] = data_efficiency_study()


def small_canvas_study(epochs: int = 120, teacher_epochs: int = 120) -> Study:
    """Small data where a convnet has an inductive bias to pass on (docs/results.md, "Small-data study"): 4,000
    Fashion-MNIST training images (400 a class, the same subset for every seed) each at a fixed seeded position on
    a 40x40 black canvas (test: all 10,000 test images, positions of their own); 8-px patches (25 tokens); the DeiT
    recipe with label-noisy augmentation for ~7,400 optimizer steps; a resnet8_tiny teacher trained on the same
    images and kind of views, every epoch's weights kept for the teacher of matched accuracy."""
    student, distilled = "deit_mini_patch8_32", "deit_mini_distilled_patch8_32"
    data = dict(canvas=40, train_subset=4000, subset_seed=0)
    recipe = dict(epochs=epochs, warmup_epochs=5, drop_path=0.1, crop="rrc", rrc_scale_min=0.25, hflip=0.5,
                  randaugment="rand-m9-mstd0.5-inc1", reprob=0.25, eval_every=10, **data)
    hard = dict(model=distilled, distillation="hard", alpha=0.5, **recipe)
    teacher = Row("teacher-cnn", "convnet teacher (resnet8_tiny)",
                  dict(model="resnet8_tiny", epochs=teacher_epochs, crop="rrc", rrc_scale_min=0.25, hflip=0.5,
                       eval_every=1, keep_checkpoints=True, **data), preset="cnn-small")
    rows = (
        Row("none", "no distillation", dict(model=student, **recipe)),
        Row("soft", "usual distillation (soft, class head)",
            dict(model=student, distillation="soft", tau=3.0, alpha=0.1, **recipe), teacher="teacher-cnn"),
        Row("hard", "hard-label distillation (class head)",
            dict(model=student, distillation="hard", alpha=0.5, **recipe), teacher="teacher-cnn"),
        Row("token", "distillation token (hard)", hard, teacher="teacher-cnn"),
        Row("token-vit-teacher", "distillation token, transformer teacher (the none row, seed 0)", hard,
            teacher="none", table=2),
        Row("token-cnn-matched", "distillation token, convnet teacher of matched accuracy", hard,
            teacher="teacher-cnn", teacher_checkpoint="matched:none", table=2),
    )
    description = (
        "Fashion-MNIST, 4,000 training images (400 a class, the same subset for every seed), each placed once at a "
        "seeded random position on a 40x40 black canvas; test: all 10,000 test images, placed with their own seed. "
        "Students at 40 px with 8-px patches (25 tokens), 120 epochs with label-noisy augmentation; the teacher sees "
        "exactly the student's augmented and mixed view. The setting was decided before the runs: docs/results.md, "
        "\"Small-data study\". The convnet teacher of matched accuracy is the teacher's epoch whose *test* top-1 is "
        "closest to the transformer teacher's: a selection on the test set, done only to match the two teachers.")
    return Study("fmnist-small-canvas", (0, 1), (teacher,), rows, description=description, targets=True)


STUDIES["fmnist-small-canvas"] = small_canvas_study()


def closest_checkpoint(accuracies: dict[int, float], target: float) -> int:
    """The epoch whose top-1 is closest to `target` (the earlier one on a tie)."""
    if not accuracies:
        raise ValueError("no evaluated checkpoint to choose from")
    return min(accuracies, key=lambda epoch: (abs(accuracies[epoch] - target), epoch))


def matched_teacher(row: Row, runs_dir: Path) -> dict[str, Any]:
    """The checkpoint of row.teacher's seed-0 run whose val top-1 is closest to the seed-0 top-1 of the row named by
    row.teacher_checkpoint ("matched:<row>"): {"epoch", "top1", "weights", "target", "target_top1"}."""
    from .engine.run_dir import read_log
    from .engine.trainer import epoch_checkpoint

    kind, _, target = (row.teacher_checkpoint or "").partition(":")
    if kind != "matched" or not target:
        raise ValueError(f"row {row.key}: teacher_checkpoint must be 'matched:<row>', got {row.teacher_checkpoint!r}")
    teacher_dir, target_dir = runs_dir / f"{row.teacher}-s0", runs_dir / f"{target}-s0"
    if not (teacher_dir / "metrics.json").exists() or not (target_dir / "metrics.json").exists():
        raise ValueError(f"row {row.key} needs the finished runs {teacher_dir} and {target_dir} first")
    target_top1 = json.loads((target_dir / "metrics.json").read_text())["top1"]
    accuracies = {r["epoch"]: r["val_top1"] for r in read_log(teacher_dir)
                  if "val_top1" in r and (teacher_dir / epoch_checkpoint(r["epoch"])).exists()}
    if not accuracies:
        raise ValueError(f"{teacher_dir} kept no evaluated per-epoch checkpoints (train it with --keep-checkpoints "
                         "and --eval-every 1)")
    epoch = closest_checkpoint(accuracies, target_top1)
    return {"epoch": epoch, "top1": accuracies[epoch], "weights": str(teacher_dir / epoch_checkpoint(epoch)),
            "target": target, "target_top1": target_top1}


def row_config(study: Study, row: Row, seed: int, runs_dir: Path, **execution: Any) -> TrainConfig:
    options = {**study.common, **row.options} if row.preset == "fmnist-cpu" else dict(row.options)
    if row.teacher is not None and row.teacher_checkpoint is not None:
        teacher_row = next(t for t in study.teachers if t.key == row.teacher)
        options["teacher"] = teacher_row.options["model"]  # an architecture name with its checkpoint's weights
        options["teacher_weights"] = matched_teacher(row, Path(runs_dir))["weights"]
    elif row.teacher is not None:
        options["teacher"] = str(runs_dir / f"{row.teacher}-s0")  # one teacher per study, as in the paper
    return preset_config(row.preset, seed=seed, output=str(runs_dir / f"{row.key}-s{seed}"),
                         **{**options, **execution})


def teacher_key(row: Row) -> str:
    """Where results["teachers"] keeps the teacher of `row`."""
    return row.teacher if row.teacher_checkpoint is None else f"{row.teacher}-{row.teacher_checkpoint.split(':')[0]}"


def train_command(config: TrainConfig, preset: str) -> str:
    """The `deit train` command line equivalent to `config` (flags that differ from the preset)."""
    defaults = preset_config(preset)
    parts = ["deit train", f"--preset {preset}"]
    for key, value in config.to_dict().items():
        if value != getattr(defaults, key) and key != "progress":
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag if value else f"--no-{key.replace('_', '-')}")
            else:
                parts.append(f"{flag} {value}")
    return " ".join(parts)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def run_study(name: str, output: str | Path | None = None, runs_dir: str | Path | None = None,
              **execution: Any) -> dict[str, Any]:
    """Train every row of a study (reusing finished runs), writing its tables, plot and commands to `output`
    after every student run."""
    from .engine import fit_or_reuse

    if name not in STUDIES:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(STUDIES)}")
    study = STUDIES[name]
    output = Path(output or Path("results") / name)
    runs_dir = Path(runs_dir or Path("runs") / "reproduce" / name)
    output.mkdir(parents=True, exist_ok=True)
    commands: list[str] = []
    results: dict[str, Any] = {"teachers": {}, "rows": {}}
    teachers = {t.key: t for t in study.teachers}

    def train(row: Row, seed: int) -> dict[str, Any]:
        config = row_config(study, row, seed, runs_dir, **execution)
        commands.append(train_command(config, row.preset))
        return fit_or_reuse(config).metrics

    def write_outputs() -> None:
        (output / "commands.txt").write_text("\n".join(commands) + "\n")
        results["table"] = render_tables(study, results, runs_dir, **execution)
        (output / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (output / "README.md").write_text(results["table"])
        plot_study(study, results, output / "plot.png")

    def ensure_teacher(row: Row) -> None:
        if row.teacher in teachers and row.teacher not in results["teachers"]:
            results["teachers"][row.teacher] = {"label": teachers[row.teacher].label,
                                                **train(teachers[row.teacher], 0)}
        key = teacher_key(row)
        if key in results["teachers"]:
            return
        if row.teacher_checkpoint is not None:
            choice = matched_teacher(row, runs_dir)
            base = results["teachers"][row.teacher]
            results["teachers"][key] = {
                "label": f"{base['label']}, epoch {choice['epoch']} (matched to {choice['target']}-s0)",
                "params": base["params"], **choice}
        else:  # a student row's seed-0 run (seeds are outermost: trained earlier in this pass)
            entry = results["rows"][row.teacher]
            run = entry["runs"][entry["seeds"].index(0)]
            results["teachers"][key] = {"label": f"transformer teacher ({run['model']}, the {row.teacher} row, "
                                                 "seed 0)", **run}

    # Seeds outermost and each teacher just before its first student, so a run cut short (the preset spans
    # sessions) has already finished every row once; the outputs are rewritten after every student run.
    for seed in study.seeds:
        for row in study.rows:
            if row.teacher is not None:
                ensure_teacher(row)
            entry = results["rows"].setdefault(row.key, {"label": row.label, "seeds": [], "runs": []})
            entry["runs"].append(train(row, seed))
            entry["seeds"].append(seed)
            write_outputs()
    return results


def _rows_for_table3(study: Study, results: dict) -> list[tuple[str, str, list[float]]]:
    """(label, key, top-1 per seed) rows; the token row expands to class / dist / class+dist heads."""
    table = []
    for row in study.rows:
        if row.key not in results["rows"]:
            continue  # not trained yet
        runs = results["rows"][row.key]["runs"]
        if "distilled" in row.options.get("model", ""):
            for head, suffix in (("class head", "top1_cls"), ("dist. head", "top1_dist"), ("class+dist", "top1")):
                table.append((f"{row.label}: {head}", row.key, [r[suffix] for r in runs]))
        else:
            table.append((row.label, row.key, [r["top1"] for r in runs]))
    return table


def predict_runs(run_dirs: dict[str, Path], **execution: Any) -> dict[str, dict[str, Any]]:
    """Predictions (logits, and cls/dist for a distilled model) of finished runs on the val/test split."""
    from .checkpoint import load_checkpoint
    from .data import load_split, make_loader
    from .engine.evaluate import predict
    from .engine.precision import resolve_precision
    from .engine.runtime import resolve_device

    config = TrainConfig.from_dict(json.loads((next(iter(run_dirs.values())) / "config.json").read_text())["train"])
    device = resolve_device(execution.get("device", "auto"))
    amp = resolve_precision(execution.get("precision", "auto"), device)
    loader = make_loader(load_split(config, "val"), 500, train=False, device=device, num_workers=None)
    return {name: predict(load_checkpoint(run_dir).model.to(device), loader, device, amp)
            for name, run_dir in run_dirs.items()}


def _disagreement(a, b) -> float:
    return float((a.argmax(1) != b.argmax(1)).float().mean())


def disagreement_table(study: Study, runs_dir: Path, **execution: Any) -> dict[str, float]:
    """Paper Table 4 on the val set, seed 0: teacher, class head, dist head, class+dist, no distillation."""
    token_dir, none_dir = runs_dir / "token-s0", runs_dir / "none-s0"
    if not (token_dir / "metrics.json").exists() or not (none_dir / "metrics.json").exists():
        return {}
    teacher_dir = Path(TrainConfig.from_dict(json.loads((token_dir / "config.json").read_text())["train"]).teacher)
    p = predict_runs({"token": token_dir, "teacher": teacher_dir, "none": none_dir}, **execution)
    preds = {"teacher": p["teacher"]["logits"], "class": p["token"]["cls"], "dist": p["token"]["dist"],
             "class+dist": p["token"]["logits"], "no distillation": p["none"]["logits"]}
    names = list(preds)
    return {f"{a} vs {b}": _disagreement(preds[a], preds[b]) for i, a in enumerate(names) for b in names[i + 1:]}


def teacher_disagreement_by_fraction(runs_dir: Path, known: dict, **execution: Any) -> dict[str, dict[str, float]]:
    """Data efficiency, seed 0: how often each fraction's teacher disagrees with its two students (fractions
    in `known` are not recomputed: finished runs never change)."""
    table = dict(known)
    for fraction in DATA_FRACTIONS:
        pct = f"{int(fraction * 100)}pct"
        if pct in table:
            continue
        dirs = {k: runs_dir / f"{k}-{pct}-s0" for k in ("teacher-cnn", "none", "token")}
        if all((d / "metrics.json").exists() for d in dirs.values()):
            p = predict_runs(dirs, **execution)
            table[pct] = {k: _disagreement(p["teacher-cnn"]["logits"], p[k]["logits"]) for k in ("none", "token")}
    return table


def render_tables(study: Study, results: dict, runs_dir: Path, **execution: Any) -> str:
    seeds = ("seeds " if len(study.seeds) > 1 else "seed ") + ", ".join(str(s) for s in study.seeds)
    done = sum(len(r["runs"]) for r in results["rows"].values())
    planned = len(study.rows) * len(study.seeds)
    lines = [f"# `deit reproduce --preset {study.name}`", "",
             f"Fashion-MNIST test set (10,000 images), top-1 %, mean ± std over {seeds}. "
             "Exact commands: commands.txt."]
    if study.description:
        lines += ["", study.description]
    if done < planned:
        lines += ["", f"**Partial: {done} of {planned} student runs finished** (rerun the command to continue); "
                      "a value without ± comes from one seed."]
    if results["teachers"]:
        lines += ["", "## Teachers", "", "| teacher | params | top-1 |", "|---|---|---|"]
    for key, t in results["teachers"].items():
        lines.append(f"| {t['label']} | {t['params']:,} | {t['top1']:.2f} |")
    if study.name.endswith("data-efficiency"):
        lines += ["", "## Data efficiency (every run takes the same number of optimizer steps)", "",
                  f"Each fraction's teacher ({CNN_TEACHER}) is trained on the same subset as its students.", "",
                  "| training data | teacher | no distillation | distillation token: class / dist / class+dist "
                  "| token − none | teacher disagrees with none / token (% of test images) |",
                  "|---|---|---|---|---|---|"]
        agreement = teacher_disagreement_by_fraction(runs_dir, results.get("teacher_disagreement", {}), **execution)
        results["teacher_disagreement"] = agreement
        for pct, teacher, none, token in data_efficiency_points(results):
            cells = [f"{pct} %", f"{teacher:.2f}" if teacher is not None else "",
                     _mean_std([r["top1"] for r in none]) if none else ""]
            cells.append(" / ".join(_mean_std([r[k] for r in token]) for k in ("top1_cls", "top1_dist", "top1"))
                         if token else "")
            gain = _mean_top1(token) - _mean_top1(none) if none and token else None
            cells.append(f"{gain:+.2f}" if gain is not None else "")
            rates = agreement.get(f"{pct}pct")
            cells.append(f"{100 * rates['none']:.1f} / {100 * rates['token']:.1f}" if rates else "")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    students = " / ".join(dict.fromkeys(r.options["model"] for r in study.rows))
    lines += ["", f"## Table 3: distillation variants (students {students})", "",
              "| method | top-1 |", "|---|---|"]
    variants = {r.key for r in study.rows if r.table == 3}
    table3 = [r for r in _rows_for_table3(study, results) if r[1] in variants]
    for label, _, values in table3:
        lines.append(f"| {label} | {_mean_std(values)} |")
    # Every distillation-token row, each with its teacher (rows in `results` always have theirs there).
    table2 = [(results["teachers"][teacher_key(row)], results["rows"][row.key]["runs"]) for row in study.rows
              if row.teacher is not None and "distilled" in row.options.get("model", "")
              and row.key in results["rows"] and teacher_key(row) in results["teachers"]]
    if table2:
        lines += ["", "## Table 2: teacher choice (student with distillation token, class+dist)", "",
                  "| teacher | teacher top-1 | student top-1 |", "|---|---|---|"]
    for t, runs in table2:
        lines.append(f"| {t['label']} | {t['top1']:.2f} | {_mean_std([r['top1'] for r in runs])} |")
    # Seed-0 runs never change once finished: compute the table once.
    disagreement = results.get("disagreement") or disagreement_table(study, runs_dir, **execution)
    if disagreement:
        results["disagreement"] = disagreement
        lines += ["", "## Table 4: disagreement rate on the test set (seed 0)", "", "| pair | rate |", "|---|---|"]
        for pair, rate in disagreement.items():
            lines.append(f"| {pair} | {rate:.3f} |")
    cosine = results.get("token_cosine") or token_cosine_of_run(runs_dir / "token-s0", **execution)
    if cosine:
        results["token_cosine"] = cosine
        lines += ["", f"## Cosine similarity of the class and distillation tokens (token-s0, "
                      f"{cosine['num_images']:,} test images)", "",
                  "| " + " | ".join(cosine["layers"]) + " |", "|" + "---|" * len(cosine["layers"]),
                  "| " + " | ".join(f"{v:.2f}" for v in cosine["cosine"]) + " |"]
    if study.targets:
        lines += target_lines(results)
    return "\n".join(lines) + "\n"


def token_cosine_of_run(run_dir: Path, num_images: int = 1000, **execution: Any) -> dict[str, Any] | None:
    """cos(class token, distillation token) after each block of a finished distilled run, averaged over the first
    `num_images` val images (deit.analyze.token_cosine); None while the run is unfinished."""
    from .analyze import normalised, token_cosine
    from .checkpoint import load_checkpoint
    from .data import load_split

    if not (Path(run_dir) / "metrics.json").exists():
        return None
    config = TrainConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text())["train"])
    model = load_checkpoint(run_dir).model.eval()
    if getattr(getattr(model, "config", None), "num_prefix_tokens", 1) != 2:
        return None
    val = load_split(config, "val")
    count = min(num_images, len(val))
    with torch.no_grad():
        tokens = model.trace(normalised(val, count)).tokens
    return {"layers": ["input"] + [f"block {i + 1}" for i in range(len(tokens) - 1)],
            "cosine": token_cosine(tokens), "num_images": count}


def _gain(results: dict, row: str, base: str) -> tuple[float, float] | None:
    """(mean top-1 of row - mean of base, the larger seed std of the two) when both rows have runs."""
    a, b = (results["rows"].get(k, {}).get("runs", []) for k in (row, base))
    if not a or not b:
        return None
    stds = [statistics.stdev(r["top1"] for r in runs) for runs in (a, b) if len(runs) > 1]
    return _mean_top1(a) - _mean_top1(b), max(stds, default=float("nan"))


def target_lines(results: dict) -> list[str]:
    """The issue's targets, each met or not (or not yet measurable)."""
    lines = ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    token = _gain(results, "token", "none")
    if token:
        gain, std = token
        met = gain >= 1.0 and (std != std or gain > 2 * std)
        lines.append(f"| token (class+dist) − none ≥ 1.0 and > 2 × seed std | {gain:+.2f} (2 × std "
                     f"{2 * std:.2f}) | {'yes' if met else 'no'} |")
    teachers = _gain(results, "token-cnn-matched", "token-vit-teacher")
    if teachers:
        lines.append(f"| convnet teacher > transformer teacher at matched accuracy (token, class+dist) | "
                     f"{teachers[0]:+.2f} | {'yes' if teachers[0] > 0 else 'no'} |")
    hard = _gain(results, "hard", "soft")
    if hard:
        lines.append(f"| hard ≥ soft (class head) | {hard[0]:+.2f} | {'yes' if hard[0] >= 0 else 'no'} |")
    cnn, none = results["teachers"].get("teacher-cnn"), results["rows"].get("none", {}).get("runs")
    if cnn and none:
        gap = cnn["top1"] - _mean_top1(none)
        lines.append(f"| convnet teacher ≥ 4 points above the undistilled student | {gap:+.2f} | "
                     f"{'yes' if gap >= 4 else 'no'} |")
    return lines if len(lines) > 5 else []


def _mean_top1(runs: list[dict]) -> float | None:
    return statistics.mean(r["top1"] for r in runs) if runs else None


def data_efficiency_points(results: dict) -> list[tuple[int, float | None, list[dict], list[dict]]]:
    """(percent of the training set, teacher top-1, no-distillation runs, token runs) per fraction."""
    points = []
    for fraction in DATA_FRACTIONS:
        pct = int(fraction * 100)
        teacher = results["teachers"].get(f"teacher-cnn-{pct}pct")
        runs = [results["rows"].get(f"{kind}-{pct}pct", {}).get("runs", []) for kind in ("none", "token")]
        points.append((pct, teacher["top1"] if teacher else None, *runs))
    return points


def plot_data_efficiency(study: Study, results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = data_efficiency_points(results)
    series = (("teacher", "convnet teacher (same subset)", "#c44e52", "--"),
              ("none", "student, no distillation", "#4c72b0", "-"),
              ("token", "student, distillation token (class+dist)", "#55a868", "-"))
    for key, label, color, style in series:
        values = {pct: teacher if key == "teacher" else _mean_top1(none if key == "none" else token)
                  for pct, teacher, none, token in points}
        xs = [pct for pct, value in values.items() if value is not None]
        ax.plot(xs, [values[x] for x in xs], style, marker="o", color=color, label=label)
    ax.set_xscale("log")
    ax.set_xlim(min(DATA_FRACTIONS) * 80, 125)
    ax.set_xticks([pct for pct, *_ in points], [f"{pct} %" for pct, *_ in points])
    ax.minorticks_off()
    ax.set_xlabel("fraction of the Fashion-MNIST training set (same optimizer steps)")
    ax.set_ylabel("top-1 % (test set)")
    ax.set_title(f"deit reproduce --preset {study.name}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_study(study: Study, results: dict, png: Path) -> None:
    if study.name.endswith("data-efficiency"):
        return plot_data_efficiency(study, results, png)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows_for_table3(study, results)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    labels = [r[0] for r in rows]
    means = [statistics.mean(r[2]) for r in rows]
    errors = [statistics.stdev(r[2]) if len(r[2]) > 1 else 0.0 for r in rows]
    ax.barh(range(len(rows)), means, xerr=errors, color="#4c72b0", capsize=3)
    for key, t in results["teachers"].items():
        ax.axvline(t["top1"], linestyle="--", color="#c44e52" if key == "teacher-cnn" else "#8172b2",
                   label=f"{t['label']} ({t['top1']:.2f})")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    values = means + [t["top1"] for t in results["teachers"].values()]
    ax.set_xlim(min(values) - 2, 100 if min(values) > 95 else max(values) + 1)
    ax.set_xlabel("top-1 % (Fashion-MNIST test)")
    ax.set_title(f"deit reproduce --preset {study.name}")
    if results["teachers"]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
