"""Images placed on a larger black canvas, once per image at a seeded random position (`--canvas SIZE`).

Translation equivariance is the inductive bias a convnet has and a ViT with large patches lacks; on a canvas where
the object may sit anywhere, a student with little data cannot learn it alone, so a convnet teacher has something to
pass on. The position of an image is a pure function of (split, its index in the whole split, canvas size): the same
in every run and every epoch, and independent of any train subset drawn afterwards. Train and val (test) draw from
separate streams."""

from __future__ import annotations

import torch

from .imagedata import ImageData
from .seeding import derive_seed

CANVAS_SEED = 0  # part of the data set's definition, not of a run: every seed of a study sees the same canvases


def canvas_positions(count: int, image_size: tuple[int, int], canvas: int, split: str,
                     seed: int = CANVAS_SEED) -> torch.Tensor:
    """long [count, 2]: (top, left) of each image, uniform over every position that keeps it whole."""
    height, width = image_size
    if canvas < max(height, width):
        raise ValueError(f"canvas {canvas} is smaller than the images ({height}x{width})")
    generator = torch.Generator().manual_seed(derive_seed(seed, "canvas", split, canvas))
    # One (top, left) pair per image in index order: the first k images' positions do not depend on the count.
    spans = torch.tensor([canvas - height + 1, canvas - width + 1], dtype=torch.float64)
    return (torch.rand((count, 2), generator=generator, dtype=torch.float64) * spans).floor().long()


def place_on_canvas(data: ImageData, canvas: int, seed: int = CANVAS_SEED) -> ImageData:
    """A copy of `data` with every image on a black canvas x canvas at its own seeded position (pixels unchanged)."""
    n, channels, height, width = data.images.shape
    positions = canvas_positions(n, (height, width), canvas, data.split, seed)
    out = torch.zeros((n, channels, canvas, canvas), dtype=torch.uint8)
    rows = positions[:, 0, None] + torch.arange(height)  # [n, h]
    cols = positions[:, 1, None] + torch.arange(width)  # [n, w]
    index = torch.arange(n)[:, None, None]
    for c in range(channels):
        out[:, c][index, rows[:, :, None], cols[:, None, :]] = data.images[:, c]
    return ImageData(out, data.labels, data.classes, data.mean, data.std, data.name, data.split)
