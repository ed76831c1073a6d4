"""Tests for deit.data: loading and validation, stratified subsets, the repeated-augmentation sampler, the batched
augmentations against per-image references, and the loader's resume determinism and RNG isolation."""

import gzip
import math
import random
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deit.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SYSTEM_DIR,
    AugmentConfig,
    BatchLoader,
    ImageData,
    RepeatAugSampler,
    apply_separable,
    build_randaugment,
    crop_resize_matrices,
    describe,
    load_data,
    pad_random_crop,
    random_erase_,
    random_resized_crop_boxes,
    read_idx,
    stratified_subset,
)

HAVE_FASHION = all((FASHION_MNIST_SYSTEM_DIR / f).is_file() for f in (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason=f"Fashion-MNIST not installed in {FASHION_MNIST_SYSTEM_DIR} "
                                   "(apt-get install dataset-fashion-mnist)")


def synthetic(n=300, classes=10, size=28, chans=1, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, chans, size, size), dtype=torch.uint8, generator=g)
    return ImageData(images, torch.arange(n) % classes, [str(c) for c in range(classes)],
                     (0.3,) * chans, (0.35,) * chans, "synthetic")


# ------------------------------------------------------------------------------------------ Fashion-MNIST


@pytest.fixture(scope="module")
def fashion():
    return load_data("fashion-mnist", "train"), load_data("fashion-mnist", "val")


@needs_fashion
def test_real_fashion_mnist(fashion):
    train, val = fashion
    assert train.images.shape == (60000, 1, 28, 28) and val.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(val.labels), torch.full((10,), 1000))
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(train.mean[0], abs=5e-4)
    assert pixels.std().item() == pytest.approx(train.std[0], abs=5e-4)
    assert train.classes == FASHION_MNIST_CLASSES and train.num_classes == 10
    assert (train.in_chans, train.img_size, train.split, val.split) == (1, (28, 28), "train", "val")
    info = describe(train, val)
    assert info["sizes"] == {"train": 60000, "val": 10000} and info["img_size"] == [28, 28]


@needs_fashion
def test_fashion_resize_at_load():
    data = load_data("fashion-mnist", "val", img_size=32)
    assert data.images.shape == (10000, 1, 32, 32) and data.images.dtype == torch.uint8
    native = load_data("fashion-mnist", "val")
    # bilinear antialiased resizing keeps the brightness
    assert (data.images.float().mean() - native.images.float().mean()).abs() < 0.5


def write_idx(path, magic, array, compress=True, cut=0):
    array = np.asarray(array, dtype=np.uint8)
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    raw = raw[:len(raw) - cut] if cut else raw
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_fashion(folder, n_images=20, n_labels=None, shape=(28, 28), labels=None, split="t10k"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, *shape))
    labels = np.arange(n_labels or n_images) % 10 if labels is None else labels
    write_idx(folder / f"{split}-images-idx3-ubyte.gz", 2051, images)
    write_idx(folder / f"{split}-labels-idx1-ubyte.gz", 2049, labels)
    return images, labels


def test_idx_round_trip(tmp_path):
    images, labels = write_fashion(tmp_path)
    data = load_data("fashion-mnist", "val", data_dir=str(tmp_path), download=False)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert torch.equal(data.labels, torch.from_numpy(labels).long())
    # uncompressed files are read too
    raw = write_idx(tmp_path / "plain", 2049, labels, compress=False)
    assert np.array_equal(read_idx(raw, 2049), labels)


def test_idx_wrong_magic(tmp_path):
    write_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2051, np.zeros((20, 28, 28)))  # an images file as labels
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz.*magic number 2051, expected 2049"):
        load_data("fashion-mnist", "val", data_dir=str(tmp_path), download=False)


def test_idx_truncated(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])  # broken gzip stream
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*truncated"):
        load_data("fashion-mnist", "val", data_dir=str(tmp_path), download=False)
    write_idx(path, 2051, np.zeros((20, 28, 28)), cut=100)  # valid gzip, too few bytes
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*15680 data bytes, found 15580"):
        load_data("fashion-mnist", "val", data_dir=str(tmp_path), download=False)


def test_idx_inconsistent_contents(tmp_path):
    write_fashion(tmp_path, n_images=20, n_labels=19)
    with pytest.raises(ValueError, match="19 labels for 20 images"):
        load_data("fashion-mnist", "val", data_dir=str(tmp_path), download=False)
    write_fashion(tmp_path, labels=np.full(20, 10))
    with pytest.raises(ValueError, match="label 10 outside 0..9"):
        load_data("fashion-mnist", "val", data_dir=str(tmp_path), download=False)
    write_fashion(tmp_path, shape=(32, 32))
    with pytest.raises(ValueError, match="expected 28x28"):
        load_data("fashion-mnist", "val", data_dir=str(tmp_path), download=False)


def test_missing_data_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_data("fashion-mnist", "train", data_dir=str(tmp_path), download=False)
    message = str(info.value)
    for needle in ("apt-get install dataset-fashion-mnist", "--data-dir", "train-images-idx3-ubyte.gz", str(tmp_path),
                   "http"):
        assert needle in message
    assert "\n" not in message


def test_missing_cifar_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar10 not found under .*cifar-10-python\.tar\.gz"):
        load_data("cifar10", "train", data_dir=str(tmp_path), download=False)


def test_cifar_layout(monkeypatch, tmp_path):
    import torchvision.datasets

    class FakeCIFAR10:  # the attributes torchvision's CIFAR10 exposes, without the 170 MB download
        url, base_folder = "https://example/cifar-10-python.tar.gz", "cifar-10-batches-py"
        classes = ["airplane", "automobile"]

        def __init__(self, root, train, download):
            self.targets = [0, 1, 1, 0] if train else [1]
            n = len(self.targets)
            self.data = np.arange(n * 32 * 32 * 3, dtype=np.uint32).reshape(n, 32, 32, 3).astype(np.uint8)  # NHWC

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data = load_data("cifar10", "train", data_dir=str(tmp_path))
    assert data.images.shape == (4, 3, 32, 32) and data.labels.tolist() == [0, 1, 1, 0]
    assert torch.equal(data.images[2, :, 5, 7], torch.from_numpy(FakeCIFAR10(0, True, 0).data[2, 5, 7]))
    assert data.classes == FakeCIFAR10.classes and data.mean == (0.4914, 0.4822, 0.4465)
    assert load_data("cifar10", "val", data_dir=str(tmp_path), img_size=16).images.shape == (1, 3, 16, 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_data("fashion-mnist", "test")
    with pytest.raises(ValueError, match="unknown data set"):
        load_data("mnist")


# ----------------------------------------------------------------------------------------------- image folders


def save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_imagefolder_mixed_modes(tmp_path):
    red = Image.new("RGB", (20, 10), (200, 10, 10))  # non-square: resized to short side 8, centre-cropped
    save(red, tmp_path / "train/cat/rgb.png")
    save(Image.new("L", (12, 12), 90), tmp_path / "train/cat/gray.png")
    rgba = Image.new("RGBA", (12, 12), (0, 0, 0, 0))  # fully transparent: composited on white
    save(rgba, tmp_path / "train/dog/rgba.png")
    palette = Image.new("P", (12, 12), 1)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.info["transparency"] = 0
    save(palette, tmp_path / "train/dog/palette.png")
    save(Image.new("CMYK", (12, 12), (0, 255, 255, 0)), tmp_path / "train/emu/cmyk.tif")  # red in CMYK
    save(Image.new("L", (12, 12), 30), tmp_path / "val/dog/gray.png")

    data = load_data(f"imagefolder:{tmp_path}", "train", img_size=8, cache_images=True)
    assert data.classes == ["cat", "dog", "emu"] and data.images.shape == (5, 3, 8, 8)
    assert data.labels.tolist() == [0, 0, 1, 1, 2]  # sorted files within sorted classes: gray, rgb, palette, rgba
    pixel = data.images[:, :, 4, 4].tolist()
    assert pixel[0] == [90, 90, 90] and pixel[1] == [200, 10, 10]
    assert pixel[2] == [10, 200, 10] and pixel[3] == [255, 255, 255] and pixel[4] == [255, 0, 0]
    assert data.mean == (0.485, 0.456, 0.406)

    val = load_data(f"imagefolder:{tmp_path}", "val", img_size=8, cache_images=True)
    assert val.classes == data.classes and val.labels.tolist() == [1] and val.in_chans == 3  # channels follow train


def test_imagefolder_grayscale(tmp_path):
    save(Image.new("L", (9, 9), 77), tmp_path / "train/a/x.png")
    save(Image.new("1", (9, 9), 1), tmp_path / "train/b/x.png")
    save(Image.fromarray(np.full((9, 9), 32896, dtype=np.uint16)), tmp_path / "train/b/y.png")  # 16-bit: scaled
    data = load_data(f"imagefolder:{tmp_path}", "train", img_size=6, cache_images=True)
    assert data.images.shape == (3, 1, 6, 6) and data.mean == (0.449,)
    assert data.images[:, 0, 3, 3].tolist() == [77, 255, 128]


def test_imagefolder_errors(tmp_path):
    save(Image.new("L", (9, 9)), tmp_path / "train/a/x.png")
    with pytest.raises(ValueError, match="needs img_size"):
        load_data(f"imagefolder:{tmp_path}", "train")
    save(Image.new("L", (9, 9)), tmp_path / "val/zebra/x.png")
    with pytest.raises(ValueError, match=r"\['zebra'\].*no folder in"):
        load_data(f"imagefolder:{tmp_path}", "val", img_size=8, cache_images=True)
    (tmp_path / "empty/train/a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_data(f"imagefolder:{tmp_path / 'empty'}", "train", img_size=8)
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        load_data(f"imagefolder:{tmp_path / 'nowhere'}", "train", img_size=8)


# ------------------------------------------------------------------------------------------ stratified subsets


def test_stratified_subset_counts_and_proportions():
    labels = torch.tensor([0] * 500 + [1] * 300 + [2] * 150 + [3] * 49 + [4] * 1)
    for size in (1000, 333, 100, 17, 0.1, 0.37):
        idx = stratified_subset(labels, size, seed=0)
        total = size if isinstance(size, int) else round(size * len(labels))
        assert len(idx) == total and torch.equal(idx, idx.unique())  # exact, sorted, no repeats
        per_class = torch.bincount(labels[idx], minlength=5).double()
        exact = torch.bincount(labels).double() * total / len(labels)
        shortfall = (exact - per_class).clamp(min=0)  # classes lifted to 1 sample take from the rest
        assert ((per_class - exact).abs() < 1).sum() >= 3 and shortfall.sum() <= 2
        assert (per_class >= 1).all()  # every class kept when size >= number of classes
    assert torch.equal(stratified_subset(labels, 1000, seed=3), torch.arange(1000))


def test_stratified_subset_seeded():
    labels = torch.arange(1000) % 7
    a, b, c = (stratified_subset(labels, 70, seed=s) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.bincount(labels[a]), torch.full((7,), 10))


@pytest.mark.parametrize("size", [0, -3, 1001, 0.0, 1.5, float("nan"), True, "10", None])
def test_stratified_subset_bad_size(size):
    with pytest.raises(ValueError):
        stratified_subset(torch.arange(1000) % 10, size, seed=0)


# ----------------------------------------------------------------------------------------- repeated augmentation


def official_ra_indices(permutation, repeats, world_size, rank):
    """The official DeiT RASampler.__iter__, minus torch.distributed, keeping ceil(N / world_size) per replica
    instead of truncating to multiples of 256."""
    indices = [i for i in permutation.tolist() for _ in range(repeats)]
    num_samples = int(math.ceil(len(permutation) * repeats / world_size))
    total_size = num_samples * world_size
    while len(indices) < total_size:  # the official code pads once with indices[:padding]; loop for tiny sets
        indices += indices[:total_size - len(indices)]
    indices = indices[rank:total_size:world_size]
    assert len(indices) == num_samples
    return indices[:math.ceil(len(permutation) / world_size)]


@pytest.mark.parametrize("n,repeats,world_size", [(100, 3, 1), (101, 3, 2), (10, 3, 4), (5, 3, 8), (50, 1, 3)])
def test_repeat_aug_sampler_matches_official(n, repeats, world_size):
    samplers = [RepeatAugSampler(n, repeats, world_size, rank, seed=5) for rank in range(world_size)]
    for epoch in (0, 1):
        permutation = samplers[0].permutation(epoch)
        assert torch.equal(torch.sort(permutation).values, torch.arange(n))
        for rank, sampler in enumerate(samplers):
            sampler.set_epoch(epoch)
            assert list(sampler) == official_ra_indices(permutation, repeats, world_size, rank)
            assert len(sampler) == math.ceil(n / world_size)
    assert not torch.equal(samplers[0].permutation(0), samplers[0].permutation(1))


def test_repeat_aug_sampler_structure():
    sampler = RepeatAugSampler(99, repeats=3)
    indices = list(sampler)
    assert len(indices) == 99  # not truncated to a multiple of 256 (the official code yields nothing here)
    assert all(len(set(indices[i:i + 3])) == 1 for i in range(0, 99, 3))  # each index three times in a row
    assert len(set(indices)) == 33
    # two ranks partition the padded, repeated list between them
    ranks = [RepeatAugSampler(100, 3, world_size=2, rank=r, seed=0) for r in (0, 1)]
    interleaved = torch.stack([r.indices(0) for r in ranks], dim=1).flatten()
    repeated = ranks[0].permutation(0).repeat_interleave(3)
    assert torch.equal(interleaved, repeated[:100])
    plain = RepeatAugSampler(64, repeats=1, shuffle=False)
    assert list(plain) == list(range(64))


# ----------------------------------------------------------------------------------------------- augmentations


def test_crop_resize_matches_interpolate_on_crops():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    top, left, h, w = random_resized_crop_boxes(64, 32, 32, (0.08, 1.0), g).unbind(1)
    assert (h >= 1).all() and (top + h <= 32).all() and (left + w <= 32).all()
    flip = torch.rand(64, generator=g) < 0.5
    ours = apply_separable(images, crop_resize_matrices(top, h, 32, 32), crop_resize_matrices(left, w, 32, 32, flip))
    for i in range(64):  # PIL-style bicubic (antialias path) of the cropped image, then the mirror
        crop = images[i:i + 1, :, top[i]:top[i] + h[i], left[i]:left[i] + w[i]].float()
        ref = F.interpolate(crop, size=(32, 32), mode="bicubic", antialias=True)[0]
        torch.testing.assert_close(ours[i], ref.flip(-1) if flip[i] else ref, atol=2e-3, rtol=0)
    whole = torch.zeros(64, dtype=torch.long), torch.full((64,), 32)
    assert torch.equal(apply_separable(images, crop_resize_matrices(*whole, 32, 32),
                                       crop_resize_matrices(*whole, 32, 32)), images.float())


def test_pad_random_crop_matches_reference():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(1, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=g)
    flip = torch.rand(32, generator=g) < 0.5
    out = pad_random_crop(images, 4, flip, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    tops, lefts = torch.randint(0, 9, (32,), generator=replay), torch.randint(0, 9, (32,), generator=replay)
    padded = F.pad(images, (4, 4, 4, 4))
    for i in range(32):
        ref = padded[i, :, tops[i]:tops[i] + 28, lefts[i]:lefts[i] + 28]
        assert torch.equal(out[i], (ref.flip(-1) if flip[i] else ref).float())


def test_random_erasing_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.full((4000, 1, 28, 28), 100.0)
    random_erase_(x, 0.25, g)
    erased = x != 100.0
    per_image = erased.flatten(1).float().mean(1)
    assert abs((per_image > 0).float().mean().item() - 0.25) < 0.03
    area = per_image[per_image > 0]
    # each erased region is one axis-aligned rectangle, narrower and lower than the image
    mask = erased[per_image > 0, 0]
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :])
    h, w = rows.sum(1).float(), cols.sum(1).float()
    assert (h < 28).all() and (w < 28).all()
    assert all((band.int().diff(dim=1) != 0).sum(1).le(2).all() for band in (rows, cols))  # contiguous rows, cols
    assert area.min() >= 0.015 and area.max() <= 0.36 and abs(area.mean().item() - 0.177) < 0.02
    noise = x[erased]
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02
    y = torch.zeros(500, 3, 16, 16)
    random_erase_(y, 1.0, g)
    erased = (y != 0).flatten(1)
    assert erased.any(1).float().mean() > 0.98
    # one rectangle per image, noise on every channel alike
    assert torch.equal((y[:, 0] != 0), (y[:, 1] != 0))
    assert torch.equal(random_erase_(torch.ones(50, 1, 8, 8), 0.0, g), torch.ones(50, 1, 8, 8))


def test_randaugment_handles_every_op_on_gray_and_rgb():
    for shape, mean in (((28, 28), (0.286,)), ((32, 32, 3), (0.5, 0.5, 0.5))):
        transform = build_randaugment("rand-m9-mstd0.5-inc1", shape[:2], mean)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
        for op in transform.ops:  # magnitude 10 used to ask Pillow for 0-bit posterize, which it refuses
            op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
            out = op(image)
            assert out.size == image.size and out.mode == image.mode


# ------------------------------------------------------------------------------------------------ BatchLoader


def collect(loader, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.iterate(start)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


RECIPE = AugmentConfig()  # DeiT: RRC + flip + RandAugment + erasing


@pytest.mark.parametrize("augment", [RECIPE, AugmentConfig(crop="pad", randaugment=None)])
def test_loader_resume_is_exact(augment):
    data = synthetic(300)
    loader = BatchLoader(data, 64, train=True, augment=augment, repeats=3, seed=11)
    loader.set_epoch(2)
    full = collect(loader)
    assert len(full) == len(loader) == 4  # 300 // 64, drop_last for training
    for k in (1, 3):
        fresh = BatchLoader(data, 64, train=True, augment=augment, repeats=3, seed=11)
        fresh.set_epoch(2)
        assert_same_batches(collect(fresh, k), full[k:])
    other_epoch = BatchLoader(data, 64, train=True, augment=augment, repeats=3, seed=11)
    other_epoch.set_epoch(3)
    assert not torch.equal(collect(other_epoch)[0][0], full[0][0])
    x, y = full[0]
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y[0:63:3], y[1:63:3]) and torch.equal(y[0:63:3], y[2:63:3])  # repeats: one image 3x in a row...
    assert not torch.equal(x[0], x[1])  # ...augmented differently


def test_loader_leaves_global_rng_alone():
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    before = global_rng_states()
    loader = BatchLoader(synthetic(200), 50, train=True, augment=RECIPE, repeats=3, seed=1)
    for _ in loader:
        pass
    assert_same_rng_states(global_rng_states(), before)


def global_rng_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def assert_same_rng_states(a, b):
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and all(np.array_equal(x, y) for x, y in zip(a[2], b[2]))


def test_loader_workers_match_main_process():
    torch.manual_seed(0)
    before = global_rng_states()
    data = synthetic(256, chans=3, size=32)
    main = BatchLoader(data, 64, train=True, augment=RECIPE, seed=4)
    workers = BatchLoader(data, 64, train=True, augment=RECIPE, seed=4, num_workers=1)
    for epoch in (0, 1):  # persistent workers across epochs
        main.set_epoch(epoch), workers.set_epoch(epoch)
        assert_same_batches(collect(workers), collect(main))
    next(iter(workers))  # an abandoned pass must not leak into the next one
    assert_same_batches(collect(workers, 2), collect(main, 2))
    assert_same_rng_states(global_rng_states(), before)


def test_eval_batches_are_normalised_in_order():
    from torchvision.transforms import Normalize

    data = synthetic(130, chans=3, size=16)
    loader = BatchLoader(data, 64, train=False, augment=RECIPE)  # augment is ignored for evaluation
    batches = collect(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [64, 64, 2]
    images = torch.cat([x for x, _ in batches])
    assert torch.equal(torch.cat([y for _, y in batches]), data.labels)
    expected = Normalize(data.mean, data.std)(data.images.float() / 255)
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
    # two ranks split the evaluation set without padding
    shards = [torch.cat([y for _, y in collect(BatchLoader(data, 64, train=False, world_size=2, rank=r))]) for r in (0, 1)]
    assert sorted(torch.cat(shards).tolist()) == sorted(data.labels.tolist())


def test_train_without_augmentation_is_a_seeded_shuffle():
    data = synthetic(100)
    loader = BatchLoader(data, 30, train=True, seed=3)
    x = torch.cat([x for x, _ in loader])
    assert len(loader) == 3 and len(x) == 90
    expected = (data.images.float() / 255 - 0.3) / 0.35
    order = RepeatAugSampler(100, repeats=1, seed=3).indices(0)[:90]
    torch.testing.assert_close(x, expected[order], atol=1e-6, rtol=0)
    assert len(BatchLoader(data, 30, train=True, drop_last=False)) == 4
    with pytest.raises(ValueError, match="no batch"):
        BatchLoader(synthetic(20), 30, train=True)


def test_a_process_with_live_workers_deaf_to_sigterm_still_exits():
    """Workers ignore stop signals (init_worker); multiprocessing's exit terminates daemonic children with SIGTERM and
    joins them, so a loader still alive at exit used to hang the interpreter (seen: pytest never returned after the
    suite passed). The process must exit by itself, quickly."""
    import subprocess
    import sys

    script = ("import torch\n"
              "from deit.data.epochs import init_worker\n"
              "ds = torch.utils.data.TensorDataset(torch.zeros(8, 1))\n"
              "loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True,\n"
              "                                     worker_init_fn=init_worker)\n"
              "it = iter(loader)\n"
              "next(it)\n"
              "KEEP = (loader, it)  # alive at interpreter exit\n"
              "print('done', flush=True)\n")
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung at exit with its DataLoader workers alive")
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]
