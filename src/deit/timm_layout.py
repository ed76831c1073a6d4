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
