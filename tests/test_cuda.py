"""The CUDA path against the CPU path that the rest of the suite tests, on real Fashion-MNIST. Skipped where there
is no CUDA device (CI has none); scripts/gpu_check.sh runs this file on the GPU machine of the device tool."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import perturb_
from deit.config import preset_config
from deit.data import load_split
from deit.engine import evaluate_run, fit
from deit.engine.runtime import seed_everything
from deit.engine.run_setup import model_overrides
from deit.models import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Randomness other than the data order and augmentation (drawn on the CPU, seeded alike) is off: no Mixup/CutMix
# or stochastic depth, whose draws come from the device's own generator.
FLAGS = dict(epochs=1, batch_size=64, train_subset=640, warmup_epochs=0.5, mixup=0.0, cutmix=0.0, drop_path=0.0,
             eval_every=100, progress=False, seed=3, threads=4)


@pytest.fixture
def exact_fp32():
    """fp32 products in full fp32 on the GPU (cuDNN convolutions default to TF32), restored afterwards."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


@pytest.mark.parametrize("name, kwargs", [("deit_tiny_distilled_patch16_224", {}),
                                          ("deit_mini_distilled_patch8_32", {}),
                                          ("resnet8_tiny", {"in_chans": 1, "num_classes": 10})])
def test_a_model_gives_its_cpu_logits_on_cuda(name, kwargs, exact_fp32):
    model = perturb_(create_model(name, **kwargs))
    config = getattr(model, "config", None)
    shape = (8, config.in_chans, *config.img_size) if hasattr(config, "img_size") else (8, 1, 28, 28)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = logits(model(x))
        cuda = logits(model.cuda()(x.cuda())).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = logits(model(x.cuda())).float().cpu()
    torch.testing.assert_close(cuda, cpu, rtol=1e-3, atol=1e-3)
    # bf16 keeps ~3 significant digits per operation: the logits within a few % of fp32's
    assert (bf16 - cpu).norm() / cpu.norm() < 0.05


def updates(config, run_dirs: dict) -> dict:
    """How far each run moved the weights from the trainer's initial ones (rebuilt as the trainer makes them),
    flattened. A comparison of whole updates relative to their size: AdamW's step on a near-zero gradient may
    differ in sign between two devices, and a step is at most ~lr, so raw weight differences say little."""
    overrides = model_overrides(config, load_split(config, "train"))
    seed_everything(config.seed)
    start = create_model(config.model, **overrides).state_dict()
    return {key: torch.cat([(w.float() - start[k].float()).flatten()
                            for k, w in load_file(str(Path(run) / "model.safetensors")).items()])
            for key, run in run_dirs.items()}


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    assert b.norm() > 0
    return ((a - b).norm() / b.norm()).item()


def test_training_on_cuda_follows_the_cpu_run(tmp_path, fmnist_dir, exact_fp32):
    """The same 10 fp32 steps on the CPU and on the GPU move the weights alike."""
    configs = {device: preset_config("fmnist-cpu", **FLAGS, data_dir=fmnist_dir, device=device, precision="fp32",
                                     output=str(tmp_path / device)) for device in ("cpu", "cuda")}
    runs = {device: fit(c) for device, c in configs.items()}
    update = updates(configs["cpu"], {device: run.output for device, run in runs.items()})
    assert relative_gap(update["cuda"], update["cpu"]) < 0.05
    assert abs(runs["cpu"].metrics["top1"] - runs["cuda"].metrics["top1"]) < 1.0
    # and the GPU run's weights evaluate on the CPU to what it measured on the GPU
    on_cpu = evaluate_run(runs["cuda"].output, device="cpu", precision="fp32")
    assert abs(on_cpu["top1"] - runs["cuda"].metrics["top1"]) < 0.05


@pytest.fixture(scope="module")
def cuda_teacher(tmp_path_factory, fmnist_dir):
    tmp = tmp_path_factory.mktemp("teacher")
    return fit(preset_config("cnn-small", epochs=3, batch_size=100, train_subset=3000, warmup_epochs=0.2,
                             eval_every=100, progress=False, device="cuda", precision="bf16", data_dir=fmnist_dir,
                             output=str(tmp / "cnn")))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_distillation_on_cuda_in_reduced_precision(precision, tmp_path, fmnist_dir, cuda_teacher):
    """A hard-distillation run with a convnet teacher in bf16 (autocast) and fp16 (grad scaler): finite, it
    learns, and the teacher's predictions enter the metrics (the teacher's inference path on CUDA)."""
    assert cuda_teacher.metrics["top1"] > 60.0, cuda_teacher.metrics
    # the CPU suite's distilled-student run (tests/test_train.py): 360 steps of 50 images
    config = preset_config("fmnist-cpu", **{**FLAGS, "epochs": 3, "batch_size": 50, "train_subset": 6000},
                           data_dir=fmnist_dir,
                           device="cuda", precision=precision, teacher=str(cuda_teacher.output),
                           distillation="hard", output=str(tmp_path / precision))
    m = fit(config).metrics
    assert m["top1"] > 40.0 and "top1_teacher" in m and m["disagree_dist_teacher"] < 0.5, m
    assert all(torch.isfinite(t).all() for t in load_file(str(tmp_path / precision / "model.safetensors")).values())


def test_torchrun_with_nccl_on_one_gpu_equals_the_single_process(tmp_path, fmnist_dir):
    """The NCCL path: torchrun with one process on cuda:0 ends with the single process's weights."""
    flags = {**FLAGS, "data_dir": fmnist_dir, "device": "cuda", "precision": "bf16"}
    single = fit(preset_config("fmnist-cpu", **flags, output=str(tmp_path / "single")))
    args = ["train", "--preset", "fmnist-cpu", "--output", str(tmp_path / "ddp")]
    for key, value in flags.items():
        args += [f"--{key.replace('_', '-')}", str(value)] if value is not False else ["--no-progress"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
               "--master-port", "29531", "-m", "deit", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    update = updates(preset_config("fmnist-cpu", **flags), {"single": single.output, "ddp": tmp_path / "ddp"})
    assert relative_gap(update["ddp"], update["single"]) < 0.05
