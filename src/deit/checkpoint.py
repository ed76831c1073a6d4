"""Model weights in and out: our run directories, official DeiT .pth files, timm state dicts and Hugging Face
transformers DeiT/ViT checkpoints, all read into one key layout (official = timm = ours).

Nothing here unpickles arbitrary objects: every file is read through deit.safe_read.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from .fileio import atomic_write, write_json
from .data.preprocessing import EvalPreprocessing, assumed_imagenet_preprocessing, eval_preprocessing, run_classes
from .hf_layout import hf_export, hf_to_deit, is_hf, vit_config_from_hf
from .models import (
    ViTConfig,
    VisionTransformer,
    create_model,
    heads_for_mean_logits,
    list_models,
    model_config,
    model_family,
    model_from_spec,
    model_spec,
)
from .models.vit import to_2tuple
from .safe_read import is_safetensors, read_json, read_safetensors, torch_load_weights_only
from .timm_layout import timm_export, vit_config_from_timm

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HF_WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
FORMATS = ("deit", "official", "timm", "hf")
LAYOUTS = ("deit", "hf", "timm")


@dataclass
class LoadResult:
    model: nn.Module
    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint, model shape)


# ----------------------------------------------------------------------------------------------- writing


def _write_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def registered_name(model: nn.Module) -> str | None:
    """The registered name whose config equals the model's, if any."""
    config = getattr(unwrap_model(model), "config", None)
    return next((n for n in list_models() if model_config(n) == config), None)


def save_model(model: nn.Module, run_dir, *, name: str | None = None, filename: str = WEIGHTS_NAME) -> Path:
    """Write the weights to run_dir/filename (safetensors) and, unless the run already has one, a config.json
    whose "model" entry rebuilds the architecture. Returns the weights path."""
    model = unwrap_model(model)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / filename
    _write_safetensors(path, model.state_dict(), {"format": "deit"})
    if not (run_dir / CONFIG_NAME).exists():  # the training code may already have written a fuller one
        write_json(run_dir / CONFIG_NAME, {"model": model_spec(model, name or registered_name(model))})
    return path


# ----------------------------------------------------------------------------------------------- reading


def _read_weights_file(file: Path) -> tuple[dict[str, Tensor], str | None]:
    """(state dict as stored, format if the file itself says so)."""
    with open(file, "rb") as f:
        head = f.read(9)
    if is_safetensors(head):
        state_dict, metadata = read_safetensors(file)
        return state_dict, "deit" if metadata.get("format") == "deit" else None
    if file.suffix == ".safetensors":  # never read a file named safetensors as a pickle
        raise ValueError(f"{file} is not a safetensors file (its header is not one); the file is damaged or was "
                         "replaced: restore it or train again")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch zip archive / legacy pickle
        raise ValueError(f"{file} is not a checkpoint: neither a safetensors nor a torch file")
    obj = torch_load_weights_only(file)
    fmt = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj, fmt = obj["model"], "official"  # {'model': ..., 'optimizer': ..., 'args': Namespace, ...}
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{file} holds no model state dict (found {type(obj).__name__})")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(f"{file} holds no model state dict: {_preview(not_tensors)} are not tensors")
    return obj, fmt


def _strip_wrapper_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in ("module.", "_orig_mod."):  # saved from DDP / torch.compile wrappers
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _weights_file(path: Path) -> Path:
    """The weights file a path names: the path itself, or the weights inside a run / HF directory."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        return path
    for name in HF_WEIGHTS_NAMES:  # ours is model.safetensors too
        if (path / name).is_file():
            return path / name
    raise ValueError(f"{path} holds no weights: expected {' or '.join(HF_WEIGHTS_NAMES)}")


def load_state_dict(path) -> tuple[dict[str, Tensor], str]:
    """Read any supported checkpoint; returns (state dict in our key layout, format in FORMATS)."""
    state_dict, fmt = _read_weights_file(_weights_file(Path(path)))
    state_dict = _strip_wrapper_prefixes(state_dict)
    if is_hf(state_dict):
        return hf_to_deit(state_dict), "hf"
    return state_dict, fmt or "timm"


# ------------------------------------------------------------------------------------------ architecture


def infer_vit_config(state_dict: dict[str, Tensor], source: str = "checkpoint") -> ViTConfig:
    """The ViT a bare state dict fits: sizes from the shapes, the head count (not visible in shapes) from the
    registered model of the same width, depth and patch size."""
    try:
        width = state_dict["cls_token"].shape[-1]
        proj = state_dict["patch_embed.proj.weight"]  # (D, C, p, p)
        pos_rows = state_dict["pos_embed"].shape[-2]
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        mlp_ratio = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"cannot tell the architecture of {source}: not a ViT/DeiT state dict; "
                         "name the model (--model NAME)") from None
    distilled = "dist_token" in state_dict
    grid_rows = pos_rows - (2 if distilled else 1)
    side = math.isqrt(grid_rows)
    if side * side != grid_rows:
        raise ValueError(f"cannot tell the architecture of {source}: pos_embed has no square patch grid; "
                         "name the model (--model NAME)")
    patch = proj.shape[-1]
    for name in sorted(list_models(), key=lambda n: ("distilled" in n) != distilled):  # same kind first
        if model_family(name) != "vit":
            continue
        c = model_config(name)
        if (c.embed_dim, c.depth, c.patch_size, c.mlp_ratio) == (width, depth, patch, mlp_ratio):
            return ViTConfig(**{
                **c.to_dict(),
                "img_size": side * patch,
                "in_chans": proj.shape[1],
                "num_classes": state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
                "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
                "distilled": distilled,
            })
    raise ValueError(f"cannot tell the architecture of {source}: no registered model has width {width}, "
                     f"depth {depth}, patch {patch}; name the model (--model NAME)")


def _model_described_by(path: Path, state_dict: dict[str, Tensor]) -> nn.Module:
    """Build the model a checkpoint describes: our run config.json, an HF config.json, or its shapes."""
    config_file = path / CONFIG_NAME if path.is_dir() else path.with_name(CONFIG_NAME)
    # A config.json beside a file counts only for the standard weights file of that directory.
    if config_file.is_file() and (path.is_dir() or path.name in HF_WEIGHTS_NAMES):
        model = described_model(read_json(config_file))
        if model is not None:
            return model
    return VisionTransformer(infer_vit_config(state_dict, str(path)))


def described_model(config: dict) -> nn.Module | None:
    """The model (untrained) a config.json describes: our run's, a transformers DeiT/ViT's or timm's hub layout's;
    None for any other."""
    if "model" in config:
        return model_from_spec(config["model"])
    if "model_type" in config:
        return VisionTransformer(vit_config_from_hf(config))
    if "architecture" in config:  # timm's hub layout: our ViT at the sizes its model_args give, else timm's
        vit = vit_config_from_timm(config)
        if vit is not None:
            return VisionTransformer(vit)
        return create_model(timm_layout_name(config), num_classes=config.get("num_classes", 1000))
    return None


def timm_layout_name(config: dict) -> str:
    """The model a timm hub-layout config.json ({"architecture", "num_classes", "pretrained_cfg"}) describes: ours
    when we register that name (timm's DeiTs have our key layout), else timm's architecture."""
    arch = config["architecture"]
    return arch if arch in list_models() else f"timm:{arch}"


def _preview(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _misfit_message(label: str, path, missing, unexpected, mismatched) -> str:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys ({_preview(missing)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys ({_preview(unexpected)})")
    if mismatched:
        shapes = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
        parts.append(f"{len(mismatched)} shape mismatches ({_preview(shapes, 3)})")
    return f"checkpoint does not fit {label}: {', '.join(parts)} [{path}]"


def _fit_pos_embed(state_dict: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """Resample a square pos_embed grid to the model's grid (same prefix tokens and width)."""
    ckpt, target = state_dict.get("pos_embed"), model.pos_embed
    prefix = model.config.num_prefix_tokens
    if ckpt is None or ckpt.shape == target.shape or ckpt.ndim != 3 or ckpt.shape[-1] != target.shape[-1]:
        return state_dict
    side = math.isqrt(ckpt.shape[1] - prefix)
    if side * side != ckpt.shape[1] - prefix:
        return state_dict  # not a square grid after our prefix: reported as a mismatch
    log.info("resampling pos_embed from a %dx%d to a %dx%d patch grid", side, side, *model.config.grid_size)
    resampled = resample_pos_embed(ckpt, model.config.grid_size, prefix, (side, side))
    return {**state_dict, "pos_embed": resampled}


def load_checkpoint(path, model: nn.Module | str | None = None, *, strict: bool = True,
                    resample_pos_embed: bool = True) -> LoadResult:
    """Load any supported checkpoint into `model` (a module, a registered name, or None to build the model the
    checkpoint describes). strict: raise one ValueError naming every missing, unexpected or misshapen key;
    otherwise load what fits and report the rest in the result."""
    path = Path(path)
    state_dict, fmt = load_state_dict(path)
    if model is None:
        model = _model_described_by(path, state_dict)
    elif isinstance(model, str):
        model = create_model(model)
    label = registered_name(model) or type(unwrap_model(model)).__name__
    target = unwrap_model(model)
    if resample_pos_embed and isinstance(target, VisionTransformer):
        state_dict = _fit_pos_embed(state_dict, target)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [(k, tuple(state_dict[k].shape), tuple(v.shape))
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if strict and (missing or unexpected or mismatched):
        raise ValueError(_misfit_message(label, path, missing, unexpected, mismatched))
    fitting = {k: v for k, v in state_dict.items() if k in expected and v.shape == expected[k].shape}
    target.load_state_dict(fitting, strict=False)
    return LoadResult(model, fmt, missing, unexpected, mismatched)


RUN_WEIGHTS = ("model", "best", "ema")


def is_run_dir(path) -> bool:
    """A run directory of `deit train` (or `save_model`): a config.json whose "model" entry rebuilds the model."""
    config_file = Path(path) / CONFIG_NAME
    return config_file.is_file() and "model" in read_json(config_file)


def load_run(run_dir, weights: str = "model") -> tuple[nn.Module, dict]:
    """A run directory's model with its `weights` (model: the last, best, ema) and its config.json."""
    run_dir = Path(run_dir)
    if weights not in RUN_WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(RUN_WEIGHTS)}, got {weights!r}")
    if not run_dir.is_dir() or not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a run directory of `deit train` (no config.json with a model)")
    weights_file = run_dir / f"{weights}.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file} does not exist (choose --weights among those the run saved)")
    config = read_json(run_dir / CONFIG_NAME)
    model = model_from_spec(config["model"])
    load_checkpoint(weights_file, model)
    return model, config


# -------------------------------------------------------------------------------------------- resampling


def adapt_patch_weight(weight: Tensor, in_chans: int) -> Tensor:
    """A patch convolution's weight for another input channel count, by timm's rule (adapt_input_conv)."""
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])


def resample_pos_embed(pos_embed: Tensor, new_grid, num_prefix_tokens: int, old_grid=None,
                       antialias: bool = False) -> Tensor:
    """pos_embed (B, prefix + H*W, D) for a new patch grid: prefix rows kept, the grid interpolated bicubically
    with align_corners=False as the official fine-tuning code (bilinear would shrink the vectors' norm)."""
    new_grid = to_2tuple(new_grid)
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    rows, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = math.isqrt(rows)
        if side * side != rows:
            raise ValueError(f"pos_embed has {rows} patch rows, not a square grid: pass old_grid")
        old_grid = (side, side)
    old_grid = to_2tuple(old_grid)
    if old_grid[0] * old_grid[1] != rows:
        raise ValueError(f"old_grid {old_grid} does not match the {rows} patch rows of pos_embed")
    if old_grid == new_grid:
        return pos_embed
    grid = grid.reshape(-1, *old_grid, dim).permute(0, 3, 1, 2).float()  # bicubic needs float on CPU
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


# -------------------------------------------------------------------------------------------- conversion


def convert_checkpoint(src, dst, *, layout: str = "deit", model: str | None = None) -> Path:
    """Read any supported checkpoint and write it to a new directory `dst`: layout "deit" (our run layout:
    model.safetensors + config.json), "hf" (an HF transformers directory in the v4 key layout, with
    preprocessor_config.json) or "timm" (timm's hub layout). A run directory's class names and evaluation transform
    go with hf and timm; any other checkpoint gets LABEL_i and DeiT's ImageNet evaluation.
    model: a registered name, needed when src carries no architecture and its shapes do not tell it."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst} exists and is not an empty directory; choose a new destination")
    result = load_checkpoint(src, model)
    net = unwrap_model(result.model)
    if layout == "deit":
        save_model(net, dst, name=model or registered_name(net))
        return dst
    if not isinstance(net, VisionTransformer):
        raise ValueError(f"only ViT/DeiT models have a {layout} layout here, not {type(net).__name__}")
    prep, classes = _serving_record(Path(src), net.config)
    state_dict = net.state_dict()
    if net.config.distilled:  # both libraries average the two heads' logits
        state_dict = heads_for_mean_logits(state_dict, net.config.combine)
        if net.config.combine == "mean_softmax":
            log.info("the %s model averages the two heads' logits; combine='mean_softmax' is not kept", layout)
    if layout == "hf":
        tensors, configs = hf_export(state_dict, net.config, prep, classes)
    else:
        tensors, configs = timm_export(state_dict, net.config, prep, classes, model or registered_name(net))
    dst.mkdir(parents=True, exist_ok=True)
    _write_safetensors(dst / WEIGHTS_NAME, tensors, {"format": "pt"})
    for name, config in configs.items():
        write_json(dst / name, config)
    return dst


def _serving_record(src: Path, config: ViTConfig) -> tuple[EvalPreprocessing, list[str] | None]:
    """A run directory's evaluation transform and class names; DeiT's ImageNet evaluation and no names for any
    other checkpoint."""
    if is_run_dir(src) and "preprocessing" in (run := read_json(src / CONFIG_NAME)):
        prep = eval_preprocessing(run, str(src))
        if (prep.in_chans, (prep.img_size, prep.img_size)) != (config.in_chans, config.img_size):
            raise ValueError(f"{src} records {prep.in_chans}-channel {prep.img_size} px images for a model of "
                             f"{config.in_chans} channels at {config.img_size[0]}x{config.img_size[1]} px")
        return prep, run_classes(run)
    if config.img_size[0] != config.img_size[1]:
        raise ValueError(f"{src}: a {config.img_size[0]}x{config.img_size[1]} px model; only square ones export")
    log.info("%s records no preprocessing: writing DeiT's ImageNet evaluation (crop 0.875, ImageNet mean/std)", src)
    return assumed_imagenet_preprocessing(config.img_size[0], config.in_chans), None
