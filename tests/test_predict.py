"""`deit predict`: image files decode to the data set's own pixels and get the model's probabilities, with the
run's class names; bad paths are one clear line."""

import json

import pytest
import torch
from PIL import Image

from deit.cli import main as cli_main
from deit.data import load_data
from deit.models import create_model
from deit.predict import classify_files

from conftest import make_run_dir, perturb_

MEAN, STD = (0.286,), (0.353,)


@pytest.fixture(scope="module")
def fmnist_val(fmnist_dir):
    return load_data("fashion-mnist", "val", data_dir=fmnist_dir)


@pytest.fixture(scope="module")
def distilled_run(tmp_path_factory, fmnist_val):
    model = perturb_(create_model("deit_mini_distilled_patch7_28"))
    run = make_run_dir(model, tmp_path_factory.mktemp("run"), fmnist_val.classes, MEAN, STD, (28, 28))
    return model, run


def test_png_files_get_the_models_probabilities(distilled_run, fmnist_val, tmp_path):
    model, run = distilled_run
    pixels = fmnist_val.images[:12]
    for i, image in enumerate(pixels):
        Image.fromarray(image[0].numpy()).save(tmp_path / f"{i:02d}.png")
    predictions = classify_files(run, [tmp_path], top_k=3, precision="fp32")  # a folder: its images, sorted
    assert [p.file for p in predictions] == [str(tmp_path / f"{i:02d}.png") for i in range(12)]
    with torch.no_grad():  # normalised by hand, as training normalises
        out = model((pixels.float() / 255 - MEAN[0]) / STD[0])
    probs = out.logits.softmax(-1)
    for i, p in enumerate(predictions):
        top = probs[i].topk(3)
        assert [name for name, _ in p.top] == [fmnist_val.classes[c] for c in top.indices]
        torch.testing.assert_close(torch.tensor([prob for _, prob in p.top]), top.values, atol=1e-5, rtol=1e-4)
        assert p.cls_head == fmnist_val.classes[out.cls_logits[i].argmax()]
        assert p.dist_head == fmnist_val.classes[out.dist_logits[i].argmax()]


def test_any_image_is_converted_to_the_runs_input(distilled_run, tmp_path, capsys):
    # An RGB JPEG of another size, for a grayscale 28 px model: converted, resized, centre-cropped.
    _, run = distilled_run
    gen = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=gen).numpy()
    Image.fromarray(rgb).save(tmp_path / "photo.jpg")
    assert cli_main(["predict", str(run), str(tmp_path / "photo.jpg"), "--top-k", "20", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    probs = [prob for _, prob in result["top"]]
    assert len(probs) == 10 and probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5


def test_bad_paths_are_one_clear_line(distilled_run, tmp_path, capsys):
    _, run = distilled_run
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty").mkdir()
    for args, message in (([str(tmp_path / "missing.png")], "missing.png does not exist"),
                          ([str(tmp_path / "notes.png")], "not a readable image"),
                          ([str(tmp_path / "empty")], "no images"),
                          ([str(tmp_path / "notes.png"), "--top-k", "0"], "top_k must be at least 1")):
        assert cli_main(["predict", str(run), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("deit predict: error: ") and message in err and err.count("\n") == 1
    assert cli_main(["predict", str(tmp_path), str(tmp_path / "notes.png")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
