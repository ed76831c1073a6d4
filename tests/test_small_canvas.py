"""The small-data study on a canvas (`deit reproduce --preset fmnist-small-canvas`): canvas placement, per-epoch
checkpoints as a teacher, the matched-accuracy checkpoint, and the whole study at toy scale."""

import json
import shlex
import shutil

import pytest
import torch

from deit.analyze import prepare_runs
from deit.cli import build_parser
from deit.cli.train import config_from_args
from deit.config import TrainConfig, preset_config
from deit.data import ImageData, load_split
from deit.data.canvas import canvas_positions, place_on_canvas
from deit.data.subsets import stratified_subset
from deit.engine.run_dir import epoch_checkpoint
from deit.reproduce import (STUDIES, StudyRun, closest_checkpoint, matched_teacher, render_tables, row_config, run_study,
                            selected_runs, target_lines, train_command)
from deit.teacher import load_teacher

from conftest import first_test_images

STUDY = "fmnist-small-canvas"


def _images(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)  # no zero pixel inside
    return ImageData(images, torch.arange(n) % 10, [str(i) for i in range(10)], (0.5,), (0.5,), "toy", "train")


def test_canvas_keeps_every_pixel_at_a_seeded_position_fixed_per_image():
    data = _images()
    placed = place_on_canvas(data, 40)
    assert placed.images.shape == (12, 1, 40, 40) and placed.img_size == (40, 40)
    assert torch.equal(placed.images, place_on_canvas(data, 40).images)  # seeded: the same every time
    positions = canvas_positions(12, (28, 28), 40, "train")
    assert positions.min() >= 0 and positions.max() <= 12 and len(set(map(tuple, positions.tolist()))) > 1
    for i, (top, left) in enumerate(positions.tolist()):
        assert torch.equal(placed.images[i, :, top:top + 28, left:left + 28], data.images[i])  # pixels intact
        outside = placed.images[i].clone()
        outside[:, top:top + 28, left:left + 28] = 0
        assert outside.sum() == 0  # black elsewhere
    assert torch.equal(placed.labels, data.labels)
    # An image's position depends on its index in the split, not on the images after it; val draws its own.
    assert torch.equal(canvas_positions(5, (28, 28), 40, "train"), positions[:5])
    assert not torch.equal(canvas_positions(12, (28, 28), 40, "val"), positions)
    with pytest.raises(ValueError, match="smaller than the images"):
        place_on_canvas(data, 20)


def test_canvas_val_is_independent_of_the_train_subset_and_the_subset_of_the_seed(fmnist_dir):
    small = preset_config("fmnist-cpu", data_dir=fmnist_dir, canvas=40, train_subset=200, subset_seed=0, seed=1)
    other = small.replace(train_subset=300, seed=2)
    assert torch.equal(load_split(small, "val").images, load_split(other, "val").images)
    full = load_split(small.replace(train_subset=None), "train")
    train = load_split(small, "train")
    assert train.img_size == (40, 40) and len(train) == 200
    assert torch.bincount(train.labels).tolist() == [20] * 10
    # each subset image sits where the same image sits in the whole placed split, whatever the run's seed
    same_subset = load_split(small.replace(seed=5), "train")
    assert torch.equal(same_subset.images, train.images)
    assert torch.equal(train.images, full.images[stratified_subset(full.labels, 200, 0)])
    with pytest.raises(ValueError, match="--canvas sets the image size"):
        small.replace(img_size=40)


def assert_kept_checkpoints_load_as_a_teacher_by_architecture_name(run) -> None:
    """A convnet run of 2 epochs with --keep-checkpoints (the study's teacher): each epoch's weights load as a teacher
    by architecture name; the last is the run's model."""
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["epoch-001.safetensors", "epoch-002.safetensors"]
    x = torch.randn(3, 1, 40, 40)
    outputs = {}
    for epoch in (1, 2):
        teacher, info = load_teacher("resnet8_tiny", str(run / epoch_checkpoint(epoch)), num_classes=10,
                                     in_chans=1, img_size=(40, 40))
        assert info["teacher"] == "resnet8_tiny"
        outputs[epoch] = teacher(x)
    final, _ = load_teacher(str(run), None, num_classes=10, in_chans=1, img_size=(40, 40))
    torch.testing.assert_close(outputs[2], final(x))  # the last epoch's checkpoint is the run's model
    assert not torch.allclose(outputs[1], outputs[2])


def test_the_matched_checkpoint_is_the_closest_evaluated_and_kept_epoch(tmp_path):
    assert closest_checkpoint({1: 50.0, 2: 70.0, 3: 80.0, 4: 79.0, 5: 85.0}, 79.6) == 3
    assert closest_checkpoint({1: 70.0, 2: 72.0}, 71.0) == 1  # a tie: the earlier epoch
    with pytest.raises(ValueError):
        closest_checkpoint({}, 50.0)
    study = STUDIES[STUDY]
    row = next(r for r in study.rows if r.key == "token-cnn-matched")
    teacher, none = tmp_path / "teacher-cnn-s0", tmp_path / "none-s0"
    (teacher / "checkpoints").mkdir(parents=True)
    none.mkdir()
    with pytest.raises(ValueError, match="needs the finished runs"):
        matched_teacher(row, tmp_path)
    (none / "metrics.json").write_text(json.dumps({"top1": 74.2}))
    (teacher / "metrics.json").write_text(json.dumps({"top1": 88.0}))
    log = [{"epoch": e, "val_top1": v} for e, v in ((1, 60.0), (2, 74.0), (3, 74.3), (4, 81.0), (5, 88.0))]
    (teacher / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    for epoch in (1, 2, 4, 5):  # epoch 3 (the closest) kept no checkpoint
        (teacher / epoch_checkpoint(epoch)).write_bytes(b"")
    choice = matched_teacher(row, tmp_path)
    assert (choice["epoch"], choice["top1"], choice["target_top1"]) == (2, 74.0, 74.2)
    config = row_config(study, row, 1, tmp_path)
    assert config.teacher == "resnet8_tiny" and config.teacher_weights == str(teacher / epoch_checkpoint(2))
    command = train_command(config, row.preset)
    assert config_from_args(build_parser().parse_args(shlex.split(command)[1:])) == config


def test_partial_results_render(tmp_path):
    study = STUDIES[STUDY]
    results = {"teachers": {}, "rows": {"none": {"label": "no distillation", "seeds": [0], "runs": [{"top1": 70.0}]}}}
    table = render_tables(study, results)
    assert "Partial: 1 of 12" in table and "| no distillation | 70.00 |" in table
    assert "## Targets" not in table  # nothing to compare yet


def test_the_token_target_waits_for_two_seeds_of_both_rows():
    runs = lambda *top1: {"label": "x", "seeds": list(range(len(top1))), "runs": [{"top1": t} for t in top1]}
    one = target_lines({"teachers": {}, "rows": {"none": runs(70.0), "token": runs(72.0)}})
    assert "| +2.00 (one seed: no std yet) | not yet decidable |" in one[-1]
    clear = target_lines({"teachers": {}, "rows": {"none": runs(70.0, 70.2), "token": runs(72.0, 73.0)}})
    assert clear[-1].endswith("| +2.40 (2 × std 1.41) | yes |")  # the larger std: stdev(72, 73) = 0.707
    noisy = target_lines({"teachers": {}, "rows": {"none": runs(70.0, 72.0), "token": runs(72.0, 73.5)}})
    assert noisy[-1].endswith("| +1.75 (2 × std 2.83) | no |")  # stdev(70, 72) = 1.414


def test_hard_vs_soft_says_when_it_rests_on_one_seed():
    runs = lambda *top1: {"label": "x", "seeds": list(range(len(top1))), "runs": [{"top1": t} for t in top1]}
    one = target_lines({"teachers": {}, "rows": {"hard": runs(74.5), "soft": runs(72.7)}})
    assert one[-1] == "| hard ≥ soft (class head) | +1.80 (one seed) | yes, so far |"
    two = target_lines({"teachers": {}, "rows": {"hard": runs(74.0, 71.0), "soft": runs(72.0, 73.5)}})
    assert two[-1] == ("| hard ≥ soft (class head) | -0.25 (larger seed std 2.12) | no by the means, within "
                       "2 × seed std (4.24): not beyond noise |")  # stdev(74, 71) = 2.121
    clear = target_lines({"teachers": {}, "rows": {"hard": runs(75.0, 76.0), "soft": runs(72.0, 71.0)}})
    assert clear[-1] == "| hard ≥ soft (class head) | +4.00 (larger seed std 0.71) | yes |"
    close = target_lines({"teachers": {}, "rows": {"token-cnn-matched": runs(73.72, 72.48),
                                                   "token-vit-teacher": runs(73.21, 72.71)}})
    assert close[-1] == ("| convnet teacher > transformer teacher at matched accuracy (token, class+dist) | +0.14 "
                         "(larger seed std 0.88) | yes by the means, within 2 × seed std (1.75): not beyond noise |")


def test_rows_and_seeds_name_runs_of_the_study_or_say_which_exist():
    study = STUDIES[STUDY]
    assert selected_runs(study, ["token", "teacher-cnn"], [1]) == {("token", 1), ("teacher-cnn", 0)}
    assert len(selected_runs(study)) == 2 * len(study.rows)
    with pytest.raises(ValueError, match="has no row 'tokn'; its rows: none, soft, hard, token"):
        selected_runs(study, ["tokn"])
    with pytest.raises(ValueError, match="runs seeds 0, 1; not 2"):
        selected_runs(study, None, [2])


def test_reproduce_flags_parse_into_lists_or_say_what_they_take(capsys):
    parser = build_parser()
    args = parser.parse_args(["reproduce", "--preset", STUDY, "--rows", "none, token", "--seeds", "0,1", "--plan",
                              "--merge", "a/results.json", "--merge", "b", "--num-workers", "8"])
    assert (args.rows, args.seeds, args.plan, args.merge) == (["none", "token"], [0, 1], True, ["a/results.json", "b"])
    assert args.num_workers == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["reproduce", "--preset", STUDY, "--seeds", "1,x"])
    assert "--seeds takes integers separated by commas (e.g. 0,1), not '1,x'" in capsys.readouterr().err


def test_a_call_keeps_the_records_it_has_not_reached_yet(tmp_path):
    """A study restarted on a new machine writes results.json after its first student: the teacher's record (reached
    only when a distilled student trains) and every other earlier record must still be in it."""
    study = STUDIES[STUDY]
    rows = {r.key: r for r in study.teachers + study.rows}
    blank = StudyRun(study, tmp_path, tmp_path / "runs", {})
    records = {name: {"fingerprint": blank.settings(rows[key], seed), "command": f"deit train {name}",
                      "metrics": {"top1": top1}, "teacher": None}
               for name, key, seed, top1 in (("none-s0", "none", 0, 70.0), ("teacher-cnn-s0", "teacher-cnn", 0, 88.0),
                                             ("soft-s1", "soft", 1, 71.0))}
    (tmp_path / "results.json").write_text(json.dumps({"records": records}))
    state = StudyRun(study, tmp_path, tmp_path / "runs", {})
    state.student(rows["none"], 0)  # reused: nothing trains
    state.write_outputs()
    assert json.loads((tmp_path / "results.json").read_text())["records"] == records
    assert (tmp_path / "commands.txt").read_text() == "deit train none-s0\n"


def test_runs_recorded_with_other_command_options_are_named_with_the_flags_that_reuse_them(tmp_path, capsys):
    """A study recorded at --precision fp32 and asked at the default (auto) trains everything again: --plan and a
    training call say which flags reuse the records; a change of the recipe itself gets no such hint."""
    study = STUDIES[STUDY]
    rows = {r.key: r for r in study.teachers + study.rows}
    fp32, bf16 = (StudyRun(study, tmp_path, tmp_path / "runs", {"precision": p}) for p in ("fp32", "bf16"))
    records = {f"{key}-s{seed}": {"fingerprint": run.settings(rows[key], seed), "command": "deit train",
                                  "metrics": {"top1": 70.0}, "teacher": None}
               for run, key, seed in ((fp32, "none", 0), (fp32, "token", 0), (bf16, "none", 1))}
    (tmp_path / "results.json").write_text(json.dumps({"records": records}))
    run_study(STUDY, output=tmp_path, runs_dir=tmp_path / "runs", plan=True)
    assert capsys.readouterr().out.splitlines()[-1] == (
        "3 recorded runs differ from these settings only in options of this command: pass --precision fp32 to reuse "
        "2; pass --precision bf16 to reuse 1 (else they train again and their records are replaced)")
    state = StudyRun(study, tmp_path, tmp_path / "runs", {"precision": "fp32"})
    assert state.reuse_hint([(rows["none"], 0)]) is None  # recorded with these settings: reused, nothing to say
    assert state.reuse_hint([(rows["none"], 1)]).endswith("pass --precision bf16 to reuse them (else they train "
                                                         "again and their records are replaced)")
    recipe = StudyRun(study, tmp_path, tmp_path / "runs", {"precision": "fp32", "epochs": 3})
    assert recipe.reuse_hint([(rows["none"], 0)]) is None  # epochs differ: a change of the recipe, trained again


def test_plan_says_how_long_the_recorded_students_took(tmp_path):
    records = {name: {"fingerprint": "", "command": "", "metrics": {"top1": 70.0, "train_time_s": seconds}}
               for name, seconds in (("teacher-cnn-s0", 60.0), ("none-s0", 600.0), ("token-s0", 1200.0),
                                     ("hard-s1", 3000.0))}
    (tmp_path / "results.json").write_text(json.dumps({"records": records}))
    state = StudyRun(STUDIES[STUDY], tmp_path, tmp_path / "runs", {})
    assert state.pace() == "; the 3 recorded students trained in a median 20 min each where they ran (evaluations " \
                           "not counted)"  # the teacher's 1 min left out
    assert StudyRun(STUDIES[STUDY], tmp_path / "none", tmp_path / "runs", {}).pace() == ""


def test_merge_takes_the_runs_recorded_elsewhere_that_this_study_lacks(tmp_path, capsys):
    study = STUDIES[STUDY]
    rows = {r.key: r for r in study.teachers + study.rows}
    blank = StudyRun(study, tmp_path, tmp_path / "runs", {})

    def record(key, seed, top1, current=True):
        settings = blank.settings(rows[key], seed) if current else "other settings"
        return {"fingerprint": settings, "command": f"deit train {key}-s{seed}", "metrics": {"top1": top1},
                "teacher": None}

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder, records in ((ours, {"none-s0": record("none", 0, 70.0), "none-s1": record("none", 1, 60.0, current=False)}),
                            (theirs, {"none-s0": record("none", 0, 99.0), "none-s1": record("none", 1, 71.0),
                                      "token-s0": record("token", 0, 75.0), "bogus-s0": record("none", 0, 1.0)})):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"records": records}))
    plan = dict(run_study(STUDY, output=ours, runs_dir=tmp_path / "runs", plan=True, merge=[theirs])["plan"])
    assert "merged from" in capsys.readouterr().out
    # ours wins where both match the current settings; theirs where only theirs does; unknown runs are left out
    assert plan["none-s0"] == "recorded: top-1 70.00 % (weights not in runs/: trained again if a student still needs them)"
    assert plan["none-s1"].startswith("recorded: top-1 71.00 %") and plan["token-s0"].startswith("recorded: top-1 75.00")
    state = StudyRun(study, ours, tmp_path / "runs", {})
    assert state.merge(theirs / "results.json") == ["none-s1", "token-s0"]
    (tmp_path / "other.json").write_text(json.dumps({"rows": {}}))
    with pytest.raises(ValueError, match="other.json is not the results.json of a deit reproduce study"):
        state.merge(tmp_path / "other.json")


def test_small_canvas_study_end_to_end_at_toy_scale(tmp_path, fmnist_dir, capsys, monkeypatch):
    """Every row trained (40 images, 2 epochs of 2 steps; evaluated on 100 test images), the teacher of matched
    accuracy picked from the convnet's kept checkpoints (each loads as a teacher by architecture name), Tables 2-4,
    the token cosine and the targets written; a second call trains nothing."""
    first_test_images(monkeypatch, 100)
    toy = dict(data_dir=fmnist_dir, train_subset=40, epochs=2, batch_size=20, warmup_epochs=0.1,
               progress=False, threads=2, precision="fp32")
    out, runs = tmp_path / "results", tmp_path / "runs"
    study = STUDIES[STUDY]
    # --rows teacher-cnn: the teacher alone; --rows none,token --seeds 0: those two (the teacher found, not retrained);
    # --plan then says what the rest would do
    run_study(STUDY, output=out, runs_dir=runs, rows=["teacher-cnn"], **toy)
    assert [p.name for p in runs.iterdir()] == ["teacher-cnn-s0"]
    assert_kept_checkpoints_load_as_a_teacher_by_architecture_name(runs / "teacher-cnn-s0")
    teacher_weights = (runs / "teacher-cnn-s0" / "model.safetensors").read_bytes()
    part = run_study(STUDY, output=out, runs_dir=runs, rows=["none", "token"], seeds=[0], **toy)
    assert (runs / "teacher-cnn-s0" / "model.safetensors").read_bytes() == teacher_weights
    assert sorted(p.name for p in runs.iterdir()) == ["none-s0", "teacher-cnn-s0", "token-s0"]
    assert {k: len(v["runs"]) for k, v in part["rows"].items()} == {"none": 1, "token": 1}
    capsys.readouterr()
    plan = dict(run_study(STUDY, output=out, runs_dir=runs, plan=True, **toy)["plan"])
    assert capsys.readouterr().out.count("\n") == len(plan) + 1 == 1 + 2 * len(study.rows) + 1
    assert plan["token-s0"] == f"recorded: top-1 {part['rows']['token']['runs'][0]['top1']:.2f} %"
    assert plan["none-s1"] == "to train" and plan["teacher-cnn-s0"].startswith("recorded")
    other = dict(run_study(STUDY, output=out, runs_dir=runs, plan=True, **{**toy, "epochs": 3})["plan"])
    assert other["none-s0"] == "to train: recorded with other settings (epochs: 2 -> 3)"
    first = run_study(STUDY, output=out, runs_dir=runs, **toy)
    assert all(len(first["rows"][r.key]["runs"]) == 2 for r in study.rows)
    assert set(first["teachers"]) == {"teacher-cnn", "none", "teacher-cnn-matched"}
    matched = first["teachers"]["teacher-cnn-matched"]
    assert matched["epoch"] in (1, 2) and matched["target"] == "none"
    token_config = json.loads((runs / "token-cnn-matched-s1" / "config.json").read_text())["train"]
    assert token_config["teacher"] == "resnet8_tiny"
    assert token_config["teacher_weights"].endswith(epoch_checkpoint(matched["epoch"]))
    vit_config = json.loads((runs / "token-vit-teacher-s0" / "config.json").read_text())["train"]
    assert vit_config["teacher"] == str(runs / "none-s0") and vit_config["canvas"] == 40
    readme = (out / "README.md").read_text()
    for heading in ("## Table 3", "## Table 2", "## Table 4", "## Cosine similarity", "## Targets"):
        assert heading in readme
    assert "selection on the test set" in readme
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["token_cosine"]["cosine"]) == 1 + 6 and saved["token_cosine"]["layers"][0] == "input"
    assert len(saved["disagreement"]) == 10
    assert [r["top1"] for r in saved["rows"]["none"]["runs"]] == [r["top1"] for r in first["rows"]["none"]["runs"]]
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    commands = (out / "commands.txt").read_text().splitlines()
    assert len(commands) == 1 + len(study.rows) * 2 == len(set(commands))
    assert all("--canvas 40 --subset-seed 0" in c or "--subset-seed 0 --canvas 40" in c for c in commands)
    teacher_command = next(c for c in commands if c.endswith("teacher-cnn-s0"))
    assert "--keep-checkpoints" in teacher_command and "--eval-every 1 " in teacher_command
    # deit analyze sees the test images on their canvas, as the run was evaluated
    (analyzed,) = prepare_runs([runs / "token-s0"], data_dir=fmnist_dir, max_val=20)
    config = TrainConfig.from_dict(json.loads((runs / "token-s0" / "config.json").read_text())["train"])
    assert torch.equal(analyzed.val.images, load_split(config, "val").images[:20])
    capsys.readouterr()
    second = run_study(STUDY, output=out, runs_dir=runs, **toy)
    assert capsys.readouterr().out.count("reusing the recorded run") == len(commands)
    assert second["table"] == first["table"]
    # A new machine (runs/ gone) where one run was not recorded: its teacher is trained again (same seed, same
    # settings: the same weights), its target row's record gives the accuracy to match, nothing else is trained.
    shutil.rmtree(runs)
    saved = json.loads((out / "results.json").read_text())
    del saved["records"]["token-cnn-matched-s1"]
    (out / "results.json").write_text(json.dumps(saved))
    third = run_study(STUDY, output=out, runs_dir=runs, **toy)
    assert sorted(p.name for p in runs.iterdir()) == ["teacher-cnn-s0", "token-cnn-matched-s1"]
    heads = ("top1", "top1_cls", "top1_dist")
    again, before = (r["rows"]["token-cnn-matched"]["runs"][1] for r in (third, first))
    assert [again[k] for k in heads] == [before[k] for k in heads]
    assert third["table"] == first["table"]


def _records(state: StudyRun, runs: dict[str, float], teacher_top1: float = 88.0) -> dict[str, dict]:
    """Records of `runs` (name -> top-1) with the study's current settings, as results.json keeps them; a
    distilled student's record names its teacher's test top-1 when it was distilled."""
    rows = {r.key: r for r in state.study.teachers + state.study.rows}
    records = {}
    for name, top1 in runs.items():
        key, _, seed = name.rpartition("-s")
        row = rows[key]
        metrics = {"top1": top1, "top1_cls": top1, "top1_dist": top1} if "distilled" in row.options.get("model", "") \
            else {"top1": top1}
        records[name] = {"fingerprint": state.settings(row, int(seed)), "command": f"deit train {name}",
                         "metrics": metrics, "teacher": {"label": "t", "top1": teacher_top1, "params": 1}
                         if row.teacher else None}
    return records


def test_a_partial_study_shows_every_recorded_run_while_the_first_new_one_trains(tmp_path, monkeypatch):
    """A study takes several sessions: its README shows every recorded run as soon as the call starts, not only
    those the schedule reaches before the run it is training (none, token, then hard, soft, ...)."""
    state = StudyRun(STUDIES[STUDY], tmp_path, tmp_path / "runs", {})
    records = _records(state, {"teacher-cnn-s0": 88.0, "none-s0": 70.0, "token-s0": 72.0, "none-s1": 71.0,
                               "hard-s1": 73.0})
    (tmp_path / "results.json").write_text(json.dumps({"records": records}))

    def no_training(self, row, seed, settings):
        raise RuntimeError(f"would train {row.key}-s{seed}")

    monkeypatch.setattr(StudyRun, "train", no_training)
    with pytest.raises(RuntimeError, match="would train token-s1"):  # the first unrecorded run of the schedule
        run_study(STUDY, output=tmp_path, runs_dir=tmp_path / "runs")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {key: entry["seeds"] for key, entry in saved["rows"].items()} == {"none": [0, 1], "token": [0], "hard": [1]}
    assert [r["top1"] for r in saved["rows"]["none"]["runs"]] == [70.0, 71.0]
    readme = (tmp_path / "README.md").read_text()
    assert "Partial: 4 of 12" in readme and "| no distillation | 70.50 ± 0.71 |" in readme


def test_plan_names_students_taught_by_an_earlier_training_of_their_teacher(tmp_path, capsys):
    """A teacher trained again (its weights were gone) has a new record; the students distilled from the earlier
    training are named by --plan, with both accuracies, so that a study can train them again."""
    state = StudyRun(STUDIES[STUDY], tmp_path, tmp_path / "runs", {})
    records = {**_records(state, {"teacher-cnn-s0": 88.0, "none-s0": 70.0, "token-s0": 72.0}),
               **_records(state, {"hard-s0": 73.0}, teacher_top1=88.17)}
    (tmp_path / "results.json").write_text(json.dumps({"records": records}))
    plan = dict(run_study(STUDY, output=tmp_path, runs_dir=tmp_path / "runs", plan=True)["plan"])
    assert plan["hard-s0"].endswith("taught by an earlier training of teacher-cnn-s0 (test top-1 88.17 %, now "
                                    "88.00 %): remove its record to train it again with the current one")
    assert "earlier" not in plan["token-s0"] and "earlier" not in plan["none-s0"]
