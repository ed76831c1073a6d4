"""The training run: build data, model, teacher, optimiser; loop; evaluate; checkpoint; resume.

`fit(config)` is what `deit train` calls. The run directory holds everything needed to rebuild and resume:
config.json, model.safetensors (last), best.safetensors, ema.safetensors, state.pt, log.jsonl,
metrics.json, curves.png.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .losses import DistillationLoss


# ----------------------------------------------------------------------------- execution context
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """bf16 pays off on CPUs with AMX tiles; with AVX-512-BF16 alone, fp32 matmuls measured faster here
    (docs/performance.md)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32. auto: bf16 on CUDA that has it (else fp16), bf16 on CPUs with AMX,
    fp32 on other CPUs."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs CUDA (a grad scaler); on CPU use --precision bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


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


# ----------------------------------------------------------------------------- schedule, optimiser
def scaled_lr(config: TrainConfig) -> float:
    return config.lr * config.batch_size / 512


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, warmup_lr: float, min_lr: float) -> float:
    """Linear warm-up from warmup_lr to peak, then cosine to min_lr; a pure function of the step, so resuming
    needs no scheduler state (the official code steps per epoch and lags by one)."""
    if step < warmup_steps:
        return warmup_lr + (peak - warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on 1-D parameters (norms, biases) and the model's named exemptions."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    from .speed import make_optimizer_fast

    return make_optimizer_fast(param_groups(model, config.weight_decay), lr=scaled_lr(config),
                               eps=config.opt_eps, betas=(0.9, 0.999))


# ----------------------------------------------------------------------------- model, data, loss
def model_overrides(config: TrainConfig, data) -> dict:
    from .models import model_family

    overrides = dict(num_classes=data.num_classes, in_chans=data.in_chans)
    if model_family(config.model) == "vit":
        overrides.update(img_size=data.img_size, combine=config.combine)
        if config.drop_path is not None:
            overrides["drop_path_rate"] = config.drop_path
    return overrides


def build_criterion(config: TrainConfig) -> DistillationLoss:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if config.mixing:
        base = SoftTargetCrossEntropy()  # Mixup already smooths the mixed targets
    elif config.smoothing > 0:
        base = LabelSmoothingCrossEntropy(config.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    return DistillationLoss(base, config.distillation, config.alpha, config.tau, config.kl_reduction)


class SeededMixup:
    """timm's Mixup/CutMix, made a pure function of (seed, step): timm draws from numpy's global RNG, so we
    seed it per step and restore it afterwards."""

    def __init__(self, config: TrainConfig, num_classes: int):
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                           switch_prob=config.mixup_switch_prob, mode="batch",
                           label_smoothing=config.smoothing, num_classes=num_classes)
        self.seed = config.seed

    def __call__(self, x, y, step: int):
        saved = np.random.get_state()
        np.random.seed((self.seed * 1_000_003 + step) % 2**32)
        try:
            return self.mixup(x, y)
        finally:
            np.random.set_state(saved)


def augment_config(config: TrainConfig):
    from .data import AugmentConfig

    return AugmentConfig(crop=config.crop, rrc_scale=(config.rrc_scale_min, 1.0), hflip=config.hflip,
                         randaugment=config.randaugment, reprob=config.reprob)


def load_split(config: TrainConfig, split: str, download: bool = True):
    from .data import load_data, stratified_subset

    data = load_data(config.data, split, data_dir=config.data_dir, img_size=config.img_size, download=download)
    if split == "train" and config.train_subset is not None:
        size = int(config.train_subset) if config.train_subset > 1 else float(config.train_subset)
        data = data.subset(stratified_subset(data.labels, size, config.seed))
    return data


# ----------------------------------------------------------------------------- evaluation
def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).sum())


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, amp_dtype, progress: bool = False,
            desc: str = "eval") -> dict[str, torch.Tensor]:
    """Logits on every image of the loader (fp32, CPU) and the targets: "logits", plus "cls" and "dist" for a
    distilled model. A model may return a plain tensor (a teacher)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    out: dict[str, list] = {"targets": []}
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
        with autocast(device, amp_dtype):
            o = model(x.to(device, non_blocking=True))
        heads = {"logits": o if isinstance(o, torch.Tensor) else o.logits}
        if getattr(o, "dist_logits", None) is not None:  # the heads are separate predictions only then
            heads.update(cls=o.cls_logits, dist=o.dist_logits)
        for name, value in heads.items():
            out.setdefault(name, []).append(value.float().cpu())
        out["targets"].append(y.cpu())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


def metrics_from_predictions(pred: dict[str, torch.Tensor]) -> dict[str, float]:
    """Top-1/top-5 (percent) per head, eval loss, and pairwise disagreement rates (paper Table 4)."""
    y = pred["targets"]
    n = len(y)
    metrics: dict[str, float] = {"num_images": n, "loss": F.cross_entropy(pred["logits"], y).item()}
    suffix = {"logits": "", "cls": "_cls", "dist": "_dist", "teacher": "_teacher"}
    for head, s in suffix.items():
        if head in pred:
            metrics[f"top1{s}"] = 100.0 * topk_correct(pred[head], y, 1) / n
            metrics[f"top5{s}"] = 100.0 * topk_correct(pred[head], y, 5) / n
    argmax = {head: pred[head].argmax(1) for head in suffix if head in pred}
    names = list(argmax)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            metrics[f"disagree_{a}_{b}"] = (argmax[a] != argmax[b]).float().mean().item()
    return metrics


def evaluate(model, loader, device, amp_dtype, teacher_logits: torch.Tensor | None = None,
             progress: bool = False) -> dict[str, float]:
    """Metrics of `model`; with the teacher's logits on the same loader, also the teacher's and the
    disagreement rates (the frozen teacher's predictions are computed once per run)."""
    pred = predict(model, loader, device, amp_dtype, progress)
    if teacher_logits is not None:
        pred["teacher"] = teacher_logits
    return metrics_from_predictions(pred)


# ----------------------------------------------------------------------------- run directory
def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def default_output(config: TrainConfig) -> Path:
    return Path("runs") / f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def plot_curves(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
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


# ----------------------------------------------------------------------------- the run
# Settings that change how a run executes, not what it computes: they may differ on resume and reuse.
EXECUTION_ONLY = ("progress", "threads", "eval_batch_size", "save_every_minutes", "num_workers")

@dataclass
class RunResult:
    output: Path
    metrics: dict[str, Any]


def fit(config: TrainConfig | None, resume: str | Path | None = None,
        stop_after_steps: int | None = None) -> RunResult:
    """Train `config` to the end, or resume the run in `resume` (with `config`, only its execution-only
    settings apply: threads, progress, ...). `stop_after_steps` stops early, leaving a
    resumable run (used to test exact resume and to split long runs)."""
    from tqdm import tqdm

    from .checkpoint import save_model
    from .data import BatchLoader, describe
    from .models import create_model, model_spec
    from .teacher import load_teacher

    if resume is not None:
        run_dir = Path(resume)
        saved = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else None
        if saved is None or not (run_dir / "state.pt").exists():
            raise FileNotFoundError(f"{run_dir} is not a resumable run (needs config.json and state.pt)")
        saved_config = TrainConfig.from_dict(saved["train"])
        # Execution-only settings may change on resume; everything that shapes the result may not.
        config = saved_config if config is None else saved_config.replace(
            **{k: getattr(config, k) for k in EXECUTION_ONLY})
    else:
        run_dir = Path(config.output) if config.output else default_output(config)
        if (run_dir / "state.pt").exists():
            raise ValueError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it "
                             "or choose another --output")

    # Everything that can be refused is checked before any training starts: cheap checks first.
    from .models import model_family

    model_family(config.model)
    if config.teacher is not None and config.distillation != "none" and not Path(config.teacher).is_dir() \
            and config.teacher_weights is None:
        raise ValueError(f"teacher {config.teacher!r} is not a run directory; give an architecture name "
                         "with --teacher-weights FILE")
    device = resolve_device(config.device)
    amp_dtype = resolve_precision(config.precision, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    train_data = load_split(config, "train")
    val_data = load_split(config, "val")
    seed_everything(config.seed)
    model = create_model(config.model, **model_overrides(config, train_data)).to(device)
    teacher, teacher_info = None, {}
    if config.distillation != "none":
        teacher, teacher_info = load_teacher(config.teacher, config.teacher_weights,
                                             num_classes=train_data.num_classes, in_chans=train_data.in_chans,
                                             img_size=train_data.img_size)
        teacher = teacher.to(device)
        if amp_dtype != torch.float16:  # the fused inference path (deit.speed) takes fp32 or bf16
            from .speed import prepare_model_for_inference

            teacher.model = prepare_model_for_inference(teacher.model, precision_name(amp_dtype))
    criterion = build_criterion(config)
    mixup = SeededMixup(config, train_data.num_classes) if config.mixing else None
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if config.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=config.ema_decay)

    train_loader = BatchLoader(train_data, config.batch_size, train=True, augment=augment_config(config),
                               repeats=config.repeats, seed=config.seed, device=device,
                               num_workers=config.num_workers)
    val_loader = BatchLoader(val_data, config.eval_batch_size, train=False, device=device)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_data)} training images give no full batch of {config.batch_size}; "
                         "lower --batch-size")
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))

    run_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, start_batch, step, best_top1 = 0, 0, 0, -1.0
    epoch_sums: dict[str, float] = {}
    if resume is not None:
        state = torch.load(run_dir / "state.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        best_top1, epoch_sums = state["best_top1"], state["epoch_sums"]
        set_rng_state(state["rng"])
    else:
        run_config = {
            "train": config.to_dict(),
            "model": model_spec(model, config.model),
            "data": describe(train_data),
            "preprocessing": {"mean": list(train_data.mean), "std": list(train_data.std),
                              "img_size": list(train_data.img_size), "in_chans": train_data.in_chans},
            "teacher": teacher_info,
            "precision": precision_name(amp_dtype),
            "device": str(device),
            "steps_per_epoch": steps_per_epoch,
            "torch": torch.__version__,
        }
        atomic_write_text(run_dir / "config.json", json.dumps(run_config, indent=2))
        (run_dir / "log.jsonl").unlink(missing_ok=True)

    def save_state(epoch: int, batch: int) -> None:
        atomic_torch_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "epoch": epoch, "batch": batch, "step": step,
            "best_top1": best_top1, "epoch_sums": epoch_sums, "rng": rng_state(),
        }, run_dir / "state.pt")

    peak_lr = scaled_lr(config)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"deit train: {config.model} ({num_params:,} params) on {config.data} "
          f"({len(train_data):,} train / {len(val_data):,} val), {config.epochs} epochs x {steps_per_epoch} steps, "
          f"{precision_name(amp_dtype)} on {device}, distillation={config.distillation} -> {run_dir}", flush=True)
    metrics: dict[str, Any] = {}
    teacher_val_logits = None
    last_save = time.monotonic()
    stopped = False
    for epoch in range(start_epoch, config.epochs):
        model.train()
        train_loader.set_epoch(epoch)
        first_batch = start_batch if epoch == start_epoch else 0
        if first_batch == 0:
            epoch_sums = {"loss": 0.0, "base": 0.0, "distill": 0.0, "n": 0, "images": 0,
                          "compute_s": 0.0, "wait_s": 0.0}
        bar = tqdm(total=steps_per_epoch, initial=first_batch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not config.progress, dynamic_ncols=True, leave=False)
        batches = iter(train_loader.iterate(first_batch))
        lr = lr_at(step, total_steps, warmup_steps, peak_lr, config.warmup_lr, config.min_lr)
        for batch_index in range(first_batch, steps_per_epoch):
            t0 = time.perf_counter()
            x, y = next(batches)
            t1 = time.perf_counter()
            lr = lr_at(step, total_steps, warmup_steps, peak_lr, config.warmup_lr, config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if mixup is not None:
                x, y = mixup(x, y, step)
            with autocast(device, amp_dtype):
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(x).float()
                loss = criterion(model(x), y, teacher_logits)
            if not torch.isfinite(loss.total):
                save_state(epoch, batch_index)
                raise FloatingPointError(f"loss is {loss.total.item()} at step {step}; state saved to {run_dir}, "
                                         "lower --lr or set --clip-grad")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss.total).backward()
            if config.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            t2 = time.perf_counter()
            epoch_sums["loss"] += loss.total.item()
            epoch_sums["base"] += loss.base.item()
            epoch_sums["distill"] += loss.distill.item() if loss.distill is not None else 0.0
            epoch_sums["n"] += 1
            epoch_sums["images"] += len(x)
            epoch_sums["wait_s"] += t1 - t0
            epoch_sums["compute_s"] += t2 - t1
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_sums['loss'] / epoch_sums['n']:.3f}", lr=f"{lr:.2e}",
                            ims=f"{len(x) / (t2 - t0):.0f}")
            if stop_after_steps is not None and step >= stop_after_steps:
                save_state(epoch, batch_index + 1)
                stopped = True
                break
            if time.monotonic() - last_save > config.save_every_minutes * 60:
                save_state(epoch, batch_index + 1)
                last_save = time.monotonic()
        bar.close()
        if stopped:
            break

        n = max(1, epoch_sums["n"])
        elapsed = epoch_sums["wait_s"] + epoch_sums["compute_s"]
        row: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "lr": lr,
            "train_loss": epoch_sums["loss"] / n, "train_base_loss": epoch_sums["base"] / n,
            "train_distill_loss": epoch_sums["distill"] / n,
            "images_per_s": epoch_sums["images"] / max(elapsed, 1e-9),
            "data_wait_fraction": epoch_sums["wait_s"] / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
        }
        is_last = epoch + 1 == config.epochs
        if is_last or (epoch + 1) % config.eval_every == 0:
            if teacher is not None and teacher_val_logits is None:
                teacher_val_logits = predict(teacher, val_loader, device, amp_dtype, config.progress,
                                             desc="teacher eval")["logits"]
            metrics = evaluate(model, val_loader, device, amp_dtype, teacher_val_logits, config.progress)
            row.update({f"val_{k}": v for k, v in metrics.items() if not k.startswith("disagree")})
            if ema is not None:
                ema_metrics = evaluate(ema.module, val_loader, device, amp_dtype)
                row.update({"val_ema_top1": ema_metrics["top1"], "val_ema_top5": ema_metrics["top5"]})
                metrics.update({"ema_top1": ema_metrics["top1"], "ema_top5": ema_metrics["top5"]})
            if metrics["top1"] > best_top1:
                best_top1 = metrics["top1"]
                save_model(model, run_dir, name=config.model, filename="best.safetensors")
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        summary = f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f}, {row['images_per_s']:.0f} im/s"
        if "val_top1" in row:
            summary += f", val top-1 {row['val_top1']:.2f}%"
            if "val_top1_cls" in row and "val_top1_dist" in row:
                summary += f" (cls {row['val_top1_cls']:.2f}, dist {row['val_top1_dist']:.2f})"
        print(summary, flush=True)
        save_model(model, run_dir, name=config.model)
        if ema is not None:
            save_model(ema.module, run_dir, name=config.model, filename="ema.safetensors")
        save_state(epoch + 1, 0)
        last_save = time.monotonic()

    if stopped:
        return RunResult(run_dir, {})
    log_rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    metrics.update({
        "model": config.model, "params": num_params, "best_top1": best_top1, "epochs": config.epochs,
        "train_time_s": sum(r["epoch_time_s"] for r in log_rows),
        "images_per_s": float(np.median([r["images_per_s"] for r in log_rows])),
        "data_wait_fraction": float(np.median([r["data_wait_fraction"] for r in log_rows])),
    })
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    plot_curves(run_dir / "log.jsonl", run_dir / "curves.png")
    return RunResult(run_dir, metrics)


def evaluate_run(run_dir: str | Path, *, data: str | None = None, data_dir: str | None = None,
                 weights: str = "model", batch_size: int = 512, device: str = "auto", precision: str = "auto",
                 teacher: str | None = None, teacher_weights: str | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Evaluate a run directory's weights (model | best | ema) on the val split of its data set (or `data`),
    with the run's own preprocessing. With `teacher`, also the teacher and the disagreement rates."""
    import dataclasses

    from .checkpoint import load_run
    from .data import BatchLoader
    from .teacher import load_teacher

    model, saved = load_run(run_dir, weights)
    train_config = TrainConfig.from_dict(saved["train"]) if "train" in saved else None
    if data is None and train_config is None:
        raise ValueError(f"{run_dir} does not say which data it was trained on; pass --data")
    eval_config = train_config or TrainConfig()
    eval_config = eval_config.replace(data=data or eval_config.data,
                                      data_dir=data_dir if data_dir is not None or data else eval_config.data_dir,
                                      train_subset=None)
    val_data = load_split(eval_config, "val")
    prep = saved.get("preprocessing")
    if prep:  # normalise as the model was trained, whatever the data set's own statistics
        val_data = dataclasses.replace(val_data, mean=tuple(prep["mean"]), std=tuple(prep["std"]))
    torch_device = resolve_device(device)
    amp_dtype = resolve_precision(precision, torch_device)
    model = model.to(torch_device)
    loader = BatchLoader(val_data, batch_size, train=False, device=torch_device)
    teacher_logits = None
    if teacher is not None:
        teacher_model, _ = load_teacher(teacher, teacher_weights, num_classes=val_data.num_classes,
                                        in_chans=val_data.in_chans, img_size=val_data.img_size)
        teacher_logits = predict(teacher_model.to(torch_device), loader, torch_device, amp_dtype)["logits"]
    metrics = evaluate(model, loader, torch_device, amp_dtype, teacher_logits, progress)
    metrics.update({"run": str(run_dir), "weights": weights, "data": eval_config.data,
                    "precision": precision_name(amp_dtype)})
    return metrics


def fit_or_reuse(config: TrainConfig) -> RunResult:
    """Train `config` into config.output, reusing a finished run of the same settings and resuming an
    interrupted one; a directory holding a run of other settings is refused."""
    run_dir = Path(config.output)
    saved_path = run_dir / "config.json"
    if saved_path.exists():
        saved = TrainConfig.from_dict(json.loads(saved_path.read_text())["train"])
        ignore = {k: None for k in EXECUTION_ONLY}
        if saved.replace(**ignore) != config.replace(**ignore):
            differing = [k for k, v in config.to_dict().items() if saved.to_dict()[k] != v and k not in ignore]
            raise ValueError(f"{run_dir} holds a run with other settings ({', '.join(differing)}); "
                             "delete it or choose another output directory")
        if (run_dir / "metrics.json").exists():
            print(f"reusing the finished run in {run_dir}", flush=True)
            return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()))
        if (run_dir / "state.pt").exists():
            print(f"resuming the interrupted run in {run_dir}", flush=True)
            return fit(config, resume=run_dir)
    return fit(config)
