"""Experiment tracking (deit.engine.tracking) and summary.csv: what TensorBoard, MLflow and W&B receive equals
log.jsonl and an uninterrupted run's values, a crashed and resumed run reports no step twice, a missing package is
one line before any data is read."""

import csv
import importlib.util
import json
import os
import sys

import pytest

import deit.engine.tracking as tracking
from deit import faults
from deit.cli import main as cli_main
from deit.config import TrainConfig, preset_config
from deit.engine import fit
from deit.engine.run_dir import read_log
from deit.engine.tracking import Reporter

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def tiny_config(tmp_path, name, fmnist_dir, **overrides):
    """20 steps of 20 images (10 an epoch), deterministic: a resumed run repeats an uninterrupted one exactly."""
    base = dict(epochs=2, batch_size=20, train_subset=200, warmup_epochs=0.2, eval_every=1, progress=False,
                threads=1, output=str(tmp_path / name), precision="fp32", deterministic=True, data_dir=fmnist_dir,
                save_every_minutes=1000.0)
    return preset_config("fmnist-cpu", **{**base, **overrides})


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    run_id = json.loads((run_dir / "config.json").read_text())["trackers"]["mlflow"]["run_id"]
    keys = client.get_run(run_id).data.metrics
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.timestamp)]
            for k in keys}


def assert_equal_to_log(scalars: dict, run_dir) -> None:
    """Every number of every log.jsonl row is the tracker's scalar at the row's step (float32 in TensorBoard)."""
    rows = read_log(run_dir)
    assert len(rows) == 2
    for row in rows:
        for key, value in row.items():
            if key == "step":
                continue
            tag = f"eval/{key[4:]}" if key.startswith("val_") else f"epoch/{key}"
            assert dict(scalars[tag])[row["step"]] == pytest.approx(value, rel=1e-6), tag


def assert_steps_once_in_order(scalars: dict) -> None:
    for tag, points in scalars.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), (tag, steps)


@pytest.fixture
def every_step(monkeypatch):
    """Report every step (not every 10th): the resumed run's values are then each step's own, equal to an
    uninterrupted run's."""
    monkeypatch.setattr(tracking, "STEP_EVERY", 1)
    monkeypatch.setattr(tracking, "CONFUSION_MAX_VAL", 0)  # the end's pictures without the confusion matrix pass
    monkeypatch.delenv("DEIT_FAULT", raising=False)
    faults.reset()


def test_crashed_and_resumed_run_reports_each_step_once_with_the_uninterrupted_values(
        tmp_path, fmnist_dir, small_val, every_step, monkeypatch):
    report_to = "tensorboard" + (",mlflow" if HAS_MLFLOW else "")
    full = fit(tiny_config(tmp_path, "full", fmnist_dir, report_to=report_to)).output
    parted = tiny_config(tmp_path, "parted", fmnist_dir, report_to=report_to)
    assert fit(parted, stop_after_steps=13).metrics == {}  # state saved at step 13, inside epoch 2
    # A crash 3 steps later: TensorBoard already holds steps 14-16 of this attempt (the writer is flushed as the
    # run fails), the state is still step 13's.
    monkeypatch.setenv("DEIT_FAULT", "step:step=16")
    with pytest.raises(RuntimeError, match="injected fault"):
        fit(None, resume=tmp_path / "parted")
    assert tensorboard_scalars(tmp_path / "parted")["train/loss"][-1][0] == 16
    monkeypatch.delenv("DEIT_FAULT")
    resumed = fit(None, resume=tmp_path / "parted").output

    reference = tensorboard_scalars(full)
    readers = [tensorboard_scalars] + ([mlflow_scalars] if HAS_MLFLOW else [])
    for read in readers:
        for run in (full, resumed):
            scalars = read(run)
            assert_steps_once_in_order(scalars)
            assert [s for s, _ in scalars["train/loss"]] == list(range(1, 21))
            assert_equal_to_log(scalars, run)
        scalars = read(resumed)
        for tag in ("train/loss", "train/lr", "eval/top1", "eval/top1_cls", "eval/top1_dist", "eval/loss"):
            assert [s for s, _ in scalars[tag]] == [s for s, _ in reference[tag]], (read.__name__, tag)
            assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in reference[tag]], rel=1e-6), tag
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resumed / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"curves", "attention", "token_cosine"} <= set(events.Tags()["images"])
    assert "config/text_summary" in events.Tags()["tensors"]
    # summary.csv: log.jsonl's rows, each epoch once after the crash and resume, named as timm names them
    with open(resumed / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    rows = read_log(resumed)
    assert [r["epoch"] for r in summary] == ["1", "2"]
    assert list(summary[0])[:6] == ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
    for line, row in zip(summary, rows):
        named = {("eval_" + k[4:] if k.startswith("val_") else k): v for k, v in row.items()}
        assert {k: float(v) for k, v in line.items()} == {k: float(v) for k, v in named.items()}


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install wandb)")
def test_wandb_offline_run_is_resumed_under_its_id(tmp_path, fmnist_dir, small_val, every_step, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(tmp_path, "wb", fmnist_dir, report_to="wandb", epochs=1, train_subset=100)
    fit(config, stop_after_steps=4)
    run_id = json.loads((config_path := tmp_path / "wb" / "config.json").read_text())["trackers"]["wandb"]["id"]
    fit(None, resume=tmp_path / "wb")
    assert json.loads(config_path.read_text())["trackers"]["wandb"]["id"] == run_id
    attempts = sorted((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert attempts and all((a / f"run-{run_id}.wandb").stat().st_size > 0 for a in attempts)
    assert list((attempts[-1] / "files" / "media" / "images").glob("attention_*.png"))  # the end's pictures


def test_reporter_sends_10_step_means_on_a_fixed_grid_and_holds_back_what_no_save_covers():
    class Recorder:
        def __init__(self, live):
            self.live, self.points = live, []

        def log(self, scalars, step):
            self.points.append((step, scalars))

        def flush(self):
            pass

    live, waiting = Recorder(True), Recorder(False)
    reporter = Reporter([live, waiting], every=10)
    for step in range(1, 26):  # loss = step, 32 images in 0.5 s each
        reporter.step(step, float(step), lr=0.1 * step, images=32, seconds=0.5)
        if step == 12:
            reporter.saved(12)
    assert [(s, p["train/loss"], p["train/lr"], p["train/images_per_s"]) for s, p in live.points] == \
        [(10, 5.5, 1.0, 64.0), (20, 15.5, 2.0, 64.0)]
    assert [s for s, _ in waiting.points] == [10]  # step 20 waits for a save that covers it
    reporter.epoch({"epoch": 1, "step": 25, "train_loss": 2.5, "val_top1": 50.0, "model_note": "text"})
    reporter.saved(25)
    assert waiting.points[1:] == [(20, live.points[1][1]),
                                  (25, {"epoch/epoch": 1.0, "epoch/train_loss": 2.5, "eval/top1": 50.0})]


def test_missing_tracker_package_is_one_line_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec answers None
    code = cli_main(["train", "--report-to", "tensorboard,wandb", "--data-dir", str(tmp_path / "no-data"),
                     "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "deit train: error: --report-to wandb needs the wandb package: pip install wandb"
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="report_to must be none or a comma-separated list of tensorboard, wandb"):
        TrainConfig(report_to="tensorbored")
