"""timm's hub layout of a DeiT / ViT: config.json + model.safetensors, what
`timm.create_model("local-dir:DIR", pretrained=True)` builds and loads (timm 1.0.16+). Our state dict is timm's
already; the config names a timm DeiT architecture and gives all its sizes in model_args (which timm passes to the
architecture's function), so a size timm has no name for builds too."""

from __future__ import annotations

from torch import Tensor

from .data.preprocessing import EvalPreprocessing
from .models import ViTConfig


def timm_architecture(config: ViTConfig, name: str | None = None) -> str:
    """Our registered name where timm has it (deit_small_distilled_patch16_224), else a timm DeiT of the same class
    (VisionTransformerDistilled or VisionTransformer) that model_args resize."""
    import timm

    if name and name.startswith("deit_") and timm.is_model(name):
        return name
    return "deit_tiny_distilled_patch16_224" if config.distilled else "deit_tiny_patch16_224"


def timm_config(config: ViTConfig, prep: EvalPreprocessing, classes: list[str] | None, name: str | None = None) -> dict:
    """config.json in timm's hub layout (as timm's save_for_hf writes it), pretrained_cfg = our eval transform."""
    h, w = config.img_size
    model_args = {
        "img_size": [h, w], "patch_size": config.patch_size, "in_chans": config.in_chans,
        "embed_dim": config.embed_dim, "depth": config.depth, "num_heads": config.num_heads,
        "mlp_ratio": config.mlp_ratio, "qkv_bias": config.qkv_bias,
    }
    out = {
        "architecture": timm_architecture(config, name),
        "num_classes": config.num_classes,
        "num_features": config.embed_dim,
        "global_pool": "token",
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [config.in_chans, h, w],
            "fixed_input_size": True,
            "interpolation": prep.interpolation,
            "crop_pct": prep.crop_ratio,
            "crop_mode": "center",
            "mean": list(prep.mean),
            "std": list(prep.std),
            "num_classes": config.num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": ["head", "head_dist"] if config.distilled else "head",
        },
    }
    if classes:
        out["label_names"] = list(classes)
    return out


def timm_export(state_dict: dict[str, Tensor], config: ViTConfig, prep: EvalPreprocessing, classes: list[str] | None,
                name: str | None = None) -> tuple[dict[str, Tensor], dict[str, dict]]:
    """What a timm directory of our model holds: its weights (our keys are timm's) and {"config.json": ...}."""
    return state_dict, {"config.json": timm_config(config, prep, classes, name)}


def vit_config_from_timm(config: dict) -> ViTConfig | None:
    """Our ViT for a timm hub-layout config.json whose architecture we register (timm's DeiTs: the same keys), its
    model_args applied (the inverse of timm_config); None for another timm architecture."""
    from .models import list_models, model_config, model_family

    arch = config["architecture"]
    if arch not in list_models() or model_family(arch) != "vit":
        return None
    args = dict(config.get("model_args") or {})
    if "img_size" in args:
        args["img_size"] = tuple(args["img_size"]) if isinstance(args["img_size"], (list, tuple)) \
            else (args["img_size"],) * 2
    if args.pop("global_pool", "token") != "token":  # what a DeiT pools: its class token
        raise ValueError(f"timm config.json model_args global_pool {config['model_args']['global_pool']!r}: "
                         "these models pool the class token only")
    args["num_classes"] = config.get("num_classes", args.get("num_classes", 1000))
    known = {"img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
             "num_classes"}
    if args.keys() - known:
        raise ValueError(f"timm config.json model_args {sorted(args.keys() - known)} have no equivalent here")
    return model_config(arch, **args)


def preprocessing_from_timm(config: dict, source: str) -> EvalPreprocessing:
    """Our evaluation transform for a timm config.json's pretrained_cfg (the inverse of timm_config): what timm's
    resolve_data_config + create_transform build for evaluation."""
    cfg = config.get("pretrained_cfg") or {}
    in_chans, height, width = cfg.get("input_size", (3, 224, 224))
    if height != width or cfg.get("crop_mode", "center") != "center" or cfg.get("interpolation", "bicubic") != "bicubic":
        raise ValueError(f"{source}: its pretrained_cfg (input_size {cfg.get('input_size')}, crop_mode "
                         f"{cfg.get('crop_mode')}, interpolation {cfg.get('interpolation')}) is no square bicubic "
                         "centre crop, the only evaluation transform here")
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # resolve_data_config's defaults

    return EvalPreprocessing(img_size=height, crop_ratio=cfg.get("crop_pct", 0.875), in_chans=in_chans,
                             mean=tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
                             std=tuple(cfg.get("std", IMAGENET_DEFAULT_STD)), streamed=True)


def timm_classes(config: dict) -> list[str]:
    """The class names of a timm config.json: its label_names, else ImageNet-1k's (timm.data.ImageNetInfo) for a
    1000-class model as timm's own inference infers them, else the indices as text."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    num_classes = config.get("num_classes", 1000)
    if config.get("label_names"):
        return list(config["label_names"])
    if infer_imagenet_subset({"num_classes": num_classes}) == "imagenet-1k":
        return ImageNetInfo("imagenet-1k").label_descriptions()
    return [str(i) for i in range(num_classes)]
