"""Named model configurations: the official DeiT names plus small-image presets and CNN teachers, and the
architectures of timm and torchvision by a prefixed name ("timm:resnet50", "torchvision:resnet50")."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Any, Callable, Optional

from torch import nn

from .cnn import ResNetConfig, SmallResNet
from .vit import ViTConfig, VisionTransformer

# name -> (family, default kwargs). family selects the config/class pair below.
_FAMILIES: dict[str, tuple[type, Callable[..., nn.Module]]] = {
    "vit": (ViTConfig, VisionTransformer),
    "resnet": (ResNetConfig, SmallResNet),
}
_REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {}

_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}


def register_model(name: str, family: str, **defaults: Any) -> None:
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}")
    _REGISTRY[name] = (family, defaults)


# The official ImageNet variants (patch 16, depth 12, MLP ratio 4).
for _size, (_dim, _heads) in _SIZES.items():
    for _distilled in (False, True):
        _name = f"deit_{_size}_{'distilled_' if _distilled else ''}patch16_224"
        register_model(_name, "vit", embed_dim=_dim, depth=12, num_heads=_heads, distilled=_distilled)
for _distilled in (False, True):
    register_model(f"deit_base_{'distilled_' if _distilled else ''}patch16_384", "vit", img_size=384,
                   embed_dim=768, depth=12, num_heads=12, distilled=_distilled)

# Small-image presets: 28x28 grayscale (Fashion-MNIST, MNIST) and 32x32 RGB (CIFAR).
# micro: ~0.46M params, 6 blocks of width 96 on 4-px patches (49 tokens).
# mini: ~1.8M params, 6 blocks of width 192 on a 4x4 grid of patches (16 tokens): on a 2-core CPU it trains
#   at the speed of micro and learns faster per image (87.3 vs 85.1 % after 3 epochs), so it is the
#   default pipeline student.
# tiny: DeiT-Ti's blocks on 4-px patches.
_SMALL = (  # (size, patch size for 28 px, for 32 px, architecture)
    ("micro", 4, 4, dict(embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0, drop_path_rate=0.05)),
    ("mini", 7, 8, dict(embed_dim=192, depth=6, num_heads=3, mlp_ratio=2.0, drop_path_rate=0.05)),
    ("tiny", 4, 4, dict(embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1)),
)
for _size, _patch28, _patch32, _arch in _SMALL:
    for _img_size, _in_chans, _patch in ((28, 1, _patch28), (32, 3, _patch32)):
        for _distilled in (False, True):
            register_model(f"deit_{_size}_{'distilled_' if _distilled else ''}patch{_patch}_{_img_size}", "vit",
                           img_size=_img_size, patch_size=_patch, in_chans=_in_chans, num_classes=10,
                           distilled=_distilled, **_arch)

# CIFAR-style ResNets (6n+2 layers) for 28-32 px inputs: the convnet teachers.
# pico/nano/micro: the same net at 1/8, 1/4, 1/2 of tiny's width, convnets of graded capacity (teachers matched
# to a transformer's accuracy: deit reproduce --preset fmnist-teacher-choice).
register_model("resnet8_pico", "resnet", blocks_per_stage=(1, 1, 1), width=2)
register_model("resnet8_nano", "resnet", blocks_per_stage=(1, 1, 1), width=4)
register_model("resnet8_micro", "resnet", blocks_per_stage=(1, 1, 1), width=8)
register_model("resnet8_tiny", "resnet", blocks_per_stage=(1, 1, 1), width=16)
register_model("resnet8_small", "resnet", blocks_per_stage=(1, 1, 1), width=32)
register_model("resnet14_small", "resnet", blocks_per_stage=(2, 2, 2), width=32)
register_model("resnet20_small", "resnet", blocks_per_stage=(3, 3, 3), width=32)
register_model("resnet20_wide", "resnet", blocks_per_stage=(3, 3, 3), width=64)


# ----------------------------------------------------------------------------- a ViT of any size
# A name that spells the architecture, e.g. "vit_w96_d3_h3_mlp384_p16_distilled": what a checkpoint's config.json
# (a Hugging Face DeiT/ViT) describes when no registered name matches it. Size, channels and classes come from
# the data, as for every name; the name is enough to rebuild the model, so runs of it resume like any other.
_SPELLED_VIT = re.compile(r"vit_w(\d+)_d(\d+)_h(\d+)_mlp(\d+)_p(\d+)(_noqkvbias)?(_distilled)?")


def spelled_vit_name(config: ViTConfig) -> str:
    """The name that builds this ViT's architecture (width, depth, heads, MLP width, patch, qkv bias, distilled)."""
    mlp = config.embed_dim * config.mlp_ratio
    if mlp != int(mlp):
        raise ValueError(f"a ViT of width {config.embed_dim} and MLP ratio {config.mlp_ratio} has no whole MLP width")
    return (f"vit_w{config.embed_dim}_d{config.depth}_h{config.num_heads}_mlp{int(mlp)}_p{config.patch_size}"
            f"{'' if config.qkv_bias else '_noqkvbias'}{'_distilled' if config.distilled else ''}")


def _spelled_vit(name: str) -> Optional[dict[str, Any]]:
    found = _SPELLED_VIT.fullmatch(name)
    if found is None:
        return None
    width, depth, heads, mlp, patch = map(int, found.groups()[:5])
    return dict(embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp / width, patch_size=patch,
                qkv_bias=found.group(6) is None, distilled=found.group(7) is not None)


# ------------------------------------------------------------------------------- timm and torchvision
# Their architectures train, fine-tune (from their own state dicts) and teach like ours: e.g. an ImageNet
# convnet fine-tuned on a user's folder as the teacher. Built without weights; a run's config.json rebuilds them.
EXTERNAL_LIBRARIES = ("timm", "torchvision")


@dataclasses.dataclass(frozen=True)
class ExternalConfig:
    library: str
    arch: str
    num_classes: int = 1000
    in_chans: int = 3
    drop_path_rate: Optional[float] = None  # timm only

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def external_name(name: str) -> Optional[tuple[str, str]]:
    """(library, architecture) of a prefixed name such as "timm:resnet50"; None for any other name."""
    library, sep, arch = name.partition(":")
    return (library, arch) if sep and library in EXTERNAL_LIBRARIES else None


def _check_external(library: str, arch: str) -> None:
    if library == "timm":
        import timm

        known = timm.is_model(arch)
    else:
        import torchvision

        known = arch in torchvision.models.list_models()
    if not known:
        raise ValueError(f"{library} has no architecture {arch!r} (its list_models() names them)")


def _build_external(config: ExternalConfig) -> nn.Module:
    if config.library == "timm":
        import timm

        extra = {} if config.drop_path_rate is None else {"drop_path_rate": config.drop_path_rate}
        model = timm.create_model(config.arch, pretrained=False, num_classes=config.num_classes,
                                  in_chans=config.in_chans, **extra)
    else:
        import torchvision

        if config.in_chans != 3:
            raise ValueError(f"torchvision's {config.arch} takes 3-channel images, not {config.in_chans}: use RGB "
                             "data or a timm architecture (timm:NAME builds its first convolution for any channels)")
        if config.drop_path_rate is not None:
            raise ValueError(f"torchvision's {config.arch} has no stochastic depth option: leave --drop-path unset")
        model = torchvision.models.get_model(config.arch, weights=None, num_classes=config.num_classes)
    model.deit_config = config  # what model_spec records to rebuild it
    return model


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_family(name: str) -> str:
    """vit | resnet (ours) | timm | torchvision; an unknown name is one clear error."""
    external = external_name(name)
    if external is not None:
        _check_external(*external)
        return external[0]
    if _spelled_vit(name) is not None:
        return "vit"
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; `deit models` lists the {len(_REGISTRY)} registered names "
                         "(a ViT of any other size: vit_wWIDTH_dDEPTH_hHEADS_mlpMLPWIDTH_pPATCH[_distilled])")
    return _REGISTRY[name][0]


def model_config(name: str, **overrides: Any):
    """The config object of a registered name, with keyword overrides (img_size, num_classes, ...)."""
    family = model_family(name)
    external = external_name(name)
    config_cls, kwargs = (ExternalConfig, {"library": external[0], "arch": external[1], **overrides}) if external \
        else (_FAMILIES[family][0], {**(_spelled_vit(name) or _REGISTRY[name][1]), **overrides})
    try:
        return config_cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad option for model {name!r}: {e}") from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. create_model('deit_tiny_distilled_patch16_224', num_classes=10).

    Keywords override the named config: img_size, patch_size, in_chans, num_classes, embed_dim, depth,
    num_heads, mlp_ratio, drop_path_rate, distilled, combine (ViTs); in_chans, num_classes,
    blocks_per_stage, width (ResNets); num_classes, in_chans, drop_path_rate (timm:NAME, torchvision:NAME).
    """
    config = model_config(name, **overrides)
    if isinstance(config, ExternalConfig):
        return _build_external(config)
    _, model_cls = _FAMILIES[model_family(name)]
    return model_cls(config)


def model_spec(model: nn.Module, name: str | None = None) -> dict[str, Any]:
    """JSON-able description that rebuilds `model` (without weights): saved in a run's config.json."""
    external = getattr(model, "deit_config", None)
    if isinstance(external, ExternalConfig):
        return {"family": external.library, "name": f"{external.library}:{external.arch}",
                "config": external.to_dict()}
    for family, (config_cls, model_cls) in _FAMILIES.items():
        if isinstance(model, model_cls):
            return {"family": family, "name": name, "config": model.config.to_dict()}
    raise TypeError(f"{type(model).__name__} is not a model of this package")


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Inverse of `model_spec`."""
    family = spec.get("family")
    if family in EXTERNAL_LIBRARIES:  # checked first: a config.json may name what this timm lacks
        config = ExternalConfig(**spec["config"])
        _check_external(config.library, config.arch)
        return _build_external(config)
    if family not in _FAMILIES:
        raise ValueError(f"model spec has unknown family {family!r}; expected one of "
                         f"{sorted(_FAMILIES) + list(EXTERNAL_LIBRARIES)}")
    config_cls, model_cls = _FAMILIES[family]
    return model_cls(config_cls(**spec["config"]))
