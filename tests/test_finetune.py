"""Fine-tuning (deit.finetune): every source format (official .pth, timm .pth/.safetensors, Hugging Face directory,
our run directory) fine-tunes on real images; the adaptations equal timm's (resample_abs_pos_embed,
adapt_input_conv) and are reported; a 28-px model evaluated at 56 px right after resampling keeps its accuracy;
bad sources are one clear line before any training; fine-tuned runs evaluate, predict and export with their new
class names."""

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from deit.cli import main as cli_main
from deit.config import TrainConfig, preset_config
from deit.engine import fit
from deit.finetune import adapt_state_dict, read_source
from deit.models import create_model

from conftest import perturb_

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network
transformers = pytest.importorskip("transformers")

# The sources: a micro DeiT for 32-px RGB images and 100 classes (CIFAR-100-like); the data: 28-px gray images.
MICRO = dict(img_size=32, patch_size=4, in_chans=3, num_classes=100, embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0)
FOLDER_CLASSES = {1: "trouser", 5: "sandal", 8: "bag"}  # Fashion-MNIST labels -> folder class names


def save_folder(root, images, labels, classes: dict, per_class: dict) -> str:
    """root/<split>/<class>/<i>.png from real Fashion-MNIST images: the first per_class[split] images of each class."""
    from PIL import Image

    start = 0
    for split, count in per_class.items():
        for label, name in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in (labels == label).nonzero().flatten()[start:start + count].tolist():
                Image.fromarray(images[i, 0].numpy(), mode="L").save(folder / f"{i}.png")
        start += count
    return str(root)


@pytest.fixture(scope="module")
def fmnist_val(fmnist_dir):
    from deit.data import load_data

    return load_data("fashion-mnist", "val", data_dir=fmnist_dir)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, fmnist_val):
    root = tmp_path_factory.mktemp("folder")
    return save_folder(root, fmnist_val.images, fmnist_val.labels, FOLDER_CLASSES, {"train": 40, "val": 20})


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """format -> (path, the model it holds, --model needed or None): each built locally, nothing downloaded."""
    from timm.models.deit import VisionTransformerDistilled

    from deit.checkpoint import save_model

    tmp = tmp_path_factory.mktemp("sources")
    timm_model = perturb_(VisionTransformerDistilled(**MICRO))
    state_dict = timm_model.state_dict()
    torch.save({"model": state_dict, "optimizer": {}, "epoch": 299,
                "args": argparse.Namespace(model="deit_micro", lr=5e-4)}, tmp / "official.pth")  # as main.py saves
    torch.save(state_dict, tmp / "timm.pth")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp / "timm.safetensors"))
    hf_config = transformers.DeiTConfig(hidden_size=96, num_hidden_layers=6, num_attention_heads=3, intermediate_size=192,
                                        image_size=32, patch_size=4, num_channels=3, num_labels=100, layer_norm_eps=1e-6)
    hf_model = perturb_(transformers.DeiTForImageClassificationWithTeacher(hf_config), seed=1)
    hf_model.save_pretrained(tmp / "hf")
    ours = perturb_(create_model("deit_micro_distilled_patch4_32", num_classes=100), seed=2)
    save_model(ours, tmp / "run", name="deit_micro_distilled_patch4_32")
    named = "deit_micro_distilled_patch4_32"
    return {
        "official": (tmp / "official.pth", lambda x: timm_model(x), named),
        "timm-pth": (tmp / "timm.pth", lambda x: timm_model(x), named),
        "timm-safetensors": (tmp / "timm.safetensors", lambda x: timm_model(x), named),
        "hf": (tmp / "hf", lambda x: hf_model(pixel_values=x).logits, None),
        "run": (tmp / "run", lambda x: ours(x).logits, None),
    }


def quick(tmp_path, name, **overrides) -> TrainConfig:
    base = dict(epochs=1, batch_size=20, warmup_epochs=0.0, eval_every=1, progress=False, threads=1,
                precision="fp32", output=str(tmp_path / name))
    return preset_config("fmnist-cpu", **{**base, **overrides})


# --------------------------------------------------------------------------------------- the sources


@pytest.mark.parametrize("fmt", ["official", "timm-pth", "timm-safetensors", "hf", "run"])
@torch.no_grad()
def test_source_loads_to_the_same_logits_when_nothing_changes(sources, fmt):
    path, reference, model_name = sources[fmt]
    source = read_source(path)
    assert source.format == {"timm-pth": "timm", "timm-safetensors": "timm", "run": "deit"}.get(fmt, fmt)
    student = create_model(model_name or source.name, num_classes=100, in_chans=3, img_size=32).eval()
    state_dict, changes = adapt_state_dict(source, student)
    student.load_state_dict(state_dict)
    assert [c["action"] for c in changes] == ["kept"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(student(x).logits, reference(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("fmt", ["official", "timm-pth", "timm-safetensors", "hf", "run"])
def test_each_format_fine_tunes_on_a_folder_and_reports_its_changes(sources, folder, tmp_path, fmt, capsys):
    path, _, model_name = sources[fmt]
    out = tmp_path / "ft"
    args = ["train", "--preset", "fmnist-cpu", "--finetune", str(path), "--data", f"imagefolder:{folder}",
            "--img-size", "28", "--cache-images", "--epochs", "1", "--batch-size", "20", "--warmup-epochs", "0",
            "--threads", "1", "--precision", "fp32", "--no-progress", "--output", str(out), "--stop-after-steps", "3"]
    if model_name:  # a bare state dict does not say its architecture
        args += ["--model", model_name]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    for line in ("finetune: pos_embed resampled (8x8 -> 7x7 patch grid",
                 "finetune: patch_embed.proj.weight adapted (3 -> 1 channels (summed over channels",
                 "finetune: head re-initialised (100 -> 3 classes)",
                 "finetune: head_dist re-initialised (100 -> 3 classes)"):
        assert line in printed, printed
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["model"] == "deit_micro_distilled_patch4_32"  # from the source, over the preset's
    record = saved["finetune"]
    assert record["source"] == str(path) and [c["action"] for c in record["changes"]] == [
        "kept", "resampled", "adapted", "re-initialised", "re-initialised"]
    assert saved["data"]["classes"] == sorted(FOLDER_CLASSES.values())
    assert "stopped after step 3" in printed


# ------------------------------------------------------------------------------------- the adaptations


@pytest.mark.parametrize("distilled", [False, True])
@pytest.mark.parametrize("new_size", [56, 20])  # up and down (timm antialiases a downsampling)
def test_pos_embed_resampling_equals_timm(sources, distilled, new_size):
    source = read_source(sources["run"][0] if distilled else sources["timm-pth"][0])
    if not distilled:  # a plain source: the same tensors without the distillation token
        source.state_dict = {k: v for k, v in source.state_dict.items() if not k.startswith(("dist_token", "head_dist"))}
        source.state_dict["pos_embed"] = torch.cat([source.state_dict["pos_embed"][:, :1],
                                                    source.state_dict["pos_embed"][:, 2:]], dim=1)
    name = "deit_micro_distilled_patch4_32" if distilled else "deit_micro_patch4_32"
    student = create_model(name, num_classes=100, img_size=new_size)
    state_dict, changes = adapt_state_dict(source, student)
    grid = new_size // 4
    expected = resample_abs_pos_embed(source.state_dict["pos_embed"], [grid, grid], num_prefix_tokens=1 + distilled)
    torch.testing.assert_close(state_dict["pos_embed"], expected, rtol=0, atol=1e-6)
    assert {"what": "pos_embed", "action": "resampled", "detail": f"8x8 -> {grid}x{grid} patch grid (bicubic)"} in changes


def test_channel_adaptation_follows_timm_both_ways(sources):
    source = read_source(sources["timm-pth"][0])
    rgb_weight = source.state_dict["patch_embed.proj.weight"]
    gray = create_model("deit_micro_distilled_patch4_32", num_classes=100, in_chans=1)
    state_dict, _ = adapt_state_dict(source, gray)
    torch.testing.assert_close(state_dict["patch_embed.proj.weight"], adapt_input_conv(1, rgb_weight), rtol=0, atol=0)
    # Gray -> RGB: repeated and scaled, so a gray image copied into three channels gives the gray model's output.
    gray.load_state_dict(state_dict)
    gray.eval()
    gray_source = read_source(sources["timm-pth"][0])
    gray_source.state_dict = dict(gray.state_dict())
    rgb = create_model("deit_micro_distilled_patch4_32", num_classes=100, in_chans=3).eval()
    rgb_state, changes = adapt_state_dict(gray_source, rgb)
    rgb.load_state_dict(rgb_state)
    assert {"what": "patch_embed.proj.weight", "action": "adapted",
            "detail": "1 -> 3 channels (repeated, x0.333333, timm's adapt_input_conv)"} in changes
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rgb(x.expand(-1, 3, -1, -1)).logits, gray(x).logits, rtol=0, atol=1e-5)


def test_distilled_to_plain_and_back(sources):
    source = read_source(sources["run"][0])
    plain = create_model("deit_micro_patch4_32", num_classes=100)
    state_dict, changes = adapt_state_dict(source, plain)
    actions = {c["what"]: c["action"] for c in changes}
    assert actions["dist_token"] == "dropped" and actions["head_dist"] == "dropped"
    assert "dist_token" not in state_dict and torch.equal(state_dict["head.weight"], source.state_dict["head.weight"])
    # pos_embed keeps the class-token row and the grid, without the distillation row.
    torch.testing.assert_close(state_dict["pos_embed"], source.state_dict["pos_embed"][:, [0] + list(range(2, 66))])
    plain.load_state_dict(state_dict)
    back_source = read_source(sources["run"][0])
    back_source.state_dict = dict(plain.state_dict())
    torch.manual_seed(0)
    distilled = create_model("deit_micro_distilled_patch4_32", num_classes=100)
    fresh = {k: v.clone() for k, v in distilled.state_dict().items()}
    state_dict, changes = adapt_state_dict(back_source, distilled)
    actions = {c["what"]: c["action"] for c in changes}
    assert actions["dist_token"] == "re-initialised" and actions["head_dist"] == "re-initialised"
    for key in ("dist_token", "head_dist.weight"):  # the student's own (seeded) initialisation
        assert torch.equal(state_dict[key], fresh[key])
    assert torch.equal(state_dict["pos_embed"][:, 1], fresh["pos_embed"][:, 1])
    assert torch.equal(state_dict["pos_embed"][:, 2:], plain.state_dict()["pos_embed"][:, 1:])


# ------------------------------------------------------------------------------- a run of ours, 28 -> 56 px


@pytest.fixture(scope="module")
def fmnist10(tmp_path_factory, fmnist_dir):
    """A folder of real Fashion-MNIST training images, all ten classes: 150 train and 50 val per class."""
    from deit.data import load_data

    train = load_data("fashion-mnist", "train", data_dir=fmnist_dir)
    return save_folder(tmp_path_factory.mktemp("fmnist10"), train.images, train.labels, dict(enumerate(train.classes)),
                       {"train": 150, "val": 50})


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory, fmnist10):
    """deit_mini_patch7_28 trained briefly on the ten-class folder (seconds)."""
    tmp = tmp_path_factory.mktemp("pretrained")
    config = preset_config("fmnist-cpu", model="deit_mini_patch7_28", data=f"imagefolder:{fmnist10}", img_size=28,
                           cache_images=True, epochs=3, batch_size=50, warmup_epochs=0.2, eval_every=100,
                           progress=False, threads=1, precision="fp32", output=str(tmp / "run"))
    return fit(config)


@torch.no_grad()
def test_trained_at_28_evaluated_at_56_right_after_resampling(fmnist_run, fmnist10):
    from deit.data import load_data

    top1_28 = fmnist_run.metrics["top1"]
    assert top1_28 > 55.0, fmnist_run.metrics  # chance is 10 %
    source = read_source(fmnist_run.output)
    assert source.name == "deit_mini_patch7_28" and source.classes is not None
    student = create_model("deit_mini_patch7_28", img_size=56).eval()
    state_dict, changes = adapt_state_dict(source, student, source.classes)
    student.load_state_dict(state_dict)
    assert [c["action"] for c in changes] == ["kept", "resampled"]  # same classes: the head is kept
    data = load_data(f"imagefolder:{fmnist10}", "val", img_size=56, cache_images=True)
    x = (data.images.float() / 255 - data.mean[0]) / data.std[0]
    top1_56 = (student(x).logits.argmax(1) == data.labels).float().mean().item() * 100
    # Three times chance (10 %) with no step at 56 px (this run: 67 % at 28 px, 30 % at 56 px; a random pos_embed
    # would lose the layout). It drops because each 7-px patch now sees a quarter of what it saw: the train-test
    # resolution gap that fine-tuning closes (results/finetune).
    assert top1_56 > 20.0, (top1_28, top1_56)


def test_same_class_count_but_other_classes_reinitialises_the_head(fmnist_run):
    source = read_source(fmnist_run.output)
    student = create_model("deit_mini_patch7_28")
    _, changes = adapt_state_dict(source, student, [f"class{i}" for i in range(10)])
    assert {"what": "head", "action": "re-initialised", "detail": "10 classes, but not the source's"} in changes


def test_linear_probe_trains_only_the_head(fmnist_run, folder, tmp_path):
    from deit.checkpoint import load_run

    config = quick(tmp_path, "probe", model="deit_mini_patch7_28", finetune=str(fmnist_run.output), linear_probe=True,
                   data=f"imagefolder:{folder}", img_size=28, cache_images=True)
    result = fit(config)
    before, _ = load_run(fmnist_run.output)
    after, saved = load_run(result.output)
    for key, value in after.state_dict().items():
        assert torch.equal(value, before.state_dict()[key]) != key.startswith("head."), key
    assert saved["finetune"]["linear_probe"]["trainable"] == ["head.weight", "head.bias"]


def test_fine_tuned_run_evaluates_predicts_and_exports_with_its_classes(fmnist_run, folder, tmp_path, capsys):
    from deit.export import export_onnx

    config = quick(tmp_path, "ft", model="deit_mini_distilled_patch7_28", finetune=str(fmnist_run.output),
                   data=f"imagefolder:{folder}", img_size=28, cache_images=True)
    run = fit(config).output
    assert cli_main(["eval", "--checkpoint", str(run), "--json", "--precision", "fp32"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["num_images"] == 60
    image = next((Path(folder) / "val" / "bag").iterdir())
    assert cli_main(["predict", str(run), str(image), "--json", "--precision", "fp32"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert {name for name, _ in predicted[0]["top"]} <= set(FOLDER_CLASSES.values())
    export_onnx(run, tmp_path / "ft.onnx", check=False)  # the onnxruntime comparison is test_export's
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "ft.onnx")).metadata_props}
    assert json.loads(metadata["deit.classes"]) == sorted(FOLDER_CLASSES.values())


# ---------------------------------------------------------------------------- distillation while fine-tuning


def test_teacher_at_its_own_resolution_teaches_a_student_at_another(fmnist_run, fmnist10, folder, tmp_path):
    """The 28-px run teaches a student fine-tuned at 35 px on the same ten classes: its input is resized on the fly
    (bicubic), and its class count is checked against the new data."""
    from deit.teacher import load_teacher

    teacher, info = load_teacher(str(fmnist_run.output), None, num_classes=10, in_chans=1, img_size=(35, 35))
    assert info["resized_input"] == {"from": [35, 35], "to": [28, 28], "mode": "bicubic"}
    x = torch.rand(2, 1, 35, 35)
    reference = teacher.model(torch.nn.functional.interpolate(x, size=(28, 28), mode="bicubic", antialias=True))
    torch.testing.assert_close(teacher(x), reference.logits, rtol=0, atol=0)
    config = quick(tmp_path, "distil", model="deit_mini_distilled_patch7_28", finetune=str(fmnist_run.output),
                   data=f"imagefolder:{fmnist10}", img_size=35, cache_images=True, train_subset=100,
                   teacher=str(fmnist_run.output), distillation="hard")
    result = fit(config)
    saved = json.loads((result.output / "config.json").read_text())
    assert saved["teacher"]["resized_input"]["to"] == [28, 28]
    assert result.metrics["top1_teacher"] > 40.0  # the teacher, fed resized 35-px images, still sees them
    # A teacher of other classes than the new data is refused before training.
    with pytest.raises(ValueError, match="teacher predicts 10 classes but the data has 3"):
        fit(quick(tmp_path, "bad_teacher", model="deit_mini_distilled_patch7_28", finetune=str(fmnist_run.output),
                  data=f"imagefolder:{folder}", img_size=35, cache_images=True, teacher=str(fmnist_run.output),
                  distillation="hard"))


# --------------------------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def bad_sources(sources, tmp_path_factory):
    from timm.models.deit import VisionTransformerDistilled

    tmp = tmp_path_factory.mktemp("bad")
    good = sources["timm-pth"][0].read_bytes()
    (tmp / "truncated.pth").write_bytes(good[:len(good) // 2])
    (tmp / "corrupt.pth").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 64)
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp / "image.png")
    torch.save(create_model("resnet8_tiny").state_dict(), tmp / "resnet.pth")
    torch.save(VisionTransformerDistilled(**{**MICRO, "patch_size": 8}).state_dict(), tmp / "patch8.pth")
    return tmp


@pytest.mark.parametrize("name, model, message", [
    ("timm.pth", "deit_mini_distilled_patch7_28", "does not fit --model deit_mini_distilled_patch7_28: width 96 vs "
                                                  "192, patch 4 vs 7 .* pass --model deit_micro_distilled_patch4_32"),
    ("hf", "deit_tiny_distilled_patch16_224", "does not fit --model deit_tiny_distilled_patch16_224: width 96 vs 192, "
                                              "depth 6 vs 12"),
    ("patch8.pth", "deit_micro_distilled_patch4_32", r"patch 8 vs 4 \(patch embeddings are not resampled\)"),
    ("truncated.pth", None, "truncated.pth is not a readable checkpoint"),
    ("corrupt.pth", None, "corrupt.pth is not a readable checkpoint"),
    ("image.png", None, "image.png is not a checkpoint: neither a safetensors nor a torch file"),
    ("resnet.pth", None, "resnet.pth is not a ViT/DeiT checkpoint"),
    ("missing.pth", None, "missing.pth does not exist"),
])
def test_bad_source_is_one_line_before_any_training(sources, bad_sources, tmp_path, capsys, name, model, message):
    path = sources["timm-pth"][0].parent / name if name in ("timm.pth", "hf") else bad_sources / name
    args = ["train", "--finetune", str(path), "--data", f"imagefolder:{tmp_path / 'no_such_folder'}", "--img-size",
            "28", "--output", str(tmp_path / "run")]
    assert cli_main(args + (["--model", model] if model else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deit train: error: ") and re.search(message, err[0]), err
    assert not (tmp_path / "run").exists()  # refused before the data (a missing folder) and before any training


def test_linear_probe_needs_a_source():
    with pytest.raises(ValueError, match="--linear-probe needs --finetune"):
        TrainConfig(linear_probe=True)
