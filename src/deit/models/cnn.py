"""Small ResNet-style convnets for 28–32 px images: the teachers of the small-data pipeline.

CIFAR-style ResNet (He et al. 2016, §4.2): a 3x3 stem, three stages of BasicBlocks at strides 1/2/2,
global average pooling, a linear head. Returns the same `DeiTOutput` as the transformers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .vit import DeiTOutput, with_overrides


@dataclass(frozen=True)
class ResNetConfig:
    in_chans: int = 3
    num_classes: int = 10
    blocks_per_stage: tuple[int, int, int] | list = (2, 2, 2)
    width: int = 32
    img_size: tuple[int, int] | list | int | None = None  # informational: any size works

    def __post_init__(self):
        object.__setattr__(self, "blocks_per_stage", tuple(int(b) for b in self.blocks_per_stage))
        if len(self.blocks_per_stage) != 3 or min(self.blocks_per_stage) < 1:
            raise ValueError(f"blocks_per_stage must be three positive ints, got {self.blocks_per_stage}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks_per_stage"] = list(self.blocks_per_stage)
        return d


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class SmallResNet(nn.Module):
    def __init__(self, config: ResNetConfig | None = None, **kwargs):
        super().__init__()
        self.config = config = with_overrides(ResNetConfig, config, kwargs)
        w = config.width
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_chans, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        stages, in_ch = [], w
        for i, n in enumerate(config.blocks_per_stage):
            out_ch = w * 2**i
            stages += [BasicBlock(in_ch if j == 0 else out_ch, out_ch, (1 if i == 0 else 2) if j == 0 else 1)
                       for j in range(n)]
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_ch, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def no_weight_decay(self) -> set[str]:
        return set()

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected images of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> DeiTOutput:
        self.check_input(x)
        x = self.stages(self.stem(x))
        logits = self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return DeiTOutput(logits=logits, cls_logits=logits)
