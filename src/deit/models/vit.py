"""Vision Transformer and distilled ViT (DeiT), with the official/timm state-dict layout.

Token layout: [cls, (dist), patch_1 … patch_N] + learned pos_embed over all of them.
Every forward returns a `DeiTOutput` whose fields do not change between train and eval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

COMBINE_RULES = ("mean_logits", "mean_softmax", "cls", "dist")


def to_2tuple(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


@dataclass(frozen=True)
class ViTConfig:
    """Everything needed to rebuild a (distilled) ViT. Saved as JSON next to the weights."""

    img_size: tuple[int, int] | int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    distilled: bool = False
    combine: str = "mean_logits"

    def __post_init__(self):
        object.__setattr__(self, "img_size", to_2tuple(self.img_size))
        h, w = self.img_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"img_size {h}x{w} is not a multiple of patch_size {self.patch_size}; "
                "choose an img_size divisible by the patch size"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {COMBINE_RULES}, got {self.combine!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return 2 if self.distilled else 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return d


def with_overrides(config_cls, config, overrides: dict):
    """`config` (or the defaults of `config_cls`) with keyword overrides applied."""
    if config is None:
        return config_cls(**overrides)
    return config_cls(**{**config.to_dict(), **overrides}) if overrides else config


@dataclass
class DeiTOutput:
    """Named outputs. `logits` is the prediction to use; for a distilled model it combines both heads
    by `config.combine`. `dist_logits` is None for a model without a distillation token."""

    logits: torch.Tensor
    cls_logits: torch.Tensor
    dist_logits: Optional[torch.Tensor] = None


def combine_heads(cls_logits: torch.Tensor, dist_logits: torch.Tensor, rule: str) -> torch.Tensor:
    """Combined prediction of the two heads.

    mean_logits: (cls + dist) / 2, what the official code returns at eval.
    mean_softmax: the paper's "add the softmax outputs"; returned as log of the mean probability so that
    softmax(logits) is that mean and argmax is unchanged.
    """
    if rule == "mean_logits":
        return (cls_logits + dist_logits) / 2
    if rule == "mean_softmax":
        probs = (cls_logits.float().softmax(-1) + dist_logits.float().softmax(-1)) / 2
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log().to(cls_logits.dtype)
    if rule == "cls":
        return cls_logits
    if rule == "dist":
        return dist_logits
    raise ValueError(f"combine must be one of {COMBINE_RULES}, got {rule!r}")


def heads_for_mean_logits(state_dict: dict[str, torch.Tensor], rule: str) -> dict[str, torch.Tensor]:
    """A distilled state dict whose mean of the heads' logits is what `rule` predicts, for libraries that only
    average them (timm, transformers): "cls" / "dist" double the chosen head and zero the other, so the mean is that
    head's logits exactly (x2 is exact in floating point; the heads' separate outputs become 2x and 0).
    mean_softmax has no such form (the same top-1 in most cases, not all): the heads are kept."""
    if rule not in ("cls", "dist") or "head_dist.weight" not in state_dict:
        return state_dict
    keep, drop = ("head", "head_dist") if rule == "cls" else ("head_dist", "head")
    out = dict(state_dict)
    for kind in ("weight", "bias"):
        if f"{keep}.{kind}" in out:
            out[f"{keep}.{kind}"] = out[f"{keep}.{kind}"] * 2
            out[f"{drop}.{kind}"] = torch.zeros_like(out[f"{drop}.{kind}"])
    return out


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample, rescaling the kept ones."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        # The rescale on the (B, 1, 1) mask, not on x: one pass over the activations instead of two (timm's form).
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B, N, D


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v over (B, heads, N, d). SDPA, except for a CPU step that needs gradients in bf16/fp16
    or with few tokens: there the plain matmul form trains 1.2-5x faster than SDPA's flash backward
    (docs/performance.md)."""
    if q.device.type == "cpu" and q.requires_grad and (q.dtype != torch.float32 or k.shape[-2] <= 128):
        # The scale on the smaller of q (N, d) and the scores (N, N); the same result bit for bit when d is a
        # power of 4 (the scale a power of 2).
        scale = q.shape[-1] ** -0.5
        if q.shape[-2] < q.shape[-1]:
            return ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ v
        return ((q * scale) @ k.transpose(-2, -1)).softmax(-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """Self-attention of x (B, N, D); with num_queries=n, only the first n tokens' outputs (B, n, D)."""
        B, N, D = x.shape
        # qkv rows are [q | k | v], each head-major: the official layout.
        if num_queries is None:
            qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :num_queries], w[:D], None if b is None else b[:D])
            q = q.view(B, num_queries, self.num_heads, self.head_dim).transpose(1, 2)
            kv = F.linear(x, w[D:], None if b is None else b[D:])
            k, v = kv.view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, q.shape[2], D))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(x) and its attention probabilities (B, heads, N, N), computed explicitly: for analysis only,
        forward keeps the fused kernel, which never materialises them."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        probs = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((probs @ v).transpose(1, 2).reshape(B, N, D)), probs


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """With num_queries=n, only the first n tokens' outputs: all a last block's head reads."""
        y = self.attn(self.norm1(x), num_queries)
        x = (x if num_queries is None else x[:, :num_queries]) + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(x) and the attention probabilities (B, heads, N, N) of this block."""
        y, probs = self.attn.forward_with_attention(self.norm1(x))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x))), probs


@dataclass
class AttentionTrace:
    """What `VisionTransformer.trace` records: the output, every block's attention, every token state."""

    output: DeiTOutput
    attentions: list[torch.Tensor]  # depth × (B, heads, T, T), softmax over keys (last dim); T = prefix + N
    tokens: list[torch.Tensor]  # depth + 1 × (B, T, D): the input after pos_embed, then each block's output


class VisionTransformer(nn.Module):
    """ViT (distilled=False) or DeiT with a distillation token (distilled=True)."""

    def __init__(self, config: ViTConfig | None = None, **kwargs):
        super().__init__()
        self.config = c = with_overrides(ViTConfig, config, kwargs)
        D = c.embed_dim
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        num_patches = c.grid_size[0] * c.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + c.num_prefix_tokens, D))
        # Registered after pos_embed so the state-dict order equals the official/timm one.
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if c.distilled else None
        rates = torch.linspace(0, c.drop_path_rate, c.depth).tolist()  # linear rule
        self.blocks = nn.Sequential(
            *[Block(D, c.num_heads, c.mlp_ratio, c.qkv_bias, rates[i]) for i in range(c.depth)]
        )
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, c.num_classes) if c.num_classes > 0 else nn.Identity()
        if c.distilled:
            self.head_dist = nn.Linear(D, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    # -- initialisation as the official code: trunc-normal 0.02 for tokens, pos_embed and Linear
    # weights; zero biases; LayerNorm 1/0; the patch conv keeps PyTorch's default.
    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def no_weight_decay(self) -> set[str]:
        """Parameter names the official recipe exempts from weight decay (besides all 1-D params)."""
        return {"pos_embed", "cls_token"}

    def check_input(self, x: torch.Tensor) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_chans or tuple(x.shape[2:]) != c.img_size:
            raise ValueError(
                f"expected images of shape (B, {c.in_chans}, {c.img_size[0]}, {c.img_size[1]}), got "
                f"{tuple(x.shape)}; resize the input or build the model with img_size={tuple(x.shape[2:])} "
                "(deit.resample_pos_embed adapts trained weights)"
            )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Input tokens [cls, (dist), patches] + pos_embed, shape (B, prefix + N, D)."""
        self.check_input(x)
        x = self.patch_embed(x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        return torch.cat(prefix + [x], dim=1) + self.pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised output tokens, shape (B, prefix + N, D)."""
        return self.norm(self.blocks(self.embed(x)))

    def forward_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised output of the prefix tokens only, (B, prefix, D): equal to forward_features(x)[:, :prefix],
        but the last block skips the patch tokens' outputs, which no head reads (~1/depth of the work)."""
        x, n = self.embed(x), self.config.num_prefix_tokens
        if len(self.blocks) == 0:
            return self.norm(x[:, :n])
        for block in self.blocks[:-1]:
            x = block(x)
        return self.norm(self.blocks[-1](x, num_queries=n))

    def forward_head(self, tokens: torch.Tensor) -> DeiTOutput:
        cls_logits = self.head(tokens[:, 0])
        if self.dist_token is None:
            return DeiTOutput(logits=cls_logits, cls_logits=cls_logits)
        dist_logits = self.head_dist(tokens[:, 1])
        return DeiTOutput(
            logits=combine_heads(cls_logits, dist_logits, self.config.combine),
            cls_logits=cls_logits,
            dist_logits=dist_logits,
        )

    def forward(self, x: torch.Tensor) -> DeiTOutput:
        return self.forward_head(self.forward_prefix(x))

    def trace(self, x: torch.Tensor) -> AttentionTrace:
        """forward(x) with every block's attention probabilities and token states, for analysis (deit.analyze).
        Computes attention explicitly on all tokens, so it is slower than forward and uses O(T²) memory."""
        x = self.embed(x)
        tokens, attentions = [x], []
        for block in self.blocks:
            x, probs = block.forward_with_attention(x)
            tokens.append(x)
            attentions.append(probs)
        return AttentionTrace(self.forward_head(self.norm(x[:, :self.config.num_prefix_tokens])), attentions, tokens)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
