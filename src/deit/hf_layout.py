"""The Hugging Face transformers layout of a DeiT / ViT: its state-dict keys (v4 checkpoint spelling and the
transformers-5 in-memory one) and its config.json, to and from ours (official = timm = ours); and the files of a
directory `transformers.pipeline("image-classification", model=DIR)` serves: class names, preprocessor_config.json."""

from __future__ import annotations

import dataclasses
import logging
import math
import re

import torch
from torch import Tensor

from .data.preprocessing import EvalPreprocessing
from .models import ViTConfig
from .models.vit import to_2tuple

log = logging.getLogger(__name__)


def is_hf(state_dict: dict) -> bool:
    return any(k.startswith(("deit.embeddings.", "vit.embeddings.")) for k in state_dict)


# Per-layer names: HF v4 checkpoint spelling and the transformers-5 in-memory spelling -> ours.
_HF_LAYER = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {  # -> row block of our merged qkv
    "attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2,
    "attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2,
}
_HF_TOP = {  # after the "deit." / "vit." prefix
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_HEADS = {"cls_classifier": "head", "distillation_classifier": "head_dist", "classifier": "head"}
_HF_LAYER_KEY = re.compile(r"(?:deit|vit)\.(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)")
_OUR_LAYER_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
_OUR_LAYER_TO_HF = {  # -> HF v4 spelling, the one checkpoints on the Hub use
    "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
}


def hf_to_deit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF DeiT/ViT keys (v4 or transformers-5 spelling) -> ours. Keys without an equivalent (pooler, mask
    token) are kept as they are, so that loading reports them."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], list] = {}
    for key, tensor in state_dict.items():
        layer = _HF_LAYER_KEY.fullmatch(key)
        module, _, kind = key.rpartition(".")
        if layer:
            i, part, kind = layer.groups()
            if part in _HF_QKV:
                qkv.setdefault((i, kind), [None] * 3)[_HF_QKV[part]] = tensor
                continue
            if part in _HF_LAYER:
                out[f"blocks.{i}.{_HF_LAYER[part]}.{kind}"] = tensor
                continue
        elif key.startswith(("deit.", "vit.")) and key.split(".", 1)[1] in _HF_TOP:
            out[_HF_TOP[key.split(".", 1)[1]]] = tensor
            continue
        elif module in _HF_HEADS:
            out[f"{_HF_HEADS[module]}.{kind}"] = tensor
            continue
        out[key] = tensor
    for (i, kind), parts in qkv.items():
        if any(p is None for p in parts):
            raise ValueError(f"Hugging Face checkpoint layer {i} lacks one of query/key/value {kind}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts)
    if "dist_token" in out and "head.weight" in out and "head_dist.weight" not in out:
        # DeiTForImageClassification: a distillation token but only the class-token classifier. The copy
        # makes a complete distilled model; with combine="cls" its output equals HF's.
        out["head_dist.weight"] = out["head.weight"].clone()
        if "head.bias" in out:
            out["head_dist.bias"] = out["head.bias"].clone()
    return out


def deit_to_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> HF v4 checkpoint layout: DeiTForImageClassificationWithTeacher ("deit." prefix) for a distilled
    model, ViTForImageClassification ("vit.") otherwise, as the official non-distilled models are published."""
    distilled = "dist_token" in state_dict
    prefix = "deit" if distilled else "vit"
    heads = {"head": "cls_classifier", "head_dist": "distillation_classifier"} if distilled else {"head": "classifier"}
    top = {ours: f"{prefix}.{hf}" for hf, ours in _HF_TOP.items()}
    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        layer = _OUR_LAYER_KEY.fullmatch(key)
        module, _, kind = key.rpartition(".")
        if layer:
            i, part, kind = layer.groups()
            hf_layer = f"{prefix}.encoder.layer.{i}."
            if part == "attn.qkv":
                for name, chunk in zip(("query", "key", "value"), tensor.chunk(3)):
                    out[f"{hf_layer}attention.attention.{name}.{kind}"] = chunk.clone()  # no shared storage
                continue
            if part in _OUR_LAYER_TO_HF:
                out[f"{hf_layer}{_OUR_LAYER_TO_HF[part]}.{kind}"] = tensor
                continue
        elif key in top:
            out[top[key]] = tensor
            continue
        elif module in heads:
            out[f"{heads[module]}.{kind}"] = tensor
            continue
        raise ValueError(f"{key} has no Hugging Face DeiT equivalent")
    return out


def hf_config(model_config: ViTConfig, classes: list[str] | None = None) -> dict:
    """config.json of the HF model deit_to_hf's weights fit (layer_norm_eps 1e-6, as the models were trained);
    id2label: the class names, LABEL_i without them."""
    c = model_config
    classes = classes or [f"LABEL_{i}" for i in range(c.num_classes)]
    if len(classes) != c.num_classes or len(set(classes)) != len(classes):
        raise ValueError(f"{len(classes)} class names for a model of {c.num_classes} classes, or names repeated")
    h, w = c.img_size
    config = {
        "architectures": ["DeiTForImageClassificationWithTeacher" if c.distilled else "ViTForImageClassification"],
        "model_type": "deit" if c.distilled else "vit",
        "hidden_size": c.embed_dim,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.num_heads,
        "intermediate_size": int(c.embed_dim * c.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": h if h == w else [h, w],
        "patch_size": c.patch_size,
        "num_channels": c.in_chans,
        "qkv_bias": c.qkv_bias,
        "encoder_stride": c.patch_size,
        "id2label": {str(i): name for i, name in enumerate(classes)},
        "label2id": {name: i for i, name in enumerate(classes)},
    }
    return config


def vit_config_from_hf(hf: dict) -> ViTConfig:
    """Our config for an HF DeiT/ViT config.json (the inverse of hf_config)."""
    model_type = hf.get("model_type")
    if model_type not in ("deit", "vit"):
        raise ValueError(f"Hugging Face model_type {model_type!r} is not a DeiT/ViT; expected 'deit' or 'vit'")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"Hugging Face hidden_act {hf['hidden_act']!r} is not supported (only 'gelu')")
    if hf.get("layer_norm_eps", 1e-12) != 1e-6:
        log.info("HF config has layer_norm_eps %s; this model uses 1e-6 as DeiT was trained (logits differ by ~1e-4)",
                 hf.get("layer_norm_eps", 1e-12))
    patch = to_2tuple(hf.get("patch_size", 16))
    if patch[0] != patch[1]:
        raise ValueError(f"non-square patches {patch} are not supported")
    architecture = (hf.get("architectures") or [""])[0]
    hidden = hf.get("hidden_size", 768)
    return ViTConfig(
        img_size=to_2tuple(hf.get("image_size", 224)),
        patch_size=patch[0],
        in_chans=hf.get("num_channels", 3),
        num_classes=len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2),
        embed_dim=hidden,
        depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12),
        mlp_ratio=hf.get("intermediate_size", 4 * hidden) / hidden,
        qkv_bias=hf.get("qkv_bias", True),
        distilled=model_type == "deit",
        # DeiTForImageClassification predicts from the class token alone (see hf_to_deit).
        combine="cls" if architecture == "DeiTForImageClassification" else "mean_logits",
    )


# PIL's conversion to "L" (ITU-R 601-2 luma), how our data loaders make a grayscale image of a colour one.
PIL_LUMA = (0.299, 0.587, 0.114)


def preprocessor_config(prep: EvalPreprocessing) -> dict:
    """preprocessor_config.json for our evaluation transform: the shorter side to prep.resize (bicubic), centre
    crop, x / 255, then mean and std. BitImageProcessor does exactly these steps in transformers 4 and 5 (DINOv2's
    ViTs are published with it); DeiTImageProcessor resizes to a fixed height and width in transformers 4."""
    if prep.interpolation != "bicubic":
        raise ValueError(f"interpolation {prep.interpolation!r} has no preprocessor_config.json here (bicubic only)")
    return {
        "image_processor_type": "BitImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": prep.resize},
        "resample": 3,  # PIL.Image.BICUBIC
        "do_center_crop": True,
        "crop_size": {"height": prep.img_size, "width": prep.img_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(prep.mean),
        "image_std": list(prep.std),
    }


def hf_export(state_dict: dict[str, Tensor], config: ViTConfig, prep: EvalPreprocessing,
              classes: list[str] | None) -> tuple[dict[str, Tensor], dict[str, dict]]:
    """What an HF directory of our model holds: its weights in the v4 layout, and {file name: JSON}: config.json
    (with the class names) and preprocessor_config.json (the evaluation transform).

    transformers' pipeline hands every image over as RGB, so a 1-channel model is written as a 3-channel one whose
    patch embedding weighs R, G and B as PIL's grayscale conversion does (mean and std repeated): on a gray image
    (R = G = B) its logits are the model's, on a colour one those of its grayscale version up to PIL's rounding of
    that version to 8 bits."""
    if config.in_chans == 1:
        luma = torch.tensor(PIL_LUMA).view(1, 3, 1, 1)
        state_dict = {**state_dict, "patch_embed.proj.weight": state_dict["patch_embed.proj.weight"] * luma}
        config = dataclasses.replace(config, in_chans=3)
        prep = dataclasses.replace(prep, in_chans=3, mean=prep.mean * 3, std=prep.std * 3)
    files = {"config.json": hf_config(config, classes), "preprocessor_config.json": preprocessor_config(prep)}
    return deit_to_hf(state_dict), files


def hf_classes(config: dict) -> list[str]:
    """The class names of an HF config.json, in output order (id2label's keys are the indices, as text)."""
    id2label = config.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]


_PIL_RESAMPLE = {3: "bicubic"}  # the only resize our evaluation transform does (deit.data.transforms.eval_transform)


def _side(size, *keys) -> int | None:
    """A size entry of preprocessor_config.json: an int, or a dict giving one side (shortest_edge) or a square."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        sides = {size[k] for k in keys if k in size}
        if len(sides) == 1:
            return sides.pop()
    return None


def preprocessing_from_hf(processor: dict, in_chans: int, source: str) -> EvalPreprocessing:
    """Our evaluation transform for a preprocessor_config.json (the inverse of preprocessor_config): the shorter side
    resized, centre crop, x / 255, mean and std. A square "size" ({"height": 256, "width": 256}: DeiTImageProcessor
    squashes the image to it) is read as the shorter side's length, as DeiT's own evaluation and timm resize."""
    resample = processor.get("resample", 3)
    if resample not in _PIL_RESAMPLE:
        raise ValueError(f"{source}: its preprocessor_config.json resizes with PIL resample {resample}; this "
                         "evaluation resizes bicubically only (resample 3)")
    if processor.get("do_rescale", True) and abs(processor.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise ValueError(f"{source}: its preprocessor_config.json rescales by {processor['rescale_factor']}, "
                         "not 1/255")
    resize = _side(processor.get("size"), "shortest_edge", "height", "width") if processor.get("do_resize", True) \
        else None
    crop = _side(processor.get("crop_size"), "height", "width") if processor.get("do_center_crop", False) else resize
    if resize is None or crop is None or crop > resize:
        raise ValueError(f"{source}: its preprocessor_config.json (size {processor.get('size')}, crop_size "
                         f"{processor.get('crop_size')}) is no resize of the shorter side followed by a centre crop")
    crop_ratio = crop / resize
    if math.floor(crop / crop_ratio) != resize:  # EvalPreprocessing.resize must give `resize` back
        crop_ratio = math.nextafter(crop_ratio, 0.0)
    mean, std = (0.0,) * in_chans, (1.0,) * in_chans
    if processor.get("do_normalize", True):  # the default statistics differ by processor class: none is guessed
        if "image_mean" not in processor or "image_std" not in processor:
            raise ValueError(f"{source}: its preprocessor_config.json normalises but gives no image_mean / image_std")
        mean, std = tuple(processor["image_mean"]), tuple(processor["image_std"])
    return EvalPreprocessing(img_size=crop, crop_ratio=crop_ratio, in_chans=in_chans, mean=mean, std=std,
                             streamed=True, interpolation=_PIL_RESAMPLE[resample])
