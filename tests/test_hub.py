"""Weights by name (deit.hub): hf-hub:ORG/NAME[@REVISION] and timm:NAME[.TAG], resolved offline from a hub cache
these tests build on disk in the hub's own layout (refs/, snapshots/<commit>/, blobs/) from models made here: a
3-block width-96 transformers DeiT (no registered name has that size), a second revision of it, a BERT config, and
timm's test_vit. Checked against transformers' and timm's logits; bad names are one line before any data."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deit.cli import main as cli_main

from conftest import perturb_, use_offline_hub_cache

transformers = pytest.importorskip("transformers")

REPO = "acme/deit-w96-d3"
SPELLED = "vit_w96_d3_h3_mlp384_p8_distilled"
COMMITS = {"v1": "1" * 40, "main": "2" * 40}
CLASSES = ("cat", "dog")


def put_in_cache(cache: Path, repo: str, commit: str, files: dict[str, bytes], refs=()) -> Path:
    """One commit of a model repo, as huggingface_hub lays out its cache: blobs named by their sha256, snapshot
    entries linked to them, refs/<name> holding the commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return folder / "snapshots" / commit


def saved_files(save, tmp: Path) -> dict[str, bytes]:
    tmp.mkdir(parents=True)
    save(tmp)
    return {f.name: f.read_bytes() for f in tmp.iterdir()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The cache folder and the models in it: revision -> transformers DeiT, and timm's test_vit."""
    import timm
    from timm.models._hub import save_for_hf

    from deit.checkpoint import save_model
    from deit.models import create_model

    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "cache"
    config = transformers.DeiTConfig(hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
                                     intermediate_size=384, image_size=32, patch_size=8, num_channels=3, num_labels=2,
                                     layer_norm_eps=1e-6)  # as DeiT was trained (and ours is); the Hub's say 1e-12
    torch.manual_seed(0)
    deits = {}
    for seed, (ref, commit) in enumerate(COMMITS.items()):
        model = perturb_(transformers.DeiTForImageClassificationWithTeacher(config), seed=seed)
        put_in_cache(cache, REPO, commit, saved_files(model.save_pretrained, tmp / ref), refs=[ref])
        deits[ref] = model
    # an older repo: pytorch_model.bin only (read with weights_only, as every torch file here)
    torch.save(deits["v1"].state_dict(), tmp / "pytorch_model.bin")
    put_in_cache(cache, "acme/deit-bin", "7" * 40, {"config.json": (tmp / "v1" / "config.json").read_bytes(),
                                                    "pytorch_model.bin": (tmp / "pytorch_model.bin").read_bytes()},
                 refs=["main"])
    bert = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 96}
    put_in_cache(cache, "acme/bert", "3" * 40, {"config.json": json.dumps(bert).encode()}, refs=["main"])
    vit = perturb_(timm.create_model("test_vit"), seed=3)
    files = saved_files(lambda d: save_for_hf(vit, str(d), safe_serialization=True), tmp / "timm")
    put_in_cache(cache, "timm/test_vit.r160_in1k", "4" * 40, files, refs=["main"])
    # timm's DeiT names are ours too (the same keys): such a repo builds our ViT
    timm_deit = perturb_(timm.create_model("deit_tiny_patch16_224", num_classes=5), seed=4)
    files = saved_files(lambda d: save_for_hf(timm_deit, str(d), safe_serialization=True), tmp / "timm_deit")
    put_in_cache(cache, "timm/deit_tiny_patch16_224.fb_in1k", "5" * 40, files, refs=["main"])
    # a run of ours pushed to the hub as it is
    ours = perturb_(create_model("deit_micro_distilled_patch4_32", num_classes=2), seed=5)
    files = saved_files(lambda d: save_model(ours, d, name="deit_micro_distilled_patch4_32"), tmp / "run")
    put_in_cache(cache, "acme/deit-run", "6" * 40, files, refs=["main"])
    return cache, deits, vit, timm_deit, ours


@pytest.fixture
def offline(hub, monkeypatch):
    """This process sees the test cache, offline."""
    return use_offline_hub_cache(monkeypatch, hub[0])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/{train,val}/{cat,dog}/*.png: 32-px RGB images, one colour per class with noise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("val", 4)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(32, 32, 3, generator=gen) * 100 + 120 * c).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")
    return root


def hf_logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


# ---------------------------------------------------------------------------------------------- resolving


@pytest.mark.parametrize("revision", ["", "@main", "@v1", "@" + COMMITS["v1"]])
def test_a_name_resolves_to_the_cached_snapshot_with_its_provenance(offline, revision):
    from deit.hub import resolve

    hub = resolve(f"hf-hub:{REPO}{revision}")
    commit = COMMITS["v1"] if "1" in revision else COMMITS["main"]
    snapshot = offline / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit
    assert hub.directory == snapshot and hub.path == snapshot and hub.commit == commit
    assert hub.file == "model.safetensors" and hub.revision == (revision[1:] or "main")
    assert hub.sha256 == hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()


def test_a_repo_without_safetensors_gives_its_pytorch_model_bin(hub, offline):
    from deit.finetune import read_source
    from deit.hf_layout import hf_to_deit

    source = read_source("hf-hub:acme/deit-bin")
    assert source.hub["file"] == "pytorch_model.bin" and source.name == SPELLED
    expected = hf_to_deit(hub[1]["v1"].state_dict())
    assert source.state_dict.keys() == expected.keys()
    assert all(torch.equal(source.state_dict[k], expected[k]) for k in expected)


def test_each_revision_reads_its_own_tensors_and_any_size_gives_transformers_logits(hub, offline):
    """A 3-block width-96 DeiT, which no registered name matches, builds from its config.json alone."""
    from deit.finetune import adapt_state_dict, read_source, source_model_name
    from deit.models import create_model

    deits = hub[1]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for revision in ("v1", "main"):
        name = f"hf-hub:{REPO}@{revision}"
        assert source_model_name(name) == SPELLED
        source = read_source(name)
        assert source.hub["commit"] == COMMITS[revision] and source.path == name
        student = create_model(SPELLED, num_classes=2, img_size=32).eval()
        state_dict, changes = adapt_state_dict(source, student)
        assert [c["action"] for c in changes] == ["kept"]
        student.load_state_dict(state_dict)
        torch.testing.assert_close(student(x).logits, hf_logits(deits[revision], x), rtol=0, atol=1e-5)


def test_hf_home_chooses_the_cache(hub, tmp_path):
    """HF_HOME, read by huggingface_hub in a fresh process as a user sets it (HF_HUB_CACHE: the test below)."""
    folder = f"models--{REPO.replace('/', '--')}"
    shutil.copytree(hub[0] / folder, tmp_path / "home" / "hub" / folder, symlinks=True)
    code = f"from deit.hub import resolve; print(resolve('hf-hub:{REPO}@v1').directory)"
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**base, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
                              "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert out.stdout.strip() == str(tmp_path / "home" / "hub" / folder / "snapshots" / COMMITS["v1"]), out


@pytest.mark.parametrize("name, model, size", [
    ("timm:deit_tiny_patch16_224.fb_in1k", "deit_tiny_patch16_224", 224),  # timm's DeiT: our ViT
    ("hf-hub:acme/deit-run", "deit_micro_distilled_patch4_32", 32),  # a run of ours
])
@torch.no_grad()
def test_timm_deits_and_our_runs_on_the_hub_build_our_vit(hub, offline, name, model, size):
    from deit.finetune import adapt_state_dict, read_source, source_model_name
    from deit.models import create_model

    reference = hub[3] if name.startswith("timm:") else hub[4]
    assert source_model_name(name) == model
    source = read_source(name)
    student = create_model(model, num_classes=5 if name.startswith("timm:") else 2, img_size=size).eval()
    state_dict, changes = adapt_state_dict(source, student)
    assert [c["action"] for c in changes] == ["kept"]
    student.load_state_dict(state_dict)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    expected = reference(x)
    torch.testing.assert_close(student(x).logits, getattr(expected, "logits", expected), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- training


def test_fine_tuning_and_distilling_by_name_start_from_those_tensors(hub, offline, folder, tmp_path, capsys):
    from deit.engine.run_dir import load_state
    from deit.hf_layout import hf_to_deit
    from deit.models import create_model

    deits = hub[1]
    out = tmp_path / "run"
    assert cli_main(["train", "--finetune", f"hf-hub:{REPO}@v1", "--data", f"imagefolder:{folder}", "--img-size",
                     "32", "--cache-images", "--linear-probe", "--preset", "fmnist-cpu", "--epochs", "1",
                     "--batch-size", "4", "--warmup-epochs", "0", "--threads", "1", "--precision", "fp32",
                     "--no-progress", "--output", str(out), "--stop-after-steps", "1",
                     "--teacher", f"hf-hub:{REPO}", "--distillation", "hard"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    record = saved["finetune"]["hub"]
    snapshot = offline / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMITS["v1"]
    assert record == {"source": f"hf-hub:{REPO}@v1", "repo": REPO, "revision": "v1", "commit": COMMITS["v1"],
                      "file": "model.safetensors",
                      "sha256": hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()}
    assert f"finetune: hf-hub:{REPO}@v1 -> {REPO}@v1 (commit {COMMITS['v1']}), model.safetensors, sha256 " \
           f"{record['sha256']}" in printed
    assert saved["train"]["model"] == SPELLED and saved["train"]["finetune"] == f"hf-hub:{REPO}@v1"
    teacher = saved["teacher"]["hub"]  # the other revision teaches
    assert teacher["commit"] == COMMITS["main"] and f"teacher: hf-hub:{REPO} -> {REPO}@main (commit " \
        f"{COMMITS['main']}), model.safetensors, sha256 {teacher['sha256']}" in printed
    # The linear probe froze the backbone: it is the source's, tensor for tensor; with the source's heads back
    # the model gives transformers' logits.
    trained = load_state(out, "cpu")["model"]  # after the one step
    source = hf_to_deit(deits["v1"].state_dict())
    heads = {k for k in trained if k.startswith(("head.", "head_dist."))}
    for key in trained.keys() - heads:
        assert torch.equal(trained[key], source[key]), key
    model = create_model(SPELLED, num_classes=2, img_size=32).eval()
    model.load_state_dict({**trained, **{k: source[k] for k in heads}})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x).logits, hf_logits(deits["v1"], x), rtol=0, atol=1e-5)


@torch.no_grad()
def test_timm_names_teach_with_timm_logits(hub, offline):
    """timm:NAME.TAG as the teacher (the model its config.json names) and as --teacher-weights of an architecture."""
    from deit.config import TrainConfig
    from deit.finetune import prepare, source_model_name
    from deit.teacher import load_teacher

    vit = hub[2]
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    for spec, weights in (("timm:test_vit.r160_in1k", None), ("test_vit", "timm:test_vit"),
                          ("timm:test_vit", "timm:test_vit.r160_in1k")):  # with weights, --teacher is the architecture
        teacher, info = load_teacher(spec, weights, num_classes=1000, in_chans=3, img_size=(160, 160))
        assert info["hub"]["repo"] == "timm/test_vit.r160_in1k" and info["hub"]["commit"] == "4" * 40
        torch.testing.assert_close(teacher(x), vit(x), rtol=0, atol=1e-5)
    # as --finetune: timm's architecture, fitted key by key (deit.finetune_by_keys)
    assert source_model_name("timm:test_vit.r160_in1k") == "timm:test_vit"
    source = prepare(TrainConfig(model="timm:test_vit", finetune="timm:test_vit.r160_in1k"))
    assert source.hub["repo"] == "timm/test_vit.r160_in1k" and torch.equal(source.state_dict["cls_token"],
                                                                           vit.cls_token)


# ---------------------------------------------------------------------------------------------- bad names


@pytest.mark.parametrize("flags, message", [
    (["--finetune", "hf-hub:acme/missing"],
     r"hf-hub:acme/missing: acme/missing is not in the Hugging Face cache \(.*\) and HF_HUB_OFFLINE is set: fetch "
     r"it on a machine with network \(`hf download acme/missing`\), then copy"),
    (["--finetune", f"hf-hub:{REPO}@v9"],
     rf"revision 'v9' of {REPO} is not in the cache \(it holds 111111111111, 222222222222, main, v1\) and "
     r"HF_HUB_OFFLINE is set: fetch it on a machine with network \(`hf download acme/deit-w96-d3 --revision v9`\)"),
    (["--finetune", "hf-hub:acme/bert"],
     r"hf-hub:acme/bert is a 'bert' model \(BertForMaskedLM\), not a DeiT/ViT .* it does not fit"),
    (["--finetune", "hf-hub:deit-small"], r"a hub name is hf-hub:ORG/NAME\[@REVISION\]"),
    (["--finetune", "timm:test_vit.no_such_tag"], r"timm has no pretrained weights of that name"),
    (["--finetune", "timm:no_such_arch"], r"timm has no architecture 'no_such_arch'"),
    (["--teacher", "hf-hub:acme/missing", "--distillation", "hard"], r"acme/missing is not in the Hugging Face cache"),
    (["--teacher", "test_vit", "--teacher-weights", "timm:test_vit.no_such_tag", "--distillation", "hard"],
     r"timm has no pretrained weights of that name"),
])
def test_a_bad_name_is_one_line_before_any_data(offline, tmp_path, capsys, flags, message):
    args = ["train", *flags, "--data", f"imagefolder:{tmp_path / 'no_such_folder'}", "--img-size", "32",
            "--output", str(tmp_path / "run")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deit train: error: ") and re.search(message, err[0]), err
    assert not (tmp_path / "run").exists()  # refused before the data (a missing folder) and before any training


def test_offline_with_nothing_cached_says_what_to_fetch(tmp_path):
    """A fresh process with an empty cache (HF_HUB_CACHE), as a user meets it."""
    src = str(Path(__file__).parents[1] / "src")
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    out = subprocess.run([sys.executable, "-m", "deit", "train", "--finetune",
                          "hf-hub:facebook/deit-small-distilled-patch16-224", "--data",
                          f"imagefolder:{tmp_path / 'photos'}", "--img-size", "224"], capture_output=True, text=True,
                         env={**base, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"),
                              "PYTHONPATH": src})
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1, out
    assert f"facebook/deit-small-distilled-patch16-224 is not in the Hugging Face cache ({tmp_path / 'empty'})" \
        in err[0]
    assert "`hf download facebook/deit-small-distilled-patch16-224`" in err[0]
