"""Checkpoints: HF transformers round trips, pos_embed resampling against the official code and timm, official
.pth files, run directories, the convert CLI, and bad input."""

import argparse
import dataclasses
import json
import os
import pathlib
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from timm.layers import resample_abs_pos_embed

from deit import create_model
from deit.models import model_config
from deit.checkpoint import LoadResult, convert_checkpoint, load_checkpoint, load_state_dict, resample_pos_embed, save_model
from deit.hf_layout import deit_to_hf, hf_config, hf_to_deit
from deit.cli import main as cli_main

from conftest import perturb_

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network
transformers = pytest.importorskip("transformers")


def images(config, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, config.in_chans, *config.img_size, generator=torch.Generator().manual_seed(seed))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def tiny_distilled():
    return perturb_(create_model("deit_tiny_distilled_patch16_224"))


@pytest.fixture(scope="module")
def micro():
    return perturb_(create_model("deit_micro_distilled_patch4_32"), seed=1)


# ------------------------------------------------------------------------------------------ Hugging Face


@torch.no_grad()
def test_hf_distilled_round_trip(tiny_distilled, tmp_path):
    ours = tiny_distilled
    x = images(ours.config)
    expected = ours(x)
    run = tmp_path / "run"
    save_model(ours, run)
    convert_checkpoint(run, tmp_path / "hf", layout="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["DeiTForImageClassificationWithTeacher"]
    assert config["layer_norm_eps"] == 1e-6  # as DeiT was trained; HF's 1e-12 default shifts logits ~1e-4
    hf = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "hf").eval()
    out = hf(pixel_values=x)
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=1e-4)  # HF: mean of the two heads
    torch.testing.assert_close(out.cls_logits, expected.cls_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(out.distillation_logits, expected.dist_logits, rtol=0, atol=1e-4)
    # Back: the v4 file layout, and the transformers-5 in-memory names, both give our exact tensors.
    state_dict = ours.state_dict()
    assert_same_tensors(hf_to_deit(deit_to_hf(state_dict)), state_dict)
    assert_same_tensors(hf_to_deit(hf.state_dict()), state_dict)
    # A directory written by transformers itself loads, architecture included.
    hf.save_pretrained(tmp_path / "hf_saved")
    result = load_checkpoint(tmp_path / "hf_saved")
    assert result.format == "hf" and result.model.config == ours.config
    torch.testing.assert_close(result.model.eval()(x).logits, expected.logits, rtol=0, atol=0)


@torch.no_grad()
def test_hf_non_distilled_is_a_vit(tmp_path):
    # HF DeiTForImageClassification always inserts a distillation token, so the official non-distilled models
    # are published (and written here) as ViTForImageClassification.
    ours = perturb_(create_model("deit_tiny_patch16_224"))
    x = images(ours.config)
    save_model(ours, tmp_path / "run")
    convert_checkpoint(tmp_path / "run", tmp_path / "hf", layout="hf")
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(hf(pixel_values=x).logits, ours(x).logits, rtol=0, atol=1e-4)
    assert_same_tensors(hf_to_deit(deit_to_hf(ours.state_dict())), ours.state_dict())
    assert_same_tensors(load_state_dict(tmp_path / "hf")[0], ours.state_dict())


@torch.no_grad()
def test_hf_deit_for_image_classification_loads_as_class_token_model(tmp_path):
    config = transformers.DeiTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                     image_size=32, patch_size=8, num_labels=5, layer_norm_eps=1e-6)
    hf = perturb_(transformers.DeiTForImageClassification(config))
    hf.save_pretrained(tmp_path / "hf")
    result = load_checkpoint(tmp_path / "hf")
    c = result.model.config
    assert (c.distilled, c.combine, c.num_heads, c.num_classes, c.patch_size) == (True, "cls", 4, 5, 8)
    x = images(c)
    torch.testing.assert_close(result.model.eval()(x).logits, hf(pixel_values=x).logits, rtol=0, atol=1e-4)


def test_hf_config_fits_transformers(micro):
    c = micro.config
    config = transformers.DeiTConfig(**hf_config(c))
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size, config.num_labels,
            config.num_channels, config.image_size, config.layer_norm_eps) == (
        c.embed_dim, c.num_heads, int(c.embed_dim * c.mlp_ratio), c.num_classes, c.in_chans, c.img_size[0], 1e-6)


# ------------------------------------------------------------------------------------------- resampling


def official_resample(pos_embed_checkpoint, num_extra_tokens, new_size):
    """The DeiT repository's fine-tuning code (main.py), verbatim but for the variable plumbing."""
    embedding_size = pos_embed_checkpoint.shape[-1]
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
    pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = F.interpolate(pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


@pytest.mark.parametrize("prefix", [1, 2])
def test_resample_224_to_384_equals_official_and_timm(prefix):
    pos_embed = torch.randn(1, prefix + 14 * 14, 192, generator=torch.Generator().manual_seed(prefix))
    ours = resample_pos_embed(pos_embed, (24, 24), prefix)
    assert ours.shape == (1, prefix + 24 * 24, 192)
    assert torch.equal(ours, official_resample(pos_embed, prefix, 24))
    assert torch.equal(ours[:, :prefix], pos_embed[:, :prefix])
    timm_plain = resample_abs_pos_embed(pos_embed, [24, 24], num_prefix_tokens=prefix, antialias=False)
    torch.testing.assert_close(ours, timm_plain, rtol=0, atol=1e-6)
    for new in ((24, 24), (8, 8)):  # antialias changes the kernel (and matters when shrinking)
        torch.testing.assert_close(resample_pos_embed(pos_embed, new, prefix, antialias=True),
                                   resample_abs_pos_embed(pos_embed, list(new), num_prefix_tokens=prefix),
                                   rtol=0, atol=1e-6)
    assert resample_pos_embed(pos_embed, 14, prefix) is pos_embed  # same grid: untouched


def test_resample_non_square_grid():
    pos_embed = torch.randn(1, 2 + 14 * 10, 32, generator=torch.Generator().manual_seed(0))
    ours = resample_pos_embed(pos_embed, (20, 12), 2, old_grid=(14, 10))
    reference = resample_abs_pos_embed(pos_embed, [20, 12], old_size=[14, 10], num_prefix_tokens=2, antialias=False)
    assert ours.shape == (1, 2 + 20 * 12, 32)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not a square grid: pass old_grid"):
        resample_pos_embed(pos_embed, (20, 12), 2)


def test_load_resamples_pos_embed_to_the_model_grid(tiny_distilled, tmp_path):
    save_model(tiny_distilled, tmp_path)
    target = create_model("deit_tiny_distilled_patch16_224", img_size=384)
    result = load_checkpoint(tmp_path, target)
    assert (result.missing, result.unexpected, result.mismatched) == ([], [], [])
    source = tiny_distilled.state_dict()
    assert torch.equal(target.pos_embed.detach(), official_resample(source["pos_embed"], 2, 24))
    assert torch.equal(target.blocks[3].attn.qkv.weight, source["blocks.3.attn.qkv.weight"])
    with pytest.raises(ValueError, match=r"1 shape mismatches \(pos_embed: checkpoint \[1, 198, 192\] vs model "
                                         r"\[1, 578, 192\]\)"):
        load_checkpoint(tmp_path, target, resample_pos_embed=False)


# ------------------------------------------------------------------------------- official, timm, run dirs


def _mark(path):
    pathlib.Path(path).write_text("code from the checkpoint ran")


class Payload:
    """Unpickling this would run _mark: a loader that executes pickles creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _mark, (self.marker,)


@pytest.mark.parametrize("zip_format", [True, False])
def test_official_pth_with_namespace_loads_without_running_pickles(micro, tmp_path, zip_format):
    marker = tmp_path / "marker"
    args = argparse.Namespace(model="deit_micro_distilled_patch4_32", lr=5e-4, output_dir=pathlib.Path("/out"),
                              hook=Payload(marker))
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": micro.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 299,
                "args": args}, path, _use_new_zipfile_serialization=zip_format)
    result = load_checkpoint(path, create_model("deit_micro_distilled_patch4_32"))
    assert not marker.exists()
    assert result.format == "official"
    assert_same_tensors(result.model.state_dict(), micro.state_dict())


@torch.no_grad()
def test_bare_timm_state_dict_infers_the_architecture(tmp_path):
    reference = perturb_(timm.create_model("deit_tiny_patch16_224", pretrained=False))
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    result = load_checkpoint(tmp_path / "timm.pth")
    assert result.format == "timm"
    assert result.model.config == model_config("deit_tiny_patch16_224")
    x = images(result.model.config)
    torch.testing.assert_close(result.model.eval()(x).logits, reference(x), rtol=0, atol=1e-5)


@torch.no_grad()
def test_run_dir_round_trip(micro, tmp_path):
    path = save_model(micro, tmp_path / "run", name="deit_micro_distilled_patch4_32")
    assert path == tmp_path / "run" / "model.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "deit"}
    spec = json.loads((path.parent / "config.json").read_text())["model"]
    assert spec["name"] == "deit_micro_distilled_patch4_32" and spec["family"] == "vit"
    result = load_checkpoint(path.parent)
    assert isinstance(result, LoadResult) and result.format == "deit"
    assert result.model is not micro and result.model.config == micro.config
    x = images(micro.config)
    assert torch.equal(result.model.eval()(x).logits, micro(x).logits)
    # A config.json the training code wrote first is kept.
    (path.parent / "config.json").write_text(json.dumps({"model": spec, "train": {"epochs": 3}}))
    save_model(micro, path.parent)
    assert json.loads((path.parent / "config.json").read_text())["train"] == {"epochs": 3}


def test_resnet_round_trip(tmp_path):
    teacher = create_model("resnet8_small")
    save_model(teacher, tmp_path)
    result = load_checkpoint(tmp_path)
    assert type(result.model) is type(teacher)
    assert_same_tensors(result.model.state_dict(), teacher.state_dict())


# ----------------------------------------------------------------------------------------------- the CLI


def test_convert_cli_to_hf_and_back(micro, tmp_path, capsys):
    torch.save({"model": micro.state_dict(), "args": argparse.Namespace(lr=1.0)}, tmp_path / "official.pth")
    assert cli_main(["convert", str(tmp_path / "official.pth"), str(tmp_path / "hf"), "--layout", "hf",
                     "--model", "deit_micro_distilled_patch4_32"]) == 0
    assert "config.json, model.safetensors" in capsys.readouterr().out
    assert cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = load_checkpoint(tmp_path / "back")
    # The architecture survives; drop_path_rate is a training setting HF configs do not carry.
    assert back.format == "deit" and back.model.config == dataclasses.replace(micro.config, drop_path_rate=0.0)
    assert_same_tensors(back.model.state_dict(), micro.state_dict())
    # An existing destination is never overwritten.
    assert cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 2
    assert re.search(r"deit convert: error: .*back exists and is not an empty directory", capsys.readouterr().err)


# ------------------------------------------------------------------------------------------- bad input


def test_resnet_checkpoint_into_vit_is_one_clear_error(tmp_path):
    save_model(create_model("resnet8_small"), tmp_path)
    vit = create_model("deit_tiny_patch16_224")
    # Both have a head: it is the one shared name, reported as a shape mismatch.
    with pytest.raises(ValueError, match=r"checkpoint does not fit deit_tiny_patch16_224: missing 150 keys "
                                         r"\(cls_token, pos_embed, patch_embed\.proj\.weight, .*\), unexpected \d+ "
                                         r"keys \(stages\..*\), 2 shape mismatches \(head\.weight: checkpoint "
                                         r"\[10, 128\] vs model \[1000, 192\], head\.bias: "):
        load_checkpoint(tmp_path, vit)
    result = load_checkpoint(tmp_path, vit, strict=False)
    assert len(result.missing) == 150 and "stem.0.weight" in result.unexpected
    assert result.mismatched == [("head.weight", (10, 128), (1000, 192)), ("head.bias", (10,), (1000,))]


def test_not_a_checkpoint_is_one_clear_error(micro, tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"\x80\x02" + torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    save_model(micro, tmp_path / "run")
    truncated_st = tmp_path / "truncated.safetensors"
    full = (tmp_path / "run" / "model.safetensors").read_bytes()
    truncated_st.write_bytes(full[: len(full) // 2])
    torch.save(micro.state_dict(), tmp_path / "full.pth")
    truncated_pth = tmp_path / "truncated.pth"
    truncated_pth.write_bytes((tmp_path / "full.pth").read_bytes()[:5000])
    for bad in (text, noise, truncated_st, truncated_pth):
        with pytest.raises(ValueError, match=re.escape(str(bad)) + r" is not a (readable )?checkpoint"):
            load_checkpoint(bad, micro)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth", micro)
    assert cli_main(["convert", str(truncated_st), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated.safetensors is not a readable checkpoint" in err
