"""The Trainer: one run's training loop (`deit train` starts it through engine/fit.py).

A Trainer is set up once (data, student, teacher, optimiser, loaders, schedule), then `fit` loops epochs of
`train_step`, evaluates, and saves through the run directory's writer. The same code runs in one process or
in each process of a torchrun job (only the student is wrapped for data-parallel training; only the main
process writes)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..faults import fault_point
from ..finetune import apply as apply_finetune, prepare as prepare_finetune
from ..flops import forward_flops_per_image, train_flops_per_image, training_utilisation
from ..losses import LossOutput
from .budget import calibration_steps
from .budget_control import BudgetControl, estimate_eval_s
from .compile import Compiled, compile_student
from .evaluate import evaluate, predict
from .optim import build_optimizer, lr_at, scaled_lr
from .run_dir import STATE, RunWriter, epoch_checkpoint, read_log
from .run_setup import micro_batch, model_overrides, per_rank_batch
from .runtime import Runtime, seed_everything
from .state_file import process_parts, restore_process_parts
from .stopping import StopControl, check_finite
from .tracking import Reporter
from .task import DistillationTask, SeededMixup, build_criterion


@dataclass
class RunResult:
    output: Path
    metrics: dict[str, Any]
    stopped_by: int = 0  # the signal that stopped the run (state saved), 0 when it was not stopped by one


class Trainer:
    """One run of one process. State that a resume restores: weights, optimiser, scaler, EMA, RNG, and the
    position (epoch, batch within it, global step) with the best top-1 and the running epoch sums."""

    def __init__(self, config: TrainConfig, run_dir: Path, rt: Runtime, recorded_precision: Optional[str] = None):
        """recorded_precision: what a resumed run trained in (its config.json), kept rather than probed again."""
        from ..data import augment_config, load_split, make_loader
        from ..models import create_model

        self.started = time.monotonic()  # a time budget counts from here
        self.config, self.run_dir, self.rt = config, Path(run_dir), rt
        self.writer = RunWriter(run_dir, enabled=rt.is_main)
        self.reporter = Reporter()  # the run's trackers, opened by engine/fit.py (none until then)
        c = config
        # A fine-tuning source is read and checked before the data; a resumed run (state.pt present: a new run
        # refuses such a directory) takes its weights from the state instead.
        source = prepare_finetune(c) if not (self.run_dir / STATE).exists() else None
        self.train_data, self.val_data = load_split(c, "train"), load_split(c, "val")
        if len(self.train_data) < c.batch_size:  # the loaders drop the last partial batch when training
            raise ValueError(f"--batch-size {c.batch_size} is larger than the {len(self.train_data)} training images: "
                             f"use --batch-size {len(self.train_data)} or less")
        seed_everything(c.seed + rt.rank)  # per-rank randomness (stochastic depth); the weights start equal
        self.model = create_model(c.model, **model_overrides(c, self.train_data)).to(rt.device)
        self.finetune_info = apply_finetune(self.model, source, c, self.train_data.classes, rt.print)
        self.precision_probe = self._choose_precision(recorded_precision)
        self.teacher, self.teacher_info = self._build_teacher()
        # nominal FLOPs an image of a step, for the run's MFU: counted on the plain model, before any wrapping
        sample = torch.zeros(2, self.train_data.in_chans, *self.train_data.img_size, device=rt.device)
        self.flops_per_image = train_flops_per_image(self.model, sample) + self.teacher_flops
        self.optimizer = build_optimizer(self.model, c)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
        self.ema = None
        if c.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=c.ema_decay)
        mixup = SeededMixup(c, self.train_data.num_classes, rt.rank) if c.mixing else None
        d = self.train_data  # the step's module compiled (--compile); self.model stays plain for everything else
        student = compile_student(self._wrap_for_ranks(self.model), self.model, c, rt,
                                  (micro_batch(c, rt.world_size), d.in_chans, *d.img_size))
        self.compiled = isinstance(student, Compiled)
        self.task = DistillationTask(student, self.teacher, build_criterion(c), mixup)

        shard = dict(device=rt.device, num_workers=c.num_workers, world_size=rt.world_size, rank=rt.rank)
        self.train_loader = make_loader(self.train_data, per_rank_batch(c, rt.world_size), train=True,
                                        augment=augment_config(c), repeats=c.repeats, seed=c.seed, **shard)
        self.val_loader = make_loader(self.val_data, c.eval_batch_size, train=False, **shard)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_data)} training images give no full batch of {c.batch_size}; "
                             "lower --batch-size")
        self.total_steps = self.steps_per_epoch * c.epochs  # a time budget replaces it after calibration
        self.warmup_steps = int(round(c.warmup_epochs * self.steps_per_epoch))
        self.budget = BudgetControl(c, rt, self.writer, self.steps_per_epoch, self.started)
        self.stopping = StopControl(c, rt)
        self.peak_lr = scaled_lr(c)
        # position and running results
        self.epoch, self.batch, self.step, self.best_top1 = 0, 0, 0, -1.0
        self.epoch_sums: dict[str, float] = {}
        self.teacher_val_logits: Optional[torch.Tensor] = None
        self.metrics: dict[str, Any] = {}

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def _length(self) -> str:
        c = self.config
        per_epoch = f"{self.steps_per_epoch} steps an epoch"
        if c.accum_steps > 1:
            per_epoch += f" (each {c.accum_steps} micro-batches of {micro_batch(c, self.rt.world_size)} a process)"
        if self.budget.calibrating:
            return f"as many epochs as {c.time_budget_minutes:g} min allow, {per_epoch}"
        return f"{self.total_steps / self.steps_per_epoch:g} epochs of {per_epoch}"

    def restore_schedule(self, recorded: Optional[dict]) -> None:
        """On resume: the schedule a time budget fixed (config.json), not a new calibration."""
        total = self.budget.restore(recorded)
        if total is not None:
            self.total_steps = total

    def calibrate(self) -> None:
        """Size the schedule to the time budget from the steps measured so far (deit.engine.budget_control)."""
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        if self.teacher is not None and self.teacher_val_logits is None:  # the first evaluation computes its logits
            models.append(self.teacher)
        self.total_steps = self.budget.calibrate(self.step, estimate_eval_s(models, self.val_loader, self.rt))

    def _choose_precision(self, recorded: Optional[str]):
        """--precision auto on a CPU: measure the model's step in fp32 and bf16 and keep the faster (every rank
        takes the main process's answer). Returns the probe (None when nothing was measured)."""
        from .precision import PROBE_CANDIDATES, probe_training_precision, resolve_precision

        c, rt = self.config, self.rt
        if recorded is not None:
            rt.amp_dtype = resolve_precision(recorded, rt.device)
            return None
        if c.precision != "auto" or rt.device.type != "cpu":
            return None
        d = self.train_data
        shape = (micro_batch(c, rt.world_size), d.in_chans, *d.img_size)
        probe = probe_training_precision(self.model, shape, c.model)
        (index,) = rt.all_reduce([PROBE_CANDIDATES.index(probe.choice) if rt.is_main else 0])
        rt.amp_dtype = resolve_precision(PROBE_CANDIDATES[int(index)], rt.device)
        rt.print(probe.summary())
        return probe

    def _wrap_for_ranks(self, model: nn.Module) -> nn.Module:
        """The student in DistributedDataParallel when there are several processes (gradients averaged over
        ranks); the teacher and the EMA stay plain, one copy per process."""
        if not self.rt.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def _build_teacher(self):
        from ..teacher import load_teacher

        c, rt = self.config, self.rt
        self.teacher_flops = 0.0
        if c.distillation == "none":
            return None, {}
        teacher, info = load_teacher(c.teacher, c.teacher_weights, num_classes=self.train_data.num_classes,
                                     in_chans=self.train_data.in_chans, img_size=self.train_data.img_size)
        if "hub" in info:
            from ..hub import describe

            rt.print(f"teacher: {describe(info['hub'])}")
        teacher = teacher.to(rt.device)
        d = self.train_data  # its nominal FLOPs counted before fusion hides its convolutions from the counter
        self.teacher_flops = forward_flops_per_image(teacher, torch.zeros(2, d.in_chans, *d.img_size,
                                                                          device=rt.device))
        if rt.amp_dtype != torch.float16:  # the fused inference path (deit.speed) takes fp32 or bf16
            from ..speed import prepare_model_for_inference

            teacher.model = prepare_model_for_inference(teacher.model, rt.precision)
        return teacher, info

    # ------------------------------------------------------------------------------------------ state
    def run_config(self) -> dict:
        from ..data import describe
        from ..models import model_spec

        d = self.train_data
        return {
            "train": self.config.to_dict(),
            "model": model_spec(self.model, self.config.model),
            "data": describe(d),
            "preprocessing": {"mean": list(d.mean), "std": list(d.std), "img_size": list(d.img_size),
                              "in_chans": d.in_chans},
            "teacher": self.teacher_info,
            **({"finetune": self.finetune_info} if self.finetune_info else {}),
            "precision": self.rt.precision,
            "precision_probe": self.precision_probe.to_dict() if self.precision_probe else None,
            "compiled": self.compiled,  # what --compile decided (auto: deit.engine.compile)
            "device": str(self.rt.device),
            "world_size": self.rt.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            "torch": torch.__version__,
        }

    def state_dict(self, epoch: int, batch: int) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch, "batch": batch, "step": self.step, "best_top1": self.best_top1,
            "epoch_sums": self.epoch_sums, **process_parts(self.rt, self.epoch_sums),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:  # a state.pt copied from another run: one line, not the key-by-key listing
            detail = (str(e).splitlines()[1:] or [str(e)])[0].strip()[:200]
            raise ValueError(f"{self.run_dir / STATE} holds weights of another model than this run's "
                             f"{self.config.model} (config.json): {detail}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.best_top1, self.epoch_sums = state["best_top1"], restore_process_parts(state, self.rt)

    def save(self, epoch: int, batch: int) -> None:
        """The resumable state after `batch` batches of `epoch` (called on every process at the same step)."""
        self.check_finite()
        self.writer.state(self.state_dict(epoch, batch))
        self.reporter.saved(self.step)

    def check_finite(self) -> None:
        check_finite(self.model, self.ema.module if self.ema else None, self.step, self.run_dir)

    # ------------------------------------------------------------------------------------------ steps
    def lr(self, step: int) -> float:
        c = self.config
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, c.warmup_lr, c.min_lr)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch_index: int) -> LossOutput:
        fault_point("step", rank=self.rt.rank, step=self.step)
        lr = self.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._backward(x, y)
        grad_norm = self._grad_norm()
        # Under fp16 the grad scaler itself skips steps with inf/NaN gradients (and lowers its scale).
        bad_grad = grad_norm is not None and not self.scaler.is_enabled() and not torch.isfinite(grad_norm)
        bad_loss = not torch.isfinite(loss.total)
        anywhere = self.rt.any(bad_loss, bad_grad)  # one all-reduce: every rank steps, skips or stops together
        if any(anywhere):
            what = ("the loss" if anywhere[0] else "the gradient") + ("" if bad_loss or bad_grad else
                                                                       " of another process")
            if self.config.skip_nonfinite:  # the weights, optimiser and EMA stay as before this step
                self.optimizer.zero_grad(set_to_none=True)
                self.epoch_sums["skipped"] = self.epoch_sums.get("skipped", 0) + 1
                self.rt.print(f"step {self.step}: {what} is not finite; step skipped (--skip-nonfinite)")
                self.step += 1
                zero = torch.zeros((), device=loss.total.device)
                return LossOutput(zero, zero, zero if loss.distill is not None else None)
            self.save(epoch, batch_index)  # the weights are still those before this step
            raise FloatingPointError(f"{what} is not finite at step {self.step}; state saved to {self.run_dir}. "
                                     "Lower --lr or set --clip-grad, or resume with --skip-nonfinite")
        if self.config.clip_grad is not None:  # the norm measured above, unscaled: clip_grad_norm_'s own steps
            nn.utils.clip_grads_with_norm_(self.model.parameters(), self.config.clip_grad, grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if fault_point("poison", what="weights", step=self.step):
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
            if fault_point("poison", what="ema", step=self.step):
                with torch.no_grad():
                    next(self.ema.module.parameters()).view(-1)[0] = float("nan")
        return loss

    def _backward(self, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
        """The batch's loss, with its gradients (scaled under fp16) in .grad: Mixup/CutMix over the whole batch,
        then --accum-steps equal micro-batches, one forward/backward each (activations of one at a time), each
        loss divided by their number so that the gradients sum to the whole batch's mean. Under DDP the gradients
        are all-reduced once, in the last micro-batch's backward."""
        n = self.config.accum_steps
        x, y = self.task.mix(x, y, self.step)
        parts = []
        for i, (xi, yi) in enumerate(zip(x.chunk(n), y.chunk(n))):
            with self._gradient_sync(i == n - 1):
                with self.rt.autocast():
                    part = self.task.loss(xi, yi)
                if i == 0 and fault_point("poison", what="loss", step=self.step):
                    part.total = part.total * float("nan")
                self.scaler.scale(part.total / n).backward()
            parts.append(part)
        return LossOutput.mean(parts)

    def _gradient_sync(self, sync: bool):
        """DDP's all-reduce on (the last micro-batch) or off (no_sync: gradients accumulate locally)."""
        if sync or not self.rt.distributed:
            return contextlib.nullcontext()
        return self.task.student.no_sync()

    def _grad_norm(self) -> Optional[torch.Tensor]:
        """The total gradient norm (unscaled), non-finite when any gradient is; None under fp16's grad scaler
        when no clipping needs it."""
        if self.scaler.is_enabled() and self.config.clip_grad is None:
            return None
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if fault_point("poison", what="grad", step=self.step):
            grads[0].view(-1)[0] = float("inf")
        return nn.utils.get_total_norm(grads)

    def train_epoch(self, epoch: int, first_batch: int) -> bool:
        """Batches first_batch.. of `epoch`; True when stopped early (stop_after_steps, or a stop signal), saved."""
        from tqdm import tqdm

        c = self.config
        self.model.train()
        self.train_loader.set_epoch(epoch)
        if first_batch == 0:
            self.epoch_sums = {"loss": 0.0, "base": 0.0, "distill": 0.0, "n": 0, "images": 0,
                               "compute_s": 0.0, "wait_s": 0.0, "skipped": 0}
        sums = self.epoch_sums
        bar = tqdm(total=self.steps_per_epoch, initial=first_batch, desc=f"epoch {epoch + 1}/{self.num_epochs}",
                   disable=not (c.progress and self.rt.is_main), dynamic_ncols=True, leave=False)
        batches = iter(self.train_loader.iterate(first_batch))
        self.stopping.restart_clock()
        batch_index = first_batch
        try:
            # A budgeted schedule may end inside an epoch (and is fixed during the first one).
            while batch_index < min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch):
                t0 = time.perf_counter()
                x, y = next(batches)
                t1 = time.perf_counter()
                loss = self.train_step(x, y, epoch, batch_index)
                t2 = time.perf_counter()
                total = loss.total.item()  # read once: the sums and the reporter share it
                sums["loss"] += total
                sums["base"] += loss.base.item()
                sums["distill"] += loss.distill.item() if loss.distill is not None else 0.0
                sums["n"] += 1
                sums["images"] += len(x)
                sums["wait_s"] += t1 - t0
                sums["compute_s"] += t2 - t1
                batch_index += 1
                if self.budget.calibrating:
                    self.budget.step_times.append(t2 - t0)
                    if self.step >= calibration_steps(self.warmup_steps, self.steps_per_epoch):
                        self.calibrate()
                self.reporter.step(self.step, total, self.lr(self.step - 1), len(x) * self.rt.world_size,
                                   t2 - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}", lr=f"{self.lr(self.step - 1):.2e}",
                                ims=f"{len(x) / (t2 - t0):.0f}")
                if self.stopping.at_step(self.step, save=lambda: self.save(epoch, batch_index)):
                    return True
        finally:
            bar.close()
        return False

    def evaluate(self) -> dict[str, Any]:
        c, rt = self.config, self.rt
        fault_point("eval", rank=rt.rank, step=self.step)
        if self.teacher is not None and self.teacher_val_logits is None:  # the frozen teacher's: once per run
            self.teacher_val_logits = predict(self.teacher, self.val_loader, rt.device, rt.amp_dtype, c.progress,
                                              desc="teacher eval", rt=rt)["logits"]
        metrics = evaluate(self.model, self.val_loader, rt.device, rt.amp_dtype, self.teacher_val_logits,
                           c.progress, rt=rt)
        if self.ema is not None:
            ema_metrics = evaluate(self.ema.module, self.val_loader, rt.device, rt.amp_dtype, rt=rt)
            metrics.update({"ema_top1": ema_metrics["top1"], "ema_top5": ema_metrics["top5"]})
        return metrics

    def end_epoch(self, epoch: int) -> None:
        """Evaluate when due, log the epoch, save weights and state."""
        c = self.config
        self.check_finite()  # before anything of this epoch is written
        # Losses averaged over every process's share of the batches (equal shares: the global batch's mean);
        # images/s of the whole job, time from the main process.
        keys = ("loss", "base", "distill", "n", "images")
        sums = dict(self.epoch_sums, **dict(zip(keys, self.rt.all_reduce([self.epoch_sums[k] for k in keys]))))
        skipped = self.epoch_sums.get("skipped", 0)  # the same on every process: they skip together
        n = max(1, sums["n"] - skipped * self.rt.world_size)  # a skipped step adds 0 to the losses
        elapsed = sums["wait_s"] + sums["compute_s"]
        row: dict[str, Any] = {
            "epoch": epoch + 1, "step": self.step, "lr": self.lr(self.step - 1),
            "train_loss": sums["loss"] / n, "train_base_loss": sums["base"] / n,
            "train_distill_loss": sums["distill"] / n,
            "images_per_s": sums["images"] / max(elapsed, 1e-9),
            "data_wait_fraction": sums["wait_s"] / max(elapsed, 1e-9),
            "epoch_time_s": elapsed, "world_size": self.rt.world_size, "skipped_steps": skipped,
        }
        row["skipped_images"] = sum(len(getattr(d, "skipped", ())) for d in (self.train_data, self.val_data))
        if epoch + 1 == self.num_epochs or (epoch + 1) % c.eval_every == 0:
            started = time.monotonic()
            self.metrics = self.evaluate()
            self.budget.evaluated(time.monotonic() - started)
            row.update({f"val_{k}": v for k, v in self.metrics.items() if not k.startswith("disagree")})
            if self.metrics["top1"] > self.best_top1:
                self.best_top1 = self.metrics["top1"]
                self.writer.weights(self.model, c.model, "best.safetensors")
        self.writer.log(row)
        self.reporter.epoch(row)
        summary = f"epoch {epoch + 1}/{self.num_epochs}: loss {row['train_loss']:.4f}, {row['images_per_s']:.0f} im/s"
        if "val_top1" in row:
            summary += f", val top-1 {row['val_top1']:.2f}%"
            if "val_top1_cls" in row and "val_top1_dist" in row:
                summary += f" (cls {row['val_top1_cls']:.2f}, dist {row['val_top1_dist']:.2f})"
        self.rt.print(summary)
        self.writer.weights(self.model, c.model, "model.safetensors")
        if c.keep_checkpoints:  # every epoch's weights, e.g. an earlier teacher of matched accuracy (deit.reproduce)
            if self.writer.enabled:
                (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            self.writer.weights(self.model, c.model, epoch_checkpoint(epoch + 1))
        if self.ema is not None:
            self.writer.weights(self.ema.module, c.model, "ema.safetensors")
        self.save(epoch + 1, 0)

    # ------------------------------------------------------------------------------------------ the run
    def fit(self, stop_after_steps: Optional[int] = None) -> RunResult:
        c = self.config
        self.stopping.stop_after_steps = stop_after_steps
        num_params = sum(p.numel() for p in self.model.parameters())
        self.rt.print(f"deit train: {c.model} ({num_params:,} params) on {c.data} ({len(self.train_data):,} train / "
                      f"{len(self.val_data):,} val), {self._length()}, "
                      f"{self.rt.precision} on {self.rt.device}, distillation={c.distillation} -> {self.run_dir}")
        epoch, first_batch = self.epoch, self.batch
        while epoch < self.num_epochs:  # a time budget sets num_epochs during the first epoch, then each epoch
            pace, started, steps = self.budget.pace, time.monotonic(), self.step
            if self.train_epoch(epoch, first_batch):
                return RunResult(self.run_dir, {}, stopped_by=self.stopping.stopped_by)
            self.budget.epoch_eval_s = 0.0
            self.end_epoch(epoch)
            if pace is not None and epoch + 1 < self.num_epochs:  # not the calibration's epoch (start-up costs)
                self.total_steps = self.budget.replan(time.monotonic() - started - self.budget.epoch_eval_s,
                                                      self.step - steps, self.step)
            epoch, first_batch = epoch + 1, 0

        log_rows = read_log(self.run_dir) if self.rt.is_main else []
        metrics = dict(self.metrics)
        metrics.update({
            "model": c.model, "params": num_params, "best_top1": self.best_top1,
            "epochs": self.total_steps / self.steps_per_epoch, "steps": self.total_steps,
            "train_time_s": sum(r["epoch_time_s"] for r in log_rows),
            "images_per_s": float(np.median([r["images_per_s"] for r in log_rows])) if log_rows else 0.0,
            "data_wait_fraction": float(np.median([r["data_wait_fraction"] for r in log_rows])) if log_rows else 0.0,
        })
        if log_rows:
            metrics.update(training_utilisation(self.flops_per_image, metrics["images_per_s"],
                                                self.rt.amp_dtype or torch.float32, self.rt.device, self.rt.world_size))
            self.rt.print(f"deit train: {metrics['images_per_s']:.0f} im/s (median epoch) x "
                          f"{metrics['flops_per_image'] / 1e9:.4f} GFLOP an image = {100 * metrics['mfu']:.1f} % of "
                          f"the {self.rt.precision} matmul peak ({metrics['matmul_peak_tflops']:.3f} TFLOP/s on "
                          f"{self.rt.device}, measured in this process)")
        self.writer.finish(metrics)
        return RunResult(self.run_dir, metrics)
