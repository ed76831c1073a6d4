"""Speed helpers a training or evaluation loop calls; what each is worth is measured in docs/performance.md.

    teacher = prepare_model_for_inference(teacher, "fp32")                    # frozen teacher, every step
    teacher = quantize_for_inference(resnet_teacher, calibration_batches)     # int8 teacher (approximate)
    evaluator = prepare_model_for_inference(model, "fp32")                    # evaluation / deployment
    fastest_num_threads(lambda: train_step(batch))                            # 1 thread vs all cores

`prepare_model_for_inference` returns a module with the same `DeiTOutput`: on CPU a fused path (oneDNN
matmuls and convolutions with the bias, GELU / ReLU and residual add done in the kernel, BatchNorm folded
into the convolutions, the ViT's last block computing only the tokens its heads read); elsewhere the model
itself in eval mode and in the requested dtype. Inference only (no autograd).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .engine.precision import precision_dtype
from .models.cnn import BasicBlock, SmallResNet
from .models.vit import DeiTOutput, VisionTransformer

def fastest_num_threads(step: Callable[[], object], candidates: Iterable[int] | None = None,
                        rounds: int = 3) -> int:
    """Time `step` (e.g. a real training step) under each torch.set_num_threads candidate (default 1 and all
    cores), interleaved; set and return the fastest. On a shared machine one thread can beat all cores
    several times over: every parallel region waits for a thread the OS has descheduled."""
    candidates = sorted(set(candidates or (1, os.cpu_count() or 1)))
    times: dict[int, list[float]] = {n: [] for n in candidates}
    for _ in range(rounds):
        for n in candidates:
            torch.set_num_threads(n)
            start = time.perf_counter()
            step()
            times[n].append(time.perf_counter() - start)
    best = min(candidates, key=lambda n: statistics.median(times[n]))
    torch.set_num_threads(best)
    return best


def _onednn_ok(model: nn.Module) -> bool:
    """The fused path runs on oneDNN: a CPU model, and for bf16 a CPU whose oneDNN has bf16 kernels (an AVX2-only
    CPU has none: its fused bf16 primitives fail to build, so the plain model serves)."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return p.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class CastInput(nn.Module):
    """Casts the input to the model's dtype, then calls it."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor):
        return self.model(x.to(self.dtype))


def prepare_model_for_inference(model: nn.Module, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """`model` in eval mode and `precision` ('fp32' | 'bf16'), behind the fastest inference forward we have
    for it; call it under torch.no_grad / inference_mode. Inputs may be fp32 (cast on entry); a ViT or
    SmallResNet returns a DeiTOutput in that dtype.

    In place: the model is switched to eval mode and, for bf16, its parameters are cast (deep-copy a model you
    keep training in fp32). A ViT's fused path reads the live parameters at every call, so it can evaluate a
    model that is still training (in fp32); a ResNet's folds BatchNorm once (a frozen teacher).
    compile=True: torch.compile with inductor's weight freezing instead of the hand-fused path (the first call
    compiles: tens of seconds)."""
    dtype = precision_dtype(precision)
    if dtype == torch.float16:
        raise ValueError("prepare_model_for_inference takes fp32 or bf16")
    model = model.eval().to(dtype)
    if compile:
        return torch.compile(CastInput(model, dtype), options={"freezing": True})
    if _onednn_ok(model) and isinstance(model, VisionTransformer):
        return FusedViT(model)
    if _onednn_ok(model) and isinstance(model, SmallResNet):
        return FusedResNet(model)
    return CastInput(model, dtype)


# ----------------------------------------------------------------------------------------------- ViT
_mkldnn = torch.ops.mkldnn if torch.backends.mkldnn.is_available() else None


def _linear(x: torch.Tensor, layer: nn.Linear, act: str = "none") -> torch.Tensor:
    """layer(x) (then GELU for act='gelu') for 2-D x, as one oneDNN kernel."""
    return _mkldnn._linear_pointwise(x, layer.weight, layer.bias, act, [], "none" if act == "gelu" else "")


def _linear_add(x: torch.Tensor, layer: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """residual + layer(x) for 2-D tensors, as one oneDNN kernel."""
    return _mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")


class FusedViT(nn.Module):
    """Inference forward of a VisionTransformer on CPU: the numerics of `VisionTransformer.forward` with fewer
    passes over memory. The patch embedding is one matmul over flattened patches; every Linear carries its
    bias, GELU (fc1) or residual add (proj, fc2) in the oneDNN kernel; the last block only computes the
    cls/dist tokens."""

    def __init__(self, model: VisionTransformer):
        super().__init__()
        self.model = model

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)  # runs in the model's own dtype, also inside a caller's autocast
    def forward(self, x: torch.Tensor) -> DeiTOutput:
        m = self.model
        c = m.config
        m.check_input(x)
        proj = m.patch_embed.proj
        x = x.to(proj.weight.dtype)
        B, C, p, D = x.shape[0], c.in_chans, c.patch_size, c.embed_dim
        (gh, gw), n = c.grid_size, c.num_prefix_tokens
        patches = x.reshape(B, C, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(B * gh * gw, C * p * p)
        x = F.linear(patches, proj.weight.reshape(D, -1), proj.bias).view(B, gh * gw, D)
        prefix = [m.cls_token] if m.dist_token is None else [m.cls_token, m.dist_token]
        x = torch.cat([t.expand(B, -1, -1) for t in prefix] + [x], dim=1) + m.pos_embed
        for i, block in enumerate(m.blocks):
            x = self._block(block, x, n if i == len(m.blocks) - 1 else None)
        tokens = m.norm(x[:, :n])
        return m.forward_head(tokens)

    @staticmethod
    def _block(block, x: torch.Tensor, num_queries: int | None) -> torch.Tensor:
        B, N, D = x.shape
        attn = block.attn
        H, hd = attn.num_heads, attn.head_dim
        h = F.layer_norm(x, (D,), block.norm1.weight, block.norm1.bias, block.norm1.eps).view(B * N, D)
        if num_queries is None:
            q, k, v = _linear(h, attn.qkv).view(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
            residual, M = x.view(B * N, D), N
        else:  # only the first num_queries tokens' outputs: q for them, k and v for all
            M = num_queries
            w, b = attn.qkv.weight, attn.qkv.bias
            q = F.linear(h.view(B, N, D)[:, :M], w[:D], None if b is None else b[:D])
            q = q.view(B, M, H, hd).transpose(1, 2)
            k, v = F.linear(h, w[D:], None if b is None else b[D:]).view(B, N, 2, H, hd).permute(2, 0, 3, 1, 4)
            residual = x[:, :M].reshape(B * M, D)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B * M, D)
        x = _linear_add(a, attn.proj, residual)
        h = F.layer_norm(x, (D,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
        x = _linear_add(_linear(h, block.mlp.fc1, "gelu"), block.mlp.fc2, x)
        return x.view(B, M, D)


# -------------------------------------------------------------------------------------------- int8
class _ResNetLogits(nn.Module):
    """SmallResNet's forward without the input check (FX-traceable), returning the logits tensor."""

    def __init__(self, model: SmallResNet):
        super().__init__()
        self.stem, self.stages, self.head = model.stem, model.stages, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1))


class QuantizedResNet(nn.Module):
    def __init__(self, model: SmallResNet, quantized: nn.Module):
        super().__init__()
        self.check_input, self.quantized = model.check_input, quantized

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> DeiTOutput:
        self.check_input(x)
        logits = self.quantized(x.float().cpu()).to(x.device)  # quantized kernels are CPU-only
        return DeiTOutput(logits=logits, cls_logits=logits)


def quantize_for_inference(model: SmallResNet, calibration: Iterable[torch.Tensor]) -> QuantizedResNet:
    """Post-training static int8 quantization of a SmallResNet (a frozen convnet teacher) for CPU: convolutions
    and the head run in int8 oneDNN/fbgemm kernels, ~4x the fused fp32 path on AVX-512-VNNI. The logits are
    an approximation: check the top-1 agreement with the float model on your data before distilling from it.
    `calibration`: a few batches of real (normalised) inputs, which set the activation ranges."""
    import warnings

    if not isinstance(model, SmallResNet):
        raise ValueError(f"int8 inference is implemented for SmallResNet teachers, not {type(model).__name__}")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = model.float().eval().requires_grad_(False)
    batches = [b.float() for b in calibration]
    if not batches:
        raise ValueError("quantize_for_inference needs at least one calibration batch")
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():  # torch.ao.quantization's FX API announces its move to torchao
        warnings.simplefilter("ignore")
        prepared = prepare_fx(_ResNetLogits(model), get_default_qconfig_mapping("x86"), (batches[0],))
        with torch.no_grad():
            for b in batches:
                prepared(b)
        return QuantizedResNet(model, convert_fx(prepared))


# -------------------------------------------------------------------------------------------- ResNet
def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the convolution followed by the eval-mode BatchNorm, computed in fp32."""
    scale = bn.weight.float() / (bn.running_var.float() + bn.eps).sqrt()
    weight = conv.weight.float() * scale[:, None, None, None]
    bias = bn.bias.float() - bn.running_mean.float() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.float() * scale
    return weight, bias


class _FusedConv(nn.Module):
    """Conv + eval BatchNorm folded into one oneDNN convolution, optionally with ReLU or (residual add, ReLU)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype):
        super().__init__()
        weight, bias = _fold_bn(conv, bn)
        self.register_buffer("weight", weight.to(dtype).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias.to(dtype))
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

    def forward(self, x: torch.Tensor, relu: bool = True, residual: torch.Tensor | None = None) -> torch.Tensor:
        if residual is None:
            return _mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.args,
                                                  "relu" if relu else "none", [], "")
        return _mkldnn._convolution_pointwise.binary(x, residual, self.weight, self.bias, *self.args,
                                                     "add", 1.0, "relu", [], "")


class FusedResNet(nn.Module):
    """Inference forward of a SmallResNet on CPU: BatchNorm folded into the convolutions (a snapshot: rebuild
    after changing the weights), ReLU and the residual add fused into the oneDNN kernels, channels-last."""

    def __init__(self, model: SmallResNet):
        super().__init__()
        self.model = model
        dtype = model.head.weight.dtype
        self.stem = _FusedConv(model.stem[0], model.stem[1], dtype)
        self.blocks = nn.ModuleList()
        for block in model.stages:
            assert isinstance(block, BasicBlock)
            fused = nn.Module()
            fused.conv1 = _FusedConv(block.conv1, block.bn1, dtype)
            fused.conv2 = _FusedConv(block.conv2, block.bn2, dtype)
            fused.shortcut = None if isinstance(block.shortcut, nn.Identity) else \
                _FusedConv(block.shortcut[0], block.shortcut[1], dtype)
            self.blocks.append(fused)

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    def forward(self, x: torch.Tensor) -> DeiTOutput:
        m = self.model
        m.check_input(x)
        x = self.stem(x.to(m.head.weight.dtype).contiguous(memory_format=torch.channels_last))
        for b in self.blocks:
            shortcut = x if b.shortcut is None else b.shortcut(x, relu=False)
            x = b.conv2(b.conv1(x), residual=shortcut)
        logits = m.head(x.mean((2, 3)))
        return DeiTOutput(logits=logits, cls_logits=logits)


__all__ = ["CastInput", "FusedResNet", "FusedViT", "QuantizedResNet", "fastest_num_threads",
           "prepare_model_for_inference", "quantize_for_inference"]
