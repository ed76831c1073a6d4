"""DeiT: data-efficient image transformers and distillation through attention."""

from .models import (
    COMBINE_RULES,
    DeiTOutput,
    ResNetConfig,
    SmallResNet,
    ViTConfig,
    VisionTransformer,
    count_parameters,
    create_model,
    list_models,
)

__version__ = "0.1.0"
__all__ = ["COMBINE_RULES", "DeiTOutput", "ResNetConfig", "SmallResNet", "ViTConfig", "VisionTransformer",
           "count_parameters", "create_model", "list_models", "load_checkpoint", "resample_pos_embed",
           "save_model", "convert_checkpoint"]


def __getattr__(name):
    # Checkpoint helpers import lazily so `import deit` stays light.
    if name in ("load_checkpoint", "resample_pos_embed", "save_model", "convert_checkpoint"):
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'deit' has no attribute {name!r}")
