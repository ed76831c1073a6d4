"""Experiment trackers (`deit train --report-to tensorboard,wandb,mlflow`): observers of a run, like the run
directory's writer. The Trainer emits what it already measures to one Reporter (per-step train loss / lr /
images/s, each epoch's log.jsonl row, the end), which fans it out to one Tracker per backend. Only the main
process reports; each backend's package is imported only when asked for.

What a tracker receives:
- a new run: its config.json (hparams);
- every STEP_EVERY steps: the mean train loss of those steps on the main process (no extra all-reduce in the
  step; after a resume, of the steps since it), the lr of the last one, and the job's images/s over them. Not
  every step: an MLflow write costs ~2 ms and a W&B call ~0.1 ms, a tenth of a small model's GPU step, and a
  10-step mean still shows the curve;
- each epoch: every number of its log.jsonl row at the epoch's last global step (epoch/train_loss, epoch/lr,
  ..., eval/top1, eval/top1_cls, eval/top1_dist, eval/ema_top1, eval/loss, ...): the same values as the log;
- at the end: curves.png and `deit analyze`'s pictures.
The x axis is the global step throughout.

A resumed run continues the same tracker run without a step twice. TensorBoard writes live into RUN/tb and
purges, on resume, what was written after the step the state was saved at (SummaryWriter(purge_step=...)).
W&B and MLflow cannot take points back, so they receive a report only once a saved state covers its step (the
Reporter holds it until then): after a crash the resumed run recomputes from the saved step what they never got.
Their run ids are kept in config.json ("trackers"), and the resumed run reopens the same run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Protocol

from ..config import TRACKERS

STEP_EVERY = 10
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # tracker -> module to import
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb",
           "mlflow": "pip install mlflow-skinny (or mlflow)"}
CONFUSION_MAX_VAL = 10_000  # the end-of-run confusion matrix costs one more pass over this many val images at most


def tracker_names(report_to: str) -> list[str]:
    return [] if report_to == "none" else [n for n in TRACKERS if n in report_to.split(",")]


def check_trackers(report_to: str) -> None:
    """One line naming what to install when a tracker's package is missing (nothing is imported)."""
    for name in tracker_names(report_to):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ModuleNotFoundError(f"--report-to {name} needs the {PACKAGES[name]} package: {INSTALL[name]}")


class Tracker(Protocol):
    live: bool  # True: gets reports as they happen and drops a resumed run's repeated steps itself

    def start(self, run_config: dict) -> None: ...  # a new run: its config

    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...

    def pictures(self, files: dict[str, Path], step: int) -> None: ...

    def close(self, outcome: str) -> None: ...  # "finished", "stopped" (resumable) or "failed"


class Reporter:
    """Fans the run's measurements out to its trackers; without trackers (and in every process but the main
    one) each call returns at once."""

    def __init__(self, trackers: list[Tracker] | None = None, every: Optional[int] = None):
        self.trackers, self.every = trackers or [], every or STEP_EVERY
        self.window = {"loss": 0.0, "steps": 0, "images": 0, "seconds": 0.0}
        self.pending: dict[int, dict[str, float]] = {}  # step -> scalars, for the trackers that wait for a save
        self.finished = False

    def step(self, step: int, loss: float, lr: float, images: int, seconds: float) -> None:
        """After global step `step` (counted from 1): its loss (main process), lr, images of the whole job and
        the main process's seconds for it."""
        if not self.trackers:
            return
        w = self.window
        w["loss"], w["steps"], w["images"], w["seconds"] = (w["loss"] + loss, w["steps"] + 1, w["images"] + images,
                                                            w["seconds"] + seconds)
        if step % self.every == 0:  # a fixed grid of steps: an interrupted and resumed run reports the same ones
            self._report({"train/loss": w["loss"] / w["steps"], "train/lr": lr,
                          "train/images_per_s": w["images"] / max(w["seconds"], 1e-9)}, step)
            self.window = {"loss": 0.0, "steps": 0, "images": 0, "seconds": 0.0}

    def epoch(self, row: dict[str, Any]) -> None:
        """A log.jsonl row, at its global step."""
        if self.trackers:
            self._report(epoch_scalars(row), row["step"])
            for tracker in self.trackers:
                tracker.flush()

    def saved(self, step: int) -> None:
        """The run's state is saved at `step`: what it covers goes to the trackers that wait for a save."""
        ready = sorted(s for s in self.pending if s <= step)
        for s in ready:
            scalars = self.pending.pop(s)
            for tracker in self.trackers:
                if not tracker.live:
                    tracker.log(scalars, s)

    def finish(self, run_dir: Path, step: int, device) -> None:
        """The run ended: curves.png and the analysis pictures, at the last step."""
        self.finished = True
        if not self.trackers:
            return
        with tempfile.TemporaryDirectory() as tmp:
            files = {"curves": Path(run_dir) / "curves.png"} if (Path(run_dir) / "curves.png").exists() else {}
            files.update(analysis_pictures(run_dir, Path(tmp), device))
            for tracker in self.trackers:
                tracker.pictures(files, step)

    def _report(self, scalars: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            if tracker.live:
                tracker.log(scalars, step)
        if any(not t.live for t in self.trackers):
            self.pending.setdefault(step, {}).update(scalars)

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        outcome = "failed" if exc_type is not None else "finished" if self.finished else "stopped"
        for tracker in self.trackers:
            tracker.close(outcome)


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """A log row's numbers as tracker scalars: val_X as eval/X, the others as epoch/X (the step is the x axis)."""
    return {(f"eval/{k[4:]}" if k.startswith("val_") else f"epoch/{k}"): float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def open_trackers(report_to: str, writer, resumed_at: Optional[int]) -> Reporter:
    """The run's Reporter: no trackers in a process that does not write (writer.enabled). resumed_at: the step a
    resumed run continues from (None for a new run)."""
    from .run_dir import read_run_config

    names = tracker_names(report_to)
    if not names or not writer.enabled:
        return Reporter()
    run_config = read_run_config(writer.run_dir) or {}
    ids = dict(run_config.get("trackers", {})) if resumed_at is not None else {}
    trackers = []
    try:
        for name in names:
            trackers.append(OPEN[name](writer.run_dir, resumed_at, ids.get(name)))
            if name not in ids:  # a new run, or a tracker first asked for on resume
                trackers[-1].start(run_config)
            ids[name] = trackers[-1].ids
    except BaseException:
        for tracker in trackers:
            tracker.close("failed")
        raise
    writer.update_config({"trackers": ids})
    return Reporter(trackers)


def flat_hparams(run_config: dict) -> dict[str, Any]:
    """The training options as flat hparams (None as "None": trackers take numbers, strings and booleans)."""
    return {k: ("None" if v is None else v) for k, v in run_config.get("train", {}).items()}


class TensorBoardTracker:
    """Event files in RUN/tb (`tensorboard --logdir RUN/tb`, or a folder of runs)."""

    live = True

    def __init__(self, run_dir: Path, resumed_at: Optional[int], ids: Optional[dict]):
        from torch.utils.tensorboard import SummaryWriter

        self.ids = {"log_dir": "tb"}
        # purge_step: a reader drops what earlier event files hold from this step on (all of it for a new run
        # in a directory an earlier attempt wrote to; what followed the saved state after a crash).
        purge = 0 if resumed_at is None else resumed_at + 1
        self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def start(self, run_config: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.writer.add_text("config", "```\n" + json.dumps(run_config, indent=2) + "\n```", 0)
        # The HPARAMS tab, in this run's own event file (add_hparams would make a sub-run beside it).
        exp, ssi, _ = hparams(flat_hparams(run_config), {"eval/top1": 0.0, "eval/loss": 0.0})
        for summary in (exp, ssi):
            self.writer.file_writer.add_summary(summary)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def pictures(self, files: dict[str, Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        for name, path in files.items():
            self.writer.add_image(name, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self, outcome: str) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run (project $WANDB_PROJECT or "deit"; files under RUN/wandb; WANDB_MODE=offline works
    without a network, `wandb sync RUN/wandb/offline-run-*` uploads later)."""

    live = False

    def __init__(self, run_dir: Path, resumed_at: Optional[int], ids: Optional[dict]):
        import wandb

        run_id = (ids or {}).get("id") or uuid.uuid4().hex[:12]  # W&B ids: lowercase letters and digits
        self.ids = {"id": run_id}
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "deit"), id=run_id, resume="allow",
                              dir=str(run_dir), name=Path(run_dir).resolve().name)

    def start(self, run_config: dict) -> None:
        self.run.config.update(run_config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def flush(self) -> None:
        pass  # the wandb service sends on its own

    def pictures(self, files: dict[str, Path], step: int) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path)) for name, path in files.items()}, step=step)

    def close(self, outcome: str) -> None:
        self.run.finish(exit_code=1 if outcome == "failed" else 0)


class MlflowTracker:
    """An MLflow run (experiment $MLFLOW_EXPERIMENT_NAME or "deit") in $MLFLOW_TRACKING_URI, else in a file store
    in RUN/mlruns (`mlflow ui --backend-store-uri RUN/mlruns`). MLflow 3 keeps that store in maintenance mode
    and refuses it unless MLFLOW_ALLOW_FILE_STORE is set; it is set here for RUN/mlruns only, as the store that
    needs no server and no database packages."""

    live = False

    def __init__(self, run_dir: Path, resumed_at: Optional[int], ids: Optional[dict]):
        from mlflow.tracking import MlflowClient

        # A server named when the run started stays the run's; the default store moves with the run directory.
        server = (ids or {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if server is None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=server or (Path(run_dir) / "mlruns").resolve().as_uri())
        run_id = (ids or {}).get("run_id")
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "deit")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=Path(run_dir).resolve().name).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id, self.ids = run_id, {"run_id": run_id, "tracking_uri": server}

    def start(self, run_config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in flat_hparams(run_config).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, run_config, "config.json")

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def flush(self) -> None:
        pass  # every call is written

    def pictures(self, files: dict[str, Path], step: int) -> None:
        for path in files.values():
            self.client.log_artifact(self.run_id, str(path), "pictures")

    def close(self, outcome: str) -> None:
        self.client.set_terminated(self.run_id, {"finished": "FINISHED", "failed": "FAILED"}.get(outcome, "KILLED"))


OPEN = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def analysis_pictures(run_dir: Path, out_dir: Path, device) -> dict[str, Path]:
    """`deit analyze`'s pictures of the finished run: attention maps (8 val images) and the cls/dist token
    similarity; the confusion matrix when the val split has at most CONFUSION_MAX_VAL images (it costs one
    more pass over them). None for a run analyze does not take (a CNN)."""
    from ..analyze import analyze_attention, analyze_confusion, prepare_runs

    try:
        (run,) = prepare_runs([run_dir])
        written = analyze_attention(run, out_dir, 8, device)
        if len(run.val) <= CONFUSION_MAX_VAL:
            written |= analyze_confusion(run, out_dir, 512, device)
    except (ValueError, OSError, RuntimeError) as e:  # the run has ended well: its pictures are not worth failing it
        print(f"trackers: no analysis pictures ({e})", flush=True)
        return {}
    return {name.removesuffix("_png"): path for name, path in written.items() if path.suffix == ".png"}
