"""Reliability on real Fashion-MNIST images: nothing the project reads runs code; a run killed at any moment
resumes to the uninterrupted run's weights; a full disk or a numerical fault stops the run (or skips the step)
without overwriting a good checkpoint; bad input is one line before any work. docs/reliability.md lists every
case with the test here that covers it.

The runs train on a folder of 200 Fashion-MNIST images (4 classes) and evaluate on 100, so that a whole run,
evaluation included, takes seconds."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deit import faults
from deit.checkpoint import load_checkpoint, save_model
from deit.cli import main as cli_main
from deit.config import preset_config
from deit.engine import fit
from deit.engine.run_dir import LOCK, STOPS, RunLock, RunWriter, read_log
from deit.engine.state_file import FORMAT, decode_state, read_state, save_state
from deit.models import create_model

# 5 steps an epoch; the stochastic parts on (Mixup/CutMix, erasing, drop path) and an EMA, as in a real recipe.
RUN = dict(epochs=2, batch_size=40, warmup_epochs=0.5, eval_every=1, progress=False, threads=1, precision="fp32",
           device="cpu", deterministic=True, ema=True, ema_decay=0.9, drop_path=0.1, reprob=0.25, img_size=28,
           cache_images=True)
TIMING = ("images_per_s", "data_wait_fraction", "epoch_time_s")


@pytest.fixture(autouse=True)
def no_fault(monkeypatch):
    monkeypatch.delenv("DEIT_FAULT", raising=False)
    faults.reset()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, fmnist_dir) -> Path:
    """train: 50 images of each of 4 classes; val: 25 of each (PNG files of the Fashion-MNIST test set)."""
    from PIL import Image

    from deit.data import load_data

    root = tmp_path_factory.mktemp("fmnist_png")
    source = load_data("fashion-mnist", "val", data_dir=fmnist_dir)
    for split, (start, stop) in {"train": (0, 50), "val": (50, 75)}.items():
        for label in range(4):
            (root / split / f"class{label}").mkdir(parents=True)
            for i in (source.labels == label).nonzero().flatten()[start:stop].tolist():
                Image.fromarray(source.images[i, 0].numpy(), mode="L").save(root / split / f"class{label}" / f"{i}.png")
    return root


def config(folder, output, **overrides):
    return preset_config("fmnist-cpu", **{**RUN, "data": f"imagefolder:{folder}", "output": str(output), **overrides})


def train_args(folder, output, **overrides) -> list[str]:
    flags = {**RUN, "data": f"imagefolder:{folder}", "output": str(output), **overrides}
    args = ["train", "--preset", "fmnist-cpu"]
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return args


def deit_process(args: list[str], fault: str | None = None, env: dict | None = None,
                 own_session: bool = False) -> subprocess.CompletedProcess:
    """`deit ARGS` in a subprocess; own_session: in its own process group (a signal to the group stays there)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("DEIT_FAULT", None)
    if fault:
        env["DEIT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "deit", *args], capture_output=True, text=True, env=env, timeout=600,
                          start_new_session=own_session)


def forked_deit(args: list[str], fault: str) -> subprocess.CompletedProcess:
    """`deit ARGS` with DEIT_FAULT=fault in a fork of this process: a process of its own (a kill -9 ends it alone)
    without a new interpreter's imports of torch and deit (~6 s each here). returncode -N: ended by signal N."""
    with tempfile.TemporaryFile("w+") as out:
        pid = os.fork()
        if pid == 0:  # the child: cli_main, then out without running this process's exit handlers (pytest's)
            code = 1
            try:
                sys.stdout = sys.stderr = out
                os.environ["DEIT_FAULT"] = fault
                faults.reset()
                code = cli_main(args)
            except BaseException:
                traceback.print_exc(file=out)
            finally:
                out.flush()
                os._exit(code)
        deadline = time.monotonic() + 600  # deit_process's timeout: a child that hangs fails the test
        while not (ended := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(args, 600)
            time.sleep(0.05)
        out.seek(0)
        text = out.read()
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(ended[1]), text, text)


def log_rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "log.jsonl").read_text().splitlines()]


def assert_same_run(run: Path, reference: Path) -> None:
    """The same weights (model, best, EMA: bit for bit), the same log, and no temporary files left."""
    for name in ("model", "best", "ema"):
        a, b = load_file(str(run / f"{name}.safetensors")), load_file(str(reference / f"{name}.safetensors"))
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert log_rows(run) == log_rows(reference)
    assert not list(run.glob(".*.tmp"))


def assert_loadable(run: Path) -> dict:
    """What a crash left: a state.pt that loads (weights_only) and weights files that load, none half-written."""
    state = read_state(run / "state.pt")
    for weights in run.glob("*.safetensors"):
        load_checkpoint(weights, create_model("deit_mini_distilled_patch7_28", num_classes=4, in_chans=1))
    return state


def digests(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory) -> Path:
    """The uninterrupted 2-epoch run that every interrupted one must end equal to."""
    return fit(config(folder, tmp_path_factory.mktemp("ref") / "run")).output


@pytest.fixture(scope="module")
def one_epoch(folder, tmp_path_factory) -> dict[str, Path]:
    """A 1-epoch run, whole and stopped after 4 of its 5 steps (the numerical faults' references)."""
    tmp = tmp_path_factory.mktemp("one")
    whole = fit(config(folder, tmp / "whole", epochs=1)).output
    stopped = fit(config(folder, tmp / "stopped", epochs=1), stop_after_steps=4).output
    return {"whole": whole, "stopped": stopped}


# ------------------------------------------------------------------------------------- no code from files
def test_state_loads_with_weights_only_and_holds_no_pickled_objects(one_epoch):
    state = torch.load(one_epoch["stopped"] / "state.pt", weights_only=True)  # no globals allowed at all
    assert state["format"] == FORMAT and state["step"] == 4 and state["ema"] is not None
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


def test_old_state_with_numpy_rng_still_resumes_exactly(one_epoch, folder, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(one_epoch["stopped"], run)
    # Format 1, as the earlier writer made it: torch.save of the raw states (numpy's holds an ndarray).
    raw = decode_state(read_state(run / "state.pt"))
    raw.pop("format")
    torch.save(raw, run / "state.pt")
    with pytest.raises(Exception, match="numpy"):
        torch.load(run / "state.pt", weights_only=True)  # it needs numpy's globals: read with exactly those
    assert cli_main(["train", "--resume", str(run)]) == 0
    whole = load_file(str(one_epoch["whole"] / "model.safetensors"))
    resumed = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


class Payload:
    """Unpickling this runs a shell command that creates the marker file: a loader that executes pickles is
    caught by the marker's presence."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_state_pt_is_refused_and_its_payload_never_runs(one_epoch, tmp_path, capsys):
    run = tmp_path / "evil"
    shutil.copytree(one_epoch["stopped"], run)
    marker = tmp_path / "ran"
    state = torch.load(run / "state.pt", weights_only=True)
    state["rng"] = Payload(marker)
    torch.save(state, run / "state.pt")
    before = digests(run)
    assert cli_main(["train", "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert "state.pt holds pickled code (it calls posix.system); refused, nothing in it was run" in line
    assert not marker.exists() and digests(run) == before


def test_crafted_teacher_weights_and_fake_safetensors_are_refused(folder, one_epoch, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "teacher.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Payload(marker)}, evil)
    code = cli_main(train_args(folder, tmp_path / "s", teacher="resnet8_tiny", teacher_weights=str(evil),
                               distillation="hard"))
    assert code == 2 and "teacher.pth holds pickled code (it calls posix.system)" in one_error_line(capsys)
    assert not (tmp_path / "s").exists()
    # A pickle under a weights file's name: never read as a pickle.
    run = tmp_path / "fake"
    shutil.copytree(one_epoch["whole"], run)
    torch.save({"model": Payload(marker)}, run / "model.safetensors")
    assert cli_main(["eval", "--checkpoint", str(run)]) == 2
    assert "model.safetensors is not a safetensors file" in one_error_line(capsys)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- crash safety
KILLS = {  # moment -> DEIT_FAULT (5 steps an epoch; a checkpoint: best, log, model, ema, state in this order)
    "during an epoch": "step:step=7:kill",
    "during evaluation": "eval:step=5:kill",
    "writing best.safetensors": "write:file=best.safetensors:kill",
    "writing log.jsonl": "write:file=log.jsonl:kill",
    "writing model.safetensors": "write:file=model.safetensors:kill",
    "writing ema.safetensors": "write:file=ema.safetensors:kill",
    "writing state.pt": "write:file=state.pt:hit=2:kill",  # 1: at the start
    "between log.jsonl and model.safetensors": "saved:file=log.jsonl:kill",
    "between ema.safetensors and state.pt": "saved:file=ema.safetensors:kill",
}


@pytest.mark.parametrize("moment", list(KILLS))
def test_kill_9_at_any_moment_then_resume_equals_the_uninterrupted_run(moment, folder, reference, tmp_path):
    run = tmp_path / "run"
    killed = forked_deit(train_args(folder, run), fault=KILLS[moment])
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL at that moment, not a normal end
    assert not (run / "metrics.json").exists()
    assert_loadable(run)
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert_same_run(run, reference)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint_and_says_so(folder, reference, tmp_path, capsys,
                                                                          monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("DEIT_FAULT", "write:file=state.pt:hit=2:enospc")  # the save after epoch 1
    assert cli_main(train_args(folder, run)) == 1
    line = one_error_line(capsys)
    assert f"could not write {run / 'state.pt'}: No space left on device" in line
    assert line.endswith("the previous state.pt is intact")
    assert read_state(run / "state.pt")["step"] == 0 and not list(run.glob(".*.tmp"))
    monkeypatch.delenv("DEIT_FAULT")
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert_same_run(run, reference)


def test_full_disk_writing_weights_leaves_the_previous_weights(folder, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("DEIT_FAULT", "write:file=model.safetensors:hit=2:enospc")  # epoch 2's weights
    assert cli_main(train_args(folder, run)) == 1
    assert "the previous model.safetensors is intact" in one_error_line(capsys)
    state = read_state(run / "state.pt")
    assert state["epoch"] == 1
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)  # epoch 1's, whole


# ------------------------------------------------------------------------- preemption, requeue, one writer
def fake_scontrol(tmp_path: Path) -> tuple[dict, Path]:
    """A SLURM job's environment with an `scontrol` on PATH that records its arguments (one call a line)."""
    calls, bin_dir = tmp_path / "scontrol-calls", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}, calls


def test_sigterm_saves_at_the_next_step_requeues_and_the_same_command_finishes_identically(
        folder, reference, tmp_path, capsys, monkeypatch):
    """SIGTERM to every process of the job (DataLoader workers too) at step 3: the state is saved after that step,
    exit 75, the SLURM job requeued; the same command line, run again, stops once more (no requeue past
    --max-requeues), then ends with the uninterrupted run's weights, EMA and log, and once finished does nothing."""
    run = tmp_path / "run"
    slurm, calls = fake_scontrol(tmp_path)
    args = train_args(folder, run, num_workers=1, requeue_on_signal=True, max_requeues=1) + ["--resume", "auto"]
    stopped = deit_process(args, fault="step:step=3:term-group", env=slurm, own_session=True)
    ended = time.time()
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    assert "stopped by SIGTERM at epoch 1, batch 4 of 5 (step 4); state saved" in stopped.stdout
    assert "SLURM job 4242 requeued (1 of at most 1)" in stopped.stdout
    assert calls.read_text() == "requeue 4242\n"
    (row,) = read_log(run, STOPS)
    assert row["requeued"] and row["step"] == 4 and ended - row["signal_time"] < 10  # signal to exit
    state = read_state(run / "state.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (0, 4, 4)
    assert not (run / LOCK).exists()  # released on the way out

    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEIT_FAULT", "step:step=6:term")  # a second stop, in epoch 2
    assert cli_main(args) == 75
    out = capsys.readouterr().out
    assert "resuming" in out and "at epoch 1, batch 4 (step 4)" in out
    assert "stopped by SIGTERM at epoch 2, batch 2 of 5 (step 7)" in out
    assert "not requeued: the run was requeued 1 times already (--max-requeues 1)" in out
    assert calls.read_text() == "requeue 4242\n"  # not called again
    monkeypatch.delenv("DEIT_FAULT")
    assert cli_main(args) == 0
    assert_same_run(run, reference)
    assert [r["requeued"] for r in read_log(run, STOPS)] == [True, False]
    before = digests(run)
    assert cli_main(args) == 0  # requeued once more after the end: nothing to do, nothing changed
    assert "is finished; nothing to do" in capsys.readouterr().out and digests(run) == before


def test_a_second_signal_during_the_save_ends_the_process_and_corrupts_nothing(folder, reference, tmp_path, capsys):
    """The first SIGTERM asks for a save; a second one while state.pt is being written ends the process there (as
    without a handler): the previous state.pt stands, and the lock it left is taken over by the next attempt."""
    run = tmp_path / "run"
    args = train_args(folder, run) + ["--resume", "auto"]
    killed = forked_deit(args, fault="step:step=3:term,write:file=state.pt:hit=2:term")
    assert killed.returncode == -signal.SIGTERM, killed.stderr[-2000:]
    assert read_state(run / "state.pt")["step"] == 0 and (run / LOCK).exists()
    assert_loadable(run)
    assert cli_main(args) == 0
    assert "took over the lock of" in capsys.readouterr().out
    assert_same_run(run, reference)


HOLD_LOCK = """
import sys, time
from deit.engine.run_dir import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(folder, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for extra in ([], ["--resume", "auto"]):
            assert cli_main(train_args(folder, run) + extra) == 2
            line = one_error_line(capsys)
            assert f"{run} is being written by pid {holder.pid} on {socket.gethostname()} since " in line, line
        assert sorted(p.name for p in run.iterdir()) == [LOCK]  # the refused runs wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert (run / LOCK).exists()  # what kill -9 left; the kernel released its flock
    with RunLock(run) as lock:
        assert lock.taken_over["pid"] == holder.pid
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    assert not (run / LOCK).exists()


def test_resume_auto_refuses_other_settings_in_one_line_and_needs_an_output(one_epoch, folder, tmp_path, capsys):
    run = _copy_run(one_epoch["stopped"], tmp_path)
    before = digests(run)
    assert cli_main(train_args(folder, run, epochs=1, lr=0.01) + ["--resume", "auto"]) == 2
    line = one_error_line(capsys)
    assert "holds a run of other settings: --lr 0.01 (the run has 0.0056); --resume auto continues only" in line
    assert digests(run) == before
    args = train_args(folder, run, epochs=1)
    output = args.index("--output")
    assert cli_main(args[:output] + args[output + 2:] + ["--resume", "auto"]) == 2
    assert "--resume auto needs --output RUN" in one_error_line(capsys)


def test_the_log_holds_each_epoch_once_whichever_attempt_wrote_it(tmp_path):
    """Seen: the workers of a torchrun killed with -9 live on and finish the run while a resumed process
    trains it too (the lock now refuses the second); whatever the path, a row replaces the rows of its epoch and
    later ones (an abandoned attempt's)."""
    writer = RunWriter(tmp_path)
    for epoch in (1, 2, 3):
        writer.log({"epoch": epoch, "train_loss": 1.0})
    writer.log({"epoch": 3, "train_loss": 0.5})
    assert [(r["epoch"], r["train_loss"]) for r in read_log(tmp_path)] == [(1, 1.0), (2, 1.0), (3, 0.5)]
    writer.log({"epoch": 2, "train_loss": 0.25})
    assert [(r["epoch"], r["train_loss"]) for r in read_log(tmp_path)] == [(1, 1.0), (2, 0.25)]


# ------------------------------------------------------------------------------------- numerical faults
@pytest.mark.parametrize("what", ["loss", "grad"])
def test_a_non_finite_loss_or_gradient_stops_naming_the_step(what, folder, one_epoch, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("DEIT_FAULT", f"poison:what={what}:step=4:nan")
    assert cli_main(train_args(folder, run, epochs=1)) == 1
    name = {"loss": "the loss", "grad": "the gradient"}[what]
    assert f"{name} is not finite at step 4; state saved to {run}" in one_error_line(capsys)
    # The state saved holds the weights before that step: those of the run stopped after 4 steps.
    saved, stopped = read_state(run / "state.pt"), read_state(one_epoch["stopped"] / "state.pt")
    assert saved["step"] == 4
    assert all(torch.equal(saved["model"][k], stopped["model"][k]) for k in stopped["model"])


def test_skip_nonfinite_skips_the_step_and_counts_it(folder, one_epoch, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("DEIT_FAULT", "poison:what=grad:step=4:nan")  # the epoch's last step
    fit(config(folder, run, epochs=1, skip_nonfinite=True))
    (row,) = log_rows(run)
    assert row["skipped_steps"] == 1 and row["step"] == 5
    # Skipped: the weights and the EMA stay those after 4 steps.
    stopped = read_state(one_epoch["stopped"] / "state.pt")
    for name, key in (("model", "model"), ("ema", "ema")):
        weights = load_file(str(run / f"{name}.safetensors"))
        expected = {k.removeprefix("module."): v for k, v in stopped[key].items()}
        assert all(torch.equal(weights[k], expected[k]) for k in weights), name


@pytest.mark.parametrize("what, label", [("weights", "the weights"), ("ema", "the EMA weights")])
def test_nan_weights_never_overwrite_a_good_checkpoint(what, label, folder, one_epoch, tmp_path, capsys,
                                                      monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("DEIT_FAULT", f"poison:what={what}:step=5:nan")  # poisoned by the 5th step
    assert cli_main(train_args(folder, run, epochs=1, save_every_minutes=0)) == 1  # saving after every step
    assert f"{label} are not finite at step 5; nothing saved" in one_error_line(capsys)
    saved, stopped = read_state(run / "state.pt"), read_state(one_epoch["stopped"] / "state.pt")
    assert saved["step"] == 4  # the last good state, not overwritten
    for key in ("model", "ema"):
        assert all(torch.isfinite(v).all() for v in saved[key].values() if v.is_floating_point())
        assert all(torch.equal(saved[key][k], stopped[key][k]) for k in stopped[key]), key
    assert not (run / "model.safetensors").exists() and not (run / "log.jsonl").exists()


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags, message", [
    ({"model": "no_such_model"}, "unknown model 'no_such_model'"),
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"epochs": -3}, "epochs must be >= 1, got -3"),
    ({"batch_size": 400}, "--batch-size 400 is larger than the 200 training images: use --batch-size 200 or less"),
    ({"img_size": 30}, "img_size 30x30 is not a multiple of patch_size 7"),
])
def test_bad_training_input_is_one_line_and_writes_nothing(flags, message, folder, tmp_path, capsys):
    assert cli_main(train_args(folder, tmp_path / "run", **flags)) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_unknown_preset_is_refused_by_the_parser(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", "--preset", "imagenet-1000-epochs", "--output", str(tmp_path / "run")])
    assert exit_.value.code == 2 and "invalid choice: 'imagenet-1000-epochs'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unwritable_output_directory_is_refused_before_any_work(folder, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert cli_main(train_args(folder, tmp_path / "a_file" / "run")) == 2
    assert f"{tmp_path / 'a_file'} is a file, not a directory; choose another --output" in one_error_line(capsys)
    # A directory no one may write in (root ignores permission bits; /sys refuses even root).
    assert cli_main(train_args(folder, "/sys/deit-run")) == 2
    assert "cannot write in /sys (Permission denied); choose another --output" in one_error_line(capsys)


def _copy_run(source: Path, tmp_path: Path) -> Path:
    run = tmp_path / "copy"
    shutil.copytree(source, run)
    return run


def test_resume_from_another_version_is_refused_with_the_run_intact(one_epoch, tmp_path, capsys):
    run = _copy_run(one_epoch["stopped"], tmp_path)
    saved = json.loads((run / "config.json").read_text())
    saved["train"]["future_option"] = 1
    (run / "config.json").write_text(json.dumps(saved))
    before = digests(run)
    assert cli_main(["train", "--resume", str(run)]) == 2
    assert "cannot be resumed by this version of deit: unknown training option(s): future_option" in \
        one_error_line(capsys)
    # A state.pt of a newer format.
    shutil.copy(one_epoch["stopped"] / "config.json", run / "config.json")
    state = torch.load(run / "state.pt", weights_only=True)
    torch.save(dict(state, format=FORMAT + 1), run / "state.pt")
    before = digests(run)
    assert cli_main(["train", "--resume", str(run)]) == 2
    assert f"was written by a newer deit (state format {FORMAT + 1}" in one_error_line(capsys)
    assert digests(run) == before


def test_resume_from_another_model_is_refused_with_the_run_intact(one_epoch, tmp_path, capsys):
    run = _copy_run(one_epoch["stopped"], tmp_path)
    before = digests(run)
    assert cli_main(["train", "--resume", str(run), "--model", "deit_micro_distilled_patch4_28"]) == 2
    assert "--model (the run has 'deit_mini_distilled_patch7_28') cannot change on --resume" in one_error_line(capsys)
    assert digests(run) == before
    # A state.pt of another model's run, copied in.
    state = read_state(run / "state.pt")
    state["model"] = create_model("deit_micro_distilled_patch4_28", num_classes=4, in_chans=1).state_dict()
    save_state(state, run / "state.pt")
    before = digests(run)
    assert cli_main(["train", "--resume", str(run)]) == 2
    assert "state.pt holds weights of another model than this run's deit_mini_distilled_patch7_28" in \
        one_error_line(capsys)
    assert digests(run) == before


# A teacher at another resolution is resized to its own, by design (tests/test_finetune.py).
@pytest.mark.parametrize("teacher, message", [
    (("resnet8_tiny", dict(num_classes=10, in_chans=1)), "teacher predicts 10 classes but the data has 4"),
    (("resnet8_tiny", dict(num_classes=4, in_chans=3)), "teacher takes 3-channel images but the data has 1"),
])
def test_a_teacher_that_does_not_fit_is_one_line_before_training(teacher, message, folder, tmp_path, capsys):
    name, shape = teacher
    save_model(create_model(name, **shape), tmp_path / "teacher", name=name)
    assert cli_main(train_args(folder, tmp_path / "run", teacher=str(tmp_path / "teacher"),
                               distillation="hard")) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "run").exists()
