"""timm's RandAugment on a whole uint8 batch at once, pixel for pixel what timm's per-image PIL path gives
(deit.data.augment.randaugment_batch, the reference).

timm still draws everything: the op choices (one numpy draw for the batch, the same stream as its per-image
np.random.choice), and each op's probability, magnitude and sign through timm's own AugmentOp with an aug_fn that
records its arguments instead of changing an image (the same python-random draws in the same order). Only the pixel
work changes, one layer at a time, vectorised over the images that drew alike ops: the point ops (AutoContrast,
Equalize, Invert, Posterize, Solarize, SolarizeAdd, Brightness, Contrast, Color of a gray image) become one
256-entry table per image and channel, applied in one gather; the geometric ops (Rotate, Shear, Translate: affine,
bicubic) are resampled together; Sharpness and Color (RGB) are vectorised; anything else goes through PIL per image.
Each op repeats Pillow's arithmetic (ImageOps, ImageEnhance; libImaging's Blend.c float32 blend, Filter.c 3x3 float32
kernel, Geometry.c double-precision bicubic), so the pixels are PIL's; tests/test_batch_augment.py compares every op
with PIL on real images. On `deit pipeline`'s batches of 64 gray 40-px crops: 2.7 ms a batch against PIL's 4.9
(CPU time, Zen 4 shared with other work); the affine ops are half of it (numpy costs what PIL's C does there)."""

from __future__ import annotations

import copy
import functools
import random

import numpy as np
import torch

from .augment import _posterize_any_bits
from .seeding import seeded_global_rng
from .warp import rotate_matrix


def _timm_ops():
    from timm.data import auto_augment as aa

    point = {aa.auto_contrast: "autocontrast", aa.equalize: "equalize", aa.invert: "invert",
             _posterize_any_bits: "posterize", aa.solarize: "solarize", aa.solarize_add: "solarize_add",
             aa.brightness: "brightness", aa.contrast: "contrast"}
    geometric = {aa.rotate: "rotate", aa.shear_x: "shear_x", aa.shear_y: "shear_y",
                 aa.translate_x_rel: "translate_x_rel", aa.translate_y_rel: "translate_y_rel",
                 aa.translate_x_abs: "translate_x_abs", aa.translate_y_abs: "translate_y_abs"}
    other = {aa.color: "color", aa.sharpness: "sharpness"}
    return point, geometric, other


def supports(transform) -> bool:
    """Whether BatchRandAugment reproduces this timm RandAugment: every op one it knows (an unknown op might draw
    random numbers while it changes the image, which recording cannot see)."""
    point, geometric, other = _timm_ops()
    known = point.keys() | geometric.keys() | other.keys()
    return hasattr(transform, "ops") and hasattr(transform, "num_layers") and \
        all(op.aug_fn in known for op in transform.ops)


class _Record:
    """The aug_fn of a recording AugmentOp (a class, not a closure, so that DataLoader workers can unpickle it):
    returns (args, kwargs) instead of an image. Geometric ops also draw their resampling filter when given a choice
    (timm's _check_args_tf), so the record carries the filter."""

    def __init__(self, geometric: bool):
        self.geometric = geometric

    def __call__(self, _img, *args, **kwargs):
        resample = kwargs.get("resample")
        if self.geometric and isinstance(resample, (list, tuple)):
            kwargs["resample"] = random.choice(resample)
        return args, kwargs


def _recorder(op, geometric: bool):
    """A copy of timm's AugmentOp that records: calling it on None makes timm's own draws (probability, magnitude,
    sign) and returns None where the op is skipped, else (args, kwargs) of the op."""
    recorder = copy.copy(op)
    recorder.aug_fn = _Record(geometric)
    return recorder


class BatchRandAugment:
    """Apply a timm RandAugment (deit.data.augment.build_randaugment) to a uint8 batch [B, C, H, W] (C = 1 or 3),
    its global-RNG draws seeded by `seed` and then undone: the result equals randaugment_batch(images, transform,
    seed)."""

    def __init__(self, transform):
        if not supports(transform):
            raise ValueError(f"BatchRandAugment cannot reproduce {transform!r}: use randaugment_batch")
        point, geometric, other = _timm_ops()
        self.transform = transform
        self.kinds = [point.get(op.aug_fn) or geometric.get(op.aug_fn) or other[op.aug_fn] for op in transform.ops]
        self.recorders = [_recorder(op, op.aug_fn in geometric) for op in transform.ops]
        self.point, self.geometric = set(point.values()), set(geometric.values())

    def draw(self, batch: int, seed: int):
        """timm's draws for `batch` images: op indices [batch, layers] and, per image and layer, (args, kwargs) of
        the op or None where it was skipped."""
        t = self.transform
        with seeded_global_rng(seed):
            if t.choice_weights is None:  # np.random.choice(ops, n, replace=True) is exactly randint(0, len(ops), n)
                choices = np.random.randint(0, len(t.ops), size=(batch, t.num_layers))
            else:
                choices = np.stack([np.random.choice(len(t.ops), t.num_layers, replace=False, p=t.choice_weights)
                                    for _ in range(batch)])
            records = [[self.recorders[o](None) for o in row] for row in choices.tolist()]
        return choices, records

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        choices, records = self.draw(len(images), seed)
        x = images.numpy().copy()
        for layer in range(choices.shape[1]):
            x = self._apply_layer(x, choices[:, layer].tolist(), [r[layer] for r in records])
        return torch.from_numpy(x)

    def _apply_layer(self, x: np.ndarray, choices: list[int], records: list) -> np.ndarray:
        _, channels, height, width = x.shape
        point_rows, luts, affine_rows, matrices, fills = [], [], [], [], []
        groups: dict[int, list[int]] = {}  # op index -> the images that apply it
        for i, (o, record) in enumerate(zip(choices, records)):
            if record is not None:
                groups.setdefault(o, []).append(i)
        for o, rows in groups.items():
            kind, args = self.kinds[o], [records[i][0] for i in rows]
            if kind in self.point:
                point_rows += rows
                luts.append(_point_luts(kind, x[rows], args))
            elif kind in self.geometric:
                for i, a in zip(rows, args):
                    matrix = _affine_matrix(kind, a[0], width, height)
                    # only bicubic is reproduced here, and not the transposes PIL rotates by 90 degrees with
                    if matrix is None or records[i][1].get("resample") != _bicubic():
                        self._pil(x, [i], o, [a], records)
                    else:
                        affine_rows.append(i)
                        matrices.append(matrix)
                        fills.append(_fill(records[i][1].get("fillcolor"), channels))
            elif kind == "color" and channels == 1:
                continue  # a gray image is its own degenerate: blend(image, image, f) is the image
            elif kind == "color":
                x[rows] = _color_rgb(x[rows], _factors(args))
            elif kind == "sharpness":
                x[rows] = _blend(_smooth(x[rows]), x[rows], _factors(args))
        if point_rows:
            n = len(point_rows)
            planes = (np.arange(n * channels) * 256).reshape(n, channels, 1, 1)  # table of each image and channel
            x[point_rows] = np.take(np.concatenate(luts), x[point_rows] + planes)
        if affine_rows:
            _affine_groups(x, np.array(affine_rows), np.array(matrices, dtype=np.float64),
                           np.array(fills, dtype=np.uint8))
        return x

    def _pil(self, x: np.ndarray, rows: list[int], o: int, args: list, records: list):
        """timm's own op through PIL, image by image (no draws left: the record holds the resampling filter)."""
        from PIL import Image

        op = self.transform.ops[o]
        for i, a in zip(rows, args):
            img = Image.fromarray(x[i, 0] if x.shape[1] == 1 else x[i].transpose(1, 2, 0))
            out = np.asarray(op.aug_fn(img, *a, **records[i][1]))
            x[i] = out[None] if x.shape[1] == 1 else out.transpose(2, 0, 1)


@functools.cache
def _bicubic():
    from PIL import Image

    return Image.BICUBIC


def _fill(fillcolor, channels: int) -> list[int]:
    """Image.new(mode, size, fillcolor)'s pixel; None: PIL's transform fills with 0."""
    if fillcolor is None:
        return [0] * channels
    if isinstance(fillcolor, (tuple, list)):
        return list(fillcolor)[:channels]
    return [fillcolor] * channels


def _factors(args) -> np.ndarray:
    """Per-image blend factors as Image.blend hands them to C: float32, shaped to broadcast over [n, C, H, W]."""
    return np.array([a[0] for a in args], dtype=np.float32)[:, None, None, None]


def _blend(degenerate: np.ndarray, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Image.blend(degenerate, image, alpha): Blend.c's float32 in1 + alpha * (in2 - in1), clipped to [0, 255] and
    truncated (its 0 and 1 shortcuts give the same values)."""
    in1 = degenerate.astype(np.float32)
    out = alpha * (image.astype(np.float32) - in1)
    out += in1
    np.maximum(out, 0, out=out)
    return np.minimum(out, 255, out=out).astype(np.uint8)


def _histograms(x: np.ndarray) -> np.ndarray:
    """[n, C, 256] counts of each value per image and channel."""
    n, channels = x.shape[:2]
    offsets = (np.arange(n * channels) * 256).reshape(n, channels, 1)
    flat = (x.reshape(n, channels, -1).astype(np.int64) + offsets).ravel()
    return np.bincount(flat, minlength=n * channels * 256).reshape(n, channels, 256)


def _gray(x: np.ndarray) -> np.ndarray:
    """PIL's convert("L") of RGB [n, 3, H, W]: (R 19595 + G 38470 + B 7471 + 0x8000) >> 16 (ITU-R 601-2 luma)."""
    x = x.astype(np.int64)
    return ((x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]


_VALUES = np.arange(256)


@functools.lru_cache(maxsize=1024)
def _fixed_lut(kind: str, args: tuple) -> np.ndarray:
    """The table of an op that depends on its arguments only (ImageOps' own list comprehensions, as uint8)."""
    v = _VALUES
    if kind == "invert":
        lut = 255 - v
    elif kind == "posterize":  # deit's _posterize_any_bits: 0 bits is black, 8 or more the image
        bits = args[0]
        lut = v if bits >= 8 else np.zeros(256, np.int64) if bits <= 0 else v & ~(2 ** (8 - bits) - 1)
    elif kind == "solarize":
        lut = np.where(v < args[0], v, 255 - v)
    else:  # solarize_add(add, thresh=128)
        thresh = args[1] if len(args) > 1 else 128
        lut = np.where(v < thresh, np.minimum(255, v + args[0]), v)
    lut = lut.astype(np.uint8)
    lut.flags.writeable = False
    return lut


def _point_luts(kind: str, x: np.ndarray, args: list) -> np.ndarray:
    """uint8 [n, C, 256] tables: the op of each image as a function of the pixel value (ImageOps / ImageEnhance)."""
    n, channels = x.shape[:2]
    if kind in ("invert", "posterize", "solarize", "solarize_add"):
        luts = np.stack([_fixed_lut(kind, tuple(a)) for a in args])
    elif kind == "autocontrast":
        return _autocontrast_luts(x)
    elif kind == "equalize":
        return _equalize_luts(_histograms(x))
    elif kind == "brightness":  # blend(black, image, f)
        luts = _blend(np.zeros(256, np.uint8), _VALUES, _factors(args)[:, 0, 0])
    elif kind == "contrast":  # blend(the gray mean, image, f); the mean of convert("L"), rounded as ImageStat's
        gray = x if channels == 1 else _gray(x)
        mean = (gray.reshape(n, -1).sum(1, dtype=np.int64) / gray[0].size + 0.5).astype(np.int64)
        luts = _blend(mean[:, None], _VALUES, _factors(args)[:, 0, 0])
    else:
        raise ValueError(f"not a point op: {kind}")
    return luts[:, None] if channels == 1 else np.repeat(luts[:, None], channels, axis=1)


def _autocontrast_luts(x: np.ndarray) -> np.ndarray:
    """ImageOps.autocontrast (no cutoff): per band, stretch [lowest, highest] present value to [0, 255] with
    int(ix * scale + offset) in double precision; a band of one value stays."""
    flat = x.reshape(*x.shape[:2], -1)
    lo, hi = flat.min(-1).astype(np.int64), flat.max(-1).astype(np.int64)
    stretch = hi > lo
    scale = 255.0 / np.where(stretch, hi - lo, 1)
    offset = -lo * scale
    luts = np.clip((_VALUES * scale[..., None] + offset[..., None]).astype(np.int64), 0, 255)
    return np.where(stretch[..., None], luts, _VALUES).astype(np.uint8)


def _equalize_luts(hist: np.ndarray) -> np.ndarray:
    """ImageOps.equalize: per band, step = (pixels - count of the highest present value) // 255 and
    lut[i] = (step // 2 + pixels below i) // step, clipped to 255 as Image.point does; fewer than two present values
    or step 0: unchanged."""
    present = hist > 0
    last = 255 - present[..., ::-1].argmax(-1)
    step = (hist.sum(-1) - np.take_along_axis(hist, last[..., None], -1)[..., 0]) // 255
    keep = (present.sum(-1) <= 1) | (step == 0)
    safe = np.where(keep, 1, step)[..., None]
    below = np.cumsum(hist, -1) - hist
    luts = np.minimum((safe // 2 + below) // safe, 255)
    return np.where(keep[..., None], _VALUES, luts).astype(np.uint8)


def _color_rgb(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """ImageEnhance.Color of RGB images: blend(convert("L").convert("RGB"), image, f)."""
    return _blend(np.broadcast_to(_gray(x), x.shape), x, alpha)


_SMOOTH = np.array([1, 1, 1, 1, 5, 1, 1, 1, 1], dtype=np.float32) / np.float32(13)


def _smooth(x: np.ndarray) -> np.ndarray:
    """image.filter(ImageFilter.SMOOTH) (Filter.c's 3x3 float32 kernel, rows below-centre-above, each row's three
    taps summed left to right, +0.5 and truncated); the one-pixel border is copied."""
    _, _, height, width = x.shape
    out = x.copy()
    if height < 3 or width < 3:
        return out
    f = x.astype(np.float32)
    k = _SMOOTH

    def row(r, taps):  # Filter.c's KERNEL1x3 over output columns 1 .. width - 2 of source row slice r
        return f[:, :, r, 0:width - 2] * taps[0] + f[:, :, r, 1:width - 1] * taps[1] + f[:, :, r, 2:width] * taps[2]

    ss = np.float32(0.5) + row(slice(2, height), k[0:3])
    ss = ss + row(slice(1, height - 1), k[3:6])
    ss = ss + row(slice(0, height - 2), k[6:9])
    out[:, :, 1:height - 1, 1:width - 1] = np.clip(ss, 0, 255).astype(np.uint8)
    return out


def _affine_matrix(kind: str, value: float, width: int, height: int):
    """The (a, b, c, d, e, f) output -> input matrix timm's geometric op hands to PIL's affine transform; None for a
    rotation PIL does by transposing (multiples of 90 degrees, never at RandAugment's magnitudes)."""
    if kind == "rotate":
        angle = value % 360.0
        if angle == 0:
            return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # PIL copies: the identity resamples to the same pixels
        return None if angle in (90.0, 180.0, 270.0) else rotate_matrix(width, height, value)
    return {"shear_x": (1, value, 0, 0, 1, 0), "shear_y": (1, 0, 0, value, 1, 0),
            "translate_x_rel": (1, 0, value * width, 0, 1, 0), "translate_y_rel": (1, 0, 0, 0, 1, value * height),
            "translate_x_abs": (1, 0, value, 0, 1, 0), "translate_y_abs": (1, 0, 0, 0, 1, value)}[kind]


def _affine_groups(x: np.ndarray, rows: np.ndarray, matrices: np.ndarray, fills: np.ndarray):
    """_affine_bicubic on images `rows` of x, in place, in two calls: the shears and translations (along x only, or
    along y only, which on a square image is the same op along x of the transposed image: matrix
    (e, d, f, b, a, c), each sum the same two products) on 4 taps, the rest (rotations) on 16."""
    along_x = (matrices[:, 3:] == (0, 1, 0)).all(1)
    along_y = (matrices[:, :3] == (1, 0, 0)).all(1) & ~along_x
    if x.shape[2] == x.shape[3] and along_y.any():
        x[rows[along_y]] = x[rows[along_y]].transpose(0, 1, 3, 2)
        matrices[along_y] = matrices[along_y][:, [4, 3, 5, 1, 0, 2]]
        along_x |= along_y
    else:
        along_y[:] = False
    for group in (along_x, ~along_x):
        if group.any():
            x[rows[group]] = _affine_bicubic(x[rows[group]], matrices[group], fills[group])
    if along_y.any():
        x[rows[along_y]] = x[rows[along_y]].transpose(0, 1, 3, 2)


def _cubic(v1, v2, v3, v4, d):
    """Geometry.c's BICUBIC macro, operation for operation in double precision (-v1 + v3 is v3 - v1 exactly). The
    taps may be int16 pixels: the p terms are then the same small integers, computed in int16 as C computes them
    in int, and the Horner steps in double."""
    p2 = v3 - v1
    p3 = 2 * (v1 - v2)
    p3 += v3
    p3 -= v4
    p4 = v2 - v1
    p4 -= v3
    p4 += v4
    out = p4 * d
    out += p3
    out *= d
    out += p2
    out *= d
    out += v2
    return out


def _edge(size: int) -> np.ndarray:
    """Indices of a row (or column) of `size` pixels padded by 2 repeated pixels on each side."""
    return np.clip(np.arange(-2, size + 2), 0, size - 1)


def _affine_bicubic(x: np.ndarray, matrices: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """PIL's img.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill) for each image of [n, C, H, W]: output
    pixel (x, y) samples the input at matrix (x + 0.5, y + 0.5); source points outside the image keep the fill; else
    a 4x4 cubic (a = -1, taps clamped to the image) along rows then columns, clipped and truncated."""
    n, channels, height, width = x.shape
    a = matrices.T[:, :, None, None]  # [6, n, 1, 1]
    xin = np.arange(width, dtype=np.float64) + 0.5
    yin = (np.arange(height, dtype=np.float64) + 0.5)[:, None]
    xs = a[0] * xin + a[1] * yin + a[2]  # [n, H, W], Geometry.c's affine_transform
    ys = a[3] * xin + a[4] * yin + a[5]
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    xs -= 0.5
    ys -= 0.5
    x0, y0 = np.floor(xs), np.floor(ys)
    dx, dy = (xs - x0)[..., None], (ys - y0)[..., None]  # [n, H, W, 1]: the same for every channel
    # A shear or translation along x samples whole rows (dy == 0: the cubic along y returns its tap 1, exactly), one
    # along y whole columns: only those taps are gathered.
    row_taps = [0] if not dy.any() else [-1, 0, 1, 2]
    col_taps = [0] if not dx.any() else [-1, 0, 1, 2]
    # The taps read the image padded by 2 repeated pixels (PIL clamps them to the image); outside points (filled
    # later) are clamped first so that their taps stay in the padding.
    padded = np.take(np.take(x.transpose(0, 2, 3, 1), _edge(height), 1), _edge(width), 2)  # [n, H + 4, W + 4, C]
    corner = np.minimum(np.maximum(y0.astype(np.intp), -1), height - 1) + (np.arange(n) * (height + 4) + 2)[:, None, None]
    corner *= width + 4
    corner += np.minimum(np.maximum(x0.astype(np.intp), -1), width - 1) + 2
    offsets = (np.array(row_taps)[:, None] * (width + 4) + np.array(col_taps)).reshape(len(row_taps), len(col_taps), 1, 1, 1)
    index = corner + offsets
    if channels == 1:  # a flat gather is ~2x faster than one of rows of one value
        v = np.take(padded.reshape(-1), index)[..., None].astype(np.int16)
    else:
        v = np.take(padded.reshape(-1, channels), index, axis=0).astype(np.int16)  # [rows, cols, n, H, W, C]
    across = v[:, 0] if len(col_taps) == 1 else _cubic(v[:, 0], v[:, 1], v[:, 2], v[:, 3], dx)
    out = across[0] if len(row_taps) == 1 else _cubic(across[0], across[1], across[2], across[3], dy)
    np.maximum(out, 0, out=out)
    np.minimum(out, 255, out=out)
    out = np.where(inside[..., None], out.astype(np.uint8), fill[:, None, None, :])
    return out.transpose(0, 3, 1, 2)
