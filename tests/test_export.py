"""ONNX export, checked with onnxruntime: same logits as PyTorch at any batch size, the training run's own
normalisation inside the graph, and the same test accuracy as training measured, on real Fashion-MNIST."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from deit.checkpoint import save_model  # noqa: E402
from deit.cli import main as cli_main  # noqa: E402
from deit.config import preset_config  # noqa: E402
from deit.data import load_data  # noqa: E402
from deit.export import export_onnx  # noqa: E402
from deit.models import create_model  # noqa: E402
from deit.engine import fit  # noqa: E402

from conftest import make_run_dir, perturb_  # noqa: E402


def run_onnx(path, images: torch.Tensor, names=None) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(names, {"images": images.numpy()})


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_distilled_vit_matches_pytorch_at_any_batch_size(tmp_path):
    model = perturb_(create_model("deit_mini_distilled_patch7_28"))
    save_model(model, tmp_path / "run")
    result = export_onnx(tmp_path / "run", tmp_path / "m.onnx")
    assert result.output_names == ["logits", "cls_logits", "dist_logits"]
    assert result.input_shape == ("batch", 1, 28, 28) and result.max_abs_diff < 1e-4
    for batch in (1, 7):  # neither is the batch of 2 the graph was traced with
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = model(x)
        got = run_onnx(result.path, x)
        for name, a, b in zip(result.output_names, got, (want.logits, want.cls_logits, want.dist_logits)):
            torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4, rtol=1e-4, msg=name)
    meta = metadata(result.path)
    assert meta["deit.model"] == "deit_mini_distilled_patch7_28" and meta["deit.combine"] == "mean_logits"
    assert "already normalised" in meta["deit.input"]


def test_convnet_teacher_exports_at_its_training_size(tmp_path):
    # A convnet takes any size: the graph's input size comes from the run's preprocessing record.
    model = perturb_(create_model("resnet8_tiny", in_chans=1))
    run = make_run_dir(model, tmp_path / "run", [str(i) for i in range(10)], (0.5,), (0.25,), (28, 28))
    result = export_onnx(run, tmp_path / "t.onnx", raw_pixels=True)
    assert result.output_names == ["logits"] and result.input_shape == ("batch", 1, 28, 28)
    pixels = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        want = model((pixels.float() / 255 - 0.5) / 0.25).logits
    torch.testing.assert_close(torch.from_numpy(run_onnx(result.path, pixels)[0]), want, atol=1e-4, rtol=1e-4)


def test_raw_pixel_graph_scores_what_deit_eval_scores(tmp_path, fmnist_dir, small_val):
    # A real (seconds-long) run; its ONNX graph fed the raw test images must classify them exactly as
    # training's own evaluation does through the data loader's normalisation (both on the first 500 test images).
    config = preset_config("fmnist-cpu", epochs=1, batch_size=100, train_subset=2000, warmup_epochs=0.2,
                           eval_every=100, progress=False, threads=2, precision="fp32", mixup=0.0, cutmix=0.0,
                           output=str(tmp_path / "run"), data_dir=fmnist_dir)
    trained = fit(config)  # its metrics: the final weights on the test images, through the data loader
    result = export_onnx(trained.output, tmp_path / "student.onnx", raw_pixels=True)
    meta = metadata(result.path)
    assert json.loads(meta["deit.classes"])[9] == "Ankle boot" and meta["deit.normalisation"] == "the training run's"
    val = load_data("fashion-mnist", "val", data_dir=fmnist_dir).subset(range(500))
    (logits,) = run_onnx(result.path, val.images, ["logits"])
    onnx_top1 = 100.0 * float((torch.from_numpy(logits).argmax(1) == val.labels).float().mean())
    eval_top1 = trained.metrics["top1"]
    assert trained.metrics["num_images"] == len(val)
    assert onnx_top1 > 40.0  # chance is 10 %
    assert abs(onnx_top1 - eval_top1) <= 0.4, (onnx_top1, eval_top1)  # at most 2 of the 500 images flip on ties


def test_bad_requests_fail_before_writing(tmp_path, capsys, monkeypatch):
    save_model(create_model("deit_mini_patch7_28"), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="best"):
        export_onnx(tmp_path / "run", tmp_path / "m.onnx", weights="best")
    with pytest.raises(ValueError, match="is a directory"):
        export_onnx(tmp_path / "run", tmp_path)
    assert cli_main(["export", str(tmp_path / "nowhere"), str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript"
                        else real_find_spec(name, *a))
    assert cli_main(["export", str(tmp_path / "run"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "deit export: error: ONNX export needs the onnxscript package: pip install 'deit[onnx]'"
    assert not (tmp_path / "m.onnx").exists()
