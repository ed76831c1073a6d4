"""`deit bench` runs and reports well-formed results; the speed helpers keep the numerics. No timing assertions."""

import copy
import json

import pytest
import torch

from deit import create_model
from deit.bench import BenchConfig, run_bench
from deit.cli import main
from deit.engine.optim import make_optimizer_fast
from deit.speed import FusedResNet, FusedViT, fastest_num_threads, prepare_model_for_inference

QUICK = dict(batch_size=2, windows=1, warmup=0, min_window_s=0.0, threads=1)
METRICS = {"images_per_s", "ms_per_step", "peak_mem_mb", "gflops_per_image", "achieved_tflops", "mfu"}


def test_run_bench_both_modes_against_timm_with_teacher():
    result = run_bench(BenchConfig(model="deit_micro_distilled_patch4_28", mode="both", compare="timm",
                                   teacher="resnet8_small", **QUICK))
    assert result["peak_matmul_tflops"]["fp32"] > 0 and result["machine"]["device"] in ("cpu", "cuda")
    for mode in ("infer", "train"):
        res = result["results"][mode]
        assert METRICS <= set(res["ours"]) and METRICS <= set(res[res["timm_best"]])
        assert res["ours"]["images_per_s"] > 0 and res["ratio_vs_timm"] > 0
        assert res["ours"]["gflops_per_image"] == pytest.approx(res[res["timm_best"]]["gflops_per_image"])
    train = result["results"]["train"]["ours"]
    assert 0 < train["teacher_share"] < 1 and train["teacher_ms_per_step"] > 0


def test_run_bench_ours_fp32_against_timm_bf16_with_int8_teacher():
    result = run_bench(BenchConfig(model="deit_micro_distilled_patch4_28", mode="train", compare="timm",
                                   precision="bf16", ours_precision="fp32", teacher="resnet8_small",
                                   teacher_precision="int8", **QUICK))
    assert set(result["peak_matmul_tflops"]) == {"bf16", "fp32"}
    res = result["results"]["train"]
    assert res["ours"]["precision"] == "fp32" and res["timm_autocast"]["precision"] == "bf16"
    assert res["ours"]["teacher_path"] == "QuantizedResNet" and 0 <= res["ours"]["teacher_top1_agreement"] <= 1


def test_cli_json(capsys):
    assert main(["bench", "--model", "deit_micro_patch4_28", "--batch-size", "2", "--precision", "bf16",
                 "--mode", "train", "--windows", "2", "--warmup", "0", "--min-window-s", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"config", "machine", "peak_matmul_tflops", "results"}
    ours = result["results"]["train"]["ours"]
    assert METRICS <= set(ours) and len(ours["window_ms_per_step"]) == 2
    assert result["config"]["precision"] == "bf16"


def test_cli_rejects_bad_model(capsys):
    assert main(["bench", "--model", "no_such_model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["bench", "--model", "timm:resnet18"]) == 2  # timm's own: no twin of ours to compare or FLOPs rule
    assert "deit bench times the models of this package" in capsys.readouterr().err


def _jitter(model):
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial norms, biases and BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
        for p in m.parameters(recurse=False):
            if p.ndim == 1:
                p.data.normal_(generator=gen)
    return model.eval()


@pytest.mark.parametrize("name,kwargs,fused", [
    ("deit_micro_distilled_patch4_28", {}, FusedViT),
    ("deit_micro_patch4_32", {"combine": "mean_logits"}, FusedViT),
    ("deit_tiny_distilled_patch4_28", {"combine": "mean_softmax"}, FusedViT),
    ("resnet8_small", {"in_chans": 1}, FusedResNet),
])
def test_prepare_model_for_inference_keeps_outputs(name, kwargs, fused):
    model = _jitter(create_model(name, **kwargs))
    x = torch.randn(3, model.config.in_chans, 28, 28) if fused is FusedResNet else \
        torch.randn(3, model.config.in_chans, *model.config.img_size)
    with torch.no_grad():
        ref = model(x)
    fast = prepare_model_for_inference(copy.deepcopy(model), "fp32")
    assert isinstance(fast, fused)
    out = fast(x)
    for key in ("logits", "cls_logits", "dist_logits"):
        if getattr(ref, key) is None:
            assert getattr(out, key) is None
        else:
            torch.testing.assert_close(getattr(out, key), getattr(ref, key), rtol=0, atol=1e-5)
    with torch.autocast("cpu", torch.bfloat16):  # a caller's autocast does not leak into the fused path
        torch.testing.assert_close(fast(x).logits, ref.logits, rtol=0, atol=1e-5)
    low = prepare_model_for_inference(copy.deepcopy(model), "bf16")(x)
    assert low.logits.dtype == torch.bfloat16
    assert (low.logits.float().argmax(-1) == ref.logits.argmax(-1)).float().mean() >= 2 / 3


def test_make_optimizer_fast_matches_adamw():
    torch.manual_seed(0)
    a = create_model("deit_micro_patch4_28", drop_path_rate=0.0)
    b = copy.deepcopy(a)
    fast = make_optimizer_fast(a.parameters(), lr=1e-3, weight_decay=0.05)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.05)
    assert fast.defaults.get("fused") or fast.defaults.get("foreach")
    x = torch.randn(4, 1, 28, 28)
    for model, opt in ((a, fast), (b, plain)):
        for _ in range(2):
            model(x).logits.square().mean().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)  # fused vs for-loop rounding


def test_fastest_num_threads_sets_a_candidate():
    before = torch.get_num_threads()
    try:
        n = fastest_num_threads(lambda: torch.randn(64, 64) @ torch.randn(64, 64), candidates=(1, 2), rounds=1)
        assert n in (1, 2) and torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
