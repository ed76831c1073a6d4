"""Teachers for distillation: a run directory of this project, a hub name (hf-hub:ORG/NAME, timm:NAME: the model
its config.json describes, deit.hub), or an architecture name + weights (a file, or a hub name)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class LogitsOnly(nn.Module):
    """Wraps any classifier so that it returns a plain logits tensor. input_size: the (H, W) the model takes;
    other inputs are resized to it (bicubic, as DeiT's image transforms), so a teacher trained at one resolution
    can teach a student fine-tuned at another."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int] | None = None):
        super().__init__()
        self.model, self.input_size = model, input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False,
                              antialias=x.shape[-2] > self.input_size[0])
        out = self.model(x)
        return out.logits if hasattr(out, "logits") else out


def _input_size(model: nn.Module) -> tuple[int, int] | None:
    """The fixed input size of a model that has one (ours, timm ViTs); None for one that takes any (CNNs)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "patch_size"):
        return tuple(config.img_size)
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "strict_img_size", False) and getattr(embed, "img_size", None):
        return tuple(embed.img_size)
    return None


def _build_architecture(name: str, num_classes: int, in_chans: int) -> nn.Module:
    """An architecture name: ours (registered or spelled), a prefixed timm:/torchvision: one, else a bare timm or
    torchvision name (deit.models builds theirs too)."""
    import timm
    import torchvision

    from .models import create_model, model_family

    try:
        model_family(name)
    except ValueError:
        pass
    else:
        return create_model(name, num_classes=num_classes, in_chans=in_chans)
    for library, known in (("timm", timm.is_model), ("torchvision", torchvision.models.list_models().__contains__)):
        if known(name):
            return create_model(f"{library}:{name}", num_classes=num_classes, in_chans=in_chans)
    raise ValueError(f"teacher {name!r} is neither a run directory nor a known architecture "
                     "(deit, timm or torchvision name)")


def load_teacher(spec: str, weights: str | None, *, num_classes: int, in_chans: int,
                 img_size: tuple[int, int]) -> tuple[nn.Module, dict]:
    """Build the teacher in eval mode, frozen. Refuses one that does not fit the data, before any training."""
    from .checkpoint import load_checkpoint
    from .hub import is_hub_source, local_source

    hub = None
    if weights is None and is_hub_source(spec):  # weights by name: the model the repo describes
        path, hub = local_source(spec)
        result = load_checkpoint(path)
        model, info = result.model, {"teacher": spec, "format": result.format}
    elif Path(spec).is_dir():
        if weights is not None:
            raise ValueError("--teacher-weights is only for an architecture-name teacher; "
                             f"{spec} is a run directory that carries its weights")
        result = load_checkpoint(spec)
        model, info = result.model, {"teacher": str(spec), "format": result.format}
    else:
        if weights is None:
            raise ValueError(f"teacher {spec!r} is not a run directory; give its weights with --teacher-weights FILE "
                             "(or name them: hf-hub:ORG/NAME, timm:NAME; nothing else is downloaded)")
        model = _build_architecture(spec, num_classes, in_chans)
        path, hub = local_source(weights)
        result = load_checkpoint(path, model)
        info = {"teacher": spec, "teacher_weights": str(weights), "format": result.format}
    if hub is not None:
        info["hub"] = hub.record()
    input_size = _input_size(model)
    teacher = LogitsOnly(model, input_size).eval().requires_grad_(False)
    if input_size is not None and input_size != tuple(img_size):
        info["resized_input"] = {"from": list(img_size), "to": list(input_size), "mode": "bicubic"}
    config = getattr(model, "config", None)
    if config is not None:  # our models say what they take: check before running anything
        if config.num_classes != num_classes:
            raise ValueError(f"teacher predicts {config.num_classes} classes but the data has {num_classes}")
        if config.in_chans != in_chans:
            raise ValueError(f"teacher takes {config.in_chans}-channel images but the data has {in_chans}")
    with torch.no_grad():
        try:
            out = teacher(torch.zeros(2, in_chans, *img_size))
        except Exception as e:
            raise ValueError(f"teacher cannot take the data's {in_chans}x{img_size[0]}x{img_size[1]} images"
                             f"{f' resized to {input_size[0]}x{input_size[1]}' if info.get('resized_input') else ''}: "
                             f"{e}") from None
    if out.shape != (2, num_classes):
        raise ValueError(f"teacher outputs shape {tuple(out.shape[1:])} per image but the data has {num_classes} classes")
    return teacher, info
