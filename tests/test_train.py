"""The training engine on real Fashion-MNIST: it learns, distils, resumes exactly; CLI train/eval."""

import json

import pytest
import torch

from deit.cli import main as cli_main
from deit.config import TrainConfig, preset_config
from deit.models import create_model
from deit.engine import fit
from deit.engine.optim import lr_at, param_groups
from deit.engine.state_file import read_state


def small_config(tmp_path, name, **overrides):
    """A seconds-long run: 3,000 stratified training images, 10,000 test images."""
    base = dict(epochs=2, batch_size=100, train_subset=3000, warmup_epochs=0.2, eval_every=100,
                progress=False, threads=2, output=str(tmp_path / name), precision="fp32")
    return preset_config("fmnist-cpu", **{**base, **overrides})


@pytest.fixture(scope="module")
def cnn_teacher(tmp_path_factory, fmnist_dir):
    tmp = tmp_path_factory.mktemp("teacher")
    config = preset_config("cnn-small", epochs=3, batch_size=100, train_subset=3000, warmup_epochs=0.2,
                           eval_every=100, progress=False, threads=2, precision="fp32",
                           output=str(tmp / "cnn"), data_dir=fmnist_dir)
    return fit(config)


def test_cnn_teacher_learns(cnn_teacher):
    m = cnn_teacher.metrics
    assert m["top1"] > 60.0, m  # chance is 10 %
    assert m["num_images"] == 10000
    run = cnn_teacher.output
    for name in ("model.safetensors", "best.safetensors", "config.json", "log.jsonl", "metrics.json",
                 "state.pt", "curves.png"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(0.0 <= r["data_wait_fraction"] < 1.0 and r["images_per_s"] > 0 for r in rows)


def test_distilled_student_learns_from_cnn_teacher(cnn_teacher, tmp_path, fmnist_dir, small_val):
    # A ViT needs more steps than the CNN: 360 steps of 50 images.
    config = small_config(tmp_path, "student", teacher=str(cnn_teacher.output), distillation="hard",
                          epochs=3, batch_size=50, train_subset=6000, data_dir=fmnist_dir)
    m = fit(config).metrics
    assert m["top1"] > 40.0, m  # chance is 10 % (this run: 53.0)
    for key in ("top1_cls", "top1_dist", "top1_teacher", "disagree_cls_dist", "disagree_logits_teacher"):
        assert key in m
    # The distillation head learns the teacher: it agrees with it more often than chance would.
    assert m["disagree_dist_teacher"] < 0.5


def test_teacher_that_does_not_fit_is_refused_before_training(tmp_path, fmnist_dir):
    from deit.checkpoint import save_model

    wrong = tmp_path / "wrong_teacher"
    save_model(create_model("resnet8_small", num_classes=7, in_chans=1), wrong, name="resnet8_small")
    config = small_config(tmp_path, "s", teacher=str(wrong), distillation="hard", data_dir=fmnist_dir)
    with pytest.raises(ValueError, match="7 classes"):
        fit(config)
    assert not (tmp_path / "s").exists()  # nothing started


def test_resume_gives_identical_weights(tmp_path, fmnist_dir, small_val):
    """Interrupted mid-epoch and resumed == uninterrupted (seeded, CPU, deterministic), with the
    stochastic parts on: Mixup/CutMix, random erasing, drop path, EMA."""
    options = dict(train_subset=400, batch_size=40, epochs=2, mixup=0.8, cutmix=1.0, reprob=0.25,
                   drop_path=0.1, ema=True, ema_decay=0.9, deterministic=True, data_dir=fmnist_dir,
                   eval_every=1)
    full = fit(small_config(tmp_path, "full", **options))
    parted = small_config(tmp_path, "parted", **options)
    assert fit(parted, stop_after_steps=13).metrics == {}  # stops inside epoch 2 of 10 steps each
    resumed = fit(None, resume=tmp_path / "parted")
    a = read_state(full.output / "state.pt")  # the project's reader: weights_only, nothing executed
    b = read_state(resumed.output / "state.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert full.metrics["top1"] == resumed.metrics["top1"]
    log_a = (full.output / "log.jsonl").read_text().splitlines()
    log_b = (resumed.output / "log.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items()
                           if k not in ("images_per_s", "data_wait_fraction", "epoch_time_s")} for r in rows]
    assert strip(log_a) == strip(log_b)


def batch_gradients(trainer, x, y, accum_steps: int) -> dict:
    trainer.config = trainer.config.replace(accum_steps=accum_steps)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = trainer._backward(x.clone(), y.clone())  # timm's Mixup mixes the batch in place
    return {"loss": loss.total.detach(), "distill": loss.distill.detach(),
            **{name: p.grad.clone() for name, p in trainer.model.named_parameters()}}


def test_accumulated_micro_batches_give_the_whole_batch_gradient(tmp_path, fmnist_dir, cnn_teacher):
    """--accum-steps 4 against one batch of 40: the same gradients (not only their direction, which AdamW and
    clipping would hide) and losses, with Mixup/CutMix mixing across the whole batch and the teacher's hard
    labels; up to float rounding. No stochastic depth: its draws differ by micro-batch."""
    from deit.engine.runtime import setup_runtime
    from deit.engine.trainer import Trainer

    config = small_config(tmp_path, "accum", train_subset=400, batch_size=40, mixup=0.8, cutmix=1.0,
                          mixup_prob=1.0, drop_path=0.0, teacher=str(cnn_teacher.output), distillation="hard",
                          data_dir=fmnist_dir)
    trainer = Trainer(config, tmp_path / "accum", setup_runtime("cpu", "fp32", threads=2))
    x, y = next(iter(trainer.train_loader))
    whole, parts = batch_gradients(trainer, x, y, 1), batch_gradients(trainer, x, y, 4)
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.allclose(whole[name], parts[name], rtol=1e-4, atol=1e-6), name
    assert whole["head.weight"].abs().max() > 1e-4  # gradients that mean something


def test_accumulation_that_does_not_divide_the_batch_is_one_clear_line(tmp_path, fmnist_dir):
    with pytest.raises(ValueError, match="--accum-steps 3 must divide each process's 40 images"):
        fit(small_config(tmp_path, "odd", batch_size=40, accum_steps=3, data_dir=fmnist_dir))
    assert not (tmp_path / "odd").exists()
    with pytest.raises(ValueError, match="accum_steps must be >= 1"):
        TrainConfig(accum_steps=0)


def test_lr_schedule_matches_timm_per_iteration():
    from timm.scheduler import CosineLRScheduler

    total, warmup, peak, warmup_lr, min_lr = 200, 20, 1e-3, 1e-6, 1e-5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    timm_sched = CosineLRScheduler(opt, t_initial=total - warmup, lr_min=min_lr, warmup_t=warmup,
                                   warmup_lr_init=warmup_lr, warmup_prefix=True, t_in_epochs=False)
    for step in range(total):
        expected = timm_sched._get_lr(step)[0]
        assert lr_at(step, total, warmup, peak, warmup_lr, min_lr) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert lr_at(total, total, warmup, peak, warmup_lr, min_lr) == pytest.approx(min_lr)


def test_weight_decay_exemptions_follow_the_official_code():
    model = create_model("deit_micro_distilled_patch4_28")
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= no_decay_names
    assert {"dist_token", "blocks.0.attn.qkv.weight", "head.weight"} <= decay_names  # official: dist_token decays
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match="needs a --teacher"):
        TrainConfig(distillation="hard")
    with pytest.raises(ValueError, match="unused with --distillation none"):
        TrainConfig(teacher="runs/teacher")
    with pytest.raises(ValueError, match="even batch_size"):
        TrainConfig(batch_size=33)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("imagenet-1000-epochs")


def test_cli_train_then_eval_json(tmp_path, fmnist_dir, capsys, cnn_teacher, small_val):
    # train and eval on the same 500 test images (small_val): what is checked is that eval --json gives the run's
    # own metrics, not the accuracy on all 10,000
    run = tmp_path / "cli_run"
    code = cli_main(["train", "--preset", "fmnist-cpu", "--epochs", "1", "--train-subset", "1000",
                     "--batch-size", "100", "--teacher", str(cnn_teacher.output), "--distillation", "hard",
                     "--output", str(run), "--no-progress", "--data-dir", fmnist_dir, "--precision", "fp32"])
    assert code == 0
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(run), "--json", "--data-dir", fmnist_dir]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("top1", "top5", "top1_cls", "top1_dist"):
        assert 0.0 <= result[key] <= 100.0
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["top1"] == pytest.approx(metrics["top1"], abs=1e-9)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    code = cli_main(["train", "--model", "no_such_model", "--output", str(tmp_path / "x"), "--data-dir",
                     str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) >= 1 and err[0].startswith("deit train: error:")


def test_imagefolder_of_real_images_trains_at_its_own_size(tmp_path, fmnist_dir):
    """An image folder (PNG files of real Fashion-MNIST images, 2 classes) resized to 21 px: the model is
    built for the data's size and channels, and the run directory records them."""
    from PIL import Image

    from deit.data import load_data

    source = load_data("fashion-mnist", "val", data_dir=fmnist_dir)
    for split, (start, stop) in {"train": (0, 300), "val": (300, 400)}.items():
        for label, name in ((0, "tshirt"), (1, "trouser")):
            folder = tmp_path / "folder" / split / name
            folder.mkdir(parents=True)
            indices = (source.labels == label).nonzero().flatten()[start:stop]
            for i in indices.tolist():
                Image.fromarray(source.images[i, 0].numpy(), mode="L").save(folder / f"{i}.png")
    config = small_config(tmp_path, "folder_run", data=f"imagefolder:{tmp_path / 'folder'}", img_size=21,
                          train_subset=None, epochs=3, batch_size=50)
    result = fit(config)
    saved = json.loads((result.output / "config.json").read_text())
    assert saved["model"]["config"]["img_size"] == [21, 21] and saved["model"]["config"]["num_classes"] == 2
    assert saved["preprocessing"]["in_chans"] == 1
    assert result.metrics["num_images"] == 200 and result.metrics["top1"] > 80.0
