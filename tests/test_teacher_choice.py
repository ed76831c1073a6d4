"""The teacher-choice study (`deit reproduce --preset fmnist-teacher-choice`): the paired t interval, the validation
split held out of the training images, the estimate of a run's time, and the study at toy scale (teachers
evaluated on the held-out split and the test set, the matched convnet chosen by the held-out split)."""

import json
import math
from pathlib import Path

import pytest
import torch

from deit.config import preset_config
from deit.data import load_split
from deit.data.subsets import held_out_subset, stratified_subset
from deit.reproduce import (STUDIES, StudyRun, closest_teacher, holdout_split, paired_difference, render_tables,
                            run_study, t_quantile, teacher_choice_study)
from deit.reproduce.estimate import measure_run_seconds, run_steps
from deit.reproduce.paired import t_two_sided_probability
from deit.reproduce.records import decode_classes

STUDY = "fmnist-teacher-choice"


def test_t_quantiles_match_the_printed_table():
    # two-sided 95 % and 99 % critical values of Student's t (any statistics table)
    table = {1: (12.706, 63.657), 2: (4.303, 9.925), 3: (3.182, 5.841), 4: (2.776, 4.604), 9: (2.262, 3.250),
             30: (2.042, 2.750)}
    for df, (t95, t99) in table.items():
        assert t_quantile(0.95, df) == pytest.approx(t95, abs=6e-4)
        assert t_quantile(0.99, df) == pytest.approx(t99, abs=6e-4)
    assert t_two_sided_probability(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| <= 1) = 1/2
    assert t_two_sided_probability(1.0, 2) == pytest.approx(1 / math.sqrt(3))  # df 2: t / sqrt(2 + t^2)


def test_paired_difference_and_interval_by_hand():
    a = {0: 74.0, 1: 73.0, 2: 75.0, 3: 72.0, 4: 80.0}  # seed 4 has no pair: left out
    b = {0: 73.0, 1: 73.5, 2: 73.0, 3: 71.5}
    d = paired_difference(a, b)
    # differences 1, -0.5, 2, 0.5: mean 0.75, std sqrt(3.25 / 3) = 1.040833, half-width 3.182446 * 1.040833 / 2
    assert d.seeds == (0, 1, 2, 3) and d.differences == (1.0, -0.5, 2.0, 0.5)
    assert d.mean == pytest.approx(0.75) and d.std == pytest.approx(1.040833, abs=1e-6)
    assert (d.low, d.high) == (pytest.approx(0.75 - 1.656198, abs=1e-5), pytest.approx(0.75 + 1.656198, abs=1e-5))
    assert not d.excludes_zero
    clear = paired_difference({0: 75.0, 1: 76.0, 2: 75.5}, {0: 73.0, 1: 73.5, 2: 73.0})
    # 2, 2.5, 2.5: mean 2.333333, std 0.288675, t(2) 4.302653: half 4.302653 * 0.288675 / sqrt(3) = 0.717109
    assert clear.low == pytest.approx(2.333333 - 0.717109, abs=1e-5) and clear.excludes_zero
    one = paired_difference({0: 75.0}, {0: 73.0, 1: 70.0})
    assert one.mean == 2.0 and one.low is None and not one.excludes_zero
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_the_held_out_split_is_stratified_seeded_and_disjoint_from_the_train_subset():
    labels = torch.arange(1000) % 10
    labels[:50] = 3  # unbalanced
    train = stratified_subset(labels, 100, 0)
    held = held_out_subset(labels, train, 200, 0)
    assert len(held) == 200 and len(set(held.tolist())) == 200
    assert not set(held.tolist()) & set(train.tolist())
    pool = torch.ones(1000, dtype=torch.bool)
    pool[train] = False
    expected = torch.bincount(labels[pool], minlength=10).double() * 200 / int(pool.sum())
    assert (torch.bincount(labels[held], minlength=10) - expected).abs().max() < 1  # proportional per class
    assert torch.equal(held, held_out_subset(labels, train, 200, 0))
    assert not torch.equal(held, held_out_subset(labels, train, 200, 1))
    with pytest.raises(ValueError, match="no sample is left"):
        held_out_subset(labels, torch.arange(1000), 10, 0)


def test_the_held_out_images_are_training_images_on_their_canvas_never_trained_on_nor_test(fmnist_dir):
    config = preset_config("fmnist-cpu", data_dir=fmnist_dir, canvas=40, train_subset=400, subset_seed=0, seed=3)
    held = holdout_split(config, 500, 0)
    train = load_split(config, "train")
    full = load_split(config.replace(train_subset=None), "train")
    assert len(held) == 500 and torch.bincount(held.labels).tolist() == [50] * 10 and held.img_size == (40, 40)
    as_bytes = lambda data: {bytes(image.numpy()) for image in data.images}
    assert not as_bytes(held) & as_bytes(train)  # never a training image
    assert not as_bytes(held) & as_bytes(load_split(config, "val").subset(range(2000)))  # nor a test image
    assert as_bytes(held) <= as_bytes(full)  # training images, placed as the training images are
    assert torch.equal(holdout_split(config.replace(seed=7), 500, 0).images, held.images)  # not the run's seed
    with pytest.raises(ValueError, match="needs a run with --train-subset"):
        holdout_split(config.replace(train_subset=None), 500, 0)


def test_closest_teacher_and_the_verdict_rule():
    assert closest_teacher({"a": 88.0, "b": 80.0, "c": 73.0, "d": 71.0}, 71.9) == "d"
    assert closest_teacher({"a": 71.0, "b": 73.0}, 72.0) == "a"  # a tie: the first listed
    study = STUDIES[STUDY]
    runs = lambda values: {"label": "x", "seeds": list(range(len(values))),
                           "runs": [{"top1": v, "top1_cls": v, "top1_dist": v} for v in values]}
    results = {"teachers": {}, "rows": {"token-cnn-matched": runs([75.0, 76.0, 75.5, 76.5]),
                                        "token-vit-teacher": runs([73.0, 73.5, 73.0, 74.0])},
               "matched": {"token-cnn-matched": {"teacher": "teacher-cnn-nano", "holdout_top1": 72.5, "gap": 0.3,
                                                 "target": "none", "target_holdout_top1": 72.2, "tolerance": 2.0}}}
    table = render_tables(study, results)
    assert "**The claim holds here**" in table and "+2.38 points, 95 % interval [+1.98, +2.77] over 4 seeds" in table
    # differences 2, 2.5, 2.5, 2.5: mean 2.375, std 0.25, half-width 3.182446 * 0.25 / 2 = 0.3978
    results["rows"]["token-vit-teacher"] = runs([76.0, 73.5, 77.0, 74.0])
    assert "**Not shown**" in render_tables(study, results)
    results["rows"]["token-vit-teacher"] = runs([77.0, 78.1])  # -2, -2.1: [-2.69, -1.41]
    table = render_tables(study, results)
    assert "**The opposite holds here**" in table and "Provisional: 2 of 4 seeds." in table
    results["matched"]["token-cnn-matched"]["gap"] = 3.0
    assert "**Not a test of the claim**: the teachers are not matched" in render_tables(study, results)


def test_the_small_canvas_runs_with_unchanged_settings_count():
    """The recorded rows of fmnist-small-canvas whose settings this study keeps are reused, the early-checkpoint
    matched row is not (its teacher differs)."""
    # as `deit reproduce --preset fmnist-teacher-choice --precision fp32 --merge results/fmnist-small-canvas` sees them
    state = StudyRun(STUDIES[STUDY], Path("/nonexistent"), Path("/nonexistent"), {"device": "auto", "precision": "fp32"})
    taken = state.merge(Path(__file__).parents[1] / "results" / "fmnist-small-canvas")
    reusable = sorted(name for name in taken if state.reusable(state.rows[name.rpartition("-s")[0]],
                                                                int(name.rpartition("-s")[2])) is not None)
    assert reusable == ["hard-s0", "hard-s1", "none-s0", "none-s1", "teacher-cnn-s0", "token-s0", "token-s1",
                        "token-vit-teacher-s0", "token-vit-teacher-s1"]


def test_teacher_choice_at_toy_scale(tmp_path, fmnist_dir, monkeypatch, capsys, small_val):
    """Four convnet teachers and the transformer teacher trained (200 images, 1 epoch), each evaluated on the
    held-out split and the test set; the matched convnet chosen by the held-out split, its student trained from it;
    --plan then names the choice and a second call trains nothing."""
    monkeypatch.setitem(STUDIES, STUDY, teacher_choice_study(seeds=(0,), holdout=(300, 0)))
    toy = dict(data_dir=fmnist_dir, train_subset=200, epochs=1, batch_size=50, warmup_epochs=0.1, progress=False,
               threads=2, precision="fp32")
    out, runs = tmp_path / "results", tmp_path / "runs"
    results = run_study(STUDY, output=out, runs_dir=runs, rows=["token-cnn-matched"], **toy)
    saved = json.loads((out / "results.json").read_text())
    records = saved["records"]
    teachers = ("teacher-cnn", "teacher-cnn-micro", "teacher-cnn-nano", "teacher-cnn-pico", "none")
    holdout = {key: records[f"{key}-s0"]["holdout"] for key in teachers}
    assert all(h["images"] == 300 and h["seed"] == 0 and 0 <= h["top1"] <= 100 for h in holdout.values())
    assert all("top1" in records[f"{key}-s0"]["metrics"] for key in teachers)  # the test top-1 beside it
    matched = saved["matched"]["token-cnn-matched"]
    accuracies = {key: holdout[key]["top1"] for key in teachers[:4]}
    assert matched["teacher"] == closest_teacher(accuracies, holdout["none"]["top1"])
    assert matched["candidates"] == accuracies and matched["target_holdout_top1"] == holdout["none"]["top1"]
    student = json.loads((runs / "token-cnn-matched-s0" / "config.json").read_text())["train"]
    assert student["teacher"] == str(runs / f"{matched['teacher']}-s0")
    assert results["rows"]["token-cnn-matched"]["seeds"] == [0]
    # every run's steps as the estimate counts them
    teacher_config = preset_config("cnn-small", **json.loads((runs / "teacher-cnn-s0" / "config.json").read_text())["train"])
    assert records["teacher-cnn-s0"]["metrics"]["steps"] == run_steps(teacher_config, 200)[0] == 4
    readme = (out / "README.md").read_text()
    assert "held-out top-1" in readme and f"**{matched['teacher']}**" in readme and "Not yet decidable" in readme
    # the test labels, once, for the table of where the teacher is wrong (none-s0 is its undistilled student)
    labels = decode_classes(saved["labels"]).long()  # the runs evaluate on the first 500 test images (small_val)
    assert torch.equal(labels, load_split(teacher_config, "val").labels[:500])
    assert saved["teacher_errors"]["token-cnn-matched"]["undistilled run"] == "none-s0"
    capsys.readouterr()
    plan = dict(run_study(STUDY, output=out, runs_dir=runs, plan=True, **toy)["plan"])
    assert plan["token-cnn-matched-s0"].startswith("recorded") and matched["teacher"] in plan["token-cnn-matched-s0"]
    assert f"held-out top-1 {holdout['teacher-cnn-pico']['top1']:.2f} %" in plan["teacher-cnn-pico-s0"]
    assert plan["token-vit-teacher-s0"] == "to train" and list(plan)[:4] == [f"{k}-s0" for k in teachers[:4]]
    capsys.readouterr()
    run_study(STUDY, output=out, runs_dir=runs, rows=["token-cnn-matched"], **toy)
    assert "train" not in capsys.readouterr().out.replace("reusing the recorded run", "")


def test_the_estimate_scales_measured_steps_and_evaluations(fmnist_dir, small_val):
    config = preset_config("cnn-small", model="resnet8_pico", data_dir=fmnist_dir, canvas=40, train_subset=4000,
                           epochs=120, eval_every=10, progress=False, threads=2, precision="fp32")
    assert run_steps(config, 4000) == (120 * 31, 12)  # 31 full batches of 128 an epoch, evaluated every 10
    measured = measure_run_seconds(config, None, 4000, steps=2)
    assert measured["step_s"] > 0 and measured["eval_s"] > 0
    assert measured["total_s"] == pytest.approx(120 * 31 * measured["step_s"] + 12 * measured["eval_s"])


def test_plan_times_runs_by_default_from_the_command_line_only():
    from deit.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["reproduce", "--preset", STUDY, "--plan"]).estimate_steps == 12
    assert parser.parse_args(["reproduce", "--preset", STUDY, "--plan", "--estimate-steps", "0"]).estimate_steps == 0


def test_where_each_teacher_is_wrong_and_the_undistilled_run_beside_a_transformer_teacher():
    """Table 4 and the teacher-error table by hand on 8 test images: the transformer teacher (none-s0) is compared
    with the next seed of none, a convnet teacher with none-s0; the labels come from results["labels"]."""
    from deit.reproduce.records import encode_classes
    from deit.reproduce.teacher_choice import teacher_agreement, teacher_errors

    study = STUDIES[STUDY]
    c = lambda *v: torch.tensor(v)
    labels = c(0, 1, 2, 3, 4, 5, 6, 7)
    pico = c(0, 1, 2, 3, 9, 9, 8, 7)  # wrong on images 4, 5, 6
    none0 = c(0, 1, 2, 9, 9, 5, 6, 9)  # wrong on 3, 4, 7: the transformer teacher
    none1 = c(0, 1, 9, 9, 4, 5, 6, 7)  # repeats none-s0's wrong class on image 3 only
    matched = {"logits": c(0, 1, 2, 3, 9, 9, 6, 1), "cls": c(0, 1, 2, 3, 9, 5, 6, 1), "dist": pico}
    vit = {"logits": c(0, 1, 2, 9, 9, 5, 6, 7), "cls": none0, "dist": none0}
    encode = lambda heads: {"predictions": {h: encode_classes(v) for h, v in heads.items()}, "metrics": {"top1": 50.0}}
    results = {"labels": encode_classes(labels), "rows": {}, "teachers": {},
               "matched": {"token-cnn-matched": {"teacher": "teacher-cnn-pico", "holdout_top1": 62.5, "gap": 0.0,
                                                 "target": "none", "target_holdout_top1": 62.5, "tolerance": 2.0}},
               "records": {"teacher-cnn-pico-s0": encode({"logits": pico}), "none-s0": encode({"logits": none0}),
                           "token-cnn-matched-s0": encode(matched), "token-vit-teacher-s0": encode(vit)}}
    agreement = teacher_agreement(study, results)
    assert agreement["token-vit-teacher"] == {"class": 0.0, "dist": 0.0, "class+dist": 0.125}  # none-s1 not yet
    # pico against the class head: differ on 5, 6, 7; the class+dist head: 6, 7; none-s0: 3, 5, 6, 7
    assert agreement["token-cnn-matched"] == {"class": 0.375, "dist": 0.0, "class+dist": 0.25,
                                              "no distillation": 0.5, "undistilled run": "none-s0"}
    results["records"]["none-s1"] = encode({"logits": none1})
    assert teacher_agreement(study, results)["token-vit-teacher"]["undistilled run"] == "none-s1"
    assert teacher_agreement(study, results)["token-vit-teacher"]["no distillation"] == 0.375  # 2, 4, 7
    errors = teacher_errors(study, results)
    # pico wrong on 4, 5, 6: the student right on 6 only, repeats pico's class on 4 and 5; none-s0 repeats on 4
    assert errors["token-cnn-matched"] == pytest.approx(
        {"teacher wrong": 37.5, "top1 where teacher right": 80.0, "top1 where teacher wrong": 100 / 3,
         "repeats": 200 / 3, "undistilled repeats": 100 / 3, "undistilled run": "none-s0"})
    # none-s0 wrong on 3, 4, 7: the student repeats on 3 and 4, right on 7; none-s1 repeats on 3, right on 4 and 7
    assert errors["token-vit-teacher"] == pytest.approx(
        {"teacher wrong": 37.5, "top1 where teacher right": 100.0, "top1 where teacher wrong": 100 / 3,
         "repeats": 200 / 3, "undistilled repeats": 100 / 3, "undistilled run": "none-s1"})
    assert "| token-vit-teacher (none) | 37.5 | 100.0 | 33.3 | 66.7 | 33.3 (none-s1) |" in render_tables(study, results)
