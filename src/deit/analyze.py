"""`deit analyze`: what a trained ViT/DeiT run looks at and how it errs.

Per run: attention maps of the class and distillation tokens (last block, and attention rollout, Abnar & Zuidema
2020) over sample val images; the cosine similarity of the two tokens after each block (DeiT paper §5.1: 0.06 at
the input, 0.93 at the output for DeiT-B); the confusion matrix and per-class accuracy. Across runs: the training
curves of every run that has a log.jsonl, in one plot.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import CONFIG_NAME, RUN_WEIGHTS, is_run_dir, load_run
from .models.vit import VisionTransformer

TOKENS = ("cls", "dist")  # prefix rows of a distilled model, in order


# ----------------------------------------------------------------------------------------------- maths


def attention_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (B, T, T) of per-block attentions depth × (B, heads, T, T): average the heads, add the
    identity for the residual path, renormalise the rows, and multiply through the blocks (later blocks on the
    left, so row t says how much each input token flows into token t at the output)."""
    rollout = None
    for attn in attentions:
        a = attn.float().mean(1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ValueError("attention rollout needs at least one block")
    return rollout


def token_maps(matrix: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Rows of the prefix tokens of a (B, T, T) attention-like matrix, restricted to the patch columns and laid
    out on the patch grid: {"cls": (B, h, w)} and, with 2 prefix tokens, "dist". Values as they are (the
    attention mass on each patch), not rescaled."""
    return {name: matrix[:, i, num_prefix:].reshape(-1, *grid) for i, name in enumerate(TOKENS[:num_prefix])}


def last_block_maps(attentions: list[torch.Tensor], num_prefix: int, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Head-averaged attention of the prefix tokens to the patches in the last block."""
    return token_maps(attentions[-1].float().mean(1), num_prefix, grid)


def token_cosine(tokens: list[torch.Tensor]) -> list[float]:
    """Cosine similarity of token 0 (cls) and token 1 (dist) at each recorded layer, averaged over the batch."""
    return [F.cosine_similarity(t[:, 0].float(), t[:, 1].float(), dim=-1).mean().item() for t in tokens]


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    index = targets.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(matrix: torch.Tensor) -> list[float | None]:
    """Percent of each true class predicted right (None for a class without images)."""
    totals = matrix.sum(1)
    return [100.0 * int(matrix[i, i]) / int(n) if n else None for i, n in enumerate(totals)]


# ----------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_attention_grid(images: torch.Tensor, columns: dict[str, torch.Tensor], titles: list[str], path: Path) -> None:
    """One row per image: the image, then each map (B, h, w) upsampled to the image and overlaid on it."""
    plt = _pyplot()
    n, cols = len(images), 1 + len(columns)
    fig, axes = plt.subplots(n, cols, figsize=(2.1 * cols, 2.1 * n), squeeze=False)
    pictures = images.float().permute(0, 2, 3, 1) / 255
    size = tuple(images.shape[2:])
    # Upsampled: a patch's weight covers its pixels, smoothly.
    columns = {name: F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
               for name, maps in columns.items()}
    gray = images.shape[1] == 1
    for i in range(n):
        picture = (pictures[i, ..., 0] if gray else pictures[i]).numpy()
        axes[i, 0].imshow(picture, cmap="gray" if gray else None)
        axes[i, 0].set_title(titles[i], fontsize=7)
        for j, (name, maps) in enumerate(columns.items(), start=1):
            m = maps[i]
            m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)  # each map on its own scale
            axes[i, j].imshow(picture, cmap="gray" if gray else None)
            axes[i, j].imshow(m.numpy(), cmap="inferno", alpha=0.6)
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_cosine(layers: list[str], cosine: list[float], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(range(len(cosine)), cosine, marker="o")
    ax.set_xticks(range(len(layers)), layers, rotation=45, fontsize=7)
    ax.set(ylim=(min(0.0, min(cosine)) - 0.05, 1.05), ylabel="cosine(cls, dist)",
           title="class vs distillation token")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: torch.Tensor, classes: list[str], path: Path) -> None:
    plt = _pyplot()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=7)
    accuracy = per_class_accuracy(matrix)
    ax.set_yticks(range(k), [c if a is None else f"{c} ({a:.0f} %)" for c, a in zip(classes, accuracy)], fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion ({int(matrix.sum())} val images)")
    if k <= 20:  # counts stay legible only on small matrices
        top = int(matrix.max())
        for (i, j), count in zip(((i, j) for i in range(k) for j in range(k)), matrix.flatten().tolist()):
            ax.text(j, i, count, ha="center", va="center", fontsize=6, color="white" if count > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(logs: dict[str, list[dict]], path: Path) -> None:
    """val_top1 and train_loss against epoch, one line per run."""
    plt = _pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, rows in logs.items():
        for ax, key in ((ax_acc, "val_top1"), (ax_loss, "train_loss")):
            points = [(r["epoch"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker=".", label=label)
    ax_acc.set(xlabel="epoch", ylabel="top-1 %", title="validation top-1")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="train loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- runs


@dataclass
class RunToAnalyze:
    path: Path
    label: str  # its output folder name
    model: VisionTransformer
    classes: list[str]
    val: object  # deit.data.ImageData, normalised as the run was trained


def _check_run(run_dir: Path, weights: str, data: str | None) -> dict:
    """The run's config.json, or one clear error; reads no weights."""
    if not run_dir.is_dir() or not is_run_dir(run_dir):
        raise ValueError(f"{run_dir} is not a run directory of `deit train` (no config.json with a model)")
    saved = json.loads((run_dir / CONFIG_NAME).read_text())  # is_run_dir has read it once already
    family = saved["model"].get("family")
    if family != "vit":
        raise ValueError(f"{run_dir} is a {family} run: attention maps need a ViT/DeiT run")
    if not (run_dir / f"{weights}.safetensors").is_file():
        raise ValueError(f"{run_dir} has no {weights}.safetensors (choose --weights among those the run saved)")
    prep = saved.get("preprocessing")
    if not prep:
        raise ValueError(f"{run_dir} records no preprocessing (mean, std, size): it was not written by `deit train`")
    if prep["img_size"][0] != prep["img_size"][1]:
        raise ValueError(f"{run_dir} trained on {prep['img_size'][0]}x{prep['img_size'][1]} images; "
                         "only square images are supported")
    if data is None and "data" not in saved.get("train", {}):
        raise ValueError(f"{run_dir} does not say which data it was trained on; pass --data")
    return saved


def _labels(run_dirs: list[Path]) -> list[str]:
    """Output folder names: the run folders' names, numbered where two are equal."""
    names = [p.resolve().name or "run" for p in run_dirs]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def prepare_runs(run_dirs, *, weights: str = "model", data: str | None = None, data_dir: str | None = None,
                 max_val: int | None = None) -> list[RunToAnalyze]:
    """Every run's model and val data, checked before anything is computed or written."""
    from .data import load_data
    from .data.canvas import place_on_canvas

    if weights not in RUN_WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(RUN_WEIGHTS)}, got {weights!r}")
    if max_val is not None and max_val < 1:
        raise ValueError(f"max_val must be at least 1, got {max_val}")
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise ValueError("no run given")
    configs = [_check_run(p, weights, data) for p in run_dirs]  # all cheap checks first
    loaded: dict[tuple, object] = {}
    runs = []
    for path, label, saved in zip(run_dirs, _labels(run_dirs), configs):
        train = saved.get("train", {})
        prep = saved["preprocessing"]
        name = data or train["data"]
        where = data_dir if data_dir is not None or data else train.get("data_dir")
        key = (name, where, prep["img_size"][0])
        options = {k: train[k] for k in ("cache_images", "eval_crop_ratio", "skip_bad_images") if k in train}
        canvas = None if data else train.get("canvas")  # images placed on a canvas as in training (deit.data.canvas)
        key = (*key, tuple(sorted(options.items())), canvas)
        if key not in loaded:  # runs on the same data share one copy; a folder streamed or cached as it trained
            size = train.get("img_size") if canvas else prep["img_size"][0]
            loaded[key] = load_data(name, "val", data_dir=where, img_size=size, **options)
            if canvas:
                loaded[key] = place_on_canvas(loaded[key], canvas)
        val = loaded[key]
        if max_val is not None:
            val = val.subset(range(min(max_val, len(val))))
        # Normalise as the model was trained, whatever the data set's own statistics.
        val = dataclasses.replace(val, mean=tuple(prep["mean"]), std=tuple(prep["std"]))
        model, _ = load_run(path, weights)
        classes = saved.get("data", {}).get("classes") or val.classes
        if not len(classes) == model.num_classes == val.num_classes:
            raise ValueError(f"{path}: the model has {model.num_classes} classes, the run names {len(classes)}, "
                             f"the val data of {name} has {val.num_classes}")
        if val.in_chans != model.config.in_chans:
            raise ValueError(f"{path}: the model takes {model.config.in_chans} channels, {name} has {val.in_chans}")
        runs.append(RunToAnalyze(path, label, model.eval(), list(classes), val))
    return runs


def val_pixels(val, count: int | None = None) -> torch.Tensor:
    """The first `count` val images, uint8 [N, C, H, W], before normalising: an in-memory split's own, a streamed
    folder's as its eval transform crops them."""
    from .data import FolderData
    from .data.transforms import eval_pixels

    if isinstance(val, FolderData):
        return eval_pixels(val, range(len(val) if count is None else min(count, len(val))))
    return val.images[:count]


def normalised(val, count: int | None = None, pixels: torch.Tensor | None = None) -> torch.Tensor:
    """The first `count` val images as the model sees them (float, normalised)."""
    images = (val_pixels(val, count) if pixels is None else pixels).float() / 255
    mean = torch.tensor(val.mean).view(1, -1, 1, 1)
    std = torch.tensor(val.std).view(1, -1, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def analyze_attention(run: RunToAnalyze, out_dir: Path, num_images: int, device: torch.device) -> dict:
    """attention.png, and for a distilled model token_cosine.json/.png. Returns the files written."""
    model = run.model.to(device)
    count = min(num_images, len(run.val))
    pixels = val_pixels(run.val, count)
    trace = model.trace(normalised(run.val, count, pixels).to(device))
    attentions = [a.cpu() for a in trace.attentions]
    prefix, grid = model.config.num_prefix_tokens, model.config.grid_size
    last = last_block_maps(attentions, prefix, grid)
    rollout = token_maps(attention_rollout(attentions), prefix, grid)
    columns = {f"{t} (last block)": last[t] for t in last} | {f"{t} (rollout)": rollout[t] for t in rollout}
    predicted = trace.output.logits.argmax(-1).cpu().tolist()
    titles = [f"true {run.classes[int(y)]}\npred {run.classes[p]}" for y, p in zip(run.val.labels[:count], predicted)]
    written = {"attention": out_dir / "attention.png"}
    plot_attention_grid(pixels, columns, titles, written["attention"])
    if prefix == 2:  # a class and a distillation token
        layers = ["input"] + [f"block {i + 1}" for i in range(len(attentions))]
        cosine = token_cosine(trace.tokens)
        written["token_cosine_json"] = out_dir / "token_cosine.json"
        written["token_cosine_png"] = out_dir / "token_cosine.png"
        written["token_cosine_json"].write_text(json.dumps(
            {"layers": layers, "cosine": cosine, "num_images": count,
             "note": "cosine(cls, dist) of the residual tokens: the input after pos_embed, then each block's output"},
            indent=2) + "\n")
        plot_cosine(layers, cosine, written["token_cosine_png"])
    return written


def analyze_confusion(run: RunToAnalyze, out_dir: Path, batch_size: int, device: torch.device) -> dict:
    """confusion.json/.png over the val images. Returns the files written."""
    from .data import make_loader
    from .engine.evaluate import predict

    loader = make_loader(run.val, batch_size, train=False, device=device, num_workers=None)
    out = predict(run.model.to(device), loader, device, None)  # fp32: the analysis should not depend on AMP
    matrix = confusion_matrix(out["logits"].argmax(1), out["targets"], len(run.classes))
    accuracy = per_class_accuracy(matrix)
    result = {
        "classes": run.classes,
        "matrix": matrix.tolist(),  # rows: true class, columns: predicted class
        "per_class_accuracy": dict(zip(run.classes, accuracy)),
        "top1": 100.0 * int(matrix.diagonal().sum()) / int(matrix.sum()),
        "num_images": int(matrix.sum()),
    }
    for head in ("cls", "dist"):  # a distilled model's heads alone
        if head in out:
            result[f"top1_{head}"] = 100.0 * float((out[head].argmax(1) == out["targets"]).float().mean())
    written = {"confusion_json": out_dir / "confusion.json", "confusion_png": out_dir / "confusion.png"}
    written["confusion_json"].write_text(json.dumps(result, indent=2) + "\n")
    plot_confusion(matrix, run.classes, written["confusion_png"])
    return written


def analyze(run_dirs, output, *, num_images: int = 8, weights: str = "model", data: str | None = None,
            data_dir: str | None = None, max_val: int | None = None, batch_size: int = 512,
            device: str = "auto") -> dict[str, dict[str, Path]]:
    """Write the analysis of each run to output/<run folder name>/ and the runs' curves to output/curves.png.
    Returns {run label (or "curves"): {what: file}}."""
    from .engine.runtime import resolve_device

    if num_images < 1:
        raise ValueError(f"--images must be at least 1, got {num_images}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a directory")
    try:
        torch_device = resolve_device(device)
    except RuntimeError as e:  # torch's own message for a device string it cannot parse
        raise ValueError(f"--device {device!r}: {str(e).splitlines()[0]}") from None
    runs = prepare_runs(run_dirs, weights=weights, data=data, data_dir=data_dir, max_val=max_val)
    written: dict[str, dict[str, Path]] = {}
    for run in runs:
        out_dir = output / run.label
        out_dir.mkdir(parents=True, exist_ok=True)
        written[run.label] = (analyze_attention(run, out_dir, num_images, torch_device)
                              | analyze_confusion(run, out_dir, batch_size, torch_device))
    logs = {run.label: rows for run in runs if (rows := read_log(run.path))}
    if logs:
        output.mkdir(parents=True, exist_ok=True)
        written["curves"] = {"curves": output / "curves.png"}
        plot_runs(logs, written["curves"]["curves"])
    return written
