"""Teachers: run directories, timm/torchvision architectures with local weights, and refusals."""

import pytest
import timm
import torch

from deit.checkpoint import save_model
from deit.models import create_model
from deit.teacher import load_teacher

FMNIST = dict(num_classes=10, in_chans=1, img_size=(28, 28))


def test_run_directory_teacher_is_frozen_and_in_eval_mode(tmp_path):
    model = create_model("resnet8_small", in_chans=1).eval()
    save_model(model, tmp_path / "t", name="resnet8_small")
    teacher, info = load_teacher(str(tmp_path / "t"), None, **FMNIST)
    x = torch.randn(3, 1, 28, 28)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    torch.testing.assert_close(teacher(x), model(x).logits, rtol=0, atol=0)
    assert info["format"] == "deit"


def test_timm_architecture_with_local_weights(tmp_path):
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1).eval()
    weights = tmp_path / "resnet10t.pth"
    torch.save(reference.state_dict(), weights)
    teacher, _ = load_teacher("resnet10t", str(weights), **FMNIST)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(teacher(x), reference(x))


def test_torchvision_architecture_with_local_weights(tmp_path):
    import torchvision

    name = "mobilenet_v3_small"  # a torchvision-only name (timm spells its own differently)
    reference = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    weights = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), weights)
    teacher, _ = load_teacher(name, str(weights), num_classes=10, in_chans=3, img_size=(32, 32))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), reference(x))
    with pytest.raises(ValueError, match="3-channel"):
        load_teacher(name, str(weights), **FMNIST)


def test_weights_of_other_shapes_are_refused_by_name(tmp_path):
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=3)
    torch.save(reference.state_dict(), tmp_path / "rgb.pth")
    with pytest.raises(ValueError, match=r"shape mismatch.*conv1"):
        load_teacher("resnet10t", str(tmp_path / "rgb.pth"), **FMNIST)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=100, in_chans=1), "100 classes but the data has 10"),
    (dict(num_classes=10, in_chans=3), "3-channel images but the data has 1"),
])
def test_teacher_that_does_not_fit_the_data_is_refused(tmp_path, kwargs, message):
    save_model(create_model("resnet8_small", **kwargs), tmp_path / "t", name="resnet8_small")
    with pytest.raises(ValueError, match=message):
        load_teacher(str(tmp_path / "t"), None, **FMNIST)


def test_architecture_without_weights_is_refused():
    with pytest.raises(ValueError, match="--teacher-weights"):
        load_teacher("resnet10t", None, **FMNIST)
    with pytest.raises(ValueError, match="neither a run directory nor a known architecture"):
        load_teacher("no_such_net", "w.pth", **FMNIST)
