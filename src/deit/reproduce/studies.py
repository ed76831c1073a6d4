"""The studies `deit reproduce` runs: each a set of teacher and student rows (ordinary `deit train` runs) over
seeds, defined by their options only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import PRESETS


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
    # A teacher chosen by the runner (teacher=None here): of the teacher rows `match_candidates`, the one whose top-1
    # on the study's held-out validation split is closest to that of the seed-0 run of row `match_to`
    match_candidates: tuple[str, ...] = ()
    match_to: str | None = None


@dataclass(frozen=True)
class Study:
    name: str
    seeds: tuple[int, ...]
    teachers: tuple[Row, ...]
    rows: tuple[Row, ...]
    common: dict[str, Any] = field(default_factory=dict)
    description: str = ""  # a paragraph under the README's title
    targets: bool = False  # render the targets (token - none, convnet vs transformer teacher, hard vs soft)
    # The order of training: groups of row keys, each group over every seed before the next group (None: all rows
    # in one group). A study that spans sessions then finishes its main comparison first.
    groups: tuple[tuple[str, ...], ...] | None = None
    # (images, seed) of a validation split held out of the training images (deit.reproduce.holdout): every teacher
    # is evaluated on it as well as on the test set, and matched teachers are chosen by it
    holdout: tuple[int, int] | None = None
    # A matched teacher further than this (top-1 points on the held-out split) from its target is no match: its
    # student rows are not trained
    match_tolerance: float = 2.0
    # Paired comparisons (row, base, label): row - base over the seeds both have, with a t interval; the first is
    # the study's claim
    comparisons: tuple[tuple[str, str, str], ...] = ()

    def schedule(self) -> list[tuple[Row, int]]:
        """(row, seed) in training order."""
        rows = {row.key: row for row in self.rows}
        groups = self.groups or (tuple(rows),)
        assert sorted(k for g in groups for k in g) == sorted(rows), f"{self.name}: groups must list every row once"
        return [(rows[key], seed) for group in groups for seed in self.seeds for key in group]


def teacher_key(row: Row) -> str:
    """Where results["teachers"] keeps the teacher of `row`."""
    return row.teacher if row.teacher_checkpoint is None else f"{row.teacher}-{row.teacher_checkpoint.split(':')[0]}"


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


# The small-canvas setting (also the default of `deit pipeline`): 4,000 Fashion-MNIST training images (400 a class,
# the same subset for every seed) each at a fixed seeded position on a 40x40 black canvas; 8-px patches (25 tokens);
# over the fmnist-cpu preset, the DeiT recipe with label-noisy augmentation; the resnet8_tiny teacher (cnn-small
# preset) on the same images with crops and flips.
SMALL_CANVAS_DATA = dict(canvas=40, train_subset=4000, subset_seed=0)
SMALL_CANVAS_STUDENT, SMALL_CANVAS_DISTILLED = "deit_mini_patch8_32", "deit_mini_distilled_patch8_32"
SMALL_CANVAS_RECIPE = dict(warmup_epochs=5, drop_path=0.1, crop="rrc", rrc_scale_min=0.25, hflip=0.5,
                           randaugment="rand-m9-mstd0.5-inc1", reprob=0.25, eval_every=10, **SMALL_CANVAS_DATA)
SMALL_CANVAS_TEACHER = dict(model="resnet8_tiny", crop="rrc", rrc_scale_min=0.25, hflip=0.5, **SMALL_CANVAS_DATA)
SMALL_CANVAS_STUDENTS = (SMALL_CANVAS_STUDENT, SMALL_CANVAS_DISTILLED)


def small_canvas_options(epochs: int = 120, teacher_epochs: int = 120) -> tuple[dict, dict]:
    """(the students' options, the convnet teacher's) of the small-canvas setting (small_canvas_study)."""
    recipe = dict(epochs=epochs, **SMALL_CANVAS_RECIPE)
    teacher = dict(epochs=teacher_epochs, eval_every=1, keep_checkpoints=True, **SMALL_CANVAS_TEACHER)
    return recipe, teacher


def small_canvas_study(epochs: int = 120, teacher_epochs: int = 120) -> Study:
    """Small data where a convnet has an inductive bias to pass on (docs/results.md, "Small-data study"): 4,000
    Fashion-MNIST training images (400 a class, the same subset for every seed) each at a fixed seeded position on
    a 40x40 black canvas (test: all 10,000 test images, positions of their own); 8-px patches (25 tokens); the DeiT
    recipe with label-noisy augmentation for ~7,400 optimizer steps; a resnet8_tiny teacher trained on the same
    images and kind of views, every epoch's weights kept for the teacher of matched accuracy."""
    student, distilled = SMALL_CANVAS_STUDENTS
    recipe, teacher_options = small_canvas_options(epochs, teacher_epochs)
    hard = dict(model=distilled, distillation="hard", alpha=0.5, **recipe)
    teacher = Row("teacher-cnn", "convnet teacher (resnet8_tiny)", teacher_options, preset="cnn-small")
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
    # The headline comparison (token vs none, both seeds) first, then hard vs soft, then the teacher choice.
    groups = (("none", "token"), ("hard", "soft"), ("token-vit-teacher", "token-cnn-matched"))
    return Study("fmnist-small-canvas", (0, 1), (teacher,), rows, description=description, targets=True,
                 groups=groups)


STUDIES["fmnist-small-canvas"] = small_canvas_study()


# The convnets of graded capacity (strongest first): resnet8 at 16, 8, 4 and 2 channels in its first stage.
GRADED_CONVNETS = (("teacher-cnn", "resnet8_tiny"), ("teacher-cnn-micro", "resnet8_micro"),
                   ("teacher-cnn-nano", "resnet8_nano"), ("teacher-cnn-pico", "resnet8_pico"))


def teacher_choice_study(epochs: int = 120, teacher_epochs: int = 120, seeds: tuple[int, ...] = (0, 1, 2, 3),
                         holdout: tuple[int, int] = (10000, 0)) -> Study:
    """Paper Table 2 done right (docs/results.md, "Teacher choice"): in the small-canvas setting, does the student
    learn more from a fully trained convnet than from a transformer teacher of the same accuracy? Teachers: four
    fully trained resnet8 widths (one recipe: the small-canvas teacher's) and the transformer teacher (the none
    row's seed-0 run, as in fmnist-small-canvas); the convnet matched to the transformer is the one whose top-1 on a
    validation split held out of the training images (10,000 of the 56,000 the 4,000-image subset leaves unused)
    is closest to the transformer's. Every setting of the small-canvas study is kept, so its recorded runs of the
    rows none, hard, token and token-vit-teacher and of teacher-cnn count here (--merge results/fmnist-small-canvas)."""
    student, distilled = SMALL_CANVAS_STUDENTS
    recipe, teacher_options = small_canvas_options(epochs, teacher_epochs)
    hard = dict(model=distilled, distillation="hard", alpha=0.5, **recipe)
    teachers = tuple(Row(key, f"convnet teacher ({model})", {**teacher_options, "model": model}, preset="cnn-small")
                     for key, model in GRADED_CONVNETS)
    rows = (
        Row("none", "no distillation", dict(model=student, **recipe)),
        Row("hard", "hard-label distillation (class head), strong convnet",
            dict(model=student, distillation="hard", alpha=0.5, **recipe), teacher="teacher-cnn"),
        Row("token", "distillation token, strong convnet (resnet8_tiny)", hard, teacher="teacher-cnn"),
        Row("token-cnn-matched", "distillation token, convnet of matched held-out accuracy", hard,
            match_candidates=tuple(key for key, _ in GRADED_CONVNETS), match_to="none", table=2),
        Row("token-vit-teacher", "distillation token, transformer teacher (the none row, seed 0)", hard,
            teacher="none", table=2),
    )
    description = (
        "The small-canvas setting (fmnist-small-canvas: 4,000 Fashion-MNIST training images on a 40x40 canvas, "
        "the same recipe, student and schedule). Teachers: resnet8 at four widths, one recipe, fully trained; the "
        "transformer teacher is the undistilled student (the none row, seed 0). The convnet matched to the "
        f"transformer is chosen by top-1 on a validation split of {holdout[0]:,} training images that no run trains "
        f"on (stratified, seed {holdout[1]}), never by the test set. The design, seeds and decision rule were "
        "written before the runs: docs/results.md, \"Teacher choice\".")
    comparisons = (("token-cnn-matched", "token-vit-teacher", "matched convnet − transformer teacher"),
                   ("token", "hard", "token − hard (strong convnet)"),
                   ("token", "none", "token (strong convnet) − no distillation"),
                   ("token", "token-cnn-matched", "strong convnet − matched convnet"))
    # The claim first (both of its rows over every seed), then the rest.
    groups = (("token-cnn-matched", "token-vit-teacher"), ("none", "token", "hard"))
    return Study("fmnist-teacher-choice", seeds, teachers, rows, description=description, groups=groups,
                 holdout=holdout, comparisons=comparisons)


STUDIES["fmnist-teacher-choice"] = teacher_choice_study()
