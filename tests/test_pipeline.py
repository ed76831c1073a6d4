"""The main job end to end at toy scale, and the reproduce commands."""

import json
import shlex
import shutil

import pytest
import torch

from deit.cli import build_parser
from deit.cli.train import config_from_args
from deit.pipeline import FINAL_RESERVE_S, run_pipeline
from deit.reproduce import (STUDIES, encode_predictions, plot_study, render_tables, row_config, run_study,
                            train_command)


def test_pipeline_trains_teacher_then_student_and_reuses_them(tmp_path, fmnist_dir, capsys, small_val):
    options = dict(data_dir=fmnist_dir, train_subset=600, teacher_epochs=1, student_epochs=1,
                   progress=False, threads=2, precision="fp32", teacher_model="resnet8_small")
    first = run_pipeline(tmp_path / "p", **options)
    predictions = [r["prediction"] for r in first["rows"]]
    assert predictions == ["teacher", "class head", "distillation head", "combined (mean_logits)"]
    assert all(0 <= r["top1"] <= 100 and r["params"] > 0 for r in first["rows"])
    assert (tmp_path / "p" / "pipeline.md").read_text().startswith("| model |")
    capsys.readouterr()
    second = run_pipeline(tmp_path / "p", **options)
    out = capsys.readouterr().out
    assert out.count("reusing the finished run") == 2
    assert second["rows"] == first["rows"]
    student_config = json.loads((tmp_path / "p" / "student" / "config.json").read_text())["train"]
    assert student_config["distillation"] == "hard" and student_config["teacher"].endswith("teacher")


def test_pipeline_minutes_size_both_schedules_to_the_budget(tmp_path, fmnist_dir):
    # No wall-clock assertion (shared machines); what is checked: each run calibrated its schedule against its
    # share of the budget and the table says how many epochs each got.
    options = dict(data_dir=fmnist_dir, train_subset=600, progress=False, threads=2, precision="fp32",
                   teacher_model="resnet8_small")
    result = run_pipeline(tmp_path / "p", minutes=2.0, **options)
    teacher = json.loads((tmp_path / "p" / "teacher" / "config.json").read_text())
    student = json.loads((tmp_path / "p" / "student" / "config.json").read_text())
    assert teacher["train"]["time_budget_minutes"] == 0.5
    # what the teacher left after the final reserve (at least a minute); how much the teacher used is the
    # calibration's business (a 30-s toy budget can end well short of it), not a timing this test may assert
    assert 1.0 <= student["train"]["time_budget_minutes"] < 2.0 - FINAL_RESERVE_S / 60
    for run, saved in (("teacher", teacher), ("student", student)):
        plan = saved["schedule"]
        assert plan["budget_s"] == pytest.approx(saved["train"]["time_budget_minutes"] * 60)
        assert plan["epochs"] == pytest.approx(plan["total_steps"] / saved["steps_per_epoch"])
        log = [json.loads(line) for line in (tmp_path / "p" / run / "log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == plan["total_steps"]  # the run ended where its schedule did
    epochs = [r["epochs"] for r in result["rows"]]
    assert epochs[0] == teacher["schedule"]["epochs"] and epochs[1] == student["schedule"]["epochs"]
    assert "| epochs |" in result["table"]


def test_pipeline_refuses_a_directory_holding_other_settings(tmp_path, fmnist_dir, small_val):
    options = dict(data_dir=fmnist_dir, train_subset=300, teacher_epochs=1, student_epochs=1,
                   progress=False, teacher_model="resnet8_small", precision="fp32")
    run_pipeline(tmp_path / "p", **options)
    with pytest.raises(ValueError, match="other settings .*epochs"):
        run_pipeline(tmp_path / "p", **{**options, "teacher_epochs": 2})


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


def test_reproduce_writes_tables_plot_and_commands_and_reuses_runs(tmp_path, fmnist_dir, capsys, small_val):
    """The whole fmnist-cpu study at toy scale (200 training images, one epoch per run): every row of
    Tables 2-4 is filled from real runs, commands.txt lists each run once, and a second call trains nothing."""
    toy = dict(data_dir=fmnist_dir, train_subset=200, epochs=1, batch_size=50, warmup_epochs=0.1,
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
