"""The pipeline student's Trainer step compiled (torch.compile, inductor) against eager: the compile's seconds, the
steady step time of both, and whether they compute the same losses (docs/performance.md, "torch.compile").

Usage: python scripts/compile_ab.py [none|token] [THREADS] [speed|numerics] [TEACHER_RUN_DIR]
speed: the first 3 compiled steps' wall seconds (the first one compiles; TORCHINDUCTOR_CACHE_DIR=an empty folder for
a first compile), then eager and compiled windows of 8 steps alternating, medians; thread CPU time at THREADS=1
(robust on a shared machine), wall time otherwise. numerics: 30 steps from the same weights, eager then compiled,
stochastic depth's masks drawn from the same generator (inductor's fallback_random): the losses side by side."""
import copy, os, statistics, sys, tempfile, time
import torch
from deit.engine.runtime import setup_runtime
from deit.engine.trainer import Trainer
from deit.pipeline import pipeline_configs

name = sys.argv[1] if len(sys.argv) > 1 else "none"
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
what = sys.argv[3] if len(sys.argv) > 3 else "speed"
if what == "numerics":
    torch._inductor.config.fallback_random = True
out = tempfile.mkdtemp()
config = pipeline_configs("small", out, seed=0, progress=False, precision="bf16", threads=threads)[name]
if name == "token":
    config = config.replace(teacher=sys.argv[4] if len(sys.argv) > 4 else "runs/pipeline/small-s0/teacher")
config = config.replace(output=f"{out}/run", compile="off")
tr = Trainer(config, config.output, setup_runtime(config.device, "bf16", threads))
tr.model.train(); tr.train_loader.set_epoch(0)
batches = iter(tr.train_loader.iterate(0))
data = [next(batches) for _ in range(30)]
eager, compiled = tr.task.student, torch.compile(tr.model, dynamic=False)  # what deit.engine.compile does


def step(x, y):
    return tr.train_step(x.clone(), y.clone(), 0, 0).total.item()  # timm's Mixup mixes in place


if what == "numerics":
    start = (copy.deepcopy(tr.model.state_dict()), copy.deepcopy(tr.optimizer.state_dict()))
    losses = {}
    for label, student in (("eager", eager), ("compiled", compiled)):
        tr.model.load_state_dict(start[0]); tr.optimizer.load_state_dict(start[1]); tr.step = 0
        tr.task.student = student
        torch.manual_seed(0)
        losses[label] = [step(x, y) for x, y in data]
        print(f"{label:8s}", [round(v, 4) for v in losses[label]])
    diff = [abs(a - b) for a, b in zip(losses["eager"], losses["compiled"])]
    print(f"{name}: max |loss difference| over {len(data)} steps {max(diff):.4f}; mean loss eager "
          f"{statistics.mean(losses['eager']):.4f}, compiled {statistics.mean(losses['compiled']):.4f}")
    sys.exit()

tr.task.student = compiled
firsts = []
for x, y in data[:3]:
    t = time.perf_counter(); step(x, y); firsts.append(time.perf_counter() - t)
print(f"first 3 compiled steps (wall): {[round(s, 2) for s in firsts]} s")
clock = time.thread_time if threads == 1 else time.perf_counter
W, times = 8, {"eager": [], "compiled": []}
for r in range(9):
    for label, student in (("eager", eager), ("compiled", compiled)):
        tr.task.student = student
        t = clock()
        for i in range(W):
            step(*data[(r * W + i) % len(data)])
        if r:
            times[label].append((clock() - t) / W)
e, c = (statistics.median(times[k]) for k in ("eager", "compiled"))
ratio = statistics.median([b / a for a, b in zip(times["eager"], times["compiled"])])
print(f"{name}, {threads} thread(s): eager {e * 1e3:.1f} ms a step ({64 / e:.0f} im/s), compiled {c * 1e3:.1f} ms "
      f"({64 / c:.0f} im/s), compiled / eager {ratio:.3f} (median of {len(times['eager'])} window pairs); "
      f"load average {os.getloadavg()[0]:.1f}")
for label, v in times.items():
    print(f"  {label:8s} {[round(t * 1e3, 1) for t in v]}")
