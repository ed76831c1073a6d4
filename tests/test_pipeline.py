"""The main job end to end at toy scale, and the reproduce commands."""

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from deit.cli import build_parser
from deit.cli.train import config_from_args
from deit.pipeline import FINAL_RESERVE_S, FULL_SHARES, SMALL_SHARES, pipeline_configs, run_budgets, run_pipeline
from deit.reproduce import (STUDIES, encode_predictions, plot_study, render_tables, row_config, run_study,
                            train_command)

from conftest import first_test_images


def test_pipeline_trains_teacher_none_and_token_and_reuses_them(tmp_path, fmnist_dir, capsys, small_val):
    options = dict(data_dir=fmnist_dir, train_subset=256, teacher_epochs=1, student_epochs=1,
                   progress=False, threads=2, precision="fp32")
    first = run_pipeline(tmp_path / "p", **options)
    base = tmp_path / "p" / "small-s0"
    assert [r["prediction"] for r in first["rows"]] == [
        "teacher", "no distillation", "distillation token: class head", "distillation token: distillation head",
        "distillation token: combined (mean_logits)"]
    runs = {name: json.loads((base / name / "metrics.json").read_text()) for name in ("teacher", "none", "token")}
    assert [r["top1"] for r in first["rows"]] == [runs["teacher"]["top1"], runs["none"]["top1"],
                                                  runs["token"]["top1_cls"], runs["token"]["top1_dist"],
                                                  runs["token"]["top1"]]
    assert first["gain"] == pytest.approx(runs["token"]["top1"] - runs["none"]["top1"])
    table = (base / "pipeline.md").read_text()
    assert all(f"| {r['prediction']} | {r['top1']:.2f} |" in table for r in first["rows"])
    assert f"**Gain of the distillation token: {first['gain']:+.2f} points**" in table
    # Each run's MFU: its images/s x the nominal FLOPs of its step (the token student's with its teacher's forward,
    # counted on the plain teacher: the fused one hides its convolutions) over the peak measured in this process.
    from deit.checkpoint import load_checkpoint
    from deit.flops import forward_flops_per_image, train_flops_per_image
    from deit.machine import process_matmul_peak_tflops

    x = torch.zeros(2, 1, 40, 40)
    student = load_checkpoint(base / "token").model
    teacher_flops = forward_flops_per_image(load_checkpoint(base / "teacher").model.eval(), x)
    token = runs["token"]
    assert teacher_flops > 0
    assert token["flops_per_image"] == pytest.approx(train_flops_per_image(student, x) + teacher_flops)
    assert token["matmul_peak_tflops"] == process_matmul_peak_tflops(torch.float32, torch.device("cpu"))
    achieved_tflops = token["images_per_s"] * token["flops_per_image"] / 1e12
    assert token["mfu"] == pytest.approx(achieved_tflops / token["matmul_peak_tflops"])
    assert f"| {token['images_per_s']:.0f} | {100 * token['mfu']:.1f} % |" in table
    # The two students differ only in the token and its teacher: same images (canvas, subset), recipe and seed.
    none_run, token_run = (json.loads((base / name / "config.json").read_text()) for name in ("none", "token"))
    none, token = none_run["train"], token_run["train"]
    differing = {k for k in none if none[k] != token[k]} - {"compile"}  # auto for one, its decision for the other
    assert differing == {"model", "teacher", "distillation", "output"}, differing
    assert none_run["compiled"] == token_run["compiled"] and token["compile"] != "auto"
    assert (token["teacher"], token["distillation"], none["canvas"], none["train_subset"]) == \
           (str(base / "teacher"), "hard", 40, 256)
    capsys.readouterr()
    second = run_pipeline(tmp_path / "p", **options)
    assert capsys.readouterr().out.count("reusing the finished run") == 3
    assert second["rows"] == first["rows"]
    # Another seed: every run of its own, in a folder of its own (nothing reused, nothing refused).
    reseeded = pipeline_configs("small", tmp_path / "p", **{**options, "seed": 1})
    assert all(c.seed == 1 and Path(c.output).parent == tmp_path / "p" / "small-s1" for c in reseeded.values())
    assert reseeded["token"].teacher == reseeded["teacher"].output


def test_pipeline_minutes_size_every_schedule_to_its_share(tmp_path, fmnist_dir, small_val, monkeypatch):
    # No wall-clock assertion (shared machines); what is checked: each run calibrated its schedule against its
    # share of what was left of the budget and ended where its schedule did; the table says how many epochs each got.
    # 20 s and small steps (batch 16: calibration is 8 steps at least) keep the suite's time; the floor lowered
    # from MIN_RUN_S to 2 s so that the shares, not the floor, size the runs (2 min proved nothing more).
    import deit.pipeline

    monkeypatch.setattr(deit.pipeline, "MIN_RUN_S", 2)
    minutes = 1 / 3
    options = dict(data_dir=fmnist_dir, train_subset=64, batch_size=16, progress=False, threads=2, precision="fp32")
    result = run_pipeline(tmp_path / "p", minutes=minutes, **options)
    base = tmp_path / "p" / "small-s0"
    saved = {name: json.loads((base / name / "config.json").read_text()) for name in ("teacher", "none", "token")}
    budgets = {name: s["train"]["time_budget_minutes"] * 60 for name, s in saved.items()}
    # The teacher: its share of the minutes (less the final reserve); the students: equal shares of what was left
    # when the first of them started, never below the floor: the same minutes for both, whatever the first did.
    usable, floor = minutes * 60 - FINAL_RESERVE_S, deit.pipeline.MIN_RUN_S
    timing, later = result["timing"], list(SMALL_SHARES)
    teacher_share = SMALL_SHARES["teacher"] / sum(SMALL_SHARES.values())
    assert budgets["teacher"] == pytest.approx(max(teacher_share * (usable - timing["teacher"]["start_s"]), floor))
    assert budgets["none"] == budgets["token"] == pytest.approx(max((usable - timing["none"]["start_s"]) / 2, floor))
    for i, name in enumerate(later[1:], 1):
        assert timing[name]["start_s"] >= timing[later[i - 1]]["start_s"] + timing[later[i - 1]]["wall_s"]
    for name, s in saved.items():
        plan = s["schedule"]
        assert plan["budget_s"] == pytest.approx(budgets[name])
        assert plan["epochs"] == pytest.approx(plan["total_steps"] / s["steps_per_epoch"])
        log = [json.loads(line) for line in (base / name / "log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == plan["total_steps"]  # the run ended where its schedule did
    assert [r["epochs"] for r in result["rows"]][:3] == [saved[n]["schedule"]["epochs"] for n in ("teacher", "none", "token")]
    assert "| epochs |" in result["table"] and result["gain"] is not None


def test_pipeline_full_setting_keeps_teacher_and_distilled_student(tmp_path, fmnist_dir, small_val):
    options = dict(data_dir=fmnist_dir, train_subset=300, teacher_epochs=1, student_epochs=1,
                   progress=False, teacher_model="resnet8_small", precision="fp32")
    result = run_pipeline(tmp_path / "p", setting="full", **options)
    assert [r["prediction"] for r in result["rows"]] == [
        "teacher", "distillation token: class head", "distillation token: distillation head",
        "distillation token: combined (mean_logits)"]
    assert result["gain"] is None and "Gain" not in result["table"]
    student = json.loads((tmp_path / "p" / "full-s0" / "token" / "config.json").read_text())
    assert student["train"]["distillation"] == "hard" and student["train"]["canvas"] is None
    assert student["data"]["img_size"] == [28, 28]
    with pytest.raises(ValueError, match="other settings .*epochs"):
        run_pipeline(tmp_path / "p", setting="full", **{**options, "teacher_epochs": 2})


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_reproduce_commands_rebuild_the_same_configs(study, tmp_path):
    """commands.txt is exact: each printed command parses back to the run's config."""
    s = STUDIES[study]
    for row in s.teachers + s.rows:
        if row.teacher_checkpoint is not None or row.match_to is not None:
            continue  # its teacher is chosen from finished runs: tests/test_small_canvas.py, test_teacher_choice.py
        config = row_config(s, row, 1, tmp_path)
        command = train_command(config, row.preset)
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert config_from_args(args).replace(progress=True) == config.replace(progress=True), command


def test_reproduce_writes_tables_plot_and_commands_and_reuses_runs(tmp_path, fmnist_dir, capsys, monkeypatch):
    """The whole fmnist-cpu study at toy scale (80 training images, one epoch of 4 steps per run, evaluated on 100
    test images): every row of Tables 2-4 is filled from real runs, commands.txt lists each run once, and a second
    call trains nothing."""
    first_test_images(monkeypatch, 100)
    toy = dict(data_dir=fmnist_dir, train_subset=80, epochs=1, batch_size=20, warmup_epochs=0.1,
               progress=False, threads=2, precision="fp32")
    out, runs = tmp_path / "results", tmp_path / "runs"
    first = run_study("fmnist-cpu", output=out, runs_dir=runs, **toy)
    study = STUDIES["fmnist-cpu"]
    assert set(first["teachers"]) == {t.key for t in study.teachers}
    assert all(len(first["rows"][r.key]["runs"]) == len(study.seeds) for r in study.rows)
    readme = (out / "README.md").read_text()
    for heading in ("## Table 3", "## Table 2", "## Table 4"):
        assert heading in readme
    cls_head = [run["top1_cls"] for run in first["rows"]["token"]["runs"]]
    mean, std = sum(cls_head) / 2, abs(cls_head[0] - cls_head[1]) / 2 ** 0.5  # sample std of two values
    assert f"| distillation token (hard): class head | {mean:.2f} ± {std:.2f} |" in readme
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    commands = (out / "commands.txt").read_text().splitlines()
    assert len(commands) == len(study.teachers) + len(study.rows) * len(study.seeds) == len(set(commands))
    assert len(first["disagreement"]) == 10 and all(0 <= v <= 1 for v in first["disagreement"].values())
    capsys.readouterr()
    shutil.rmtree(runs)  # a new machine: only results/ is left
    second = run_study("fmnist-cpu", output=out, runs_dir=runs, **toy)
    # Every run's record is reused; the teachers' weights are not needed, so they are not trained again.
    assert capsys.readouterr().out.count("reusing the recorded run") == len(commands) and not runs.exists()
    assert second["table"] == first["table"]
    assert (out / "commands.txt").read_text().splitlines() == commands


def test_data_efficiency_table_pairs_each_fraction_with_its_teacher_and_runs(tmp_path):
    """The data-efficiency table and plot pivot the study's runs by fraction; missing runs leave blanks."""
    study = STUDIES["fmnist-data-efficiency"]
    assert {r.key for r in study.rows} == {f"{kind}-{pct}pct" for kind in ("none", "token") for pct in (10, 25, 100)}
    results = {"teachers": {"teacher-cnn-10pct": {"label": "t", "params": 1, "top1": 85.0},
                            "teacher-cnn-100pct": {"label": "t", "params": 1, "top1": 91.0}},
               "rows": {"none-10pct": {"runs": [{"top1": 80.0}]},
                        "token-10pct": {"runs": [{"top1": 82.5, "top1_cls": 82.0, "top1_dist": 82.25}]},
                        "none-100pct": {"runs": [{"top1": 89.0}]}}}
    table = render_tables(study, results)
    assert "| 10 % | 85.00 | 80.00 | 82.00 / 82.25 / 82.50 | +2.50 |  |" in table  # no predictions: no rates
    # Seed-0 predictions recorded: the teacher disagrees with none on 1 image of 4, with token on none.
    classes = {"teacher-cnn": [0, 1, 2, 3], "none": [0, 1, 2, 0], "token": [0, 1, 2, 3]}
    results["records"] = {f"{k}-10pct-s0": {"predictions": encode_predictions({"logits": torch.eye(4)[v]})}
                          for k, v in classes.items()}
    table = render_tables(study, results)
    assert "| 10 % | 85.00 | 80.00 | 82.00 / 82.25 / 82.50 | +2.50 | 25.0 / 0.0 |" in table
    assert "| 25 % |  |  |  |  |  |" in table and "| 100 % | 91.00 | 89.00 |  |  |  |" in table
    assert "Partial: 3 of 6" in table
    plot_study(study, results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_train_without_a_preset_never_runs_the_imagenet_recipe_on_small_data(capsys):
    parser = build_parser()
    config = config_from_args(parser.parse_args(["train", "--epochs", "2"]))
    assert (config.batch_size, config.epochs, config.repeats) == (64, 2, 1)  # fmnist-cpu, explicit flags win
    assert "using fmnist-cpu" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no small-data recipe for cifar10"):
        config_from_args(parser.parse_args(["train", "--data", "cifar10"]))
    imagenet = config_from_args(parser.parse_args(["train", "--preset", "deit", "--data", "cifar10"]))
    assert imagenet.batch_size == 1024  # asked for by name


def test_the_students_share_what_the_teacher_left_equally_fixed_when_the_first_starts():
    order = list(SMALL_SHARES)  # teacher, none, token
    assert run_budgets("teacher", order, SMALL_SHARES, 950.0) == {"teacher": pytest.approx(200.0)}
    # The teacher ended early: 800 s left; each student gets 400 s, the token student too however long none takes.
    assert run_budgets("none", order, SMALL_SHARES, 800.0) == {"none": 400.0, "token": 400.0}
    assert run_budgets("token", ["teacher", "token"], FULL_SHARES, 600.0) == {"token": 600.0}
