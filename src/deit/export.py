"""ONNX export of a trained model, for serving without PyTorch.

One graph with a dynamic batch axis; a distilled DeiT gives the combined logits and both heads' logits. With
`raw_pixels`, the graph takes uint8 images and normalises them itself, exactly as training did. The graph
carries what a deployment needs to feed it (input layout, normalisation, class names) as ONNX metadata, and is
checked against PyTorch with onnxruntime before the call returns.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import is_run_dir, load_checkpoint, load_run, registered_name
from .data import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, IMAGENET_MEAN, IMAGENET_STD
from .models import DeiTOutput, VisionTransformer

# Agreement demanded of onnxruntime with PyTorch (fp32 both): relative to the largest logit.
CHECK_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: Path
    input_name: str
    input_shape: tuple  # "batch" for the dynamic axis
    input_dtype: str
    output_names: list[str]
    metadata: dict[str, str]
    max_abs_diff: float | None  # onnxruntime vs PyTorch on a random batch; None when not checked


class _Deployable(nn.Module):
    """The model as deployed: optional uint8 -> normalised input, plain tensors out."""

    def __init__(self, model: nn.Module, mean, std, raw_pixels: bool):
        super().__init__()
        self.model = model
        self.raw_pixels = raw_pixels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor):
        if self.raw_pixels:  # the order of ToTensor + Normalize, as the data loader does it
            images = (images.float() / 255 - self.mean) / self.std
        out = self.model(images)
        if isinstance(out, DeiTOutput):
            return out.logits if out.dist_logits is None else (out.logits, out.cls_logits, out.dist_logits)
        return out


def _input_geometry(model: nn.Module, run_config: dict) -> tuple[int, tuple[int, int]]:
    """Channels and size of the input: the model's own, else (a convnet takes any size) what the run trained on."""
    config = getattr(model, "config", None)
    prep = run_config.get("preprocessing", {})
    in_chans = getattr(config, "in_chans", None) or prep.get("in_chans")
    img_size = getattr(config, "img_size", None) or prep.get("img_size")
    if in_chans is None or img_size is None:
        raise ValueError(f"{type(model).__name__} records no input size; export a run directory of `deit train`")
    img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return in_chans, img_size


def _load(src: Path, weights: str, model_name: str | None) -> tuple[nn.Module, dict]:
    """The model and its run config (empty for a bare checkpoint)."""
    if is_run_dir(src):
        return load_run(src, weights)
    if weights != "model":
        raise ValueError(f"--weights {weights} needs a run directory of `deit train`; {src} is not one")
    return load_checkpoint(src, model_name).model, {}


def _normalisation(run_config: dict, in_chans: int) -> tuple[tuple, tuple, str]:
    prep = run_config.get("preprocessing")
    if prep:
        return tuple(prep["mean"]), tuple(prep["std"]), "the training run's"
    # A bare checkpoint (official DeiT, timm): ImageNet statistics, what those models were trained with.
    if in_chans == 1:
        return IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, "ImageNet (assumed: the checkpoint does not record it)"
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet (assumed: the checkpoint does not record it)"


def export_onnx(src, dst, *, weights: str = "model", model: str | None = None, raw_pixels: bool = False,
                opset: int = 18, check: bool = True) -> ExportResult:
    """Export a run directory (its `weights`: model | best | ema) or any checkpoint `load_checkpoint` reads
    (`model`: the registered architecture for one that does not describe itself) to the ONNX file `dst`.

    raw_pixels: the graph takes uint8 images (B, C, H, W) in 0-255 and normalises them itself; otherwise it takes
    float32 images already normalised, like the PyTorch model. check: run a random batch through onnxruntime
    (when installed) and raise unless it agrees with PyTorch."""
    src, dst = Path(src), Path(dst)
    # Every input checked before any work.
    if importlib.util.find_spec("onnxscript") is None:
        raise ModuleNotFoundError("ONNX export needs the onnxscript package: pip install 'deit[onnx]'", name="onnxscript")
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    if dst.is_dir():
        raise ValueError(f"{dst} is a directory; give the ONNX file to write, e.g. {dst / 'model.onnx'}")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"{dst.parent} does not exist; create it first")

    net, run_config = _load(src, weights, model)
    net = net.float().eval().cpu()
    in_chans, img_size = _input_geometry(net, run_config)
    mean, std, stats_source = _normalisation(run_config, in_chans)
    deployable = _Deployable(net, mean, std, raw_pixels).eval()
    distilled = isinstance(net, VisionTransformer) and net.dist_token is not None
    output_names = ["logits", "cls_logits", "dist_logits"] if distilled else ["logits"]

    def example(batch: int) -> torch.Tensor:
        if raw_pixels:
            return torch.randint(0, 256, (batch, in_chans, *img_size), dtype=torch.uint8)
        return torch.randn(batch, in_chans, *img_size)

    # Batch 2 to trace: torch.export would specialise a batch of 1 into the graph.
    program = torch.onnx.export(deployable, (example(2),), dynamo=True, opset_version=opset, verbose=False,
                                input_names=["images"], output_names=output_names,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    data = run_config.get("data", {})
    metadata = {
        "deit.model": run_config.get("model", {}).get("name") or registered_name(net) or type(net).__name__,
        "deit.source": str(src) + ("" if weights == "model" else f" ({weights} weights)"),
        "deit.input": ("uint8 pixels 0-255, NCHW; normalised inside the graph" if raw_pixels
                       else "float32 NCHW, already normalised: (pixels / 255 - mean) / std"),
        "deit.img_size": json.dumps(list(img_size)),
        "deit.mean": json.dumps(list(mean)),
        "deit.std": json.dumps(list(std)),
        "deit.normalisation": stats_source,
        "deit.outputs": ", ".join(output_names),
    }
    if data.get("classes"):
        metadata["deit.classes"] = json.dumps(data["classes"])
    if distilled:
        metadata["deit.combine"] = net.config.combine
    program.model.metadata_props.update(metadata)
    tmp = dst.with_name(dst.name + ".tmp")
    program.save(str(tmp))
    os.replace(tmp, dst)

    max_abs_diff = None
    if check and importlib.util.find_spec("onnxruntime") is not None:
        max_abs_diff = check_onnx(dst, deployable, example(3), output_names)
    return ExportResult(dst, "images", ("batch", in_chans, *img_size), "uint8" if raw_pixels else "float32",
                        output_names, metadata, max_abs_diff)


def check_onnx(path: Path, deployable: nn.Module, images: torch.Tensor, output_names: list[str]) -> float:
    """Largest |onnxruntime - PyTorch| over the outputs for `images`; raises if beyond CHECK_TOLERANCE."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(output_names, {"images": images.numpy()})
    with torch.no_grad():
        want = deployable(images)
    want = want if isinstance(want, tuple) else (want,)
    worst = 0.0
    for name, a, b in zip(output_names, got, want):
        diff = (torch.from_numpy(a) - b).abs().max().item()
        if diff > CHECK_TOLERANCE * max(1.0, b.abs().max().item()):
            raise RuntimeError(f"onnxruntime disagrees with PyTorch on {name} by {diff:.3g}; {path} is not usable")
        worst = max(worst, diff)
    return worst
