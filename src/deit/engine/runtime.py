"""Where a run executes: device, processes (torch.distributed), RNG state, the signals that ask it to stop, and
the cluster's requeue; with its precision (deit.engine.precision).

One seeding helper, one place that knows about ranks."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .precision import autocast, precision_name, resolve_precision


# ----------------------------------------------------------------------------------------------- device
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: this process's GPU (cuda:LOCAL_RANK under torchrun) when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


# ----------------------------------------------------------------------------------------------- randomness
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------- processes
@dataclass
class Runtime:
    """The execution context of one process of a run."""

    device: torch.device
    amp_dtype: Optional[torch.dtype]
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    stop_signal: int = 0  # the signal that asked this process to stop (0: none yet); see stop_on_signals
    stop_signal_time: Optional[float] = None

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Where collectives run: the GPU under NCCL, the CPU under gloo."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    @property
    def precision(self) -> str:
        return precision_name(self.amp_dtype)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """values summed (or their maximum taken) over all processes, in one small all-reduce."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return t.tolist()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true when it is true on any process, so that every process takes the same branch: stop
        on a non-finite loss, save now."""
        return [v > 0 for v in self.all_reduce([float(f) for f in flags], op="max")]

    def gather_objects(self, obj) -> list:
        """obj of every process, in rank order, on every process (small Python objects: RNG states)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self, wait_for_all: bool = False) -> None:
        """Leave the process group. wait_for_all (a run that ended normally): a barrier first, so that no
        process tears its connections down while another still has traffic on them. Never after an error:
        the other processes may not get there (torchrun stops them)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                if wait_for_all:
                    dist.barrier(device_ids=[self.local_rank] if self.device.type == "cuda" else None)
                dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- stopping
# The code a process exits with when a signal stopped it after saving the state: sysexits' EX_TEMPFAIL ("try
# again later"). Not 0, so that torchrun counts the worker as failed and restarts the group (--max-restarts) and a
# scheduler does not take the job for finished; not a signal's 128+N, so that a wrapper can tell "saved, run me
# again" from "killed".
STOP_EXIT_CODE = 75


def stop_signals(extra: Optional[str]) -> list[signal.Signals]:
    """SIGTERM (torchrun, SLURM, Kubernetes, spot notices), SIGINT (Ctrl-C) and `extra` (USR1 or USR2, e.g. SLURM's
    --signal=USR1@120)."""
    return [signal.SIGTERM, signal.SIGINT] + ([signal.Signals[f"SIG{extra}"]] if extra else [])


@contextlib.contextmanager
def stop_on_signals(rt: Runtime, extra: Optional[str]):
    """While the block runs, a stop signal only records itself on `rt` (the Trainer saves at its next step boundary
    and stops). A second one while the first is being handled acts as without this handler (the process ends
    at once; the atomic writes leave the last complete files). Only the main thread can take signals: from
    another, nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask_to_stop(signum, frame):
        if rt.stop_signal:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        rt.stop_signal, rt.stop_signal_time = signum, time.time()

    previous = {s: signal.signal(s, ask_to_stop) for s in stop_signals(extra)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def requeue_slurm_job(requeued_before: int, cap: int) -> tuple[bool, str]:
    """`scontrol requeue $SLURM_JOB_ID` (the job goes back to the queue and re-runs its script), unless not under
    SLURM or `cap` requeues were made already. (requeued, what happened in words)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False, "not requeued: not a SLURM job (SLURM_JOB_ID is not set)"
    if requeued_before >= cap:
        return False, f"not requeued: the run was requeued {requeued_before} times already (--max-requeues {cap})"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"not requeued: scontrol requeue {job} failed ({e})"
    if done.returncode != 0:
        return False, f"not requeued: scontrol requeue {job} failed: {(done.stderr or done.stdout).strip()[:200]}"
    return True, f"SLURM job {job} requeued ({requeued_before + 1} of at most {cap})"


def launched_ranks() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) as torchrun (or any launcher setting its variables) gives them."""
    env = os.environ
    return int(env.get("WORLD_SIZE", 1)), int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0))


def _restart_store(timeout) -> Optional["torch.distributed.Store"]:
    """Under torchrun, the store its agent serves, with keys of this restart's own (None elsewhere: env://). The
    agent keeps one store server across --max-restarts, and the process group's keys (gloo's peer addresses) have
    the same names in every attempt: a restarted rank could read its peer's address of the attempt before and wait
    on a dead port (seen here: both ranks of a restart stuck in gloo's connectFullMesh)."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    import torch.distributed as dist

    agent = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"deit/restart_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent)


def setup_runtime(device: str = "auto", precision: str = "auto", threads: Optional[int] = None,
                  deterministic: bool = False) -> Runtime:
    """Configure this process (threads, determinism, the process group under torchrun) and say where it runs:
    gloo on CPU, NCCL on CUDA with each process on cuda:LOCAL_RANK."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    world_size, rank, local_rank = launched_ranks()
    torch_device = resolve_device(device, local_rank)
    rt = Runtime(torch_device, resolve_precision(precision, torch_device), world_size, rank, local_rank)
    if rt.distributed:
        import datetime

        import torch.distributed as dist

        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        if not dist.is_initialized():
            # torch.distributed.nn.functional binds group.WORLD as a default argument when first imported (DDP
            # imports it). Imported after the group exists, it holds the group for good: gloo's threads outlive
            # destroy_process_group into interpreter shutdown, where their teardown can abort the process
            # ("terminate called without an active exception"). Imported first, its defaults are None.
            import torch.distributed.nn.functional as _defaults_bound_now  # noqa: F401

            # A rank that fails ends the job (torchrun stops the others); the timeout bounds a silent hang.
            timeout = datetime.timedelta(minutes=30)
            dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo", rank=rank,
                                    world_size=world_size, timeout=timeout, store=_restart_store(timeout))
    return rt
