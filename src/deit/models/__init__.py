from .cnn import ResNetConfig, SmallResNet
from .registry import (ExternalConfig, create_model, external_name, list_models, model_config, model_family,
                       model_from_spec, model_spec, register_model, spelled_vit_name)
from .vit import (COMBINE_RULES, DeiTOutput, ViTConfig, VisionTransformer, combine_heads, count_parameters,
                  heads_for_mean_logits)

__all__ = ["ExternalConfig", "ResNetConfig", "SmallResNet", "create_model", "external_name", "list_models",
           "model_config", "model_family", "model_from_spec", "model_spec", "register_model", "spelled_vit_name",
           "COMBINE_RULES", "DeiTOutput", "ViTConfig", "VisionTransformer", "combine_heads", "count_parameters",
           "heads_for_mean_logits"]
