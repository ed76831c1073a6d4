"""Classify image files with a trained run (decoding and normalising them exactly as its training data was), an
exported model directory or a model named on the hub (deit.model_source: decoded as its own record says)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data import IMAGE_EXTENSIONS, FolderData, ImageData, image_files, make_loader, read_images
from .engine.evaluate import predict
from .engine.precision import resolve_precision
from .engine.runtime import resolve_device
from .model_source import ModelSource, load_model_source


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class, probability), most likely first; a distilled model's heads combined
    cls_head: str | None = None  # a distilled model's class head alone
    dist_head: str | None = None  # and its distillation head alone


def gather_image_files(paths) -> list[Path]:
    """Files as given, folders expanded to the images under them (sorted); raises on a missing path."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise ValueError(f"{path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under it")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    if not files:
        raise ValueError("no images given")
    return files


def classify_files(source, paths, *, weights: str = "model", top_k: int = 5, batch_size: int = 256,
                   device: str = "auto", precision: str = "auto", num_workers: int | None = None) -> list[Prediction]:
    """The prediction of a model for each image file (folders: every image under them), with class names. source: a
    loaded ModelSource, or what deit.model_source takes (a run directory, an exported hf/timm directory, a hub name).
    A streamed folder's run and an exported or hub model see each file through their eval transform (decoded in
    num_workers processes, None: the default); an in-memory run's files are decoded as its data was."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    loaded = source if isinstance(source, ModelSource) else load_model_source(source, weights)  # before any file
    files = gather_image_files(paths)
    model, prep, classes = loaded.model, loaded.preprocessing, loaded.classes
    grayscale = prep.in_chans == 1
    if prep.streamed:  # its eval transform (resize to img_size / crop_ratio, centre crop)
        data = FolderData.from_files(files, classes, grayscale, prep.img_size, prep.crop_ratio, prep.mean, prep.std,
                                     prep.fast_decode)
    else:  # an in-memory run: decoded as its data was (shorter side to img_size, centre crop)
        images = read_images(files, prep.img_size, grayscale=grayscale)
        data = ImageData(images, torch.zeros(len(files), dtype=torch.int64), classes, prep.mean, prep.std, "files",
                         "val")
    torch_device = resolve_device(device)
    loader = make_loader(data, batch_size, train=False, device=torch_device, num_workers=num_workers)
    out = predict(model.to(torch_device), loader, torch_device, resolve_precision(precision, torch_device))
    probs = out["logits"].softmax(-1)  # a mean_softmax model's logits are log-probabilities: the same
    best = probs.topk(min(top_k, len(classes)), dim=1)
    predictions = []
    for i, file in enumerate(files):
        top = [(classes[c], float(p)) for p, c in zip(best.values[i].tolist(), best.indices[i].tolist())]
        heads = {}
        if "cls" in out:
            heads = dict(cls_head=classes[int(out["cls"][i].argmax())], dist_head=classes[int(out["dist"][i].argmax())])
        predictions.append(Prediction(str(file), top, **heads))
    return predictions
