"""The teacher of matched accuracy, and the README and plot of a study with paired comparisons
(fmnist-teacher-choice). Matched teachers: an earlier checkpoint of a teacher whose val top-1 is closest to a
transformer's (a row's teacher_checkpoint "matched:<row>"), or, of a row's candidate convnets, the one whose top-1 on
the study's held-out split is closest to that of the run it is matched to (row.match_to; chosen on that split, never
on the test set). The README: teachers on the held-out split and the test set, the matched convnet, each
comparison's mean paired difference with its 95 % t interval and the verdict on the claim, Table 4 and the token
cosine for every distilled row's teacher."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .holdout import closest_teacher, holdout_top1
from .paired import PairedDifference, paired_difference
from .records import earlier_teacher_top1
from .studies import Row, Study

if TYPE_CHECKING:
    from .runner import StudyRun


# ----------------------------------------------------------------------------------------------- matched teachers
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
    from ..engine.run_dir import epoch_checkpoint

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


def holdout_of(state: StudyRun, row: Row, train: bool = True) -> float | None:
    """Top-1 of a teacher (a teacher row's or a student row's seed-0 run) on the study's held-out split, kept in
    its record. train=False: only from a record with the current settings (None if there is none)."""
    size, seed = state.study.holdout
    record = state.reusable(row, 0)
    kept = (record or {}).get("holdout", {})
    if kept.get("images") == size and kept.get("seed") == seed:
        state.records.setdefault(f"{row.key}-s0", record)
        return kept["top1"]
    if not train:
        return None
    record = state.run(row, 0, need_weights=True)
    record["holdout"] = {"top1": holdout_top1(state.runs_dir / f"{row.key}-s0", size, seed, **state.execution),
                         "images": size, "seed": seed}
    print(f"{row.key}-s0: top-1 {record['holdout']['top1']:.2f} % on the held-out split, "
          f"{record['metrics']['top1']:.2f} % on the test set", flush=True)
    state.write_outputs()
    return record["holdout"]["top1"]


def with_matched_teacher(state: StudyRun, row: Row, train: bool = True) -> Row:
    """A row whose teacher is matched (row.match_to): with the chosen teacher, the choice kept in
    results["matched"]; trains and evaluates the candidates and the target if needed (train=True), else decides
    from the records alone, returning the row unchanged while any held-out accuracy is missing."""
    if row.match_to is None:
        return row
    accuracies = {key: holdout_of(state, state.rows[key], train) for key in row.match_candidates}
    target = holdout_of(state, state.rows[row.match_to], train)
    if target is None or None in accuracies.values():
        return row
    chosen = closest_teacher(accuracies, target)
    state.results["matched"][row.key] = {
        "teacher": chosen, "holdout_top1": accuracies[chosen], "target": row.match_to,
        "target_holdout_top1": target, "gap": round(abs(accuracies[chosen] - target), 2),
        "tolerance": state.study.match_tolerance, "candidates": accuracies}
    return dataclasses.replace(row, teacher=chosen)


# ----------------------------------------------------------------------------------------------- README and plot
def _top1_by_seed(results: dict, key: str) -> dict[int, float]:
    entry = results["rows"].get(key, {"seeds": [], "runs": []})
    return {seed: run["top1"] for seed, run in zip(entry["seeds"], entry["runs"])}


def comparisons(study: Study, results: dict) -> list[tuple[str, PairedDifference | None]]:
    """(label, row − base paired over seeds) for each of the study's comparisons."""
    return [(label, paired_difference(_top1_by_seed(results, row), _top1_by_seed(results, base)))
            for row, base, label in study.comparisons]


def verdict(study: Study, results: dict, claim: PairedDifference | None) -> str:
    """The claim (the first comparison) in words, by the rule written before the runs (docs/results.md)."""
    planned = len(study.seeds)
    if claim is None or claim.low is None:
        return "Not yet decidable: the claim needs paired runs of both rows at two seeds or more."
    matched = results.get("matched", {}).get(study.comparisons[0][0])
    provisional = "" if len(claim.seeds) >= planned else f" Provisional: {len(claim.seeds)} of {planned} seeds."
    interval = f"{claim.mean:+.2f} points, 95 % interval [{claim.low:+.2f}, {claim.high:+.2f}] over " \
               f"{len(claim.seeds)} seeds"
    if matched and matched["gap"] > matched["tolerance"]:
        return (f"**Not a test of the claim**: the teachers are not matched (the chosen convnet is "
                f"{matched['gap']:.2f} points from the transformer on the held-out split; tolerance "
                f"{matched['tolerance']}). By the numbers: {interval}.")
    if claim.low > 0:
        words = f"**The claim holds here**: the student learns more from the convnet ({interval}: excludes 0)."
    elif claim.high < 0:
        words = f"**The opposite holds here**: the student learns more from the transformer ({interval}: excludes 0)."
    else:
        words = f"**Not shown**: no difference beyond noise between the two teachers ({interval}: contains 0)."
    return words + provisional


def _teacher_rows(study: Study) -> list[str]:
    """Every teacher: the teacher rows, then the student rows other rows distil from or match to (seed 0)."""
    keys = [t.key for t in study.teachers]
    for row in study.rows:
        for key in (row.teacher, row.match_to):
            if key is not None and key not in keys:
                keys.append(key)
    return keys


def teacher_of(study: Study, results: dict, key: str) -> str | None:
    row = next(r for r in study.rows if r.key == key)
    return row.teacher or results.get("matched", {}).get(key, {}).get("teacher")


def undistilled_beside(study: Study, records: dict, teacher_key: str | None) -> tuple[str, dict] | None:
    """The undistilled run (and its predictions) a teacher's agreement is compared with: the undistilled row's seed 0
    (none-s0), or where that run is the teacher, its lowest other seed with recorded predictions (None if there is
    none yet)."""
    from .tables import _predictions

    undistilled = next((r.key for r in study.rows if r.teacher is None), None)
    for seed in study.seeds if undistilled else ():
        name = f"{undistilled}-s{seed}"
        if teacher_key == undistilled and seed == 0:
            continue  # the teacher itself
        predictions = _predictions(records, name)
        if predictions is not None:
            return name, predictions
        if seed == 0:
            return None  # every other teacher is compared with none-s0
    return None


def _distilled_seed0(study: Study, results: dict):
    """(row, its teacher's key, the student's and the teacher's seed-0 predictions) of every row with a teacher,
    where both are recorded."""
    from .tables import _predictions

    records = results.get("records", {})
    for row in study.rows:
        teacher_key = teacher_of(study, results, row.key)
        student = _predictions(records, f"{row.key}-s0")
        teacher = _predictions(records, f"{teacher_key}-s0") if teacher_key else None
        if student is not None and teacher is not None:
            yield row, teacher_key, student, teacher


def teacher_agreement(study: Study, results: dict) -> dict[str, dict[str, Any]]:
    """Table 4 per token row (seed 0): how often its teacher disagrees with the student's heads, and with an
    undistilled student (undistilled_beside: none-s0, or another seed where none-s0 is the teacher)."""
    from .tables import _disagreement

    table = {}
    for row, teacher_key, student, teacher in _distilled_seed0(study, results):
        if "dist" not in student:
            continue
        rates: dict[str, Any] = {head: _disagreement(teacher["logits"], student[name])
                                 for head, name in (("class", "cls"), ("dist", "dist"), ("class+dist", "logits"))}
        beside = undistilled_beside(study, results.get("records", {}), teacher_key)
        if beside is not None:
            rates["no distillation"] = _disagreement(teacher["logits"], beside[1]["logits"])
            rates["undistilled run"] = beside[0]
        table[row.key] = rates
    return table


def teacher_errors(study: Study, results: dict) -> dict[str, dict[str, Any]]:
    """Where each distilled row's teacher is wrong (seed 0, test labels): how often; the student's top-1 on the
    images the teacher gets right and on those it gets wrong; how often the student, and an undistilled student
    (undistilled_beside), give the teacher's wrong class. Whether a student takes on its teacher's mistakes."""
    from .records import decode_classes

    if "labels" not in results:
        return {}
    labels, table = decode_classes(results["labels"]), {}
    for row, teacher_key, student, teacher in _distilled_seed0(study, results):
        wrong = teacher["logits"] != labels
        predicted = student["logits"]
        entry: dict[str, Any] = {
            "teacher wrong": 100 * float(wrong.float().mean()),
            "top1 where teacher right": 100 * float((predicted == labels)[~wrong].float().mean()),
            "top1 where teacher wrong": 100 * float((predicted == labels)[wrong].float().mean()),
            "repeats": 100 * float((predicted == teacher["logits"])[wrong].float().mean())}
        beside = undistilled_beside(study, results.get("records", {}), teacher_key)
        if beside is not None:
            entry["undistilled repeats"] = 100 * float((beside[1]["logits"] == teacher["logits"])[wrong].float().mean())
            entry["undistilled run"] = beside[0]
        table[row.key] = entry
    return table


def _agreement_lines(study: Study, results: dict) -> list[str]:
    """Table 4 and where each teacher is wrong (setting results' "disagreement" and "teacher_errors")."""
    lines: list[str] = []
    agreement = teacher_agreement(study, results)
    results["disagreement"] = agreement
    if agreement:
        heads = ("class", "dist", "class+dist", "no distillation")
        lines += ["", "## Table 4: how often each student's teacher disagrees with it (test set, seed 0)", "",
                  "The undistilled student is none-s0, or the next seed of none where none-s0 is the teacher.", "",
                  "| row (teacher) | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
        for key, rates in agreement.items():
            cells = [f"{rates[h]:.3f}" if h in rates else "not recorded yet" for h in heads]
            if "undistilled run" in rates:
                cells[-1] += f" ({rates['undistilled run']})"
            lines.append(f"| {key} ({teacher_of(study, results, key)}) | " + " | ".join(cells) + " |")
    errors = teacher_errors(study, results)
    results["teacher_errors"] = errors
    if errors:
        lines += ["", "## Where each teacher is wrong (test set, seed 0; class+dist for a token student)", "",
                  "Does a student take on its teacher's mistakes? Of the test images the teacher gets wrong, the share "
                  "where the student gives the teacher's wrong class, against an undistilled student (none-s0, or "
                  "the next seed of none where none-s0 is the teacher).", "",
                  "| row (teacher) | teacher wrong (% of test) | student top-1 where the teacher is right | "
                  "student top-1 where it is wrong | student repeats its wrong class | "
                  "undistilled student repeats it |",
                  "|---|---|---|---|---|---|"]
        for key, e in errors.items():
            beside = (f"{e['undistilled repeats']:.1f} ({e['undistilled run']})"
                      if "undistilled repeats" in e else "not recorded yet")
            lines.append(f"| {key} ({teacher_of(study, results, key)}) | {e['teacher wrong']:.1f} | "
                         f"{e['top1 where teacher right']:.1f} | {e['top1 where teacher wrong']:.1f} | "
                         f"{e['repeats']:.1f} | {beside} |")
    return lines


def render_teacher_choice(study: Study, results: dict) -> list[str]:
    """The study's sections after its title, description and Table 3 (tables.render_tables)."""
    from .tables import _mean_std

    records = results.get("records", {})
    lines = ["", "## Teachers: held-out validation split and test set (top-1 %)", "",
             f"Held-out split: {study.holdout[0]:,} training images no run trains on (stratified, seed "
             f"{study.holdout[1]}); test: the 10,000 test images.", "",
             "| teacher | params | held-out top-1 | test top-1 |", "|---|---|---|---|"]
    labels = {r.key: r.label for r in study.teachers}
    for key in _teacher_rows(study):
        record = records.get(f"{key}-s0")
        if record is None:
            continue
        holdout = record.get("holdout", {}).get("top1")
        label = labels.get(key, f"transformer teacher ({record['metrics'].get('model')}, the {key} row, seed 0)")
        lines.append(f"| {label} | {record['metrics'].get('params', 0):,} | "
                     f"{f'{holdout:.2f}' if holdout is not None else 'not evaluated yet'} | "
                     f"{record['metrics']['top1']:.2f} |")
    for key, m in results.get("matched", {}).items():
        lines += ["", f"Matched convnet ({key}): **{m['teacher']}**, held-out top-1 {m['holdout_top1']:.2f} % against "
                      f"{m['target_holdout_top1']:.2f} % for {m['target']}-s0 (gap {m['gap']:.2f}, tolerance "
                      f"{m['tolerance']}); chosen by the runner from the held-out accuracies above, not the test set."]
    lines += ["", "## Table 2: teacher choice (student with distillation token, class+dist)", "",
              "| row | teacher | teacher held-out / test top-1 | student top-1 | seeds |", "|---|---|---|---|---|"]
    for row in study.rows:
        teacher_key = teacher_of(study, results, row.key)
        runs = results["rows"].get(row.key, {}).get("runs")
        if not runs or teacher_key is None or "distilled" not in row.options.get("model", ""):
            continue
        record = records.get(f"{teacher_key}-s0", {})
        holdout = record.get("holdout", {}).get("top1")
        test = record.get("metrics", {}).get("top1")
        # the teacher each student was distilled from, as it recorded it: a teacher retrained since is named
        earlier = (earlier_teacher_top1(r, test) for r in _records_of_row(records, row.key))
        stale = sorted({f"{top1:.2f}" for top1 in earlier if top1 is not None})
        note = f" (some students had an earlier training of it: test top-1 {', '.join(stale)})" if stale else ""
        lines.append(f"| {row.label} | {teacher_key}{note} | {f'{holdout:.2f}' if holdout is not None else '–'} / "
                     f"{f'{test:.2f}' if test is not None else '–'} | {_mean_std([r['top1'] for r in runs])} | "
                     f"{', '.join(map(str, results['rows'][row.key]['seeds']))} |")
    lines += ["", "## Paired differences (same seed; top-1 points, class+dist where the row has the token)", "",
              "| comparison | per seed | mean | 95 % t interval | excludes 0 |", "|---|---|---|---|---|"]
    measured = comparisons(study, results)
    for label, d in measured:
        if d is None:
            lines.append(f"| {label} | no common seed yet | | | |")
            continue
        per_seed = ", ".join(f"s{s}: {v:+.2f}" for s, v in zip(d.seeds, d.differences))
        interval = f"[{d.low:+.2f}, {d.high:+.2f}]" if d.low is not None else "needs 2 seeds"
        lines.append(f"| {label} | {per_seed} | {d.mean:+.2f} | {interval} | "
                     f"{('yes' if d.excludes_zero else 'no') if d.low is not None else ''} |")
    lines += ["", verdict(study, results, measured[0][1] if measured else None)]
    lines += _agreement_lines(study, results)
    cosines = {row.key: records[f"{row.key}-s0"]["token_cosine"] for row in study.rows
               if records.get(f"{row.key}-s0", {}).get("token_cosine")}
    results["token_cosine"] = cosines
    if cosines:
        layers = next(iter(cosines.values()))["layers"]
        lines += ["", "## Cosine similarity of the class and distillation tokens after each block (seed 0)", "",
                  "| row | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
        for key, cosine in cosines.items():
            lines.append(f"| {key} | " + " | ".join(f"{v:.2f}" for v in cosine["cosine"]) + " |")
    return lines


def _records_of_row(records: dict, key: str) -> list[dict]:
    return [r for name, r in records.items() if name.rpartition("-s")[0] == key]


def plot_paired(study: Study, results: dict, png: Path) -> None:
    """One panel per comparison: the per-seed differences, their mean and 95 % t interval, the zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = comparisons(study, results)
    fig, axes = plt.subplots(1, len(measured), figsize=(3.2 * len(measured), 3.6), sharey=True, squeeze=False)
    for ax, (label, d) in zip(axes[0], measured):
        ax.axhline(0, color="grey", linewidth=0.8)
        if d is not None:
            ax.scatter(range(len(d.seeds)), d.differences, color="#4c72b0", zorder=3, label="per seed")
            for i, seed in enumerate(d.seeds):
                ax.annotate(f"s{seed}", (i, d.differences[i]), textcoords="offset points", xytext=(5, 0), fontsize=7)
            x = len(d.seeds) + 0.5
            if d.low is not None:
                ax.errorbar([x], [d.mean], yerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", color="#c44e52",
                            capsize=4, label="mean, 95 % t interval")
            else:
                ax.plot([x], [d.mean], "o", color="#c44e52", label="mean")
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("top-1 difference (points, test set)")
    if measured and measured[0][1] is not None:
        axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"deit reproduce --preset {study.name}: paired differences over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
