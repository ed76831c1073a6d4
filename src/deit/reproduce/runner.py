"""Running a study: every row an ordinary `deit train` run in runs/reproduce/<preset>/<row>-s<seed>. What each
finished run gave is recorded in results/<preset>/results.json (deit.reproduce.records), so a study continues
where it stopped even on a machine without its runs/ directory: recorded runs are reused, interrupted ones
resumed, and a teacher whose weights are gone is trained again (deterministically: same seed, same settings)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..config import TrainConfig, preset_config
from ..fileio import atomic_write
from .holdout import closest_teacher, holdout_top1
from .records import encode_predictions, fingerprint, previous_records, records_of, settings_changes, settings_difference
from .studies import STUDIES, Row, Study, teacher_key
from .tables import plot_study, render_tables


def closest_checkpoint(accuracies: dict[int, float], target: float) -> int:
    """The epoch whose top-1 is closest to `target` (the earlier one on a tie)."""
    if not accuracies:
        raise ValueError("no evaluated checkpoint to choose from")
    return min(accuracies, key=lambda epoch: (abs(accuracies[epoch] - target), epoch))


def matched_teacher(row: Row, runs_dir: Path, target_top1: float | None = None) -> dict[str, Any]:
    """The checkpoint of row.teacher's seed-0 run whose val top-1 is closest to the seed-0 top-1 of the row named by
    row.teacher_checkpoint ("matched:<row>"; `target_top1` if given, else read from its run):
    {"epoch", "top1", "weights", "target", "target_top1"}."""
    from ..engine.run_dir import read_log
    from ..engine.trainer import epoch_checkpoint

    kind, _, target = (row.teacher_checkpoint or "").partition(":")
    if kind != "matched" or not target:
        raise ValueError(f"row {row.key}: teacher_checkpoint must be 'matched:<row>', got {row.teacher_checkpoint!r}")
    teacher_dir, target_dir = runs_dir / f"{row.teacher}-s0", runs_dir / f"{target}-s0"
    if not (teacher_dir / "metrics.json").exists() or (target_top1 is None and not (target_dir / "metrics.json").exists()):
        raise ValueError(f"row {row.key} needs the finished runs {teacher_dir} and {target_dir} first")
    if target_top1 is None:
        target_top1 = json.loads((target_dir / "metrics.json").read_text())["top1"]
    accuracies = {r["epoch"]: r["val_top1"] for r in read_log(teacher_dir)
                  if "val_top1" in r and (teacher_dir / epoch_checkpoint(r["epoch"])).exists()}
    if not accuracies:
        raise ValueError(f"{teacher_dir} kept no evaluated per-epoch checkpoints (train it with --keep-checkpoints "
                         "and --eval-every 1)")
    epoch = closest_checkpoint(accuracies, target_top1)
    return {"epoch": epoch, "top1": accuracies[epoch], "weights": str(teacher_dir / epoch_checkpoint(epoch)),
            "target": target, "target_top1": target_top1}


def row_options(study: Study, row: Row) -> dict[str, Any]:
    """The options of a row's runs on top of its preset (the study's common options apply to student rows)."""
    return {**study.common, **row.options} if row.preset == "fmnist-cpu" else dict(row.options)


def row_config(study: Study, row: Row, seed: int, runs_dir: Path, teacher_weights: str | None = None,
               **execution: Any) -> TrainConfig:
    """The config of a row's run; a matched-teacher row takes `teacher_weights` (else chosen from runs_dir)."""
    options = row_options(study, row)
    if row.teacher is not None and row.teacher_checkpoint is not None:
        teacher_row = next(t for t in study.teachers if t.key == row.teacher)
        options["teacher"] = teacher_row.options["model"]  # an architecture name with its checkpoint's weights
        options["teacher_weights"] = teacher_weights or matched_teacher(row, Path(runs_dir))["weights"]
    elif row.teacher is not None:
        options["teacher"] = str(runs_dir / f"{row.teacher}-s0")  # one teacher per study, as in the paper
    return preset_config(row.preset, seed=seed, output=str(runs_dir / f"{row.key}-s{seed}"),
                         **{**options, **execution})


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


def predict_run(run_dir: Path, **execution: Any) -> dict[str, Any]:
    """Predictions (logits, and cls/dist for a distilled model) of a finished run on its val/test split."""
    from ..checkpoint import load_checkpoint
    from ..data import load_split, make_loader
    from ..engine.evaluate import predict
    from ..engine.precision import resolve_precision
    from ..engine.runtime import resolve_device

    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())["train"])
    device = resolve_device(execution.get("device", "auto"))
    amp = resolve_precision(execution.get("precision", "auto"), device)
    loader = make_loader(load_split(config, "val"), 500, train=False, device=device, num_workers=None)
    return predict(load_checkpoint(run_dir).model.to(device), loader, device, amp)


def token_cosine_of_run(run_dir: Path, num_images: int = 1000) -> dict[str, Any] | None:
    """cos(class token, distillation token) after each block of a finished distilled run, averaged over the first
    `num_images` val images (deit.analyze.token_cosine); None for a model without a distillation token."""
    import torch

    from ..analyze import normalised, token_cosine
    from ..checkpoint import load_checkpoint
    from ..data import load_split

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


# Options of `deit reproduce` itself that enter a run's settings: a run recorded with another value of only these is
# reused by passing that value again (reuse_hint).
COMMAND_SETTINGS = ("data_dir", "device", "precision")


class StudyRun:
    """One call of `run_study`: trains what is neither recorded nor finished, keeps every run's record."""

    def __init__(self, study: Study, output: Path, runs_dir: Path, execution: dict[str, Any]):
        self.study, self.output, self.runs_dir, self.execution = study, output, runs_dir, execution
        self.recorded = previous_records(output)
        self.records: dict[str, dict[str, Any]] = {}  # this call's, in training order
        self.results: dict[str, Any] = {"teachers": {}, "rows": {}, "records": self.records, "matched": {}}
        self.rows = {r.key: r for r in study.teachers + study.rows}

    def settings(self, row: Row, seed: int) -> str:
        return fingerprint({**row_options(self.study, row), **self.execution}, row.teacher, row.teacher_checkpoint,
                           row.preset, seed)

    def merge(self, source: str | Path) -> list[str]:
        """Take the records of another results.json of this study that this one lacks, or holds only with other
        settings than the current ones while theirs match them. Returns the names taken."""
        taken = []
        for name, record in records_of(source).items():
            key, _, seed = name.rpartition("-s")
            if key not in self.rows or not seed.isdigit():
                continue  # not a run of this study
            current = self.settings(self.rows[key], int(seed))
            mine = self.recorded.get(name)
            if mine is None or (mine["fingerprint"] != current and record["fingerprint"] == current):
                self.recorded[name] = record
                taken.append(name)
        return taken

    def reusable(self, row: Row, seed: int, need_weights: bool = False) -> dict[str, Any] | None:
        """The record results.json holds of this run with its current settings (None if there is none, or if its
        weights are needed and not in runs_dir)."""
        name = f"{row.key}-s{seed}"
        if need_weights and not (self.runs_dir / name / "metrics.json").exists():
            return None
        record = self.records.get(name) or self.recorded.get(name)
        return record if record is not None and record["fingerprint"] == self.settings(row, seed) else None

    def run(self, row: Row, seed: int, need_weights: bool = False) -> dict[str, Any]:
        """The record of a row's run: reused from results.json (unless its weights are needed and gone), else
        trained, resumed or reused from runs_dir."""
        name = f"{row.key}-s{seed}"
        record = self.reusable(row, seed, need_weights)
        if record is not None and name in self.records:
            return record
        if record is not None:
            print(f"reusing the recorded run {name} ({self.output / 'results.json'})", flush=True)
            if row.teacher is not None:  # its teacher's record too (its command, its predictions for Table 4)
                self.run(self.rows[row.teacher], 0)
        else:
            if self.reusable(row, seed) is not None:
                print(f"{name} is recorded but its weights are not in {self.runs_dir}: training it again", flush=True)
            record = self.train(row, seed, self.settings(row, seed))
            self.records[name] = record
            self.write_outputs()  # recorded at once: a session may end before the students of a teacher finish
        self.records[name] = record
        return record

    def status(self, row: Row, seed: int) -> str:
        """What `run` would do with this run, in words (for --plan)."""
        from ..engine.run_dir import read_log

        record, run_dir = self.reusable(row, seed), self.runs_dir / f"{row.key}-s{seed}"
        if record is not None:
            gone = "" if (run_dir / "metrics.json").exists() else " (weights not in runs/: trained again if a " \
                "student still needs them)"
            return f"recorded: top-1 {record['metrics']['top1']:.2f} %{gone}"
        earlier = self.recorded.get(f"{row.key}-s{seed}")
        if earlier is not None:
            changed = settings_difference(earlier["fingerprint"], self.settings(row, seed))
            return f"to train: recorded with other settings ({changed})"
        if (run_dir / "metrics.json").exists():
            return "finished in runs/: recorded without training"
        done = [r["epoch"] for r in read_log(run_dir) if "epoch" in r]
        if done and (run_dir / "state.pt").exists():
            epochs = json.loads((run_dir / "config.json").read_text())["train"]["epochs"]
            return f"to train: resumes after epoch {max(done)} of {epochs}"
        return "to train"

    def pace(self) -> str:
        """How long the recorded student runs took to train, for a user sizing the rest ("" with none recorded)."""
        import statistics

        seconds = [r["metrics"]["train_time_s"] for name, r in self.recorded.items()
                   if not name.startswith(tuple(t.key + "-" for t in self.study.teachers))
                   and "train_time_s" in r.get("metrics", {})]
        if not seconds:
            return ""
        return f"; the {len(seconds)} recorded students trained in a median {statistics.median(seconds) / 60:.0f} " \
               "min each where they ran (evaluations not counted)"

    def reuse_hint(self, runs: list[tuple[Row, int]]) -> str | None:
        """One line when some of `runs` are recorded with settings that differ from the current ones only in this
        command's own options (e.g. recorded at --precision fp32, asked at auto): the flags that reuse them."""
        groups: dict[str, int] = {}
        for row, seed in runs:
            earlier = self.recorded.get(f"{row.key}-s{seed}")
            changes = settings_changes(earlier["fingerprint"], self.settings(row, seed)) if earlier else {}
            if changes and set(changes) <= set(COMMAND_SETTINGS):
                flags = " ".join(f"--{k.replace('_', '-')} {before}" for k, (before, _) in changes.items())
                groups[flags] = groups.get(flags, 0) + 1
        if not groups:
            return None
        ways = "; ".join(f"pass {flags} to reuse {'them' if len(groups) == 1 else count}"
                         for flags, count in groups.items())
        return f"{sum(groups.values())} recorded runs differ from these settings only in options of this command: " \
               f"{ways} (else they train again and their records are replaced)"

    def train(self, row: Row, seed: int, settings: str) -> dict[str, Any]:
        from ..engine import fit_or_reuse

        teacher = self.teacher_of(row) if row.teacher is not None else None
        config = row_config(self.study, row, seed, self.runs_dir, teacher_weights=(teacher or {}).get("weights"),
                            **self.execution)
        result = fit_or_reuse(config)
        run_dir = Path(config.output)
        record = {"fingerprint": settings, "command": train_command(config, row.preset), "metrics": result.metrics,
                  "teacher": teacher}
        if seed == 0:  # Table 4 and the token cosine come from seed-0 runs
            record["predictions"] = encode_predictions(predict_run(run_dir, **self.execution))
            cosine = token_cosine_of_run(run_dir)
            if cosine is not None:
                record["token_cosine"] = cosine
        return record

    def teacher_of(self, row: Row) -> dict[str, Any]:
        """The teacher of a row (its weights trained if needed): a teacher row's or a student row's seed-0 run, or
        the checkpoint of matched accuracy."""
        source = self.rows[row.teacher]
        record = self.run(source, 0, need_weights=True)
        metrics = record["metrics"]
        label = source.label if source in self.study.teachers else \
            f"transformer teacher ({metrics['model']}, the {row.teacher} row, seed 0)"
        if row.teacher_checkpoint is None:
            return {"label": label, **metrics, **({"holdout": record["holdout"]} if "holdout" in record else {})}
        target = row.teacher_checkpoint.partition(":")[2]
        target_top1 = self.run(self.rows[target], 0)["metrics"]["top1"]
        choice = matched_teacher(row, self.runs_dir, target_top1)
        return {"label": f"{label}, epoch {choice['epoch']} (matched to {target}-s0)", "params": metrics["params"],
                **choice}

    def holdout_of(self, row: Row, train: bool = True) -> float | None:
        """Top-1 of a teacher (a teacher row's or a student row's seed-0 run) on the study's held-out split, kept in
        its record. train=False: only from a record with the current settings (None if there is none)."""
        size, seed = self.study.holdout
        record = self.reusable(row, 0)
        kept = (record or {}).get("holdout", {})
        if kept.get("images") == size and kept.get("seed") == seed:
            self.records.setdefault(f"{row.key}-s0", record)
            return kept["top1"]
        if not train:
            return None
        record = self.run(row, 0, need_weights=True)
        record["holdout"] = {"top1": holdout_top1(self.runs_dir / f"{row.key}-s0", size, seed, **self.execution),
                             "images": size, "seed": seed}
        print(f"{row.key}-s0: top-1 {record['holdout']['top1']:.2f} % on the held-out split, "
              f"{record['metrics']['top1']:.2f} % on the test set", flush=True)
        self.write_outputs()
        return record["holdout"]["top1"]

    def resolved(self, row: Row, train: bool = True) -> Row:
        """A row whose teacher is matched (row.match_to): with the chosen teacher, the choice kept in
        results["matched"]; trains and evaluates the candidates and the target if needed (train=True), else decides
        from the records alone, returning the row unchanged while any held-out accuracy is missing."""
        if row.match_to is None:
            return row
        accuracies = {key: self.holdout_of(self.rows[key], train) for key in row.match_candidates}
        target = self.holdout_of(self.rows[row.match_to], train)
        if target is None or None in accuracies.values():
            return row
        chosen = closest_teacher(accuracies, target)
        self.results["matched"][row.key] = {
            "teacher": chosen, "holdout_top1": accuracies[chosen], "target": row.match_to,
            "target_holdout_top1": target, "gap": round(abs(accuracies[chosen] - target), 2),
            "tolerance": self.study.match_tolerance, "candidates": accuracies}
        return dataclasses.replace(row, teacher=chosen)

    def student(self, row: Row, seed: int) -> None:
        record = self.run(row, seed)
        if row.teacher is not None:
            self.results["teachers"].setdefault(teacher_key(row), record["teacher"])
        entry = self.results["rows"].setdefault(row.key, {"label": row.label, "seeds": [], "runs": []})
        entry["runs"].append(record["metrics"])
        entry["seeds"].append(seed)

    def write_outputs(self) -> None:
        self.results["table"] = render_tables(self.study, self.results)
        # records of earlier calls that this one did not reach (e.g. rows left out by --rows) are kept as they were
        kept = {**self.recorded, **self.records}
        texts = {"commands.txt": "\n".join(r["command"] for r in self.records.values()) + "\n",
                 "results.json": json.dumps({**self.results, "records": kept}, indent=1, default=str),
                 "README.md": self.results["table"]}
        for name, text in texts.items():  # results.json holds the records: never leave it half written
            atomic_write(self.output / name, lambda tmp, text=text: tmp.write_text(text))
        if self.results["rows"]:  # a plot of students (a teacher alone may be recorded first)
            plot_study(self.study, self.results, self.output / "plot.png")


def selected_runs(study: Study, rows: list[str] | None = None, seeds: list[int] | None = None) -> set[tuple[str, int]]:
    """The (row, seed) pairs named by --rows / --seeds (every one of the study's when not given); a teacher row
    names its one (seed-0) run. Names that are not the study's: one line saying which are."""
    teachers, students = [t.key for t in study.teachers], [r.key for r in study.rows]
    unknown = [key for key in rows or () if key not in teachers + students]
    if unknown:
        raise ValueError(f"{study.name} has no row {', '.join(map(repr, unknown))}; its rows: "
                         f"{', '.join(students + teachers)}")
    wrong = [seed for seed in seeds or () if seed not in study.seeds]
    if wrong:
        raise ValueError(f"{study.name} runs seeds {', '.join(map(str, study.seeds))}; not {', '.join(map(str, wrong))}")
    keys, chosen = rows or students, seeds or list(study.seeds)
    return {(key, 0 if key in teachers else seed) for key in keys for seed in chosen}


def run_study(name: str, output: str | Path | None = None, runs_dir: str | Path | None = None,
              rows: list[str] | None = None, seeds: list[int] | None = None, plan: bool = False,
              merge: list[str | Path] = (), estimate_steps: int = 0, **execution: Any) -> dict[str, Any]:
    """Train every row of a study in its schedule's order (reusing recorded and finished runs), writing its
    tables, plot, commands and records to `output` after every student run. rows / seeds: train only these (the
    recorded results of the others stay in the tables); a row's teacher is trained when it needs one.
    plan=True: train nothing, print what each run would do and return {"plan": [(run, status), ...]}. merge: other
    results.json files of this study (run elsewhere) whose records are taken in first (StudyRun.merge).
    estimate_steps: with plan, time this many training steps of each kind of run to train (0: no estimate)."""
    if name not in STUDIES:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(STUDIES)}")
    study = STUDIES[name]
    chosen = selected_runs(study, rows, seeds)
    output = Path(output or Path("results") / name)
    runs_dir = Path(runs_dir or Path("runs") / "reproduce" / name)
    state = StudyRun(study, output, runs_dir, execution)
    for source in merge:
        taken = state.merge(source)
        print(f"merged from {source}: {', '.join(taken) if taken else 'nothing new'}", flush=True)
    order = [(t, 0) for t in study.teachers] + study.schedule()
    hint = state.reuse_hint([(row, seed) for row, seed in order if (row.key, seed) in chosen or row in study.teachers])
    if plan:
        return plan_study(state, order, chosen, hint, estimate_steps)
    if hint:
        print(hint, flush=True)
    output.mkdir(parents=True, exist_ok=True)
    for row, seed in order:
        if row in study.teachers:
            if (row.key, seed) in chosen:  # a teacher named by --rows: trained (or found) now
                state.run(row, seed, need_weights=True)
                if study.holdout is not None:
                    state.holdout_of(row)
            continue
        row = state.resolved(row, train=(row.key, seed) in chosen)
        matched = state.results["matched"].get(row.key)
        if matched and matched["gap"] > study.match_tolerance and state.reusable(row, seed) is None:
            print(f"{row.key}-s{seed} not trained: the closest convnet ({matched['teacher']}, "
                  f"{matched['holdout_top1']:.2f} %) is {matched['gap']:.2f} points from {matched['target']}-s0 "
                  f"({matched['target_holdout_top1']:.2f} %) on the held-out split, more than the study's "
                  f"{study.match_tolerance} (add a convnet of nearer accuracy)", flush=True)
            continue
        if (row.key, seed) in chosen or state.reusable(row, seed) is not None:
            state.student(row, seed)
            state.write_outputs()
    return state.results


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
            resolved = state.resolved(row, train=False)
            status = state.status(resolved, seed)
            if row.match_to is not None and resolved.teacher is None and status.startswith("to train"):
                status += f" (its teacher: the convnet nearest {row.match_to}-s0 on the held-out split, chosen " \
                          "once all have been evaluated)"
            elif row.match_to is not None:
                status += f" (teacher {resolved.teacher}, chosen by the held-out split)"
            teaches = row in study.teachers or any(r.match_to == row.key for r in study.rows)
            if study.holdout is not None and teaches and seed == 0:
                top1 = state.holdout_of(row, train=False)
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
