"""`deit bench`: throughput, memory, FLOPs and MFU of a model's inference and training step, optionally
against timm's implementation of the same architecture timed in the same process, interleaved.

Each candidate is a step function. After warm-up, every candidate runs `windows` timed windows of the same
number of steps, round-robin (ours, timm, ours, timm, ...), so that load from other processes hits all of
them alike; a figure is the median over windows. Ours runs the fastest correct path (`deit.speed`); timm runs
as a user would: eval / train mode, torch.autocast for bf16 (and, for inference, also weights cast to bf16:
the faster of the two is the baseline), the default torch.optim.AdamW.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .engine.optim import make_optimizer_fast
from .engine.precision import autocast, precision_dtype
from .flops import forward_flops_per_image, train_flops_per_image
from .losses import DistillationLoss
from .machine import machine_info, matmul_peak_tflops, measure_peak_memory_mb, sync
from .models import create_model, model_family
from .models.registry import EXTERNAL_LIBRARIES
from .models.vit import DeiTOutput
from .speed import prepare_model_for_inference, quantize_for_inference

MODES = ("infer", "train")


@dataclass
class BenchConfig:
    model: str
    img_size: Optional[int] = None
    batch_size: int = 32
    precision: str = "fp32"  # fp32 | bf16: ours and timm's
    ours_precision: Optional[str] = None  # ours in another precision (fp32 against timm's bf16); default: precision
    teacher_precision: Optional[str] = None  # fp32 | bf16 | int8 (ours only; timm's teacher: autocast)
    mode: str = "infer"  # infer | train | both
    compare: Optional[str] = None  # None | "timm"
    teacher: Optional[str] = None  # a registered model name: distilled training step
    threads: Optional[int] = None  # torch.set_num_threads
    compile: bool = False  # torch.compile our model (compile time reported separately)
    device: Optional[str] = None  # default: cuda if available, else cpu
    warmup: int = 2  # untimed steps per candidate (after the first call)
    windows: int = 5  # timed windows per candidate
    min_window_s: float = 1.0  # steps per window chosen so that a window lasts at least this
    seed: int = 0

    def __post_init__(self):
        precision_dtype(self.precision)
        self.ours_precision = self.ours_precision or self.precision
        self.teacher_precision = self.teacher_precision or self.ours_precision
        precision_dtype(self.ours_precision)
        if self.teacher_precision != "int8":
            precision_dtype(self.teacher_precision)
        if self.mode not in MODES + ("both",):
            raise ValueError(f"mode must be infer, train or both, got {self.mode!r}")
        if self.compare not in (None, "timm"):
            raise ValueError(f"--compare supports only 'timm', got {self.compare!r}")
        if self.batch_size < 1 or self.windows < 1 or self.warmup < 0:
            raise ValueError("batch_size and windows must be >= 1, warmup >= 0")
        for role, name in (("--model", self.model), ("--teacher", self.teacher)):
            if name is not None and model_family(name) in EXTERNAL_LIBRARIES:
                raise ValueError(f"deit bench times the models of this package (`deit models`), not {name}: "
                                 f"{role} takes one of those")


@dataclass
class Candidate:
    name: str
    step: Callable[[], None]
    flops_per_image: float
    precision: str  # the one its MFU is scored against
    teacher_time: Optional[list] = None  # seconds spent in the teacher, appended by `step`
    teacher_flops_per_image: float = 0.0  # included in flops_per_image
    teacher_precision: Optional[str] = None
    info: Optional[dict] = None


# --------------------------------------------------------------------------------------------- timm
def timm_equivalent(model: nn.Module) -> nn.Module:
    """timm's VisionTransformer / VisionTransformerDistilled with our model's hyper-parameters and weights."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    c = getattr(model, "config", None)
    if not hasattr(c, "embed_dim"):
        raise ValueError(f"--compare timm needs a ViT/DeiT model; {type(model).__name__} has no timm twin")
    cls = VisionTransformerDistilled if c.distilled else VisionTransformer
    twin = cls(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
               embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
               qkv_bias=c.qkv_bias, drop_path_rate=c.drop_path_rate)
    twin.load_state_dict(model.state_dict())
    if c.distilled:
        twin.set_distilled_training(True)  # train mode returns (cls, dist), as ours does
    return twin


# ------------------------------------------------------------------------------------------- timing
def _time_candidates(cands: list[Candidate], cfg: BenchConfig, device: torch.device) -> dict[str, dict]:
    out = {}
    for c in cands:  # first call (compilation, caches), then warm-up; calibrate steps per window
        sync(device)
        start = time.perf_counter()
        c.step()
        sync(device)
        first = time.perf_counter() - start
        for _ in range(cfg.warmup):
            c.step()
        sync(device)
        start = time.perf_counter()
        c.step()
        sync(device)
        one = time.perf_counter() - start
        steps = max(1, math.ceil(cfg.min_window_s / max(one, 1e-9)))
        out[c.name] = {"first_call_s": first, "steps_per_window": steps, "windows_s": [], "teacher_s": []}
    for _ in range(cfg.windows):
        for c in cands:
            r = out[c.name]
            if c.teacher_time is not None:
                c.teacher_time.clear()
            sync(device)
            start = time.perf_counter()
            for _ in range(r["steps_per_window"]):
                c.step()
            sync(device)
            r["windows_s"].append(time.perf_counter() - start)
            if c.teacher_time is not None:
                r["teacher_s"].append(sum(c.teacher_time))
    return out


def _summarise(c: Candidate, timing: dict, cfg: BenchConfig, peaks: dict, mem_mb) -> dict:
    steps = timing["steps_per_window"]
    per_step = [w / steps for w in timing["windows_s"]]
    step_s = statistics.median(per_step)
    ips = cfg.batch_size / step_s
    achieved = c.flops_per_image * ips / 1e12
    r = {"images_per_s": ips, "ms_per_step": step_s * 1e3, "peak_mem_mb": mem_mb,
         "gflops_per_image": c.flops_per_image / 1e9, "achieved_tflops": achieved,
         "precision": c.precision, "mfu": _mfu(achieved, peaks.get(c.precision)),
         "steps_per_window": steps, "window_ms_per_step": [round(s * 1e3, 2) for s in per_step]}
    if timing["teacher_s"]:
        shares = [t / w for t, w in zip(timing["teacher_s"], timing["windows_s"])]
        teacher_s = statistics.median(timing["teacher_s"]) / steps
        r["teacher_ms_per_step"], r["teacher_precision"] = teacher_s * 1e3, c.teacher_precision
        r["teacher_share"] = statistics.median(shares)
        # Student and teacher scored apart, each against its own precision's peak (int8 has none here).
        student_flops = (c.flops_per_image - c.teacher_flops_per_image) * cfg.batch_size
        r["student_mfu"] = _mfu(student_flops / max(step_s - teacher_s, 1e-12) / 1e12, peaks.get(c.precision))
        r["teacher_mfu"] = _mfu(c.teacher_flops_per_image * cfg.batch_size / max(teacher_s, 1e-12) / 1e12,
                                peaks.get(c.teacher_precision))
        if c.teacher_precision != c.precision:
            r["mfu"] = None  # one step, two precisions: no single peak
    if cfg.compile and c.name == "ours":  # first call minus a steady step: the compilation
        r["compile_s"] = max(0.0, timing["first_call_s"] - step_s)
    r.update(c.info or {})
    return r


def _mfu(achieved_tflops: float, peak_tflops: Optional[float]) -> Optional[float]:
    return achieved_tflops / peak_tflops if peak_tflops else None


# ----------------------------------------------------------------------------------------- builders
def _inputs(model: nn.Module, cfg: BenchConfig, device: torch.device, gen: torch.Generator):
    c = model.config
    size = c.img_size if hasattr(c, "grid_size") else (cfg.img_size or 32,) * 2  # a ResNet takes any size
    x = torch.randn(cfg.batch_size, c.in_chans, *size, generator=gen).to(device)
    y = torch.randint(0, c.num_classes, (cfg.batch_size,), generator=gen).to(device)
    return x, y


def _autocast(device: torch.device, dtype: torch.dtype):
    return autocast(device, None if dtype == torch.float32 else dtype)


def _loss(cls_logits, dist_logits, y, teacher_logits):
    """The training loss: hard distillation (DeiT's best, alpha 0.5) with a teacher, else the label for every head."""
    criterion = DistillationLoss(nn.CrossEntropyLoss(), "none" if teacher_logits is None else "hard", alpha=0.5)
    return criterion(DeiTOutput(cls_logits, cls_logits, dist_logits), y, teacher_logits).total


def _infer_candidates(base: nn.Module, cfg: BenchConfig, device, x) -> list[Candidate]:
    flops = forward_flops_per_image(base, x)
    ours = prepare_model_for_inference(copy.deepcopy(base).to(device), cfg.ours_precision, compile=cfg.compile)
    info = {"path": "torch.compile(freezing)" if cfg.compile else type(ours).__name__}

    def ours_step():
        with torch.inference_mode():
            ours(x)

    cands = [Candidate("ours", ours_step, flops, cfg.ours_precision, info=info)]
    if cfg.compare == "timm":
        dtype = precision_dtype(cfg.precision)
        twin = timm_equivalent(base).to(device).eval()

        def timm_step():
            with torch.inference_mode(), _autocast(device, dtype):
                twin(x)

        low = dtype != torch.float32
        cands.append(Candidate("timm_autocast" if low else "timm", timm_step, flops, cfg.precision))
        if low:  # timm's other bf16 mode: weights and input cast
            twin_cast = copy.deepcopy(twin).to(dtype)

            def timm_cast_step():
                with torch.inference_mode():
                    twin_cast(x.to(dtype))

            cands.append(Candidate(f"timm_{cfg.precision}_weights", timm_cast_step, flops, cfg.precision))
    return cands


def _prepared_teacher(teacher: nn.Module, cfg: BenchConfig, x) -> nn.Module:
    if cfg.teacher_precision == "int8":
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        return quantize_for_inference(copy.deepcopy(teacher).cpu(), [torch.randn(x.shape, generator=gen)
                                                                     for _ in range(4)])
    return prepare_model_for_inference(copy.deepcopy(teacher), cfg.teacher_precision)


def _train_candidates(base: nn.Module, cfg: BenchConfig, device, x, y) -> list[Candidate]:
    teacher = teacher_plain = None
    teacher_flops = 0.0
    if cfg.teacher is not None:
        c = base.config
        teacher_plain = create_model(cfg.teacher, in_chans=c.in_chans, num_classes=c.num_classes).to(device)
        teacher_plain.eval().requires_grad_(False)
        teacher = _prepared_teacher(teacher_plain, cfg, x)
        teacher_flops = forward_flops_per_image(teacher_plain, x)

    flops = train_flops_per_image(base, x) + teacher_flops

    def make_step(model, optimizer, dtype, teacher, teacher_dtype, unpack, times):
        def step():
            teacher_logits = None
            if teacher is not None:
                sync(device)
                start = time.perf_counter()
                with torch.no_grad(), _autocast(device, teacher_dtype):
                    out = teacher(x)
                    teacher_logits = out.logits if hasattr(out, "logits") else out
                sync(device)
                times.append(time.perf_counter() - start)
            with _autocast(device, dtype):
                cls_logits, dist_logits = unpack(model(x))
                loss = _loss(cls_logits, dist_logits, y, teacher_logits)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    # Ours: autocast for bf16 (pure-bf16 weights with fp32 masters measured no faster), fused AdamW, the
    # prepared teacher (its own dtype: no autocast around it).
    ours = copy.deepcopy(base).to(device).train()
    ours_opt = make_optimizer_fast(ours.parameters(), lr=1e-4, weight_decay=0.05)
    forward = torch.compile(ours) if cfg.compile else ours
    times: list = []
    teacher_info = {} if teacher is None else {"teacher": cfg.teacher, "teacher_path": type(teacher).__name__}
    cands = [Candidate("ours", make_step(forward, ours_opt, precision_dtype(cfg.ours_precision), teacher,
                                         torch.float32, lambda o: (o.cls_logits, o.dist_logits), times),
                       flops, cfg.ours_precision, teacher_time=times if teacher is not None else None,
                       teacher_flops_per_image=teacher_flops, teacher_precision=cfg.teacher_precision,
                       info=teacher_info)]
    if teacher is not None and cfg.teacher_precision == "int8":
        with torch.no_grad():
            ref, approx = teacher_plain(x).logits, teacher(x).logits
        teacher_info["teacher_top1_agreement"] = (ref.argmax(-1) == approx.argmax(-1)).float().mean().item()
    if cfg.compare == "timm":
        dtype = precision_dtype(cfg.precision)
        twin = timm_equivalent(base).to(device).train()
        twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-4, weight_decay=0.05)
        times_t: list = []
        unpack = (lambda o: o) if base.config.distilled else (lambda o: (o, None))
        cands.append(Candidate("timm_autocast" if dtype != torch.float32 else "timm",
                               make_step(twin, twin_opt, dtype, teacher_plain, dtype, unpack, times_t), flops,
                               cfg.precision, teacher_time=times_t if teacher is not None else None,
                               teacher_flops_per_image=teacher_flops, teacher_precision=cfg.precision))
    return cands


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> dict:
    """Benchmark `cfg.model`; returns a JSON-able dict (see docs/performance.md for the fields)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    overrides = {} if cfg.img_size is None or model_family(cfg.model) != "vit" else {"img_size": cfg.img_size}
    base = create_model(cfg.model, **overrides)
    if cfg.compare == "timm":
        timm_equivalent(base)  # fail early on a model without a timm twin
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = _inputs(base, cfg, device, gen)

    result = {"config": asdict(cfg), "machine": machine_info(device), "results": {}}
    precisions = sorted({cfg.precision, cfg.ours_precision} | ({cfg.teacher_precision} - {"int8"}
                                                               if cfg.teacher else set()))
    log(f"measuring the {'/'.join(precisions)} matmul peak on {device}")
    result["peak_matmul_tflops"] = peaks = {p: matmul_peak_tflops(precision_dtype(p), device) for p in precisions}
    for mode in MODES if cfg.mode == "both" else (cfg.mode,):
        log(f"{mode}: building candidates")
        cands = (_infer_candidates(base, cfg, device, x) if mode == "infer"
                 else _train_candidates(base, cfg, device, x, y))
        log(f"{mode}: timing {', '.join(c.name for c in cands)}")
        timing = _time_candidates(cands, cfg, device)
        mode_result = {}
        for c in cands:
            mem = measure_peak_memory_mb(c.step, device)
            mode_result[c.name] = _summarise(c, timing[c.name], cfg, peaks, mem)
        baselines = [k for k in mode_result if k.startswith("timm")]
        if baselines:
            best = max(baselines, key=lambda k: mode_result[k]["images_per_s"])
            mode_result["timm_best"] = best
            mode_result["ratio_vs_timm"] = mode_result["ours"]["images_per_s"] / mode_result[best]["images_per_s"]
        result["results"][mode] = mode_result
    return result


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def format_report(result: dict) -> str:
    cfg, m = result["config"], result["machine"]
    where = m.get("gpu") or f"{m.get('cpu')} ({m.get('cores')} cores, isa {m.get('isa')}, amx_bf16={m.get('amx_bf16')})"
    peaks = ", ".join(f"{p} {v:.3f}" for p, v in result["peak_matmul_tflops"].items())
    lines = [f"{cfg['model']}  batch {cfg['batch_size']}  on {where}, {m['threads']} threads, torch {m['torch']}",
             f"matmul peak TFLOP/s: {peaks}"]
    for mode, res in result["results"].items():
        lines.append(f"[{mode}]")
        for name, r in res.items():
            if not isinstance(r, dict):
                continue
            mem = "n/a" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f} MB"
            extra = ""
            if "teacher_share" in r:
                extra += f"  teacher {r.get('teacher_precision', '')} {r['teacher_ms_per_step']:.1f} ms ({100 * r['teacher_share']:.1f}% of step)"
            if "teacher_top1_agreement" in r:
                extra += f" (top-1 agreement with the float teacher {100 * r['teacher_top1_agreement']:.1f}%)"
            if "compile_s" in r:
                extra += f"  compile {r['compile_s']:.1f} s"
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            if "student_mfu" in r:
                mfu += f" (student {_pct(r['student_mfu'])}, teacher {_pct(r['teacher_mfu'])})"
            lines.append(f"  {name:18s} {r['precision']:4s} {r['images_per_s']:9.1f} img/s {r['ms_per_step']:9.1f} ms/step  "
                         f"mem {mem}  {r['gflops_per_image']:.3f} GFLOP/img  {r['achieved_tflops']:.3f} TFLOP/s  "
                         f"MFU {mfu}{extra}")
        if "ratio_vs_timm" in res:
            lines.append(f"  ours / {res['timm_best']}: {res['ratio_vs_timm']:.2f}x")
    return "\n".join(lines)
