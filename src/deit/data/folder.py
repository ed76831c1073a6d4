"""Image folders (root/{train,val}/<class>/<image>): listing with cheap checks of every file, decoding any PIL mode to
L or RGB, and loading a split into memory at one size (also how `deit predict` decodes its inputs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .imagedata import ImageData
from .listing import (IMAGE_EXTENSIONS, IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, IMAGENET_MEAN, IMAGENET_STD,
                      BadImage, FileTable, FolderListing, check_image_file, image_files, list_split)

__all__ = ["IMAGE_EXTENSIONS", "IMAGENET_GRAY_MEAN", "IMAGENET_GRAY_STD", "IMAGENET_MEAN", "IMAGENET_STD",
           "image_files", "decode_image", "EncodedImage", "load_imagefolder", "read_images", "FolderData"]


def _convert_image(img, grayscale: bool):
    """Bring any PIL mode to "L" (grayscale=True) or "RGB": 16-bit scaled down, transparency composited on white."""
    from PIL import Image

    if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit grayscale (PNG): scale, don't clip, to 8 bits
        img = Image.fromarray((np.asarray(img, dtype=np.float32) / 257.0).round().clip(0, 255).astype(np.uint8))
    has_alpha = img.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    target = "L" if grayscale else "RGB"
    if img.mode != target:
        img = img.convert(target)  # CMYK, P, YCbCr, ... use PIL's conversions
    return img


def _resize_center_crop(img, size: int):
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_imagefolder(path: str, split: str, img_size: int | None, skip_bad_images: bool = False) -> ImageData:
    """A split of an image folder decoded into memory at img_size (shorter side resized, bicubic; centre crop)."""
    if img_size is None:
        raise ValueError(f"imagefolder:{path} needs img_size: every image is decoded once into memory at that size")
    listing = list_split(path, split, skip_bad_images)
    images = read_images([listing.files[i] for i in range(len(listing.files))], img_size, listing.grayscale)
    mean, std = listing.stats
    return ImageData(images, torch.from_numpy(listing.labels), listing.classes, mean, std, f"imagefolder:{path}", split)


def read_images(files, img_size: int, grayscale: bool) -> torch.Tensor:
    """Image files -> uint8 [N, C, img_size, img_size] (C = 1 if grayscale else 3): any mode converted, the shorter
    side resized to img_size (bicubic), then centre-cropped; the same decoding for training data and prediction."""
    channels = 1 if grayscale else 3
    images = torch.empty((len(files), channels, img_size, img_size), dtype=torch.uint8)
    for i, f in enumerate(files):
        with _open_image(Path(f)) as img:
            pixels = np.asarray(_resize_center_crop(_convert_image(img, grayscale), img_size))
        images[i] = torch.from_numpy(pixels.reshape(img_size, img_size, channels).transpose(2, 0, 1).copy())
    return images


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def _jpeg_scale(size: tuple[int, int], at_least: tuple[int, int] | None) -> int:
    """libjpeg's DCT scale that Pillow's draft picks for `at_least`: the largest of 8, 4, 2, 1 that keeps the decoded
    size >= at_least (JpegImagePlugin.draft's rule)."""
    if at_least is None:
        return 1
    fits = min(size[0] // max(1, int(at_least[0])), size[1] // max(1, int(at_least[1])))
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def _simplejpeg():
    try:
        import simplejpeg
    except ImportError:  # optional (the `fast` extra): Pillow decodes alone
        return None
    return simplejpeg


class EncodedImage:
    """An image file opened but not decoded: its size from the header, so a crop can be chosen first and the file
    decoded only as finely as that crop needs (decode(at_least=...)). Any source PIL opens: a path, or a binary
    file object (a tar member of a shard).

    With simplejpeg installed, a colour JPEG is read once into memory and its header parsed by libjpeg-turbo (a few
    microseconds; Pillow's header parse in Python took 0.15 ms an image, docs/performance.md); Pillow opens it only
    when it decodes it (at reduced scale) and opens every other file."""

    def __init__(self, source, grayscale: bool, name: str | None = None):
        self.source, self.name, self.grayscale = source, name or str(source), grayscale
        self.data, self._header, self.jpeg = None, None, False  # jpeg: simplejpeg read the header of an RGB JPEG
        simplejpeg = None if grayscale else _simplejpeg()
        if simplejpeg is not None:
            self.data = _read_all(source)
            self.size = _rgb_jpeg_size(simplejpeg, self.data)
            self.jpeg = self.size is not None
        if not self.jpeg:
            self.size = self.header.size

    @property
    def header(self):
        """The PIL image opened on the source (not decoded); opened on first use."""
        if self._header is None:
            import io

            from PIL import Image, UnidentifiedImageError

            try:
                self._header = Image.open(io.BytesIO(self.data) if self.data is not None else self.source)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"{self.name}: not a readable image ({e})") from e
        return self._header

    def decode(self, at_least: tuple[int, int] | None = None, box: tuple[int, int, int, int] | None = None,
               array: bool = False):
        """(image, box): the pixels as a PIL image in "L" or "RGB" (as _convert_image makes them), and where `box`
        (left, top, right, bottom in the header's pixels; None: the whole image) lies in them.

        at_least=(w, h): a JPEG is decoded at the smallest DCT scale of libjpeg (1/2, 1/4, 1/8: Pillow's draft) whose
        size still covers it (the IDCT and colour conversion shrink with the scale; the entropy decoding is paid in
        full), and box comes back scaled (fractional). At full scale an RGB JPEG is decoded by libjpeg-turbo through
        simplejpeg when installed (the same pixels as Pillow's, measured faster: docs/performance.md) and only the
        box is copied out (box comes back as the whole returned image); other formats decode in full with Pillow.
        array=True: that simplejpeg crop comes back as the uint8 [H, W, 3] array itself (no copy into PIL)."""
        box = box or (0, 0, *self.size)
        try:
            if self.jpeg and _jpeg_scale(self.size, at_least) == 1:
                return self._decode_simplejpeg(box, array)
            img = self.header
            with img:
                scale = _jpeg_scale(img.size, at_least) if img.format == "JPEG" else 1
                if scale > 1 and img.draft(img.mode, (img.size[0] // scale, img.size[1] // scale)) is None:
                    scale = 1  # a JPEG draft does not apply to (several tiles): decoded in full
                img.load()
                return _convert_image(img, self.grayscale), tuple(b / scale for b in box) if scale > 1 else box
        except ValueError:
            raise
        except (OSError, RuntimeError, SyntaxError) as e:
            raise ValueError(f"{self.name}: cannot decode ({e}); remove or replace the file") from e

    def _decode_simplejpeg(self, box, array: bool):
        from PIL import Image

        left, top, right, bottom = box
        try:
            pixels = _simplejpeg().decode_jpeg(self.data, "RGB")[top:bottom, left:right]
        except ValueError as e:  # libjpeg-turbo's error (a truncated or corrupt file)
            raise ValueError(f"{self.name}: cannot decode ({e}); remove or replace the file") from e
        crop = pixels if array else Image.fromarray(np.ascontiguousarray(pixels))
        return crop, (0, 0, right - left, bottom - top)


def _read_all(source) -> bytes:
    if hasattr(source, "read"):
        source.seek(0)
        return source.read()
    with open(source, "rb") as f:
        return f.read()


def _rgb_jpeg_size(simplejpeg, data: bytes) -> tuple[int, int] | None:
    """(width, height) of a 3-component (YCbCr or RGB: Pillow's mode "RGB") JPEG from its header, else None (not a
    JPEG, CMYK, grayscale, or a header libjpeg-turbo rejects: Pillow opens it and says what is wrong)."""
    if data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (width, height) if colorspace in ("YCbCr", "RGB") else None


def decode_image(path: str, grayscale: bool):
    """One file -> a PIL image in "L" or "RGB" (as _convert_image makes it), for per-sample transforms. PIL decodes:
    per 320-448 px JPEG it took 0.81 ms of CPU against 1.02 ms for torchvision's decode_jpeg plus the copy into a PIL
    image the transforms need (docs/performance.md); an RGB file is not converted (copied) again."""
    return EncodedImage(Path(path), grayscale, name=str(path)).decode()[0]


@dataclass(eq=False, repr=False)
class FolderData:
    """A split of an image folder, listed but not decoded: the loader's workers decode each sample when it is needed,
    so memory does not grow with the folder. The same attributes as ImageData, less .images; a dataclass, so
    dataclasses.replace(data, mean=..., std=...) normalises it as a run was trained, as it does an ImageData."""

    listing: FolderListing
    img_size: int | tuple[int, int]  # the model's input size (an int: square); files keep their own sizes
    eval_crop_ratio: float = 0.875
    mean: tuple[float, ...] | None = None  # None: the listing's statistics (ImageNet's)
    std: tuple[float, ...] | None = None
    fast_decode: bool = True  # JPEGs decoded at the smallest DCT scale covering the crop, fast resize (transforms.py)

    def __post_init__(self):
        listing = self.listing
        size = self.img_size
        self.img_size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        self.mean = tuple(self.mean) if self.mean is not None else listing.stats[0]
        self.std = tuple(self.std) if self.std is not None else listing.stats[1]
        if not len(self.mean) == len(self.std) == self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} channel values, got {self.mean} / {self.std}")
        self.name, self.split, self.classes = f"imagefolder:{listing.path}", listing.split, list(listing.classes)
        self.labels = torch.from_numpy(listing.labels)

    @classmethod
    def from_files(cls, files, classes, grayscale: bool, img_size: int, eval_crop_ratio: float = 0.875,
                   mean=None, std=None, fast_decode: bool = True) -> "FolderData":
        """Unlabelled image files (label 0) as a streamed split, each checked as a listed folder's files are (a
        BadImage naming the file): how `deit predict` feeds files to a streamed run's eval transform."""
        paths = [os.path.abspath(f) for f in files]
        kinds = []
        for f in paths:
            try:
                kinds.append(check_image_file(f)[0])
            except BadImage as e:
                raise BadImage(f"{f}: {e}") from e
        table = FileTable.from_paths(os.sep, [os.path.relpath(f, os.sep) for f in paths])
        listing = FolderListing("files", "val", list(classes), table, np.zeros(len(paths), dtype=np.int64),
                                np.array(kinds, dtype=np.uint8), grayscale)
        return cls(listing, img_size, eval_crop_ratio, mean, std, fast_decode)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return 1 if self.listing.grayscale else 3

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file, why) of every file left out by skip_bad_images."""
        return self.listing.skipped

    def __len__(self) -> int:
        return len(self.listing.labels)

    def decode(self, index: int):
        """Sample `index` as a PIL image ("L" or "RGB") and its label."""
        listing = self.listing
        img = decode_image(listing.files[index], listing.grayscale)
        return img, int(listing.labels[index])

    def encoded(self, index: int):
        """Sample `index` opened but not decoded (an EncodedImage: the loader's transforms decode it at the scale
        their crop needs) and its label."""
        listing = self.listing
        return EncodedImage(Path(listing.files[index]), listing.grayscale), int(listing.labels[index])

    def source(self, index: int) -> str:
        """Where sample `index` is read from: its file."""
        return str(self.listing.files[index])

    def subset(self, indices) -> "FolderData":
        indices = np.asarray(torch.as_tensor(indices, dtype=torch.long))
        listing = replace(self.listing, files=self.listing.files.take(indices), labels=self.listing.labels[indices],
                          kinds=self.listing.kinds[indices])
        return replace(self, listing=listing)
