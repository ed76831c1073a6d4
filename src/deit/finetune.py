"""Fine-tuning: start a run from trained ViT/DeiT weights (a run directory of ours, an official .pth, a timm
state dict, a Hugging Face directory, or any of these by name on the hub: deit.hub) and adapt them to the
student the new data needs.

Rules, as the official fine-tuning code and timm's load-time filter apply them:
- the backbone (blocks, norm, cls_token, patch bias) is kept; the architecture must be the same (width, depth,
  heads, MLP ratio, patch size): anything else is refused before any data is read;
- pos_embed's patch grid is resampled bicubically to the new grid (antialiased, as timm's
  resample_abs_pos_embed; for upsampling this equals the official code);
- a change of channel count adapts the patch embedding as timm's adapt_input_conv (RGB -> gray: sum over the
  channels; gray -> RGB: repeat and scale by 1/3, so a gray image in three channels gives the same tokens);
- a head whose class count (or, for our runs, class names) differs is re-initialised; a distilled source into a
  plain model drops dist_token, its pos_embed row and head_dist; the reverse initialises them afresh.
A re-initialised tensor keeps the value the student was built with (the seeded model init), so a fine-tuned run
and a from-scratch run of the same seed start their new parts equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .checkpoint import CONFIG_NAME, adapt_patch_weight, is_run_dir, load_state_dict, timm_layout_name
from .hub import describe, local_source
from .safe_read import read_json
from .hf_layout import vit_config_from_hf
from .timm_layout import vit_config_from_timm
from .models import ViTConfig, VisionTransformer, list_models, model_config, model_family, spelled_vit_name

HEADS = ("head", "head_dist")
# Architecture fields that must agree between source and student; the rest (size, channels, classes, tokens)
# is what fine-tuning adapts.
_ARCH = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "qkv_bias")
_ARCH_WORDS = {"embed_dim": "width", "depth": "depth", "num_heads": "heads", "mlp_ratio": "MLP ratio",
               "patch_size": "patch", "qkv_bias": "qkv bias"}


@dataclass
class Source:
    """Weights to fine-tune from, in our key layout, with what the source says about itself."""

    path: str
    format: str  # deit | official | timm | hf
    state_dict: dict[str, Tensor]
    config: Optional[ViTConfig]  # when the source names its architecture (our, HF or timm config.json)
    name: Optional[str]  # the model it is, when known: registered, spelled (vit_w..._d...) or timm:ARCH
    classes: Optional[list[str]]  # class names our run recorded
    hub: Optional[dict] = None  # what a hub name (hf-hub:..., timm:...) resolved to (deit.hub)


# ------------------------------------------------------------------------------------------- the source


def _shape_arch(state_dict: dict[str, Tensor], path: str) -> dict:
    """What the tensors' shapes say: everything in _ARCH but the head count."""
    try:
        width = state_dict["cls_token"].shape[-1]
        proj = state_dict["patch_embed.proj.weight"]  # (D, C, p, p)
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        mlp_ratio = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width
        _ = state_dict["pos_embed"]
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"--finetune {path} is not a ViT/DeiT checkpoint (no cls_token, patch_embed, pos_embed "
                         "and blocks)") from None
    return dict(embed_dim=width, depth=depth, mlp_ratio=mlp_ratio, patch_size=proj.shape[-1],
                qkv_bias="blocks.0.attn.qkv.bias" in state_dict, in_chans=proj.shape[1])


def registered_name_for(config: ViTConfig) -> Optional[str]:
    """The registered ViT of this architecture and kind (distilled or not), preferring the same size/channels."""
    matches = [n for n in list_models() if model_family(n) == "vit"
               and all(getattr(model_config(n), k) == getattr(config, k) for k in (*_ARCH, "distilled"))]
    matches.sort(key=lambda n: (model_config(n).img_size != config.img_size, model_config(n).in_chans != config.in_chans))
    return matches[0] if matches else None


def read_source(source, vit: bool = True) -> Source:
    """Read a fine-tuning source (a path, or a hub name resolved into the local cache by deit.hub); every failure
    (missing, corrupt, truncated, not a checkpoint, not a ViT) is one ValueError/FileNotFoundError line naming it.
    vit=False: any architecture's state dict, as it is."""
    path, hub = local_source(str(source))
    label = str(source)  # what messages name: the hub name as given, or the path
    hub = hub.record() if hub is not None else None
    state_dict, fmt = load_state_dict(path)
    config = name = classes = None
    if not vit and not is_run_dir(path):
        return Source(label, fmt, state_dict, None, None, None, hub)
    config_file = path / CONFIG_NAME if path.is_dir() else None
    if config_file is not None and config_file.is_file():
        saved = read_json(config_file)
        if is_run_dir(path):
            spec = saved["model"]
            if spec.get("family") != "vit":  # fitted key by key (deit.finetune_by_keys); --model is its name
                return Source(label, fmt, state_dict, None, spec.get("name"), saved.get("data", {}).get("classes"), hub)
            config = ViTConfig(**spec["config"])
            name = spec.get("name") if spec.get("name") in list_models() else None
            classes = saved.get("data", {}).get("classes")
        elif "model_type" in saved:
            config = vit_config_from_hf(saved)
        elif "architecture" in saved:  # timm's hub layout: one of our ViTs by name, else fitted key by key
            name = timm_layout_name(saved)
            if model_family(name) != "vit":
                return Source(label, fmt, state_dict, None, name, None, hub)
            config = vit_config_from_timm(saved)  # its model_args give sizes no registered name has
    shapes = _shape_arch(state_dict, label)
    if config is not None:
        said = {k: getattr(config, k) for k in shapes}
        if said != shapes:
            raise ValueError(f"--finetune {label}: its config.json ({said}) does not match its weights ({shapes})")
        if name is None or any(getattr(model_config(name), k) != getattr(config, k) for k in (*_ARCH, "distilled")):
            # a config.json describes the whole architecture: any size builds, by a name that spells it
            name = registered_name_for(config) or spelled_vit_name(config)
    return Source(label, fmt, state_dict, config, name, classes, hub)


def source_model_name(path) -> Optional[str]:
    """The model a source says it is (our config.json, an HF or timm config.json): a registered name, else the
    name that spells a ViT of its size (deit.models.registry); None when it does not say (a bare .pth /
    .safetensors: then --model names it)."""
    return read_source(path).name


def check_architecture(source: Source, model_name: str) -> None:
    """Refuse a student (--model) whose architecture is not the source's, with the name that would fit."""
    if source.config is None and source.name is not None:  # a run of ours of another architecture
        raise ValueError(f"--finetune {source.path} is a {source.name} run, not a ViT/DeiT: pass --model {source.name}")
    target = model_config(model_name)
    have = _shape_arch(source.state_dict, source.path)
    if source.config is not None:
        have["num_heads"] = source.config.num_heads
    differ = [k for k in _ARCH if k in have and have[k] != getattr(target, k)]
    if not differ:
        return
    pairs = ", ".join(f"{_ARCH_WORDS[k]} {have[k]:g} vs {getattr(target, k):g}" if isinstance(have[k], float)
                      else f"{_ARCH_WORDS[k]} {have[k]} vs {getattr(target, k)}" for k in differ)
    hint = source.name or _inferred_name(source)
    why = " (patch embeddings are not resampled)" if "patch_size" in differ else ""
    raise ValueError(f"--finetune {source.path} does not fit --model {model_name}: {pairs}{why}"
                     + (f"; the source is a {hint}: pass --model {hint}" if hint else ""))


def _inferred_name(source: Source) -> Optional[str]:
    from .checkpoint import infer_vit_config

    try:
        return registered_name_for(infer_vit_config(source.state_dict, source.path))
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------- adaptation


def _adapt_pos_embed(pos: Tensor, src_prefix: int, fresh_pos: Tensor, c, path, change) -> Tensor:
    """The source's pos_embed for the student (config `c`, initial pos_embed `fresh_pos`): the grid resampled, the
    prefix rows matched to its tokens."""
    from .checkpoint import resample_pos_embed

    rows = pos.shape[1] - src_prefix
    side = math.isqrt(rows)
    if side * side != rows:
        raise ValueError(f"--finetune {path}: pos_embed has {rows} patch rows, not a square grid")
    grid = pos[:, src_prefix:]
    if (side, side) != c.grid_size:
        grid = resample_pos_embed(grid, c.grid_size, 0, (side, side), antialias=True)
        change("pos_embed", "resampled", f"{side}x{side} -> {c.grid_size[0]}x{c.grid_size[1]} patch grid (bicubic)")
    prefix = [pos[:, :1]]
    if c.distilled:
        prefix.append(pos[:, 1:2] if src_prefix == 2 else fresh_pos[:, 1:2])
    return torch.cat(prefix + [grid], dim=1)


def _adapt_heads(src: dict[str, Tensor], fresh: dict[str, Tensor], num_classes: int, other_classes: bool,
                 change) -> dict[str, Tensor]:
    """The heads kept from the source: only those of the same classes (the others keep their fresh init)."""
    out = {}
    for head in HEADS:
        key = f"{head}.weight"
        if key not in fresh:
            if key in src:
                change(head, "dropped", "the student has no distillation head")
            continue
        if key not in src:
            change(head, "re-initialised", "the source has no such head")
        elif src[key].shape != fresh[key].shape:
            change(head, "re-initialised", f"{src[key].shape[0]} -> {num_classes} classes")
        elif other_classes:
            change(head, "re-initialised", f"{num_classes} classes, but not the source's")
        else:
            out[key] = src[key]
            if f"{head}.bias" in src:
                out[f"{head}.bias"] = src[f"{head}.bias"]
    return out


def _backbone(src: dict[str, Tensor], fresh: dict[str, Tensor], handled: set[str], path, change) -> dict[str, Tensor]:
    """Every other tensor: kept as it is, or one line saying the source does not fit."""
    misfit = [key if key not in src else f"{key} {list(src[key].shape)} vs {list(value.shape)}"
              for key, value in fresh.items()
              if key not in handled and (key not in src or src[key].shape != value.shape)]
    if misfit:
        raise ValueError(f"--finetune {path} does not fit the student: {len(misfit)} tensors missing or "
                         f"misshapen ({', '.join(misfit[:3])}{', ...' if len(misfit) > 3 else ''})")
    extra = sorted(k for k in src if k not in fresh and k not in handled)
    if extra:
        change(", ".join(extra[:4]) + (", ..." if len(extra) > 4 else ""), "dropped", "not part of this model")
    return {key: src[key] for key in fresh if key not in handled}


def adapt_state_dict(source: Source, model: VisionTransformer,
                     classes: Optional[list[str]] = None) -> tuple[dict[str, Tensor], list[dict]]:
    """The student's full state dict built from the source, and one record per change: {"what", "action",
    "detail"}, action in kept / resampled / adapted / re-initialised / dropped. `classes`: the new data's class
    names (a head of the same count but other classes is re-initialised too)."""
    src, fresh, c = source.state_dict, model.state_dict(), model.config
    out, changes = {}, []

    def change(what, action, detail):
        changes.append({"what": what, "action": action, "detail": detail})

    # Tokens: a token the student lacks is dropped, one the source lacks keeps its fresh init.
    out["cls_token"] = src["cls_token"]
    if c.distilled and "dist_token" in src:
        out["dist_token"] = src["dist_token"]
    elif c.distilled:
        change("dist_token", "re-initialised", "the source has no distillation token (its pos_embed row too)")
    elif "dist_token" in src:
        change("dist_token", "dropped", "the student has no distillation token (its pos_embed row too)")
    pos = src["pos_embed"]
    out["pos_embed"] = _adapt_pos_embed(pos, 2 if "dist_token" in src else 1, fresh["pos_embed"], c, source.path,
                                        change)

    # Patch embedding: another channel count adapts the weights.
    weight = src["patch_embed.proj.weight"]
    if weight.shape[1] != c.in_chans:
        out["patch_embed.proj.weight"] = adapt_patch_weight(weight, c.in_chans)
        rule = "summed over channels" if c.in_chans == 1 else f"repeated, x{weight.shape[1] / c.in_chans:g}"
        change("patch_embed.proj.weight", "adapted", f"{weight.shape[1]} -> {c.in_chans} channels ({rule}, timm's "
               "adapt_input_conv)")
    else:
        out["patch_embed.proj.weight"] = weight

    other_classes = classes is not None and source.classes is not None and list(classes) != list(source.classes)
    out.update(_adapt_heads(src, fresh, c.num_classes, other_classes, change))
    handled = {"cls_token", "dist_token", "pos_embed", "patch_embed.proj.weight"} | {
        f"{h}.{kind}" for h in HEADS for kind in ("weight", "bias")}
    out.update(_backbone(src, fresh, handled, source.path, change))

    changed = {"pos_embed"} if out["pos_embed"].shape != pos.shape else set()
    changed |= {"patch_embed.proj.weight"} if out["patch_embed.proj.weight"] is not weight else set()
    kept = [k for k in out if k not in changed]
    heads_kept = sorted({k.split(".")[0] for k in kept if k.split(".")[0] in HEADS})
    changes.insert(0, {"what": f"{len(kept)} tensors", "action": "kept",
                       "detail": "backbone" + (f" and {', '.join(heads_kept)}" if heads_kept else "")})
    return {**fresh, **{k: v.to(fresh[k].dtype) for k, v in out.items()}}, changes


def freeze_for_linear_probe(model: nn.Module) -> list[str]:
    """Only the heads train. Stochastic depth is switched off too: it would only add noise to frozen features."""
    from .models.vit import DropPath

    if isinstance(model, VisionTransformer):
        heads = {n for n, _ in model.named_parameters() if n.split(".")[0] in HEADS}
    else:
        from .finetune_by_keys import classifier_keys

        heads = classifier_keys(model)
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in heads)
        if p.requires_grad:
            trainable.append(name)
    for m in model.modules():
        if isinstance(m, DropPath):
            m.drop_prob = 0.0
    return trainable


# ----------------------------------------------------------------------------------------- for the trainer


def prepare(config) -> Optional[Source]:
    """Before any data is read: the source, checked against --model (None when not fine-tuning)."""
    if config.finetune is None:
        return None
    if model_family(config.model) != "vit":
        from .finetune_by_keys import check_by_keys

        source = read_source(config.finetune, vit=False)
        try:
            check_by_keys(source.path, source.state_dict, config.model)
        except ValueError as e:
            named = source.name if source.name not in (None, config.model) else None
            raise ValueError(f"{e}" + (f"; the source is a {named} run: pass --model {named}" if named else "")) \
                from None
        return source
    source = read_source(config.finetune)
    check_architecture(source, config.model)
    return source


def apply(model: nn.Module, source: Optional[Source], config, classes: list[str],
          say: Callable[[str], None] = print) -> Optional[dict]:
    """Load the adapted source weights into the freshly built student and freeze for a linear probe; prints one
    line per change and returns the record for config.json. source None (a resumed run): only the freezing."""
    record = None
    if source is not None and not isinstance(model, VisionTransformer):
        from .finetune_by_keys import fit_by_keys

        other = classes is not None and source.classes is not None and list(classes) != list(source.classes)
        state_dict, changes = fit_by_keys(source.path, source.state_dict, model, config.model, other)
    elif source is not None:
        state_dict, changes = adapt_state_dict(source, model, classes)
    if source is not None:
        model.load_state_dict(state_dict)
        record = {"source": source.path, "format": source.format, "source_model": source.name, "changes": changes}
        if source.hub is not None:
            record["hub"] = source.hub
            say(f"finetune: {describe(source.hub)}")
        for ch in changes:
            say(f"finetune: {ch['what']} {ch['action']} ({ch['detail']})")
    if config.linear_probe:
        trainable = freeze_for_linear_probe(model)
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        say(f"finetune: linear probe, training only {', '.join(sorted({n.split('.')[0] for n in trainable}))} "
            f"({count:,} parameters)")
        if record is not None:
            record["linear_probe"] = {"trainable": trainable, "parameters": count}
    return record
