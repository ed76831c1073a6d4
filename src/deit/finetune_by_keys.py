"""Fine-tuning any architecture other than our ViTs: a timm or torchvision one (--model timm:NAME |
torchvision:NAME, e.g. an ImageNet convnet to become the teacher on a user's images) or our ResNet teachers.

The source is a state dict of that architecture (a .pth / .safetensors as the library saves it, or a run
directory of ours). It is matched key by key: every tensor is kept, except
- the classifier (timm's get_classifier(), else the last nn.Linear), re-initialised when its class count differs,
  or, from a run of ours, its class names do;
- the first convolution, adapted by timm's adapt_input_conv when the channel count differs (RGB <-> gray).
Any other missing, unexpected or misshapen tensor is refused in one line, before any data is read. A
re-initialised tensor keeps the value the model was built with (the seeded init), as in deit.finetune."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .checkpoint import adapt_patch_weight


def classifier_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the model's classifier."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module) or next(head.parameters(), None) is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to re-initialise")
        head = linears[-1]
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in head.parameters()}


def first_conv_key(model: nn.Module) -> Optional[str]:
    """The weight of the convolution that takes the image: timm names it; else the first 4-D parameter."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if isinstance(first, str) and f"{first}.weight" in dict(model.named_parameters()):
        return f"{first}.weight"
    return next((n for n, p in model.named_parameters() if p.ndim == 4), None)


def fit_by_keys(path: str, src: dict[str, Tensor], model: nn.Module, model_name: str,
                other_classes: bool = False) -> tuple[dict[str, Tensor], list[dict]]:
    """The model's full state dict built from `src`, and one record per change ({"what", "action", "detail"}),
    as deit.finetune.adapt_state_dict returns them."""
    fresh, head, conv = model.state_dict(), classifier_keys(model), first_conv_key(model)
    out, changes, misfit, reinit = {}, [], [], []
    for key, value in fresh.items():
        if key not in src:
            continue
        weight = src[key]
        if key in head and (weight.shape != value.shape or other_classes):
            reinit.append(key)
        elif weight.shape == value.shape:
            out[key] = weight
        elif key == conv and weight.ndim == 4 and weight.shape[0] == value.shape[0] \
                and weight.shape[2:] == value.shape[2:]:
            out[key] = adapt_patch_weight(weight, value.shape[1])
            changes.append({"what": key, "action": "adapted", "detail": f"{weight.shape[1]} -> {value.shape[1]} "
                            "channels (timm's adapt_input_conv)"})
        else:
            misfit.append(f"{key} {tuple(weight.shape)} vs {tuple(value.shape)}")
    # BatchNorm's step counter is absent from some libraries' files and used by no default momentum
    missing = [k for k in fresh if k not in src and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in src if k not in fresh]
    if misfit or missing or unexpected:
        parts = [f"{len(items)} {label} (e.g. {items[0]})" for label, items in
                 (("misshapen", misfit), ("missing", missing), ("unexpected", unexpected)) if items]
        raise ValueError(f"--finetune {path} is not a state dict of --model {model_name}: {'; '.join(parts)}")
    if reinit:
        shape = tuple(src[sorted(reinit)[-1]].shape)
        why = "other class names" if other_classes and shape == tuple(fresh[sorted(reinit)[-1]].shape) else \
            f"{shape[0]} classes in the source, {fresh[sorted(reinit)[-1]].shape[0]} now"
        changes.append({"what": ", ".join(sorted(reinit)), "action": "re-initialised", "detail": why})
    changes.insert(0, {"what": f"{len(out)} tensors", "action": "kept", "detail": "all but the changes below"})
    return {**fresh, **{k: v.to(fresh[k].dtype) for k, v in out.items()}}, changes


def check_by_keys(path: str, src: dict[str, Tensor], model_name: str) -> None:
    """Before any data is read: the source fits --model but for the classifier and the input channels."""
    from .models import create_model

    fit_by_keys(path, src, create_model(model_name), model_name)
