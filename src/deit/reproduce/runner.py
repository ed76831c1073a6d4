"""Running a study: every row an ordinary `deit train` run in runs/reproduce/<preset>/<row>-s<seed>. What each
finished run gave is recorded in results/<preset>/results.json (deit.reproduce.records), so a study continues
where it stopped even on a machine without its runs/ directory: recorded runs are reused, interrupted ones
resumed, and a teacher whose weights are gone is trained again (deterministically: same seed, same settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import TrainConfig, preset_config
from ..fileio import atomic_write
from .records import (earlier_teacher_top1, encode_classes, encode_predictions, fingerprint, previous_records,
                      records_of, settings_changes, settings_difference)
from .studies import STUDIES, Row, Study, teacher_key
from .tables import plot_study, render_tables
from .teacher_choice import holdout_of, matched_teacher, with_matched_teacher


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
        # student rows that teach other rows (fmnist-teacher-choice's none): their predictions at every seed give the
        # agreement tables an undistilled run beside the seed-0 one that is the teacher
        self.teaching = {r.teacher for r in study.rows} & {r.key for r in study.rows}

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
            return f"recorded: top-1 {record['metrics']['top1']:.2f} %{gone}{self.earlier_teacher(row, record)}"
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

    def earlier_teacher(self, row: Row, record: dict[str, Any]) -> str:
        """For --plan: a note when the student was distilled from an earlier training of its teacher ("" if not)."""
        if row.teacher is None:
            return ""
        teacher = self.records.get(f"{row.teacher}-s0") or self.recorded.get(f"{row.teacher}-s0") or {}
        then = earlier_teacher_top1(record, teacher.get("metrics", {}).get("top1"))
        return "" if then is None else f"; taught by an earlier training of {row.teacher}-s0 (test top-1 {then:.2f} " \
            f"%, now {teacher['metrics']['top1']:.2f} %): remove its record to train it again with the current one"

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
        if seed == 0 or row.key in self.teaching:  # Table 4 reads seed 0, and a teaching row's other seeds
            record["predictions"] = encode_predictions(predict_run(run_dir, **self.execution))
        cosine = token_cosine_of_run(run_dir) if seed == 0 else None
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

    def student(self, row: Row, seed: int) -> None:
        record = self.run(row, seed)
        if row.teacher is not None:
            self.results["teachers"].setdefault(teacher_key(row), record["teacher"])
        entry = self.results["rows"].setdefault(row.key, {"label": row.label, "seeds": [], "runs": []})
        at = sum(s < seed for s in entry["seeds"])  # kept in seed order: recorded runs are taken in first
        entry["runs"].insert(at, record["metrics"])
        entry["seeds"].insert(at, seed)

    def val_labels(self) -> None:
        """The labels of the split runs are evaluated on, once, for tables that read predictions against them (a
        study of paired comparisons: where each teacher is wrong)."""
        if "labels" in self.results or not self.study.comparisons:
            return
        if not any("predictions" in r for r in {**self.recorded, **self.records}.values()):
            return
        import torch

        from ..data import load_split

        row = next((r for r in self.study.rows if r.teacher is None), self.study.teachers[0])
        config = row_config(self.study, row, 0, self.runs_dir, **self.execution)
        self.results["labels"] = encode_classes(torch.as_tensor(load_split(config, "val").labels))

    def write_outputs(self) -> None:
        self.val_labels()
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
        from .plan import plan_study

        return plan_study(state, order, chosen, hint, estimate_steps)
    if hint:
        print(hint, flush=True)
    output.mkdir(parents=True, exist_ok=True)
    to_train = []
    for row, seed in order:
        if row in study.teachers:
            if (row.key, seed) in chosen:  # a teacher named by --rows: trained (or found) now
                state.run(row, seed, need_weights=True)
                if study.holdout is not None:
                    holdout_of(state, row)
            continue
        row = with_matched_teacher(state, row, train=(row.key, seed) in chosen)
        matched = state.results["matched"].get(row.key)
        if matched and matched["gap"] > study.match_tolerance and state.reusable(row, seed) is None:
            print(f"{row.key}-s{seed} not trained: the closest convnet ({matched['teacher']}, "
                  f"{matched['holdout_top1']:.2f} %) is {matched['gap']:.2f} points from {matched['target']}-s0 "
                  f"({matched['target_holdout_top1']:.2f} %) on the held-out split, more than the study's "
                  f"{study.match_tolerance} (add a convnet of nearer accuracy)", flush=True)
            continue
        if state.reusable(row, seed) is not None:
            state.student(row, seed)  # recorded: in the tables before anything trains (a study takes sessions)
        elif (row.key, seed) in chosen:
            to_train.append((row, seed))
    state.write_outputs()
    for row, seed in to_train:  # in the schedule's order
        state.student(row, seed)
        state.write_outputs()
    return state.results
