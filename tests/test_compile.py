"""--compile (deit.engine.compile): a compiled run trains what the uncompiled one trains, saves the plain module's
weights, resumes exactly; a failing compiler falls back to eager; auto compiles only where it was measured to pay."""

import json
import shutil

import pytest
import torch
from torch import nn

import deit.models
from deit.config import preset_config
from deit.engine import compile as compile_module, fit
from deit.engine.compile import compile_key, compile_student, decide
from deit.engine.runtime import setup_runtime
from deit.engine.state_file import read_state
from deit.safe_read import read_safetensors

MODEL = "deit_micro_patch4_28"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "compile.json"
    monkeypatch.setattr(compile_module, "COMPILE_CACHE", path)
    return path


@pytest.fixture
def one_block(monkeypatch):
    """The registry's micro ViT cut to one block: inductor compiles a few dozen C++ kernels, not a hundred."""
    create = deit.models.create_model
    monkeypatch.setattr(deit.models, "create_model", lambda name, **kw: create(name, **{**kw, "depth": 1}))


def run_config(tmp_path, name, fmnist_dir, **overrides):
    """Seconds-long: 400 images, batches of 40, the stochastic parts on except stochastic depth (inductor draws
    its masks from its own generator)."""
    base = dict(model=MODEL, epochs=2, batch_size=40, train_subset=400, warmup_epochs=0.2, eval_every=100,
                mixup=0.8, cutmix=1.0, reprob=0.25, drop_path=0.0, progress=False, threads=2, precision="fp32",
                data_dir=fmnist_dir, output=str(tmp_path / name))
    return preset_config("fmnist-cpu", **{**base, **overrides})


@pytest.mark.skipif(shutil.which(torch._inductor.config.cpp.cxx[-1] or "g++") is None,
                    reason="inductor needs a C++ compiler (g++) on PATH")
def test_compiled_run_trains_as_eager_saves_plain_weights_and_resumes(tmp_path, fmnist_dir, small_val, one_block,
                                                                       cache, capfd):
    eager = fit(run_config(tmp_path, "eager", fmnist_dir, compile="off"))
    compiled = fit(run_config(tmp_path, "compiled", fmnist_dir, compile="on"))
    assert "compile: the student's step compiled in" in capfd.readouterr().out
    # The same 20 steps up to float rounding (inductor fuses and reorders fp32 sums): same keys, close weights.
    a, b = (read_safetensors(run.output / "model.safetensors")[0] for run in (eager, compiled))
    assert set(a) == set(b) and not any("_orig_mod" in k for k in b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=key)
    assert abs(compiled.metrics["top1"] - eager.metrics["top1"]) <= 0.4  # at most 2 of the 500 images
    # The saved weights in a plain, uncompiled model give the run's own evaluation logits.
    model = deit.models.create_model(MODEL, num_classes=10, in_chans=1, img_size=28).eval()
    model.load_state_dict(b)
    state = read_state(compiled.output / "state.pt")
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    # Interrupted inside epoch 2 and resumed (compiled again, from the cache) == the uninterrupted compiled run.
    assert fit(run_config(tmp_path, "parted", fmnist_dir, compile="on"), stop_after_steps=13).metrics == {}
    resumed = fit(None, resume=tmp_path / "parted")
    c = read_state(resumed.output / "state.pt")
    for key in state["model"]:
        assert torch.equal(state["model"][key], c["model"][key]), key
    assert resumed.metrics["top1"] == compiled.metrics["top1"]
    assert len(json.loads(cache.read_text())) == 1  # the step is remembered: auto compiles it from now on


def test_a_compiler_that_fails_falls_back_to_eager(tmp_path, monkeypatch, cache, capsys):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing cached: g++ must run
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2))
    config = preset_config("fmnist-cpu", model=MODEL, compile="on")
    student = compile_student(model, model, config, setup_runtime("cpu", "fp32"), (4, 8))
    assert student is model  # uncompiled
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiling the student failed" in err[0] and "training uncompiled" in err[0]
    assert all(p.grad is None for p in model.parameters()) and not cache.exists()


def test_auto_compiles_only_where_measured_to_pay(tmp_path, cache):
    bf16, fp32 = setup_runtime("cpu", "bf16"), setup_runtime("cpu", "fp32")
    auto = preset_config("fmnist-cpu", model="deit_mini_patch8_32")
    key = compile_key(auto.model, (64, 1, 40, 40), torch.bfloat16)
    assert not decide(auto, bf16, key)[0]  # a first compile: minutes, not repaid by an unbudgeted run's length
    assert not decide(auto.replace(time_budget_minutes=7.5), bf16, key)[0]  # the pipeline's students
    assert decide(auto.replace(time_budget_minutes=30), bf16, key)[0]
    assert not decide(auto.replace(time_budget_minutes=30), fp32, key)[0]  # not measured
    assert not decide(auto.replace(model="resnet8_tiny", time_budget_minutes=30), bf16, key)[0]
    cache.write_text(json.dumps({key: {"seconds": 3.5, "cache_dir": str(tmp_path)}}))
    assert decide(auto, bf16, key)[0]  # compiled here before: a few seconds from inductor's cache
    assert not decide(auto, bf16, compile_key(auto.model, (32, 1, 40, 40), torch.bfloat16))[0]  # another step
    assert not decide(auto.replace(compile="off"), bf16, key)[0]
    cache.write_text(json.dumps({key: {"seconds": 3.5, "cache_dir": str(tmp_path / "gone")}}))
    assert not decide(auto, bf16, key)[0]  # inductor's cache was cleared: a first compile again
