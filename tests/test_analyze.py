"""`deit analyze`: the maths on hand-built cases with known answers, and the command on real Fashion-MNIST."""

import json

import pytest
import torch
from PIL import Image

from conftest import make_run_dir, perturb_
from deit import create_model
from deit.analyze import (attention_rollout, confusion_matrix, last_block_maps, per_class_accuracy, token_cosine,
                          token_maps)
from deit.cli import main


def one_hot_rows(size: int, rows: dict[int, int]) -> torch.Tensor:
    """Identity attention (each token attends to itself), except rows[i] = j: token i attends only to token j."""
    a = torch.eye(size)
    for i, j in rows.items():
        a[i] = 0
        a[i, j] = 1
    return a


def test_identical_tokens_have_cosine_one_and_orthogonal_zero():
    gen = torch.Generator().manual_seed(0)
    same = torch.randn(4, 1, 8, generator=gen)
    tokens = [torch.cat([same, same, torch.randn(4, 5, 8, generator=gen)], dim=1) for _ in range(3)]
    assert token_cosine(tokens) == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    cls = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    dist = torch.tensor([[0.0, 3.0], [2.0, 2.0]])  # orthogonal (0), then equal (1): mean 0.5
    assert token_cosine([torch.stack([cls, dist], dim=1)]) == pytest.approx([0.5])


def test_one_hot_attention_gives_one_hot_maps_and_the_hand_computed_rollout():
    # Tokens: 0 cls, 1 dist, 2..5 the patches of a 2x2 grid. 2 blocks, 2 heads.
    # Block 1: cls attends to patch 2 (token 4) in both heads, everything else to itself.
    block1 = one_hot_rows(6, {0: 4})
    # Block 2: cls attends to patch 3 (token 5) in both heads; dist to cls in head 0, to patch 0 in head 1.
    block2 = torch.stack([one_hot_rows(6, {0: 5, 1: 0}), one_hot_rows(6, {0: 5, 1: 2})])
    attentions = [torch.stack([block1, block1])[None], block2[None]]  # (B=1, heads, T, T)

    last = last_block_maps(attentions, 2, (2, 2))
    assert torch.equal(last["cls"][0], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))  # one-hot at patch 3
    assert torch.equal(last["dist"][0], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))  # heads averaged

    # By hand: Â = (mean_heads A + I) / 2. Â1 row 0 = ½e0 + ½e4, other rows e_i. Â2 row 0 = ½e0 + ½e5,
    # row 1 = ¼e0 + ½e1 + ¼e2. Rollout = Â2 Â1: row 0 = ¼e0 + ¼e4 + ½e5; row 1 = ⅛e0 + ½e1 + ¼e2 + ⅛e4.
    expected = torch.eye(6)
    expected[0] = torch.tensor([0.25, 0, 0, 0, 0.25, 0.5])
    expected[1] = torch.tensor([0.125, 0.5, 0.25, 0, 0.125, 0])
    rollout = attention_rollout(attentions)
    torch.testing.assert_close(rollout[0], expected, rtol=0, atol=1e-7)
    maps = token_maps(rollout, 2, (2, 2))
    torch.testing.assert_close(maps["cls"][0], torch.tensor([[0.0, 0.0], [0.25, 0.5]]))
    torch.testing.assert_close(maps["dist"][0], torch.tensor([[0.25, 0.0], [0.125, 0.0]]))

    # Without a distillation token (1 prefix token: cls then 5 "patches"), there is no dist map.
    plain = token_maps(rollout[:, :, :], 1, (1, 5))
    assert set(plain) == {"cls"}
    torch.testing.assert_close(plain["cls"][0], torch.tensor([[0.0, 0.0, 0.0, 0.25, 0.5]]))


def test_confusion_matrix_of_known_predictions():
    targets = torch.tensor([0, 1, 2, 2, 2, 0])
    predictions = torch.tensor([0, 1, 1, 2, 2, 2])
    matrix = confusion_matrix(predictions, targets, 4)  # class 3 has no image
    assert matrix.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    assert per_class_accuracy(matrix) == pytest.approx([50.0, 100.0, 200 / 3, None])


def assert_valid_png(path):
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
        image.verify()


def fmnist_run(tmp_path, val, name: str, seed: int):
    model = perturb_(create_model(name), seed)
    return make_run_dir(model, tmp_path / name, val.classes, val.mean, val.std, val.img_size), model


def test_cli_end_to_end_on_fashion_mnist(tmp_path, fmnist_dir, capsys):
    from deit.data import load_data

    val = load_data("fashion-mnist", "val", data_dir=fmnist_dir)
    distilled_dir, distilled = fmnist_run(tmp_path, val, "deit_mini_distilled_patch7_28", 0)
    plain_dir, _ = fmnist_run(tmp_path, val, "deit_mini_patch7_28", 1)
    for i, run_dir in enumerate((distilled_dir, plain_dir)):  # the curves read the runs' logs
        rows = [{"epoch": e, "train_loss": 2.0 - e / 2 - i / 10, "val_top1": 60.0 + 10 * e + i} for e in range(3)]
        (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "analysis"
    rc = main(["analyze", str(distilled_dir), str(plain_dir), "--output", str(out), "--images", "3",
               "--max-val", "100", "--data", "fashion-mnist", "--data-dir", fmnist_dir, "--device", "cpu"])
    assert rc == 0
    d, p = out / distilled_dir.name, out / plain_dir.name
    written = {d / "attention.png", d / "token_cosine.png", d / "confusion.png", p / "attention.png",
               p / "confusion.png", out / "curves.png"}
    for png in written:
        assert_valid_png(png)
    assert len(capsys.readouterr().out.splitlines()) == len(written) + 3  # PNGs and 3 JSON files, one a line
    # The plain model has no distillation token: no cosine.
    assert not (p / "token_cosine.json").exists() and not (p / "token_cosine.png").exists()

    # The confusion matrix against the model's own predictions on the same 100 normalised val images.
    mean, std = torch.tensor(val.mean).view(1, -1, 1, 1), torch.tensor(val.std).view(1, -1, 1, 1)
    x = (val.images[:100].float() / 255 - mean) / std
    with torch.no_grad():
        output = distilled(x)
    confusion = json.loads((d / "confusion.json").read_text())
    assert confusion["classes"] == val.classes and confusion["num_images"] == 100
    expected = confusion_matrix(output.logits.argmax(1), val.labels[:100], 10)
    assert confusion["matrix"] == expected.tolist()
    assert confusion["top1"] == pytest.approx(100.0 * float((output.logits.argmax(1) == val.labels[:100]).float().mean()))
    assert confusion["top1_dist"] == pytest.approx(
        100.0 * float((output.dist_logits.argmax(1) == val.labels[:100]).float().mean()))
    assert list(confusion["per_class_accuracy"]) == val.classes

    # The cosine at the input depends on the parameters only: cls_token + pos_embed[0] vs dist_token + pos_embed[1].
    cosine = json.loads((d / "token_cosine.json").read_text())
    assert cosine["layers"] == ["input"] + [f"block {i}" for i in range(1, 7)] and cosine["num_images"] == 3
    with torch.no_grad():
        pos = distilled.pos_embed[0]
        at_input = torch.cosine_similarity(distilled.cls_token[0, 0] + pos[0], distilled.dist_token[0, 0] + pos[1], dim=0)
    assert cosine["cosine"][0] == pytest.approx(float(at_input), abs=1e-5)
    assert all(-1.0 <= c <= 1.0 for c in cosine["cosine"])


def run_cli(args, capsys):
    rc = main(["analyze", *args])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_input_is_one_clear_error_before_any_work(tmp_path, capsys):
    out = tmp_path / "analysis"
    rc, err = run_cli([str(tmp_path), "--output", str(out)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "is not a run directory" in err

    cnn_dir = make_run_dir(create_model("resnet8_tiny", num_classes=10, in_chans=1), tmp_path / "cnn",
                           [str(i) for i in range(10)], [0.5], [0.25], [28, 28])
    vit_dir = make_run_dir(create_model("deit_mini_distilled_patch7_28"), tmp_path / "vit",
                           [str(i) for i in range(10)], [0.5], [0.25], [28, 28])
    rc, err = run_cli([str(vit_dir), str(cnn_dir), "--output", str(out), "--data", "fashion-mnist"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "is a resnet run: attention maps need a ViT/DeiT run" in err

    rc, err = run_cli([str(vit_dir), "--output", str(out)], capsys)  # make_run_dir records no training data
    assert rc == 2 and len(err.splitlines()) == 1 and "pass --data" in err

    rc, err = run_cli([str(vit_dir), "--output", str(out), "--weights", "ema", "--data", "fashion-mnist"], capsys)
    assert rc == 2 and "has no ema.safetensors" in err

    rc, err = run_cli([str(vit_dir), "--output", str(out), "--images", "0", "--data", "fashion-mnist"], capsys)
    assert rc == 2 and "--images must be at least 1" in err

    rc, err = run_cli([str(vit_dir), "--output", str(out), "--device", "gpu0", "--data", "fashion-mnist"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "--device 'gpu0'" in err
    assert not out.exists()  # nothing was written
