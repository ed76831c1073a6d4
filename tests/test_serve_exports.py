"""`deit convert RUN DIR --layout hf | timm`: a trained distilled student, served by transformers' pipeline and
AutoModelForImageClassification and by timm's local-dir loader, gives the run's class names and the logits and
top-1 of `deit eval` / `deit predict` on real Fashion-MNIST test images written as PNG files."""

import json
import os

import pytest
import torch
from PIL import Image

import deit.data
from deit.checkpoint import load_run, save_model
from deit.cli import main as cli_main
from deit.config import preset_config
from deit.data.preprocessing import EvalPreprocessing
from deit.data.transforms import eval_transform
from deit.engine import evaluate_run, fit
from deit.hf_layout import preprocessor_config
from deit.models import create_model
from deit.predict import classify_files

from conftest import make_run_dir, perturb_

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

NUM_IMAGES = 48  # the first test images, as PNG files
# transformers' processor computes x * (1/255), ours x / 255 (then the same mean/std), and the grayscale model is
# served with a 3-channel patch embedding whose luma weights sum to 1 only in float: rounding, a few 1e-7 per
# input, grown by 6 blocks to ~1e-6 at most on logits of size ~1 (measured: 2.4e-7 to 4.2e-7).
HF_ATOL = 1e-4


def _first_val(split_loader):
    """load_split with the val split cut to its first NUM_IMAGES images: what `deit eval` then evaluates."""
    return lambda config, split, **kw: (split_loader(config, split, **kw) if split == "train"
                                        else split_loader(config, split, **kw).subset(range(NUM_IMAGES)))


@pytest.fixture(scope="module")
def student(tmp_path_factory, fmnist_dir):
    """A distilled student trained 6 steps with hard distillation from a CNN teacher trained 8 steps (an untrained
    teacher predicts one class, and so would the student's distillation head)."""
    tmp = tmp_path_factory.mktemp("serve")
    short = dict(epochs=1, batch_size=50, warmup_epochs=0.1, eval_every=100, progress=False, threads=2,
                 precision="fp32", data_dir=fmnist_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deit.data, "load_split", _first_val(deit.data.load_split))
        teacher = fit(preset_config("cnn-small", train_subset=400, output=str(tmp / "teacher"), **short)).output
        run = fit(preset_config("fmnist-cpu", train_subset=300, mixup=0.0, cutmix=0.0, output=str(tmp / "student"),
                                teacher=str(teacher), distillation="hard", **short)).output
    val = deit.data.load_data("fashion-mnist", "val", data_dir=fmnist_dir).subset(range(NUM_IMAGES))
    (tmp / "png").mkdir()
    files = [str(tmp / "png" / f"{i:02d}.png") for i in range(NUM_IMAGES)]
    for file, image in zip(files, val.images):
        Image.fromarray(image[0].numpy(), mode="L").save(file)
    model, _ = load_run(run)
    with torch.no_grad():  # the run's logits, normalised by hand as training normalised
        logits = model.eval()((val.images.float() / 255 - 0.286) / 0.353)
    return run, files, val, logits


def test_hf_pipeline_gives_the_runs_classes_and_top1(student, tmp_path, monkeypatch):
    run, files, val, ours = student
    assert cli_main(["convert", str(run), str(tmp_path / "hf"), "--layout", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(val.classes)}

    pipe = transformers.pipeline("image-classification", model=str(tmp_path / "hf"))
    assert type(pipe.model).__name__ == "DeiTForImageClassificationWithTeacher"  # the student, token and all
    served = [r[0]["label"] for r in pipe(files, top_k=1)]
    predicted = [p.top[0][0] for p in classify_files(run, files, precision="fp32")]  # `deit predict`
    assert served == predicted == [val.classes[i] for i in ours.logits.argmax(-1)]
    assert len(set(served)) >= 2  # a comparison that a constant prediction would not pass (this run: 4 classes)
    # `deit eval` on the same images (its val split cut to them): the same top-1.
    monkeypatch.setattr(deit.data, "load_split", _first_val(deit.data.load_split))
    top1 = evaluate_run(run, precision="fp32")["top1"]
    labels = [val.classes[i] for i in val.labels]
    assert 100 * sum(s == y for s, y in zip(served, labels)) / NUM_IMAGES == pytest.approx(top1)

    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    model = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    # Images as users hand them over: RGB (the pipeline converts every image so), and the grayscale PNGs.
    for mode in ("RGB", "L"):
        inputs = processor(images=[Image.open(f).convert(mode) for f in files], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        torch.testing.assert_close(out.logits, ours.logits, rtol=0, atol=HF_ATOL)
        torch.testing.assert_close(out.cls_logits, ours.cls_logits, rtol=0, atol=HF_ATOL)
        torch.testing.assert_close(out.distillation_logits, ours.dist_logits, rtol=0, atol=HF_ATOL)


def test_timm_local_dir_loads_with_equal_logits(student, tmp_path):
    run, files, val, ours = student
    assert cli_main(["convert", str(run), str(tmp_path / "timm"), "--layout", "timm"]) == 0
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert type(model).__name__ == "VisionTransformerDistilled"  # deit_mini_distilled_patch7_28, by model_args
    assert model.pretrained_cfg["label_names"] == list(val.classes)
    # timm's own eval transform from the exported pretrained_cfg, on the PNG files: the run's logits.
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.open(f)) for f in files]))
    torch.testing.assert_close(logits, ours.logits, rtol=0, atol=1e-5)


@torch.no_grad()
def test_a_grayscale_vit_without_token_serves_too(tmp_path):
    # ViTForImageClassification and timm's VisionTransformer; HF gets the 3-channel (luma) patch embedding.
    ours = perturb_(create_model("deit_micro_patch4_28"))
    run = make_run_dir(ours, tmp_path / "run", [f"class {i}" for i in range(10)], (0.3,), (0.4,), (28, 28))
    for layout in ("timm", "hf"):
        assert cli_main(["convert", str(run), str(tmp_path / layout), "--layout", layout]) == 0
    gray = torch.randint(0, 256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float() / 255
    expected = ours((gray - 0.3) / 0.4).logits
    served_timm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert type(served_timm).__name__ == "VisionTransformer"
    torch.testing.assert_close(served_timm((gray - 0.3) / 0.4), expected, rtol=0, atol=1e-5)
    served_hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert type(served_hf).__name__ == "ViTForImageClassification" and served_hf.config.id2label[9] == "class 9"
    torch.testing.assert_close(served_hf(pixel_values=((gray - 0.3) / 0.4).expand(-1, 3, -1, -1)).logits, expected,
                               rtol=0, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("combine", ["cls", "dist"])
def test_a_single_head_rule_is_kept_by_libraries_that_average_the_heads(combine, tmp_path):
    ours = perturb_(create_model("deit_micro_distilled_patch4_32", combine=combine))
    save_model(ours, tmp_path / "run")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for layout in ("timm", "hf"):
        assert cli_main(["convert", str(tmp_path / "run"), str(tmp_path / layout), "--layout", layout]) == 0
    served_timm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    served_hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    expected = ours(x).logits  # the chosen head alone
    torch.testing.assert_close(served_timm(x), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(served_hf(pixel_values=x).logits, expected, rtol=0, atol=1e-4)
    # Without a run's record: LABEL_i, and DeiT's ImageNet evaluation transform.
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert (processor["size"], processor["crop_size"], processor["image_mean"]) == (
        {"shortest_edge": 36}, {"height": 32, "width": 32}, [0.485, 0.456, 0.406])
    assert served_hf.config.id2label[0] == "LABEL_0" and "label_names" not in served_timm.pretrained_cfg


def test_hf_preprocessing_equals_a_streamed_folders_eval_transform(student):
    """Resize and crop: images of other sizes through HF's processor and our eval transform (a streamed folder's:
    shorter side to int(img_size / 0.875), bicubic, centre crop). Where HF's centre-crop offset (floor of half the
    excess) equals torchvision's (rounded half to even), the pixels differ by at most one grey level (torchvision's
    antialiased bicubic against PIL's); elsewhere (an excess of 3 mod 4 px) HF's crop is one pixel up or left."""
    _, files, _, _ = student
    prep = EvalPreprocessing(img_size=28, crop_ratio=0.875, in_chans=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                             streamed=True)
    processor = transformers.BitImageProcessor(**{k: v for k, v in preprocessor_config(prep).items()
                                                   if k != "image_processor_type"})
    crop = eval_transform(prep.img_size, prep.crop_ratio)  # up to the uint8 crop; normalised per batch, as here
    mean, std = torch.tensor(prep.mean).view(3, 1, 1), torch.tensor(prep.std).view(3, 1, 1)

    def ours(image):
        return (crop(image).float() / 255 - mean) / std

    compared = 0
    for i, file in enumerate(files[:12]):
        image = Image.open(file).convert("RGB").resize((56 + 3 * i, 42), Image.BILINEAR)
        theirs = processor(images=[image], return_tensors="pt")["pixel_values"][0]
        resized = (prep.resize, int(prep.resize * image.width / image.height))  # (height, width), as both compute
        if all((side - prep.img_size) // 2 == round((side - prep.img_size) / 2) for side in resized):
            grey_levels = ((theirs - ours(image)) * std * 255).abs().max()
            assert grey_levels <= 1 + 1e-3, (image.size, grey_levels)
            compared += 1
    assert compared >= 6


def test_a_convnet_run_has_no_serving_layout(tmp_path, capsys):
    run = make_run_dir(perturb_(create_model("resnet8_tiny", in_chans=1, num_classes=3)), tmp_path / "cnn",
                       ["a", "b", "c"], (0.5,), (0.25,), (28, 28))
    assert cli_main(["convert", str(run), str(tmp_path / "out"), "--layout", "timm"]) == 2
    err = capsys.readouterr().err
    assert "only ViT/DeiT models have a timm layout" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
