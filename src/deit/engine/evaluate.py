"""Evaluation: logits over a loader (sharded across processes and gathered back in order), metrics, and
`evaluate_run` for a finished run directory."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from .precision import autocast, precision_name, resolve_precision
from .runtime import Runtime, resolve_device


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).sum())


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, amp_dtype, progress: bool = False,
            desc: str = "eval", rt: Optional[Runtime] = None) -> dict[str, torch.Tensor]:
    """Logits on every image of the loader (fp32, CPU) and the targets: "logits", plus "cls" and "dist" for a
    distilled model. A model may return a plain tensor (a teacher). With a distributed runtime, each process
    predicts its shard (images rank, rank + world, ...) and every process gets the whole set, in order."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    out: dict[str, list] = {"targets": []}
    show = progress and (rt is None or rt.is_main)
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not show):
        with autocast(device, amp_dtype):
            o = model(x.to(device, non_blocking=True))
        heads = {"logits": o if isinstance(o, torch.Tensor) else o.logits}
        if getattr(o, "dist_logits", None) is not None:  # the heads are separate predictions only then
            heads.update(cls=o.cls_logits, dist=o.dist_logits)
        for name, value in heads.items():
            out.setdefault(name, []).append(value.float().cpu())
        out["targets"].append(y.cpu())
    model.train(was_training)
    pred = {k: torch.cat(v) for k, v in out.items()}
    if rt is not None and rt.distributed:
        pred = {k: gather_shards(v, rt) for k, v in pred.items()}
    return pred


def gather_shards(shard: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Reassemble a tensor whose rows rank r holds for items r, r + W, r + 2W, ... (W = world size): pad the
    shards to one length, all-gather, interleave, drop the padding."""
    import torch.distributed as dist

    lengths = torch.tensor([len(shard)], device=rt.comm_device)
    all_lengths = [torch.zeros_like(lengths) for _ in range(rt.world_size)]
    dist.all_gather(all_lengths, lengths)
    counts = [int(n) for n in all_lengths]
    width = max(counts)
    padded = torch.zeros((width, *shard.shape[1:]), dtype=shard.dtype, device=rt.comm_device)
    padded[:len(shard)] = shard.to(rt.comm_device)
    gathered = [torch.empty_like(padded) for _ in range(rt.world_size)]
    dist.all_gather(gathered, padded)
    total = sum(counts)
    full = torch.empty((total, *shard.shape[1:]), dtype=shard.dtype)
    for r, (part, n) in enumerate(zip(gathered, counts)):
        full[r::rt.world_size] = part[:n].cpu()
    assert math.ceil(total / rt.world_size) == width
    return full


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


def inference_view(model: nn.Module, amp_dtype) -> nn.Module:
    """In fp32 on a CPU: a copy of `model` behind deit.speed's inference forward (a ResNet's BatchNorm folded
    into its convolutions, a ViT's fused oneDNN kernels; resnet8_tiny at 40 px evaluates 1.9x faster on an
    AMD EPYC Zen 3); the model itself elsewhere."""
    if amp_dtype not in (None, torch.float32) or next(model.parameters()).device.type != "cpu":
        return model
    from ..speed import prepare_model_for_inference

    return prepare_model_for_inference(copy.deepcopy(model), "fp32")


def evaluate(model, loader, device, amp_dtype, teacher_logits: torch.Tensor | None = None,
             progress: bool = False, rt: Optional[Runtime] = None) -> dict[str, float]:
    """Metrics of `model`; with the teacher's logits on the same loader, also the teacher's and the
    disagreement rates (the frozen teacher's predictions are computed once per run)."""
    pred = predict(inference_view(model, amp_dtype), loader, device, amp_dtype, progress, rt=rt)
    if teacher_logits is not None:
        pred["teacher"] = teacher_logits
    return metrics_from_predictions(pred)


def evaluate_run(source, *, data: str | None = None, data_dir: str | None = None,
                 weights: str = "model", batch_size: int = 512, device: str = "auto", precision: str = "auto",
                 teacher: str | None = None, teacher_weights: str | None = None,
                 progress: bool = False, num_workers: int | None = None) -> dict[str, Any]:
    """Evaluate a model on a val split. source: a loaded deit.model_source.ModelSource or what it takes. A run
    directory's weights (model | best | ema) on the val split of its data set (or `data`), with the run's own
    preprocessing (a streamed folder: its eval transform, decoded in num_workers processes, None: the default); an
    exported directory or a hub model on `data`, through its own evaluation transform, where its classes are the
    data's (the same names, in any order). With `teacher`, also the teacher and the disagreement rates."""
    from ..data import load_split, make_loader
    from ..model_source import ModelSource, load_model_source
    from ..teacher import load_teacher

    loaded = source if isinstance(source, ModelSource) else load_model_source(source, weights)
    model, saved, prep = loaded.model, loaded.run_config, loaded.preprocessing
    if saved is not None:  # a run of ours
        train_config = TrainConfig.from_dict(saved["train"]) if "train" in saved else None
        if data is None and train_config is None:
            raise ValueError(f"{loaded.source} does not say which data it was trained on; pass --data")
        eval_config = train_config or TrainConfig()
        eval_config = eval_config.replace(data=data or eval_config.data,
                                          data_dir=data_dir if data_dir is not None or data else eval_config.data_dir,
                                          train_subset=None)
        stats = saved.get("preprocessing")  # normalise as the model was trained, whatever the data set's statistics
    else:
        if data is None:
            raise ValueError(f"{loaded.source} is no run of `deit train`: pass --data (a data set with its classes)")
        eval_config = TrainConfig(data=data, data_dir=data_dir, img_size=prep.img_size,
                                  eval_crop_ratio=prep.crop_ratio, exact_decode=not prep.fast_decode)
        stats = {"mean": prep.mean, "std": prep.std}
    val_data = load_split(eval_config, "val")
    order = None if saved is not None else _class_order(loaded, val_data)
    if stats:
        val_data = dataclasses.replace(val_data, mean=tuple(stats["mean"]), std=tuple(stats["std"]))
    torch_device = resolve_device(device)
    amp_dtype = resolve_precision(precision, torch_device)
    model = model.to(torch_device)
    loader = make_loader(val_data, batch_size, train=False, device=torch_device, num_workers=num_workers)
    teacher_logits = None
    if teacher is not None:
        teacher_model, _ = load_teacher(teacher, teacher_weights, num_classes=val_data.num_classes,
                                        in_chans=val_data.in_chans, img_size=val_data.img_size)
        teacher_logits = predict(teacher_model.to(torch_device), loader, torch_device, amp_dtype)["logits"]
    pred = predict(inference_view(model, amp_dtype), loader, torch_device, amp_dtype, progress)
    if order is not None:  # the model's outputs in the data's class order
        pred = {k: v if k == "targets" else v[:, order] for k, v in pred.items()}
    if teacher_logits is not None:
        pred["teacher"] = teacher_logits
    metrics = metrics_from_predictions(pred)
    metrics.update({"run": loaded.source, "weights": weights, "data": eval_config.data,
                    "precision": precision_name(amp_dtype)})
    return metrics


def _class_order(loaded, data) -> list[int] | None:
    """Where each of the data's classes is among a model's outputs (None: the same order); one line when the model's
    classes are not the data's, or its input channels are not."""
    if data.in_chans != loaded.preprocessing.in_chans:
        raise ValueError(f"{loaded.source} takes {loaded.preprocessing.in_chans}-channel images but {data.name} has "
                         f"{data.in_chans}-channel ones")
    ours, theirs = list(loaded.classes), list(data.classes)
    if sorted(ours) != sorted(theirs) or len(set(ours)) != len(ours):
        differ = sorted(set(ours) ^ set(theirs))
        raise ValueError(f"{loaded.source} predicts {len(ours)} classes and {data.name} has {len(theirs)}, not the "
                         f"same names ({', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''} in one only): "
                         "its predictions cannot be scored on this data")
    return None if ours == theirs else [ours.index(name) for name in theirs]
