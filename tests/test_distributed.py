"""torchrun with gloo: 2 CPU processes against a single-process run of the same global batch, on real
Fashion-MNIST. Randomness other than the data order is off (no Mixup, augmentation or stochastic depth), so
the two differ only by the order of the gradient all-reduce's additions: weights within WEIGHT_TOL."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deit.config import preset_config
from deit.data import load_data, make_loader
from deit.engine import evaluate_run, fit

from conftest import write_fashion_mnist

VAL_IMAGES = 2001  # odd: the 2 ranks' evaluation shards differ in length (1,001 and 1,000 images)
WEIGHT_TOL = 1e-4  # measured: 9e-6 after 8 steps (fp32, float addition order of the all-reduce)
FLAGS = dict(epochs=2, batch_size=32, train_subset=256, warmup_epochs=0.5, mixup=0.0, cutmix=0.0, drop_path=0.0,
             eval_every=100, progress=False, precision="fp32", device="cpu", seed=3)


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory, fmnist_dir) -> str:
    """Every run here (2 processes each under torchrun) reads the whole training split and evaluates on the first
    VAL_IMAGES test images: what is compared is the runs with each other, not their accuracy on all 10,000."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion-mnist"), VAL_IMAGES)


def train_args(fmnist_dir, output, **extra) -> list[str]:
    flags = {**FLAGS, "data_dir": fmnist_dir, "output": str(output), **extra}
    args = ["train", "--preset", "fmnist-cpu"]
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [f"--no-{key.replace('_', '-')}"] if value is False else [flag, str(value)]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(program: list[str], nproc: int = 2, env: dict | None = None, timeout: int = 300, restarts: int = 0):
    """torchrun of program (["-m", "deit", ...] or [script, ...]) on loopback; restarts: --max-restarts, with the
    c10d rendezvous that torchrun's documentation recommends for elastic jobs."""
    port = str(free_port())
    rendezvous = (["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--max-restarts", str(restarts)]
                  if restarts else ["--master-addr", "127.0.0.1", "--master-port", port])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), *rendezvous, *program]
    # faulthandler: a rank that dies by a signal prints every thread's Python stack (where it was).
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **(env or {})})


def torchrun(args: list[str], nproc: int = 2, env: dict | None = None, timeout: int = 300, restarts: int = 0):
    return launch(["-m", "deit", *args], nproc, env, timeout, restarts)


def failure(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-4000:]}"


def single(fmnist_dir, output, resume=None, stop=None):
    config = preset_config("fmnist-cpu", **{**FLAGS, "data_dir": fmnist_dir, "output": str(output), "threads": 1})
    return fit(None if resume else config, resume=resume, stop_after_steps=stop)


def weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# `deit train ARGS[1:]` under torchrun, then each rank writes the names of its threads to ARGS[0]-threads-RANK.json
THREADS_AFTER_FIT = """
import json, os, sys
from deit.cli import main
code = main(sys.argv[2:])
if os.path.isdir("/proc/self/task"):
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    with open(sys.argv[1] + f"-threads-{os.environ['RANK']}.json", "w") as f:
        json.dump(names, f)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist_dir):
    """The 2-process run (its ranks list their threads after fit) and the 1-process run of the same global batch."""
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "train_then_list_threads.py"
    script.write_text(THREADS_AFTER_FIT)
    result = launch([str(script), str(tmp / "two"), *train_args(fmnist_dir, tmp / "two")])
    assert result.returncode == 0, failure(result)
    single(fmnist_dir, tmp / "one")
    return tmp


def test_two_ranks_equal_one_process_at_the_same_global_batch(runs):
    assert max_diff(weights(runs / "one"), weights(runs / "two")) < WEIGHT_TOL
    one = json.loads((runs / "one" / "metrics.json").read_text())
    two = json.loads((runs / "two" / "metrics.json").read_text())
    assert one["top1"] == two["top1"] and one["num_images"] == two["num_images"] == VAL_IMAGES
    log_one = [json.loads(line) for line in (runs / "one" / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (runs / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_one] == [r["step"] for r in log_two] == [8, 16]  # 256 images / 32 a step
    for a, b in zip(log_one, log_two):  # the logged loss is the global batch's, averaged over the ranks
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    config = json.loads((runs / "two" / "config.json").read_text())
    assert config["world_size"] == 2 and config["train"]["batch_size"] == 32


def test_two_ranks_accumulating_micro_batches_equal_one_process(runs, fmnist_dir):
    """Each rank's 16 images of the global 32 as 2 micro-batches of 8, gradients all-reduced once a step (DDP's
    no_sync before the last micro-batch; reduced on the wrong one, the ranks' weights would part): still the
    single process's run."""
    result = torchrun(train_args(fmnist_dir, runs / "two-accum", accum_steps=2))
    assert result.returncode == 0, failure(result)
    assert max_diff(weights(runs / "one"), weights(runs / "two-accum")) < WEIGHT_TOL
    assert "8 steps an epoch (each 2 micro-batches of 8 a process)" in result.stdout
    config = json.loads((runs / "two-accum" / "config.json").read_text())
    assert config["world_size"] == 2 and config["train"]["accum_steps"] == 2


def test_sharded_evaluation_equals_a_single_process_evaluation(runs, fmnist_dir):
    two = json.loads((runs / "two" / "metrics.json").read_text())
    again = evaluate_run(runs / "two", device="cpu", precision="fp32")
    for key in ("top1", "top1_cls", "top1_dist", "top5", "num_images"):
        assert two[key] == again[key], key
    assert two["loss"] == pytest.approx(again["loss"], abs=1e-6)


def image_keys(x: torch.Tensor) -> list[bytes]:
    return sorted(img.numpy().tobytes() for img in x)


@pytest.mark.parametrize("repeats", [1, 3])
def test_rank_shards_are_disjoint_and_make_up_the_global_batch(fmnist_dir, repeats):
    data = load_data("fashion-mnist", "train", data_dir=fmnist_dir).subset(torch.arange(96))
    kwargs = dict(train=True, repeats=repeats, seed=5)
    whole = make_loader(data, 24, **kwargs)
    shards = [make_loader(data, 12, world_size=2, rank=r, **kwargs) for r in (0, 1)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 4
    for epoch in (0, 1):
        for loader in (whole, *shards):
            loader.set_epoch(epoch)
        for (xw, _), (x0, _), (x1, _) in zip(whole, *shards):
            assert image_keys(torch.cat([x0, x1])) == image_keys(xw)  # the global batch, split
            if repeats == 1:  # with repeats, an image's copies go to different ranks, as RASampler does
                assert not set(image_keys(x0)) & set(image_keys(x1))


def test_resume_with_two_ranks_is_bit_exact_and_with_one_close(runs, fmnist_dir):
    stopped = torchrun(train_args(fmnist_dir, runs / "split") + ["--stop-after-steps", "5"])
    assert stopped.returncode == 0, failure(stopped)
    assert "continue with: deit train --resume" in stopped.stdout
    shutil.copytree(runs / "split", runs / "split1")  # the same stopped run, to be continued by 1 process
    resumed = torchrun(["train", "--resume", str(runs / "split")])
    assert resumed.returncode == 0, failure(resumed)
    assert max_diff(weights(runs / "split"), weights(runs / "two")) == 0.0
    # Saved by 2 ranks, continued by 1 process: the same run, up to the all-reduce's rounding.
    single(fmnist_dir, runs / "split1", resume=runs / "split1")
    assert max_diff(weights(runs / "split1"), weights(runs / "one")) < WEIGHT_TOL
    steps = [json.loads(line)["step"] for line in (runs / "split1" / "log.jsonl").read_text().splitlines()]
    assert steps == [8, 16]


TIMING = ("images_per_s", "data_wait_fraction", "epoch_time_s")


def test_torchrun_restarts_after_a_stop_signal_and_a_killed_rank_and_finishes_bit_exact(runs, fmnist_dir):
    """One command line, `--resume auto` under torchrun --max-restarts 2, no person: rank 1 gets SIGTERM during
    step 5 (every rank saves after step 6 and exits 75), then, in the first restart, rank 1 is killed -9 at step
    12 (the group goes back to the state after epoch 1); the second restart finishes the run with the weights,
    metrics and log of the uninterrupted 2-process run."""
    run = runs / "elastic"
    faults = "step:rank=1:step=5:restart=0:term,step:rank=1:step=12:restart=1:kill"
    result = torchrun(train_args(fmnist_dir, run) + ["--resume", "auto"], env={"DEIT_FAULT": faults},
                      restarts=2, timeout=400)
    assert result.returncode == 0, failure(result)
    assert "stopped by SIGTERM at epoch 1, batch 6 of 8 (step 6); state saved" in result.stdout
    assert "at epoch 1, batch 6 (step 6); torchrun restart 1" in result.stdout
    assert "at epoch 2, batch 0 (step 8); torchrun restart 2" in result.stdout
    assert max_diff(weights(run), weights(runs / "two")) == 0.0
    assert json.loads((run / "metrics.json").read_text())["top1"] == \
        json.loads((runs / "two" / "metrics.json").read_text())["top1"]
    rows = [[{k: v for k, v in json.loads(line).items() if k not in TIMING}
             for line in (r / "log.jsonl").read_text().splitlines()] for r in (run, runs / "two")]
    assert rows[0] == rows[1] and [r["epoch"] for r in rows[0]] == [1, 2]
    (stop,) = [json.loads(line) for line in (run / "stops.jsonl").read_text().splitlines()]
    assert stop["signal"] == "SIGTERM" and stop["step"] == 6 and stop["restart"] == 0


def test_a_failing_rank_ends_the_job_with_its_message(tmp_path, fmnist_dir):
    result = torchrun(train_args(fmnist_dir, tmp_path / "crash"), env={"DEIT_FAULT": "step:rank=1:step=2"},
                      timeout=240)
    assert result.returncode != 0
    assert "injected fault at step (rank=1, step=2)" in result.stderr
    assert not (tmp_path / "crash" / "metrics.json").exists()


def test_a_global_batch_that_does_not_divide_is_one_clear_line(tmp_path, fmnist_dir):
    result = torchrun(train_args(fmnist_dir, tmp_path / "odd", batch_size=33), timeout=240)
    assert result.returncode != 0
    assert "--batch-size 33 is the global batch and must divide evenly among 2 processes" in result.stderr
    assert not (tmp_path / "odd").exists()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads this process's threads from /proc")
def test_after_fit_the_process_group_is_freed_not_left_to_interpreter_shutdown(runs):
    """torch.distributed.nn.functional, imported by DDP after the group exists, would hold the group in its
    default arguments for good: gloo's threads would run into interpreter shutdown (where a rank once aborted
    in CI). After fit, no gloo thread is left."""
    for rank in (0, 1):
        threads = json.loads((runs / f"two-threads-{rank}.json").read_text())
        assert not [name for name in threads if "gloo" in name], (rank, threads)
