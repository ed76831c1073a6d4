"""Where a run saves and stops, and what is recorded when a signal stopped it.

At each step boundary the Trainer asks its StopControl one question: save now, stop now? A save is due by the
main process's clock (--save-every-minutes); a stop is asked by stop_after_steps or by a signal on any process
(engine/runtime.py's stop_on_signals records it). Both are agreed in one all-reduce, so that every process saves
(and stops) at the same step. Non-finite weights stop a run without saving (check_finite). After the run,
engine/fit.py records where a signal stopped it (stop_record, record_stop: stops.jsonl, a SLURM requeue)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..config import TrainConfig
from .run_dir import STOPS, RunWriter, read_log
from .runtime import Runtime, requeue_slurm_job


class StopControl:
    """The step boundary's save and stop: stop_after_steps (set by Trainer.fit), the periodic save's clock, and
    the signal that stopped the run (stopped_by: 0 when none did)."""

    def __init__(self, config: TrainConfig, rt: Runtime):
        self.config, self.rt = config, rt
        self.stop_after_steps: Optional[int] = None  # stops early, leaving a resumable run (engine/fit.py)
        self.stopped_by = 0  # the stop signal that ended training early (state saved)
        self.last_save = time.monotonic()

    def restart_clock(self) -> None:
        """The periodic save counts from here (an epoch's start: the epoch before ended with a save)."""
        self.last_save = time.monotonic()

    def at_step(self, step: int, save: Callable[[], None]) -> bool:
        """After `step` optimizer steps: `save()` when a save or a stop is due; True when the run stops here."""
        if self.stop_after_steps is not None and step >= self.stop_after_steps:
            save()
            return True
        # One all-reduce at the step boundary: a save due by the main process's clock, and a stop asked by a
        # signal on any process (its number), so that every process saves (and stops) at the same step.
        save_due, stop = self.rt.all_reduce([self.rt.is_main and time.monotonic() - self.last_save >
                                             self.config.save_every_minutes * 60, self.rt.stop_signal], op="max")
        if save_due or stop:
            save()
            self.last_save = time.monotonic()
        if stop:
            self.stopped_by = int(stop)
            return True
        return False


def check_finite(model: nn.Module, ema: Optional[nn.Module], step: int, run_dir: Path) -> None:
    """NaN or inf weights (or EMA weights) never overwrite a good checkpoint: the run stops, the last good
    one in place. The same on every process: the weights are equal across ranks."""
    for label, module in (("weights", model), ("EMA weights", ema)):
        tensors = [t for t in (module.state_dict().values() if module is not None else ()) if t.is_floating_point()]
        if tensors and not torch.stack([torch.isfinite(t).all() for t in tensors]).all():
            raise FloatingPointError(f"the {label} are not finite at step {step}; nothing saved, "
                                     f"{run_dir} keeps the last good checkpoint")


# ------------------------------------------------------------------------------------------ a stop's record
def stop_record(rt: Runtime, stopped_by: int, step: int, steps_per_epoch: int) -> dict:
    """Where the signal `stopped_by` stopped the run (its state saved after `step` steps), when, and on which
    host and process: a row of stops.jsonl."""
    import signal

    saved_at = time.time()
    epoch, batch = divmod(step, steps_per_epoch)
    if batch == 0 and epoch > 0:  # stopped after an epoch's last step: saved as the end of that epoch's batches
        epoch, batch = epoch - 1, steps_per_epoch
    signalled = rt.stop_signal_time  # this process's signal (another process may have had it)
    return {
        "signal": signal.Signals(stopped_by).name, "epoch": epoch + 1, "batch": batch,
        "steps_per_epoch": steps_per_epoch, "step": step,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "signal_time": signalled,
        "signal_to_saved_s": round(saved_at - signalled, 3) if signalled else None,
        "host": socket.gethostname(), "pid": os.getpid(),
        "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)), "requeued": False,
    }


def record_stop(config: TrainConfig, run_dir: Path, stop: dict) -> None:
    """Say where the run stopped, requeue the SLURM job when asked, and record both in stops.jsonl."""
    note = ""
    if config.requeue_on_signal:
        requeued_before = sum(1 for r in read_log(run_dir, STOPS) if r.get("requeued"))
        stop["requeued"], note = requeue_slurm_job(requeued_before, config.max_requeues)
        note = f"; {note}"
    RunWriter(run_dir).stop(stop)
    after = f" {stop['signal_to_saved_s']:.1f} s after the signal" if stop["signal_to_saved_s"] is not None else ""
    print(f"deit train: stopped by {stop['signal']} at epoch {stop['epoch']}, batch {stop['batch']} of "
          f"{stop['steps_per_epoch']} (step {stop['step']}); state saved{after} -> {run_dir}{note}", flush=True)
