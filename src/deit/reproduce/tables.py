"""The tables, targets and plots of a study, from its results (the records of its runs)."""

from __future__ import annotations

import statistics
from pathlib import Path

from .records import decode_predictions
from .studies import CNN_TEACHER, DATA_FRACTIONS, Study, teacher_key


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"



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



def _disagreement(a, b) -> float:
    """The fraction of images on which two predicted classes differ."""
    return float((a != b).float().mean())


def _predictions(records: dict, name: str) -> dict | None:
    record = records.get(name)
    return decode_predictions(record["predictions"]) if record and "predictions" in record else None


def disagreement_table(study: Study, records: dict) -> dict[str, float]:
    """Paper Table 4 on the val set, seed 0: teacher, class head, dist head, class+dist, no distillation."""
    token_row = next((r for r in study.rows if r.key == "token"), None)
    if token_row is None:
        return {}
    token, none, teacher = (_predictions(records, n) for n in ("token-s0", "none-s0", f"{token_row.teacher}-s0"))
    if token is None or none is None or teacher is None:
        return {}
    preds = {"teacher": teacher["logits"], "class": token["cls"], "dist": token["dist"],
             "class+dist": token["logits"], "no distillation": none["logits"]}
    names = list(preds)
    return {f"{a} vs {b}": _disagreement(preds[a], preds[b]) for i, a in enumerate(names) for b in names[i + 1:]}


def teacher_disagreement_by_fraction(records: dict) -> dict[str, dict[str, float]]:
    """Data efficiency, seed 0: how often each fraction's teacher disagrees with its two students."""
    table = {}
    for fraction in DATA_FRACTIONS:
        pct = f"{int(fraction * 100)}pct"
        p = {k: _predictions(records, f"{k}-{pct}-s0") for k in ("teacher-cnn", "none", "token")}
        if all(v is not None for v in p.values()):
            table[pct] = {k: _disagreement(p["teacher-cnn"]["logits"], p[k]["logits"]) for k in ("none", "token")}
    return table



def render_tables(study: Study, results: dict) -> str:
    """The study's README from `results` (also setting its derived tables: disagreement, token cosine)."""
    lines = _header_lines(study, results)
    if study.name.endswith("data-efficiency"):
        return "\n".join(lines + _data_efficiency_lines(results)) + "\n"
    students = " / ".join(dict.fromkeys(r.options["model"] for r in study.rows))
    lines += ["", f"## Table 3: distillation variants (students {students})", "",
              "| method | top-1 |", "|---|---|"]
    variants = {r.key for r in study.rows if r.table == 3}
    table3 = [r for r in _rows_for_table3(study, results) if r[1] in variants]
    for label, _, values in table3:
        lines.append(f"| {label} | {_mean_std(values)} |")
    if study.comparisons:  # a study of paired comparisons (fmnist-teacher-choice) has tables of its own
        from .teacher_choice import render_teacher_choice

        return "\n".join(lines + render_teacher_choice(study, results)) + "\n"
    lines += _paper_table_lines(study, results)
    if study.targets:
        lines += target_lines(results)
    return "\n".join(lines) + "\n"


def _header_lines(study: Study, results: dict) -> list[str]:
    """Title, what the numbers are, the study's description, how far it is, and (without comparisons) its teachers."""
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
    if results["teachers"] and not study.comparisons:
        lines += ["", "## Teachers", "", "| teacher | params | top-1 |", "|---|---|---|"]
        for key, t in results["teachers"].items():
            lines.append(f"| {t['label']} | {t['params']:,} | {t['top1']:.2f} |")
    return lines


def _data_efficiency_lines(results: dict) -> list[str]:
    """fmnist-data-efficiency's one table: each training fraction's teacher, students and their disagreement."""
    lines = ["", "## Data efficiency (every run takes the same number of optimizer steps)", "",
             f"Each fraction's teacher ({CNN_TEACHER}) is trained on the same subset as its students.", "",
             "| training data | teacher | no distillation | distillation token: class / dist / class+dist "
             "| token − none | teacher disagrees with none / token (% of test images) |",
             "|---|---|---|---|---|---|"]
    agreement = teacher_disagreement_by_fraction(results.get("records", {}))
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
    return lines


def _paper_table_lines(study: Study, results: dict) -> list[str]:
    """Tables 2 and 4 of the paper and the token cosine, from the rows and seed-0 records there are."""
    records, lines = results.get("records", {}), []
    # Every distillation-token row, each with its teacher (rows in `results` always have theirs there).
    table2 = [(results["teachers"][teacher_key(row)], results["rows"][row.key]["runs"]) for row in study.rows
              if row.teacher is not None and "distilled" in row.options.get("model", "")
              and row.key in results["rows"] and teacher_key(row) in results["teachers"]]
    if table2:
        lines += ["", "## Table 2: teacher choice (student with distillation token, class+dist)", "",
                  "| teacher | teacher top-1 | student top-1 |", "|---|---|---|"]
    for t, runs in table2:
        lines.append(f"| {t['label']} | {t['top1']:.2f} | {_mean_std([r['top1'] for r in runs])} |")
    disagreement = disagreement_table(study, records)
    if disagreement:
        results["disagreement"] = disagreement
        lines += ["", "## Table 4: disagreement rate on the test set (seed 0)", "", "| pair | rate |", "|---|---|"]
        for pair, rate in disagreement.items():
            lines.append(f"| {pair} | {rate:.3f} |")
    cosine = records.get("token-s0", {}).get("token_cosine")
    if cosine:
        results["token_cosine"] = cosine
        lines += ["", f"## Cosine similarity of the class and distillation tokens (token-s0, "
                      f"{cosine['num_images']:,} test images)", "",
                  "| " + " | ".join(cosine["layers"]) + " |", "|" + "---|" * len(cosine["layers"]),
                  "| " + " | ".join(f"{v:.2f}" for v in cosine["cosine"]) + " |"]
    return lines


def _gain(results: dict, row: str, base: str) -> tuple[float, float | None] | None:
    """(mean top-1 of row - mean of base, the larger seed std of the two, None until both have two seeds) when
    both rows have runs."""
    a, b = (results["rows"].get(k, {}).get("runs", []) for k in (row, base))
    if not a or not b:
        return None
    if min(len(a), len(b)) < 2:
        return _mean_top1(a) - _mean_top1(b), None
    return _mean_top1(a) - _mean_top1(b), max(statistics.stdev(r["top1"] for r in runs) for runs in (a, b))


def target_lines(results: dict) -> list[str]:
    """The issue's targets, each met or not (or not yet measurable)."""
    lines = ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    token = _gain(results, "token", "none")
    if token:
        gain, std = token
        if std is None:  # the seed std needs two seeds of both rows
            measured, met = f"{gain:+.2f} (one seed: no std yet)", "not yet decidable"
        else:
            measured, met = f"{gain:+.2f} (2 × std {2 * std:.2f})", "yes" if gain >= 1.0 and gain > 2 * std else "no"
        lines.append(f"| token (class+dist) − none ≥ 1.0 and > 2 × seed std | {measured} | {met} |")
    teachers = _gain(results, "token-cnn-matched", "token-vit-teacher")
    if teachers:
        lines.append(f"| convnet teacher > transformer teacher at matched accuracy (token, class+dist) | "
                     f"{_comparison(teachers, teachers[0] > 0)} |")
    hard = _gain(results, "hard", "soft")
    if hard:
        lines.append(f"| hard ≥ soft (class head) | {_comparison(hard, hard[0] >= 0)} |")
    cnn, none = results["teachers"].get("teacher-cnn"), results["rows"].get("none", {}).get("runs")
    if cnn and none:
        gap = cnn["top1"] - _mean_top1(none)
        lines.append(f"| convnet teacher ≥ 4 points above the undistilled student | {gap:+.2f} | "
                     f"{'yes' if gap >= 4 else 'no'} |")
    return lines if len(lines) > 5 else []


def _comparison(gain: tuple[float, float | None], holds: bool) -> str:
    """The measured and met cells of a target that compares two rows' means: with the seed spread beside the
    difference, or said to rest on one seed. The met cell says when the difference is within twice the larger
    seed std (the token target's noise bar): an order of means that noise could reverse is not a finding."""
    difference, std = gain
    verdict = "yes" if holds else "no"
    if std is None:
        return f"{difference:+.2f} (one seed) | {verdict}, so far"
    if abs(difference) <= 2 * std:
        verdict += f" by the means, within 2 × seed std ({2 * std:.2f}): not beyond noise"
    return f"{difference:+.2f} (larger seed std {std:.2f}) | {verdict}"


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
    if study.comparisons:
        from .teacher_choice import plot_paired

        plot_paired(study, results, png.with_name("paired.png"))
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
