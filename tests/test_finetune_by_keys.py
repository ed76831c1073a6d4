"""timm and torchvision architectures (--model timm:NAME | torchvision:NAME) train, fine-tune from their own
libraries' state dicts (deit.finetune_by_keys), rebuild from a run directory and teach, on real Fashion-MNIST.
The references: the source tensors themselves, timm's adapt_input_conv, the seeded fresh init."""

import json
import re

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file
from timm.models import adapt_input_conv

from deit.checkpoint import load_checkpoint
from deit.cli import build_parser, main as cli_main
from deit.cli.train import config_from_args
from deit.config import preset_config
from deit.engine import evaluate_run, fit
from deit.finetune import apply, freeze_for_linear_probe, prepare
from deit.models import create_model, model_from_spec, model_spec
from deit.teacher import load_teacher

from conftest import perturb_

TIMM = "timm:test_resnet"  # timm's own small test architecture (0.37 M parameters)
FLAGS = dict(train_subset=256, batch_size=64, epochs=1, eval_every=100, progress=False, threads=2,
             precision="fp32", seed=1)


@pytest.fixture(scope="module")
def timm_source(tmp_path_factory):
    """An RGB 7-class state dict as timm saves one (weights jittered so that nothing equals a fresh init)."""
    path = tmp_path_factory.mktemp("source") / "test_resnet-7.pth"
    source = perturb_(timm.create_model("test_resnet", pretrained=False, num_classes=7), seed=5)
    torch.save(source.state_dict(), path)
    return path, source.state_dict()


def test_a_timm_state_dict_fits_key_by_key(timm_source, fmnist_dir, capsys):
    """Gray 10-class data: every tensor is the source's, except the first convolution (timm's adapt_input_conv,
    3 -> 1 channels) and the classifier (the seeded fresh init), each change printed and recorded."""
    path, src = timm_source
    config = preset_config("cnn-small", model=TIMM, finetune=str(path), data_dir=fmnist_dir, **FLAGS)
    source = prepare(config)
    torch.manual_seed(0)
    model = create_model(TIMM, num_classes=10, in_chans=1)
    torch.manual_seed(0)
    fresh = create_model(TIMM, num_classes=10, in_chans=1).state_dict()
    record = apply(model, source, config, [str(i) for i in range(10)])
    out = model.state_dict()
    torch.testing.assert_close(out["conv1.0.weight"], adapt_input_conv(1, src["conv1.0.weight"]))
    for key in ("fc.weight", "fc.bias"):
        assert torch.equal(out[key], fresh[key])
    kept = [k for k in out if k not in ("conv1.0.weight", "fc.weight", "fc.bias")]
    assert all(torch.equal(out[k], src[k]) for k in kept)
    actions = {c["what"]: (c["action"], c["detail"]) for c in record["changes"]}
    assert actions["fc.bias, fc.weight"] == ("re-initialised", "7 classes in the source, 10 now")
    assert actions["conv1.0.weight"][0] == "adapted"
    assert "finetune: fc.bias, fc.weight re-initialised (7 classes in the source, 10 now)" in capsys.readouterr().out
    # a linear probe trains the classifier alone
    assert sorted(freeze_for_linear_probe(model)) == ["fc.bias", "fc.weight"]


def test_a_torchvision_state_dict_fits_its_architecture():
    source = perturb_(torchvision.models.resnet18(num_classes=5), seed=2).state_dict()
    from deit.finetune_by_keys import fit_by_keys

    model = create_model("torchvision:resnet18", num_classes=10)
    state, changes = fit_by_keys("rn18.pth", source, model, "torchvision:resnet18")
    assert all(torch.equal(state[k], source[k]) for k in source if not k.startswith("fc."))
    assert state["fc.weight"].shape == (10, 512) and changes[-1]["action"] == "re-initialised"
    with pytest.raises(ValueError, match="torchvision's resnet18 takes 3-channel images, not 1: use RGB data or a "
                                         "timm architecture"):
        create_model("torchvision:resnet18", in_chans=1)


def test_a_fine_tuned_timm_convnet_rebuilds_evaluates_and_teaches(timm_source, fmnist_dir, tmp_path, small_val):
    """deit train --model timm:NAME --finetune FILE: the run directory rebuilds the model (its logits equal), its
    recorded accuracy is what evaluating it gives, and it teaches a DeiT student as a run-directory teacher."""
    path, _ = timm_source
    teacher = fit(preset_config("cnn-small", model=TIMM, finetune=str(path), data_dir=fmnist_dir,
                                output=str(tmp_path / "teacher"), **FLAGS))
    spec = json.loads((teacher.output / "config.json").read_text())["model"]
    assert spec == {"family": "timm", "name": TIMM, "config": {"library": "timm", "arch": "test_resnet",
                                                               "num_classes": 10, "in_chans": 1,
                                                               "drop_path_rate": None}}
    model = load_checkpoint(teacher.output).model.eval()
    weights = load_file(str(teacher.output / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert evaluate_run(teacher.output, precision="fp32")["top1"] == pytest.approx(teacher.metrics["top1"], abs=0.01)
    wrapped, info = load_teacher(str(teacher.output), None, num_classes=10, in_chans=1, img_size=(28, 28))
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(wrapped(x), model(x))
    student = fit(preset_config("fmnist-cpu", teacher=str(teacher.output), distillation="hard", data_dir=fmnist_dir,
                                output=str(tmp_path / "student"), **FLAGS))
    assert student.metrics["top1_teacher"] == pytest.approx(teacher.metrics["top1"], abs=0.2)  # 1 image of 500


def test_model_spec_round_trip_and_unknown_names():
    model = perturb_(create_model(TIMM, num_classes=3, in_chans=1, drop_path_rate=0.1))
    again = model_from_spec(json.loads(json.dumps(model_spec(model))))
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(again.eval()(x), model(x))
    with pytest.raises(ValueError, match="timm has no architecture 'no_such_net'"):
        create_model("timm:no_such_net")
    spec = dict(model_spec(model), config=dict(model_spec(model)["config"], arch="no_such_net"))
    with pytest.raises(ValueError, match="timm has no architecture 'no_such_net'"):  # a config.json naming it
        model_from_spec(spec)


@pytest.mark.parametrize("model, message", [
    ("timm:test_convnext",
     r"is not a state dict of --model timm:test_convnext: \d+ missing \(e\.g\. stem\.0\.weight\); \d+ unexpected"),
    ("timm:no_such_net", "timm has no architecture 'no_such_net'"),
])
def test_a_source_of_another_architecture_is_one_line_before_any_data(timm_source, tmp_path, capsys, model,
                                                                      message):
    path, _ = timm_source
    code = cli_main(["train", "--preset", "cnn-small", "--model", model, "--finetune", str(path), "--data-dir",
                     "/nonexistent", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_a_run_of_another_architecture_names_itself(timm_source, fmnist_dir, tmp_path, capsys):
    """A run directory says what it is: --finetune RUN without --model takes its architecture; with a ViT
    --model the line says which --model to pass."""
    path, _ = timm_source
    run = tmp_path / "run"
    save = create_model(TIMM, num_classes=10, in_chans=1)
    from deit.checkpoint import save_model

    save_model(save, run)
    code = cli_main(["train", "--preset", "fmnist-cpu", "--model", "deit_mini_patch7_28", "--finetune", str(run),
                     "--data-dir", fmnist_dir, "--output", str(tmp_path / "vit")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.endswith(f"is a {TIMM} run, not a ViT/DeiT: pass --model {TIMM}"), err
    args = build_parser().parse_args(["train", "--preset", "cnn-small", "--finetune", str(run)])
    assert config_from_args(args).model == TIMM  # the preset's resnet8_tiny gives way to what the run is
    # a bare file of it says nothing about itself: --model decides, and it fits
    save_file({k: v.contiguous() for k, v in save.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    config = preset_config("cnn-small", model=TIMM, finetune=str(tmp_path / "plain.safetensors"), **FLAGS)
    assert prepare(config).name is None
