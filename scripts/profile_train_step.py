"""Where a bf16-autocast training step of deit_tiny_distilled_patch16_224 spends its time: timm vs ours.

Usage: python scripts/profile_train_step.py [THREADS]   (docs/performance.md, "Why tiny-224 in bf16 ...")
"""
import sys, torch, timm
from torch.profiler import profile, ProfilerActivity
from deit.models import create_model
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
B = 32
x = torch.randn(B, 3, 224, 224); y = torch.randint(0, 1000, (B,))
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_linear_pointwise", "mkldnn::_linear_pointwise",
          "aten::mkldnn_convolution", "aten::convolution_backward")
def step_fn(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            out = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return step
for name, model in (("timm", timm.create_model("deit_tiny_distilled_patch16_224").train()),
                    ("ours", create_model("deit_tiny_distilled_patch16_224").train())):
    step = step_fn(model)
    for _ in range(2): step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3): step()
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    mm = sum(e.self_cpu_time_total for e in ev if e.key in MATMUL)
    print(f"{name}: step {total/3/1e3:.0f} ms, matmul/conv self time {mm/total:.1%}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
