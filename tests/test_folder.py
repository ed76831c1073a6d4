"""Streamed image folders (deit.data listing / folder / transforms / stream): the per-sample transforms against timm's
create_transform and DeiT's eval transform, agreement with the in-memory path, determinism and resume, sharding over
ranks, and the errors for bad files and folders. Folders are built in tmp dirs from real Fashion-MNIST images."""

import dataclasses
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

from deit.data import (FASHION_MNIST_SYSTEM_DIR, AugmentConfig, BadImage, BatchLoader, StreamLoader, describe,
                       load_data, make_loader)
from deit.data.augment import _posterize_any_bits
from deit.data.seeding import derive_seed, seeded_rngs
from deit.data.stream import _collate

needs_fashion = pytest.mark.skipif(not (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason=f"Fashion-MNIST not installed in {FASHION_MNIST_SYSTEM_DIR}")
pytestmark = needs_fashion
CLASSES = {0: "tshirt", 1: "trouser", 7: "sneaker"}


def build_folder(root, per_class=(12, 4), sizes=None, fmt="png", rgb=False, seed=0):
    """root/{train,val}/<class>/<i>.<fmt> from the Fashion-MNIST test images; sizes=(lo, hi): each image upscaled
    (bicubic) to a random width and height in that range."""
    source = load_data("fashion-mnist", "val")
    rng = np.random.default_rng(seed)
    for split, count, offset in (("train", per_class[0], 0), ("val", per_class[1], per_class[0])):
        for label, name in CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in (source.labels == label).nonzero().flatten()[offset:offset + count].tolist():
                img = Image.fromarray(source.images[i, 0].numpy())
                if sizes:
                    img = img.resize(tuple(int(s) for s in rng.integers(sizes[0], sizes[1] + 1, 2)), Image.BICUBIC)
                img = img.convert("RGB") if rgb else img
                img.save(folder / f"{i}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))
    return root


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    return build_folder(tmp_path_factory.mktemp("jpegs"), sizes=(40, 72), fmt="jpg", rgb=True)


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    return build_folder(tmp_path_factory.mktemp("pngs"))


def all_batches(loader, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.iterate(start)]


def test_listing_is_lazy_and_describes_like_imagedata(jpeg_folder):
    data = load_data(f"imagefolder:{jpeg_folder}", "train", img_size=32)
    assert not hasattr(data, "images") and len(data) == 36 and data.in_chans == 3 and data.num_classes == 3
    assert data.classes == sorted(CLASSES.values()) and data.img_size == (32, 32)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    val = load_data(f"imagefolder:{jpeg_folder}", "val", img_size=32)
    record = describe(data, val)
    assert record["sizes"] == {"train": 36, "val": 12} and record["stream"]["eval_crop_ratio"] == 0.875
    assert data.subset([0, 13, 35]).labels.tolist() == [0, 1, 2]
    assert data.subset([13]).listing.files[0] == data.listing.files[13]
    renormalised = dataclasses.replace(data, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # as evaluate_run does
    assert renormalised.mean == (0.5,) * 3 and renormalised.img_size == (32, 32) and len(renormalised) == 36
    assert renormalised.subset([1]).std == (0.25,) * 3 and data.mean != renormalised.mean


def test_decoded_pixels_are_pils(jpeg_folder):
    data = load_data(f"imagefolder:{jpeg_folder}", "train", img_size=32)
    for i in (0, 20):
        with Image.open(data.listing.files[i]) as img:
            assert np.array_equal(np.asarray(data.decode(i)[0]), np.asarray(img.convert("RGB")))


@pytest.mark.parametrize("ratio", [0.875, 1.0])
def test_eval_transform_is_deits(jpeg_folder, ratio):
    """DeiT's build_transform for eval: Resize(int(size / ratio), bicubic) -> CenterCrop -> ToTensor -> Normalize."""
    from torchvision import transforms

    data = load_data(f"imagefolder:{jpeg_folder}", "val", img_size=32, eval_crop_ratio=ratio, fast_decode=False)
    reference = transforms.Compose([transforms.Resize(int(32 / ratio), interpolation=transforms.InterpolationMode.BICUBIC),
                                    transforms.CenterCrop(32), transforms.ToTensor(),
                                    transforms.Normalize(data.mean, data.std)])
    x, y = next(iter(StreamLoader(data, 5, train=False)))
    expected = torch.stack([reference(Image.open(data.listing.files[i]).convert("RGB")) for i in range(5)])
    assert torch.equal(x, expected) and y.tolist() == data.labels[:5].tolist()


def test_train_transform_is_timms_create_transform(jpeg_folder):
    """The DeiT recipe through timm's create_transform, with the same global RNG draws, gives the same tensor: ours
    is the per-sample uint8 crop (full decode) then the loader's batch stage (normalise, erase the rectangle drawn
    per sample); only the erasing noise's values differ (ours come from the rectangle's own seed)."""
    from timm.data import create_transform

    data = load_data(f"imagefolder:{jpeg_folder}", "train", img_size=32, fast_decode=False)
    loader = StreamLoader(data, 8, train=True, augment=AugmentConfig(reprob=0.5), seed=3)
    timm_t = create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
                              re_prob=0.5, re_mode="pixel", re_count=1, color_jitter=None)
    for op in timm_t.transforms[2].ops:  # timm's posterize raises at 0 bits on Pillow >= 13: the fixed one
        if op.name == "PosterizeIncreasing":
            op.aug_fn = _posterize_any_bits
    erased = 0
    for epoch, position, index in loader.batch_keys(0, 0):
        with seeded_rngs(derive_seed(3, "sample", epoch, position)):
            expected = timm_t(data.decode(index)[0])
        x, _ = loader._finish(_collate([loader.reader[epoch, position, index]]))
        differs = (x[0] != expected).any(0)
        top, left, h, w, _ = loader.reader[epoch, position, index][2].tolist()
        inside = torch.zeros_like(differs)
        inside[top:top + h, left:left + w] = True
        assert torch.equal(differs, inside)  # everything else bit for bit; the rectangle is timm's
        erased += h > 0
    assert 0 < erased < 8
def test_train_without_augmentation_equals_in_memory(png_folder):
    """Same-size grayscale PNGs: streamed batches (augment None) equal the in-memory loader's, order and pixels."""
    name = f"imagefolder:{png_folder}"
    cached = load_data(name, "train", img_size=28, cache_images=True)
    streamed = load_data(name, "train", img_size=28, eval_crop_ratio=1.0)
    assert streamed.in_chans == cached.in_chans == 1 and streamed.mean == cached.mean
    a = BatchLoader(cached, 8, train=True, repeats=2, seed=3)
    b = make_loader(streamed, 8, train=True, repeats=2, seed=3)
    for loader in (a, b):
        loader.set_epoch(1)
    assert isinstance(b, StreamLoader) and len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(all_batches(a), all_batches(b)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    val_cached = load_data(name, "val", img_size=28, cache_images=True)
    val = load_data(name, "val", img_size=28, eval_crop_ratio=1.0)
    (xa, ya), = all_batches(BatchLoader(val_cached, 64, train=False))
    (xb, yb), = all_batches(make_loader(val, 64, train=False))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_are_pure_functions_of_seed_epoch_index(jpeg_folder):
    data = load_data(f"imagefolder:{jpeg_folder}", "train", img_size=24)
    augment = AugmentConfig(reprob=0.5)
    loader = StreamLoader(data, 6, train=True, augment=augment, repeats=3, seed=5)
    loader.set_epoch(2)
    first = all_batches(loader)
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    again = all_batches(loader)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, again))
    assert torch.equal(state[0], torch.get_rng_state()) and random.getstate() == state[2]  # global RNGs untouched
    resumed = all_batches(loader, start=4)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first[4:], resumed))
    workers = StreamLoader(data, 6, train=True, augment=augment, repeats=3, seed=5, num_workers=2)
    workers.set_epoch(2)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first[2:], all_batches(workers, start=2)))
    loader.set_epoch(3)
    assert not torch.equal(first[0][0], next(iter(loader))[0])


def test_world_size_two_shards_the_single_process_batch(jpeg_folder):
    """Rank r's batch k (per-rank batch B) is rows r::2 of the single-process batch k at 2B, augmentation included."""
    data = load_data(f"imagefolder:{jpeg_folder}", "train", img_size=24)
    augment = AugmentConfig(reprob=0.5)
    single = StreamLoader(data, 8, train=True, augment=augment, repeats=3, seed=1)
    ranks = [StreamLoader(data, 4, train=True, augment=augment, repeats=3, seed=1, world_size=2, rank=r)
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    keys = [{(p, i) for k in range(len(single)) for _, p, i in ranks[r].batch_keys(0, k)} for r in (0, 1)]
    assert not keys[0] & keys[1]
    for k, (x, y) in enumerate(all_batches(single)[:3]):
        shard = [all_batches(r)[k] for r in ranks]
        for r in (0, 1):
            assert torch.equal(x[r::2], shard[r][0]) and torch.equal(y[r::2], shard[r][1])
    val = load_data(f"imagefolder:{jpeg_folder}", "val", img_size=24)
    (xv, yv), = all_batches(StreamLoader(val, 64, train=False))
    parts = [all_batches(StreamLoader(val, 64, train=False, world_size=2, rank=r))[0] for r in (0, 1)]
    assert torch.equal(xv[0::2], parts[0][0]) and torch.equal(xv[1::2], parts[1][0])


def test_bad_files_are_named_or_skipped_and_counted(tmp_path):
    root = build_folder(tmp_path / "f", per_class=(4, 2), sizes=(40, 48), fmt="jpg", rgb=True)
    good = sorted((root / "train/tshirt").glob("*.jpg"))
    truncated, text, empty = root / "train/tshirt/cut.jpg", root / "train/trouser/notes.jpg", root / "train/sneaker/0.png"
    truncated.write_bytes(good[0].read_bytes()[:600])
    text.write_text("not an image")
    empty.write_bytes(b"")
    for bad, why in ((empty, "empty file"), (text, "not a readable image"), (truncated, "truncated JPEG")):  # listed
        with pytest.raises(BadImage, match=rf"{re.escape(str(bad))}: {why}.*--skip-bad-images"):
            load_data(f"imagefolder:{root}", "train", img_size=32)
        bad.rename(bad.with_suffix(".off"))  # the next one is reached
    for bad in (truncated, text, empty):
        bad.with_suffix(".off").rename(bad)
    data = load_data(f"imagefolder:{root}", "train", img_size=32, skip_bad_images=True)
    assert len(data) == 12 and sorted(f for f, _ in data.skipped) == sorted(map(str, (truncated, text, empty)))
    assert describe(data)["stream"]["skipped"] == {"train": 3}


def test_folder_errors_before_any_work(tmp_path):
    root = build_folder(tmp_path / "f", per_class=(2, 1), fmt="png")
    (root / "train/empty_class").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty_class holds no images.*add images or remove"):
        load_data(f"imagefolder:{root}", "train", img_size=28)
    (root / "train/empty_class").rmdir()
    (root / "val/zebra").mkdir()
    Image.new("L", (9, 9)).save(root / "val/zebra/z.png")
    with pytest.raises(ValueError, match=r"\['zebra'\] in .* have no folder in"):
        load_data(f"imagefolder:{root}", "val", img_size=28)
    with pytest.raises(ValueError, match="needs img_size"):
        load_data(f"imagefolder:{root}", "train")
    with pytest.raises(ValueError, match="eval_crop_ratio"):
        load_data(f"imagefolder:{root}", "train", img_size=28, eval_crop_ratio=1.5)
    with pytest.raises(TypeError, match="use make_loader"):
        BatchLoader(load_data(f"imagefolder:{root}", "train", img_size=28), 2, train=True)


def test_streamed_run_evaluates_and_predicts_as_it_trained(tmp_path, capsys):
    """A streamed-folder run (28 px PNGs of real Fashion-MNIST images, one bad file skipped): `deit eval` gives exactly
    the metrics training measured, `deit predict` on the val files agrees with them, and log.jsonl counts the skip."""
    import json

    from deit.cli import main as cli_main
    from deit.config import preset_config
    from deit.engine import fit

    root = build_folder(tmp_path / "f", per_class=(100, 30))
    (root / "train/tshirt/cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # no IEND: truncated
    config = preset_config("fmnist-cpu", data=f"imagefolder:{root}", img_size=28, epochs=1, batch_size=50,
                           eval_batch_size=64, warmup_epochs=0.2, eval_every=1, progress=False, threads=1,
                           num_workers=1, skip_bad_images=True, precision="fp32", output=str(tmp_path / "run"))
    result = fit(config)
    trained = json.loads((result.output / "metrics.json").read_text())
    rows = [json.loads(line) for line in (result.output / "log.jsonl").read_text().splitlines()]
    assert trained["num_images"] == 90 and rows[-1]["skipped_images"] == 1
    assert json.loads((result.output / "config.json").read_text())["data"]["stream"]["eval_crop_ratio"] == 0.875
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(result.output), "--json", "--precision", "fp32", "--device", "cpu",
                     "--batch-size", "64"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("num_images", "top1", "top5", "top1_cls", "top1_dist"):
        assert evaluated[key] == trained[key], key
    assert evaluated["loss"] == pytest.approx(trained["loss"], rel=1e-6)
    val_files = sorted((root / "val").rglob("*.png"))
    assert cli_main(["predict", str(result.output), *map(str, val_files), "--json", "--top-k", "1", "--precision",
                     "fp32", "--device", "cpu", "--batch-size", "64"]) == 0
    predicted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    correct = sum(p["top"][0][0] == f.parent.name for p, f in zip(predicted, val_files))
    assert [p["file"] for p in predicted] == list(map(str, val_files))
    assert 100.0 * correct / len(val_files) == trained["top1"]
    # each file's probability is the model's on the val loader's input (the eval transform: resize to 32, crop 28)
    from deit.checkpoint import load_run
    from deit.engine.evaluate import predict

    model, _ = load_run(result.output, "model")
    val = load_data(f"imagefolder:{root}", "val", img_size=28)
    probs = predict(model, make_loader(val, 64, train=False), torch.device("cpu"), None)["logits"].softmax(-1)
    assert [str(val.listing.files[i]) for i in range(len(val))] == list(map(str, val_files))
    assert torch.allclose(torch.tensor([p["top"][0][1] for p in predicted]), probs.max(-1).values, atol=1e-6)
    # `deit analyze` streams the val split too: its confusion matrix scores what training did; its attention
    # pictures are the eval crops, which normalised are the loader's input
    from deit.analyze import analyze, normalised, prepare_runs, val_pixels

    run, = prepare_runs([result.output], max_val=5)
    first, _ = next(iter(make_loader(val, 5, train=False)))
    assert torch.equal(normalised(run.val, 5, val_pixels(run.val, 5)), first)
    written = analyze([result.output], tmp_path / "analysis", num_images=4, batch_size=64, device="cpu")
    confusion = json.loads(written["run"]["confusion_json"].read_text())
    assert confusion["top1"] == trained["top1"] and confusion["num_images"] == 90


def test_loader_bench_reports_ratios(jpeg_folder):
    from deit.bench_data import LoaderBenchConfig, format_loader_report, run_loader_bench

    result = run_loader_bench(LoaderBenchConfig(f"imagefolder:{jpeg_folder}", workers=1, batch_size=4, img_size=32,
                                                windows=1, batches=2), log=lambda s: None)
    assert set(result["images_per_s"]) == {"ours", "timm", "timm_prefetcher"} and result["ratio_vs_timm"]["ours"] > 0
    assert result["ours_vs_timm_prefetcher"]["per_core"] > 0
    assert result["images_per_s_per_core"]["ours"] > 0 and "per_core_ratio_vs_timm" in result
    assert "images/s per core" in format_loader_report(result)
