"""The main job end to end at toy scale, and the reproduce commands."""

import json
import shlex

import pytest

from deit.cli import build_parser
from deit.cli.train import config_from_args
from deit.pipeline import run_pipeline
from deit.reproduce import STUDIES, row_config, train_command


def test_pipeline_trains_teacher_then_student_and_reuses_them(tmp_path, fmnist_dir, capsys):
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


def test_pipeline_refuses_a_directory_holding_other_settings(tmp_path, fmnist_dir):
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
        config = row_config(s, row, 1, tmp_path)
        command = train_command(config, row.preset)
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert config_from_args(args).replace(progress=True) == config.replace(progress=True), command
