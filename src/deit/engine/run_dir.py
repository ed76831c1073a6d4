"""The run directory and its only writer. Under several processes only the main one writes; every write is
atomic (deit.fileio), so a crash at any moment leaves the previous complete file.

config.json (what the run is), model.safetensors / best.safetensors / ema.safetensors (weights), state.pt
(everything else needed to resume exactly), log.jsonl (one row per epoch) and summary.csv (the same rows as
timm's summary.csv), metrics.json and curves.png (at the end), stops.jsonl (one row per stop asked by a signal:
where, and whether the job was requeued).

While a run writes its directory it holds RUN/.lock (RunLock): one writer per run directory."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..config import TrainConfig
from ..faults import fault_point
from ..fileio import atomic_write, write_json, write_text
from .state_file import read_state, save_state

CONFIG, STATE, LOG, METRICS, CURVES = "config.json", "state.pt", "log.jsonl", "metrics.json", "curves.png"
SUMMARY = "summary.csv"
# timm's summary.csv columns, in its order; the log's other columns follow
TIMM_SUMMARY_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr")
STOPS, LOCK = "stops.jsonl", ".lock"


def epoch_checkpoint(epoch: int) -> str:
    """Where --keep-checkpoints puts the weights after `epoch` (counted from 1), relative to the run directory."""
    return f"checkpoints/epoch-{epoch:03d}.safetensors"



def default_output(config: TrainConfig) -> Path:
    return Path("runs") / f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def read_run_config(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); it is not a run directory of `deit train`") from None


def read_log(run_dir: Path, name: str = LOG) -> list[dict]:
    path = Path(run_dir) / name
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash mid-append; resume rewrites the log without it
            continue
    return rows


def load_state(run_dir: Path, device: torch.device) -> dict:
    return read_state(Path(run_dir) / STATE, device)


class RunWriter:
    """Writes a run directory; a no-op in every process but the main one."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled

    def start(self, run_config: dict) -> None:
        """A new run: its config, and no log rows from an earlier attempt."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / CONFIG, run_config)
        (self.run_dir / LOG).unlink(missing_ok=True)
        (self.run_dir / SUMMARY).unlink(missing_ok=True)

    def update_config(self, entries: dict) -> None:
        """Add entries to config.json (e.g. the schedule a time budget fixed)."""
        if self.enabled:
            write_json(self.run_dir / CONFIG, {**read_run_config(self.run_dir), **entries})

    def weights(self, model: nn.Module, name: str, filename: str) -> None:
        from ..checkpoint import save_model

        if self.enabled:
            save_model(model, self.run_dir, name=name, filename=filename)
            fault_point("saved", file=filename)  # between two files of a checkpoint (crash tests)

    def state(self, state: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write(self.run_dir / STATE, lambda tmp: save_state(state, tmp))
            fault_point("saved", file=STATE)

    def log(self, row: dict[str, Any]) -> None:
        """Appends the row of an epoch; the whole (small) log is rewritten atomically, so a crash never tears a
        line. Rows of this epoch or later ones already there are an abandoned attempt's (a run resumed from an
        earlier state) and are replaced: each epoch appears once in the log, whatever path led here."""
        if self.enabled:
            self._write_log([r for r in read_log(self.run_dir) if r["epoch"] < row["epoch"]] + [row])
            fault_point("saved", file=LOG)

    def _write_log(self, rows: list[dict], name: str = LOG) -> None:
        """log.jsonl (and summary.csv, from the same rows) or stops.jsonl: rewritten whole, so a resumed run (which
        first keeps the rows its state has finished) never has an epoch twice in either."""
        atomic_write(self.run_dir / name, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in rows)))
        if name == LOG:
            write_text(self.run_dir / SUMMARY, summary_csv(rows))

    def stop(self, row: dict[str, Any]) -> None:
        """Records a stop asked by a signal (stops.jsonl: where, when, whether the job was requeued)."""
        if self.enabled:
            self._write_log(read_log(self.run_dir, STOPS) + [row], STOPS)

    def keep_log_until(self, epoch: int) -> None:
        """On resume: drop log rows of epochs the saved state has not finished (a crash after the row was
        written and before the state was saved would otherwise leave that epoch logged twice), and the
        temporary files of writes a crash cut short."""
        if self.enabled:
            self._write_log([r for r in read_log(self.run_dir) if r["epoch"] <= epoch])
            for tmp in self.run_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def finish(self, metrics: dict[str, Any]) -> None:
        if self.enabled:
            write_json(self.run_dir / METRICS, metrics)
            plot_curves(read_log(self.run_dir), self.run_dir / CURVES)


def summary_csv(rows: list[dict]) -> str:
    """Log rows as timm's summary.csv: one line an epoch, val_* named eval_* as timm names them, timm's columns
    first, then the log's others in order of appearance; a cell is empty where the epoch has no value (no
    evaluation that epoch)."""
    renamed = [{("eval_" + k[4:] if k.startswith("val_") else k): v for k, v in r.items()} for r in rows]
    seen = list(dict.fromkeys(k for r in renamed for k in r))
    columns = [c for c in TIMM_SUMMARY_COLUMNS if c in seen] + [c for c in seen if c not in TIMM_SUMMARY_COLUMNS]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(renamed)
    return out.getvalue()


class RunLocked(ValueError):
    """Another process writes this run directory."""


class RunLock:
    """RUN/.lock while a run writes RUN: an exclusive flock(2) on the file, which holds the holder's host, pid and
    start time for the messages. The kernel releases a flock when its process dies, however it dies (kill -9
    included), so a lock is stale exactly when no live process holds it: a lock file left by a killed run is
    taken over, never waited on or guessed at from a pid. On NFS, Linux implements flock with the server's
    byte-range locks (NFSv4, or NFSv3 with lockd): it holds across machines, and a dead client's lock is
    released when its lease expires; a file system without locks (ENOLCK, EOPNOTSUPP) runs unguarded, with a
    warning. A clean release removes the file."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / LOCK
        self.fd: Optional[int] = None
        self.created_dir = False
        self.taken_over: Optional[dict] = None  # the holder a killed process left in the file

    def acquire(self) -> "RunLock":
        import fcntl

        self.created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                self._remove_created_dir()
                raise RunLocked(f"{self.run_dir} is being written by {_describe(holder)}; wait for it to end or "
                                "stop it, or choose another --output") from None
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                print(f"deit train: warning: {self.run_dir} cannot be locked ({e.strerror}): nothing stops a second "
                      "run from writing into it", flush=True)
                return self
            try:  # the file we locked is still the one at the path (a releasing holder removes it)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        self.taken_over = _read_holder(fd) or None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before closing: a process waiting on this file sees it replaced
            os.close(self.fd)
            self.fd = None
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        """A run refused before it wrote anything leaves no directory behind."""
        if self.created_dir:
            try:
                self.run_dir.rmdir()
            except OSError:  # not empty: the run wrote into it
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (starting: its details are not written yet)"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def plot_curves(rows: list[dict], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    evaluated = [r for r in rows if "val_loss" in r]
    ax_loss.plot([r["epoch"] for r in evaluated], [r["val_loss"] for r in evaluated], label="val (CE)")
    ax_loss.set(xlabel="epoch", title="loss")
    ax_loss.legend()
    for key, label in (("val_top1", "combined"), ("val_top1_cls", "class head"),
                       ("val_top1_dist", "dist head"), ("val_ema_top1", "EMA")):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            ax_acc.plot(*zip(*pts), label=label)
    ax_acc.set(xlabel="epoch", ylabel="top-1 %", title="validation")
    ax_acc.legend()
    ax_lr.plot(epochs, [r["lr"] for r in rows])
    ax_lr.set(xlabel="epoch", title="learning rate (end of epoch)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
