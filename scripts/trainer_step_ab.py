"""The pipeline student's step in the Trainer against the bench's step on the same model, batch and teacher, and
where the Trainer's step goes by kind of op (docs/performance.md, "The Trainer's step against the bf16 peak").

Usage: python scripts/trainer_step_ab.py [none|token] [THREADS] [TEACHER_RUN_DIR]
Times are thread CPU time at THREADS=1 (robust on a shared machine: waiting for a core is not counted), wall time
otherwise; the two steps alternate in windows, medians."""
import copy, statistics, sys, tempfile, time
import torch
from torch.profiler import ProfilerActivity, profile
from deit.bench import _loss
from deit.engine.optim import make_optimizer_fast
from deit.engine.runtime import setup_runtime
from deit.engine.trainer import Trainer
from deit.pipeline import pipeline_configs

name = sys.argv[1] if len(sys.argv) > 1 else "token"
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
out = tempfile.mkdtemp()
config = pipeline_configs("small", out, seed=0, progress=False, precision="bf16", threads=threads)[name]
if name == "token":
    config = config.replace(teacher=sys.argv[3] if len(sys.argv) > 3 else "runs/pipeline/small-s0/teacher")
config = config.replace(output=f"{out}/run")
tr = Trainer(config, config.output, setup_runtime(config.device, "bf16", threads))
tr.model.train(); tr.train_loader.set_epoch(0)
batches = iter(tr.train_loader.iterate(0))
data = [next(batches) for _ in range(20)]
clock = time.thread_time if threads == 1 else time.perf_counter

twin = copy.deepcopy(tr.model).train()  # the bench's step (deit.bench._train_candidates) on a copy
twin_opt = make_optimizer_fast(twin.parameters(), lr=1e-4, weight_decay=0.05)
def bench_step(x, y):
    teacher_logits = None
    if tr.teacher is not None:
        with torch.no_grad():
            teacher_logits = tr.teacher(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = twin(x)
        loss = _loss(o.cls_logits, o.dist_logits, y, teacher_logits)
    loss.backward(); twin_opt.step(); twin_opt.zero_grad(set_to_none=True)
def trainer_step(x, y):
    tr.train_step(x, y, 0, 0).total.item()
def loader_step(x, y):
    next(batches)
steps = {"bench": bench_step, "trainer": trainer_step, "loader": loader_step}
W, times = 8, {k: [] for k in steps}
for r in range(8):
    for k, f in steps.items():
        if k == "loader":
            tr.train_loader.set_epoch(r); batches = iter(tr.train_loader.iterate(0))
        t = clock()
        for i in range(W):
            f(*data[(r * W + i) % len(data)])
        if r:
            times[k].append((clock() - t) / W)
for k, v in times.items():
    print(f"{k:8s} {statistics.median(v) * 1e3:7.2f} ms a step  {[round(t * 1e3, 1) for t in v]}")
print(f"trainer / bench {statistics.median([t / b for t, b in zip(times['trainer'], times['bench'])]):.3f}, "
      f"loader / trainer {statistics.median([l / t for l, t in zip(times['loader'], times['trainer'])]):.3f}")

KINDS = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution", "aten::convolution_backward"),
         "teacher convs": ("mkldnn::_convolution_pointwise",),
         "copies and casts": ("aten::copy_", "aten::clone", "aten::cat", "aten::_to_copy", "aten::contiguous"),
         "softmax": ("aten::_softmax", "aten::_softmax_backward_data"),
         "layernorm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
         "gelu": ("aten::gelu", "aten::gelu_backward"),
         "elementwise": ("aten::add", "aten::add_", "aten::mul", "aten::div", "aten::sum", "aten::fill_"),
         "optimizer": ("aten::_fused_adamw_", "aten::linalg_vector_norm", "aten::stack")}
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for x, y in data[:5]:
        trainer_step(x, y)
events = prof.key_averages()
total = sum(e.self_cpu_time_total for e in events)
for kind, ops in KINDS.items():
    share = sum(e.self_cpu_time_total for e in events if e.key in ops) / total
    print(f"{kind:16s} {100 * share:5.1f} %")
print(f"{'rest':16s} {100 * (1 - sum(e.self_cpu_time_total for e in events if any(e.key in o for o in KINDS.values())) / total):5.1f} %")
