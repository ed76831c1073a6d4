"""`deit predict` and `deit eval` of a model named on the hub or exported to a directory (deit.model_source): a run
exported with `deit convert --layout hf|timm`, placed in a hub cache built on disk in the hub's own layout
(tests/test_hub.py's put_in_cache), gives `deit predict RUN`'s labels and probabilities by name and as a local
directory; timm's test_vit by timm:NAME gives timm's own transform's probabilities with ImageNet-1k's class names;
`deit eval` of a hub model scores a folder whose classes are its own (in another order) as predict does; a bad name
or a folder of other classes is one line, before any image is read."""

import json
import re

import pytest
import torch
from PIL import Image

from deit.checkpoint import convert_checkpoint
from deit.cli import main as cli_main
from deit.models import create_model

from conftest import make_run_dir, perturb_, use_offline_hub_cache
from test_hub import put_in_cache

timm = pytest.importorskip("timm")

CLASSES = ["dog", "fox", "cat"]  # not sorted: a folder's classes (sorted) come in another order
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
COMMIT = "a" * 40


def _snapshot(folder) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in folder.iterdir()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A distilled run streamed at 32 px (eval: shorter side to 36, centre crop), its hf and timm exports as local
    directories and in a hub cache (the run itself too), timm's test_vit in the cache, and PNG files of several
    sizes."""
    from timm.models._hub import save_for_hf

    tmp = tmp_path_factory.mktemp("predict_hub")
    # the initial weights, not what earlier tests left in the global generator (seed 0's model answers one class)
    torch.manual_seed(1)
    model = perturb_(create_model("deit_micro_distilled_patch4_32", num_classes=3), seed=1)
    run = make_run_dir(model, tmp / "run", CLASSES, MEAN, STD, (32, 32))
    config = json.loads((run / "config.json").read_text())
    config["data"]["stream"] = {"eval_crop_ratio": 0.875, "fast_decode": False}  # a streamed folder's run
    (run / "config.json").write_text(json.dumps(config))
    cache = tmp / "cache"
    for layout in ("hf", "timm"):
        convert_checkpoint(run, tmp / layout, layout=layout)
        put_in_cache(cache, f"acme/student-{layout}", COMMIT, _snapshot(tmp / layout), refs=["main"])
    run_files = {name: (run / name).read_bytes() for name in ("config.json", "model.safetensors")}
    put_in_cache(cache, "acme/student-run", COMMIT, run_files, refs=["main"])  # the run itself, pushed as it is
    vit = perturb_(timm.create_model("test_vit"), seed=3)
    save_for_hf(vit, str(tmp / "test_vit"), safe_serialization=True)
    put_in_cache(cache, "timm/test_vit.r160_in1k", "4" * 40, _snapshot(tmp / "test_vit"), refs=["main"])
    gen = torch.Generator().manual_seed(0)
    root = tmp / "photos"
    files = []
    for c, name in enumerate(sorted(CLASSES)):  # val/<class>/: one colour per class, with noise, of several sizes
        (root / "val" / name).mkdir(parents=True)
        for i, (h, w) in enumerate([(32, 32), (40, 52), (61, 45)]):
            pixels = (torch.rand(h, w, 3, generator=gen) * 90 + 80 * c).to(torch.uint8)
            files.append(root / "val" / name / f"{i}.png")
            Image.fromarray(pixels.numpy()).save(files[-1])
        (root / "train" / name).mkdir(parents=True)  # a folder's classes are its train split's
        (root / "train" / name / "0.png").write_bytes(files[-1].read_bytes())
    return run, tmp, cache, vit, root, [str(f) for f in files]


@pytest.fixture
def offline(setup, monkeypatch):
    """This process sees the test cache, offline (huggingface_hub reads its environment once, at import); files are
    decoded in this process (starting a worker process costs seconds, for 9 tiny images)."""
    import deit.data.loader

    monkeypatch.setattr(deit.data.loader, "default_num_workers", lambda data: 0)
    return use_offline_hub_cache(monkeypatch, setup[2])


def predict_json(capsys, model, files, *flags) -> tuple[list[dict], str]:
    assert cli_main(["predict", str(model), *files, "--json", "--precision", "fp32", "--top-k", "3", *flags]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


@pytest.mark.parametrize("name", ["hf-hub:acme/student-hf", "hf-hub:acme/student-timm", "hf-hub:acme/student-run",
                                  "hf", "timm"])
def test_an_export_by_hub_name_or_as_a_directory_predicts_as_the_run(setup, offline, capsys, name):
    run, tmp, _, _, _, files = setup
    expected, _ = predict_json(capsys, run, files)
    source = name if name.startswith("hf-hub:") else tmp / name
    got, err = predict_json(capsys, source, files)
    assert [p["file"] for p in got] == files
    for mine, theirs in zip(got, expected):
        assert [c for c, _ in mine["top"]] == [c for c, _ in theirs["top"]]  # the run's names, in its ranking
        assert [p for _, p in mine["top"]] == pytest.approx([p for _, p in theirs["top"]], abs=1e-6)
        assert (mine["cls_head"], mine["dist_head"]) == (theirs["cls_head"], theirs["dist_head"])
    assert len({p["top"][0][0] for p in expected}) >= 2  # not one constant answer
    if name.startswith("hf-hub:"):  # provenance, on stderr (stdout is the JSON)
        repo = name.split(":")[1]
        assert re.fullmatch(rf"model: {name} -> {repo}@main \(commit {COMMIT}\), model.safetensors, sha256 "
                            r"[0-9a-f]{64}\n", err), err
    else:
        assert err == ""


@torch.no_grad()
def test_a_timm_name_gives_timms_transform_probabilities_and_imagenet_names(setup, offline, capsys):
    _, _, _, vit, _, files = setup
    got, err = predict_json(capsys, "timm:test_vit.r160_in1k", files[:4])
    assert err.startswith("model: timm:test_vit.r160_in1k -> timm/test_vit.r160_in1k@main (commit 4444")
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=vit))  # crop 0.95, bicubic
    probs = vit(torch.stack([transform(Image.open(f).convert("RGB")) for f in files[:4]])).softmax(-1)
    names = timm.data.ImageNetInfo("imagenet-1k").label_descriptions()
    for mine, row in zip(got, probs):
        best = row.topk(3)
        assert [c for c, _ in mine["top"]] == [names[i] for i in best.indices]
        assert [p for _, p in mine["top"]] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_eval_of_a_hub_model_scores_a_folder_of_its_classes_as_predict_does(setup, offline, capsys, tmp_path):
    """A folder whose classes (sorted: cat, dog, fox) are the model's (dog, fox, cat) in another order, each image
    filed under the run's first, second or third choice for it in turn: top-1 33.3 %."""
    run, _, _, _, _, files = setup
    expected, _ = predict_json(capsys, run, files)
    truth = [p["top"][i % 3][0] for i, p in enumerate(expected)]
    for name in CLASSES:
        for split in ("train", "val"):
            (tmp_path / split / name).mkdir(parents=True)
        (tmp_path / "train" / name / "0.png").write_bytes(open(files[0], "rb").read())
    for i, (file, name) in enumerate(zip(files, truth)):
        (tmp_path / "val" / name / f"{i}.png").write_bytes(open(file, "rb").read())
    loss = -sum(torch.tensor(dict(p["top"])[t]).log() for p, t in zip(expected, truth)).item() / len(files)
    assert cli_main(["eval", "--checkpoint", "hf-hub:acme/student-timm", "--data", f"imagefolder:{tmp_path}", "--json",
                     "--precision", "fp32"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_images"] == len(files) and metrics["top1"] == pytest.approx(100 * 3 / 9)
    assert metrics["loss"] == pytest.approx(loss, abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["predict", "hf-hub:acme/missing", "NO_IMAGE.png"],
     r"acme/missing is not in the Hugging Face cache \(.*\) and HF_HUB_OFFLINE is set: fetch it"),
    (["predict", "hf-hub:acme/student-hf@v9", "NO_IMAGE.png"], r"revision 'v9' of acme/student-hf is not in the cache"),
    (["predict", "hf-hub:student-hf", "NO_IMAGE.png"], r"a hub name is hf-hub:ORG/NAME\[@REVISION\]"),
    (["predict", "timm:test_vit.no_such_tag", "NO_IMAGE.png"], r"timm has no pretrained weights of that name"),
    (["predict", "hf-hub:acme/student-hf", "NO_IMAGE.png", "--weights", "ema"],
     r"is no run directory of `deit train`: --weights ema"),
    (["eval", "--checkpoint", "hf-hub:acme/missing", "--data", "imagefolder:NO_FOLDER"],
     r"acme/missing is not in the Hugging Face cache"),
    (["eval", "--checkpoint", "hf-hub:acme/student-hf"], r"is no run of `deit train`: pass --data"),
])
def test_a_bad_name_is_one_line_before_any_image_is_read(offline, capsys, args, message):
    """NO_IMAGE.png and NO_FOLDER do not exist: reading them first would give another message."""
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"deit {args[0]}: error: ") and re.search(message, err[0]), err


def test_eval_on_data_of_other_classes_is_one_line(setup, offline, capsys, tmp_path):
    _, _, _, _, root, _ = setup
    for name in ("cat", "dog"):  # two of the model's three classes
        for split in ("train", "val"):
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "0.png").write_bytes((root / "val" / name / "0.png").read_bytes())
    assert cli_main(["eval", "--checkpoint", "hf-hub:acme/student-hf", "--data", f"imagefolder:{tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predicts 3 classes and imagefolder:" in err[0] and "has 2, not the same names (fox " \
        "in one only): its predictions cannot be scored on this data" in err[0], err


@torch.no_grad()
def test_a_transformers_deit_repo_predicts_as_transformers_does(setup, offline, capsys, tmp_path):
    """A repo as facebook/deit-* are published: DeiTForImageClassificationWithTeacher with DeiTImageProcessor (resize
    to a square of 36, crop 32: on square images the shorter side's resize), saved by transformers itself."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DeiTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                     image_size=32, patch_size=8, layer_norm_eps=1e-6, id2label=dict(enumerate(CLASSES)))
    model = perturb_(transformers.DeiTForImageClassificationWithTeacher(config), seed=6)
    # PIL's resize, as transformers 4's DeiTImageProcessor (transformers 5's default resizes float tensors)
    pil_processor = getattr(transformers, "DeiTImageProcessorPil", transformers.DeiTImageProcessor)
    processor = pil_processor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(tmp_path / "repo")
    processor.save_pretrained(tmp_path / "repo")
    put_in_cache(offline, "acme/deit-transformers", "b" * 40, _snapshot(tmp_path / "repo"), refs=["main"])
    gen = torch.Generator().manual_seed(1)
    files = []
    for i, side in enumerate((32, 45, 64)):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((torch.rand(side, side, 3, generator=gen) * 255).to(torch.uint8).numpy()).save(files[-1])
    got, _ = predict_json(capsys, "hf-hub:acme/deit-transformers", files)
    probs = model(**processor(images=[Image.open(f) for f in files], return_tensors="pt")).logits.softmax(-1)
    for mine, row in zip(got, probs):
        best = row.topk(3)
        assert [c for c, _ in mine["top"]] == [CLASSES[i] for i in best.indices]
        assert [p for _, p in mine["top"]] == pytest.approx(best.values.tolist(), abs=1e-5)
