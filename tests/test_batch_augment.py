"""The batch builder's fast paths against the per-image reference they replace: BatchRandAugment against timm's
RandAugment through PIL (randaugment_batch), op by op and whole batches, on real Fashion-MNIST canvases and real RGB
photo tiles; the table of crop matrices against crop_resize_matrices; whole BatchLoader batches against the old path."""

import dataclasses
import pickle
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from deit.config import TrainConfig
from deit.data import augment
from deit.data import load_split, make_loader, augment_config
from deit.data.augment import build_randaugment, crop_resize_matrices, crop_resize_rows, randaugment_batch
from deit.data.batch_randaugment import BatchRandAugment, supports
from deit.data.imagedata import ImageData

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # a real photograph, 512 x 600
MEAN_RGB = (0.485, 0.456, 0.406)


@pytest.fixture(scope="module")
def pipeline_config(fmnist_dir):
    """`deit pipeline`'s small setting (4,000 Fashion-MNIST images on a 40 x 40 canvas), shortened."""
    return TrainConfig(model="deit_mini_patch8_32", data="fashion-mnist", data_dir=fmnist_dir, train_subset=512,
                       canvas=40, batch_size=64, rrc_scale_min=0.25, randaugment="rand-m9-mstd0.5-inc1")


@pytest.fixture(scope="module")
def gray(pipeline_config):
    return load_split(pipeline_config, "train")


@pytest.fixture(scope="module")
def rgb():
    """128 real RGB images: 32 x 32 tiles of a photograph, and their mirrors."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB").resize((256, 256), Image.BICUBIC))
    tiles = photo.reshape(8, 32, 8, 32, 3).transpose(0, 2, 4, 1, 3).reshape(64, 3, 32, 32)
    images = torch.from_numpy(np.concatenate([tiles, tiles[..., ::-1]]).copy())
    return ImageData(images, torch.arange(128) % 10, [str(i) for i in range(10)], MEAN_RGB, (0.229, 0.224, 0.225),
                     "photo-tiles")


def _one_op(name: str, magnitude: int, img_size, mean):
    """RandAugment reduced to one op applied always at a fixed magnitude (its sign still drawn)."""
    transform = build_randaugment(f"rand-n1-m{magnitude}-p1.0-inc1", img_size, mean)
    increasing = build_randaugment(f"rand-n1-m{magnitude}-p1.0-inc0", img_size, mean)
    transform.ops = [op for op in transform.ops + increasing.ops if op.name == name][:1]
    return transform


OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "Posterize", "SolarizeIncreasing",
       "Solarize", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "Contrast", "BrightnessIncreasing",
       "Brightness", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


@pytest.mark.parametrize("name", OPS)
def test_each_op_is_pils(name, gray, rgb):
    """Every op at magnitudes 0, 5, 9, 10 (posterize to 0 bits, solarize at 0 and 256, blends at 0.1 and 1.9 and both
    sides of 1): pixel for pixel timm's op through PIL, gray and RGB."""
    for data in (gray, rgb):
        images = data.images[:64]
        for magnitude in (0, 5, 9, 10):
            transform = _one_op(name, magnitude, data.img_size, data.mean)
            for seed in (0, 1):  # signs differ between the seeds
                expected = randaugment_batch(images, transform, seed)
                assert torch.equal(BatchRandAugment(transform)(images, seed), expected), (data.name, magnitude, seed)


@pytest.mark.parametrize("config", ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "rand-m7-n3-mstd1.0-inc1"])
def test_whole_batches_are_the_per_image_paths(config, gray, rgb):
    """Random op choices and noisy magnitudes, two or three layers: timm's draws and PIL's pixels in every batch."""
    for data in (gray, rgb):
        transform = build_randaugment(config, data.img_size, data.mean)
        batched = BatchRandAugment(transform)
        for seed in range(5):
            images = data.images[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:64]]
            assert torch.equal(batched(images, seed), randaugment_batch(images, transform, seed)), (data.name, seed)


def test_survives_pickling_for_worker_processes(gray):
    """DataLoader workers started by spawn or forkserver unpickle the builder: the copy draws and applies the same."""
    transform = build_randaugment("rand-m9-mstd0.5-inc1", gray.img_size, gray.mean)
    copied = pickle.loads(pickle.dumps(BatchRandAugment(transform)))
    images = gray.images[:64]
    assert torch.equal(copied(images, 11), randaugment_batch(images, transform, 11))


def test_op_choices_are_timms_draws():
    """One randint for the batch is the same stream as timm's np.random.choice per image, and leaves the same state."""
    ops = list(range(15))
    np.random.seed(5)
    per_image = np.stack([np.random.choice(ops, 2) for _ in range(64)])
    after = np.random.random()
    np.random.seed(5)
    assert np.array_equal(np.random.randint(0, 15, size=(64, 2)), per_image) and np.random.random() == after


def test_random_resampling_filters_are_drawn_as_timm_draws_them(gray):
    """timm's default for geometric ops is a random choice of bilinear or bicubic per use (a python-random draw):
    drawn in the same order, the bilinear ones through PIL, the bicubic ones here."""
    from timm.data import auto_augment as aa

    transform = aa.rand_augment_transform("rand-m9-mstd0.5", {"img_mean": 73, "translate_const": 18})
    for op in transform.ops:
        if op.aug_fn is aa.posterize:  # as build_randaugment does (Pillow 13 raises on 0 bits)
            op.aug_fn = augment._posterize_any_bits
    assert isinstance(transform.ops[3].kwargs["resample"], tuple)
    for seed in range(4):
        images = gray.images[seed * 64:(seed + 1) * 64]
        assert torch.equal(BatchRandAugment(transform)(images, seed), randaugment_batch(images, transform, seed))


def test_unknown_ops_keep_the_per_image_path(gray):
    """An op that may draw while it changes the image (timm's random blur) is not recorded: the builder keeps PIL."""
    from timm.data.auto_augment import rand_augment_transform

    transform = rand_augment_transform("rand-m9-n2", {"img_mean": 73}, transforms=["GaussianBlurRand", "Invert"])
    assert not supports(transform)
    with pytest.raises(ValueError, match="randaugment_batch"):
        BatchRandAugment(transform)
    assert supports(build_randaugment("rand-m9-mstd0.5-inc1", (40, 40), (0.3,)))


@pytest.mark.parametrize("size", [28, 32, 40])
def test_crop_table_is_crop_resize_matrices(size):
    """Every crop (start, length) of a row, plain and mirrored, in one batch: the table's matrices equal those
    crop_resize_matrices computes for that batch."""
    start, end = torch.triu_indices(size + 1, size + 1, offset=1)
    flip = torch.arange(len(start)) % 3 == 0
    for batch in (slice(None), slice(7, 71)):
        s, length, f = start[batch], (end - start)[batch], flip[batch]
        assert torch.equal(crop_resize_rows(s, length, size, size, f), crop_resize_matrices(s, length, size, size, f))
        assert torch.equal(crop_resize_rows(s, length, size, size), crop_resize_matrices(s, length, size, size))


def _reference_builder(monkeypatch, loader):
    """Today's path before this change: RandAugment per image through PIL, crop matrices computed per batch."""
    monkeypatch.setattr(augment, "crop_resize_rows", augment.crop_resize_matrices)
    loader.builder.batch_randaugment = None


def test_loader_batches_are_the_reference(gray, rgb, pipeline_config, monkeypatch):
    """Whole BatchLoader batches (images and labels) of two epochs: the pipeline's setting, 28 px Fashion-MNIST, pad
    crop without RandAugment, no crop, RGB photo tiles."""
    gray28 = load_split(dataclasses.replace(pipeline_config, canvas=None), "train")
    settings = [(gray, pipeline_config), (gray28, pipeline_config),
                (gray, dataclasses.replace(pipeline_config, crop="pad", randaugment=None)),
                (gray, dataclasses.replace(pipeline_config, crop="none", reprob=0.0)),
                (rgb, dataclasses.replace(pipeline_config, randaugment="rand-m9-mstd0.5"))]
    batches = []
    for data, config in settings:
        loader = make_loader(data, 64, train=True, augment=augment_config(config), seed=3, num_workers=0)
        assert (loader.builder.batch_randaugment is not None) == (config.randaugment is not None)
        batches.append([loader.builder[epoch, k] for epoch in range(2) for k in range(2)])
    with monkeypatch.context() as patch:
        for (data, config), got in zip(settings, batches):
            loader = make_loader(data, 64, train=True, augment=augment_config(config), seed=3, num_workers=0)
            _reference_builder(patch, loader)
            expected = [loader.builder[epoch, k] for epoch in range(2) for k in range(2)]
            for (x, y), (x_ref, y_ref) in zip(got, expected):
                assert torch.equal(x, x_ref) and torch.equal(y, y_ref), (data.name, config.crop, config.randaugment)
