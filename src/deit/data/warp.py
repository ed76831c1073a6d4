"""RandAugment's geometric ops (Rotate, ShearX/Y, TranslateX/Y, Rel and absolute) resampled by OpenCV instead of
PIL: timm's own matrices, fill colour and random draws, only the resampling changes. PIL's bicubic affine
transform is a generic per-pixel loop (1.8-2.7 ms on a 224-px crop, ~30 % of a stream worker's time). Rotations and
shears: OpenCV's warpAffine (~0.8 ms bicubic), geometry and fill PIL's (nearest: PIL's pixels); the bicubic pixels
differ by the kernel (OpenCV's Keys cubic a = -0.75; PIL's affine transform uses a = -1, not the -0.5 of its
resize), the rounding (PIL truncates, OpenCV rounds) and OpenCV's 1/32-pixel positions: ~51 dB PSNR against PIL's
on DeiT's train crops at magnitude 9 (docs/performance.md). Translations: PIL's own weights as one 4-tap filter
(~0.15 ms), PIL's values but for float ties. Without OpenCV (the `fast` extra) PIL's ops stay."""

from __future__ import annotations

import functools
import math
import random

import numpy as np


@functools.cache
def _cv2():
    try:
        import cv2
    except ImportError:  # optional (the `fast` extra): PIL warps alone
        return None
    cv2.setNumThreads(1)  # one small warp an image; a data worker is one core (epochs.init_worker)
    return cv2


def opencv_matrix(matrix) -> np.ndarray:
    """PIL's affine data (a, b, c, d, e, f: output -> input, pixel centres at +0.5) as OpenCV's inverse map
    (output -> input, pixel centres at integers): input = A (output + 0.5) + t - 0.5."""
    a, b, c, d, e, f = matrix
    return np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]], dtype=np.float64)


def affine(img, matrix, resample, fillcolor):
    """img.transform(img.size, Image.AFFINE, matrix, resample, fillcolor=fillcolor) through cv2.warpAffine, same
    geometry and border: PIL clamps the taps to the image and fills every output pixel whose source point lies
    outside it. Here the taps read a copy padded by 2 replicated pixels (all a bicubic tap can reach from inside;
    OpenCV's own BORDER_REPLICATE takes its slow path for every pixel outside, 0.3 ms more for a translation), and
    the fill goes where a nearest warp of the image's area finds nothing. Images other than "L" and "RGB", or
    without OpenCV: PIL itself."""
    from PIL import Image

    cv2 = _cv2()
    inter = {Image.NEAREST: "INTER_NEAREST", Image.BILINEAR: "INTER_LINEAR", Image.BICUBIC: "INTER_CUBIC"}
    if cv2 is None or img.mode not in ("L", "RGB") or resample not in inter:
        return img.transform(img.size, Image.AFFINE, matrix, resample, fillcolor=fillcolor)
    pixels, size = np.asarray(img), img.size
    fill = 0 if fillcolor is None else fillcolor
    a, b, c, d, e, f = matrix
    padded = cv2.copyMakeBorder(pixels, 2, 2, 2, 2, cv2.BORDER_REPLICATE)
    out = cv2.warpAffine(padded, opencv_matrix((a, b, c + 2, d, e, f + 2)), size,
                         flags=getattr(cv2, inter[resample]) | cv2.WARP_INVERSE_MAP, borderValue=fill)
    outside = cv2.warpAffine(np.zeros(pixels.shape[:2], np.uint8), opencv_matrix(matrix), size,
                             flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=255)
    cv2.copyTo(_flat(pixels.shape, fill), outside, out)
    return Image.fromarray(out)


@functools.lru_cache(maxsize=8)
def _flat(shape: tuple[int, ...], fill) -> np.ndarray:
    """A uint8 image of one colour (np.full_like with a colour costs ~0.2 ms at 224 px, a fifth of a warp)."""
    return np.full(shape, fill, np.uint8)


def _resample(kwargs):
    """timm's _check_args_tf: a tuple of resampling filters is one random choice (the same python-random draw)."""
    from PIL import Image

    resample = kwargs.get("resample", Image.BICUBIC)
    return random.choice(resample) if isinstance(resample, (list, tuple)) else resample


def rotate_matrix(width: int, height: int, degrees: float) -> list[float]:
    """The matrix PIL's Image.rotate(degrees) (about the centre, no expand) hands to its affine transform."""
    angle = -math.radians(degrees % 360.0)
    matrix = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
              round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
    cx, cy = width / 2, height / 2
    matrix[2] = matrix[0] * -cx + matrix[1] * -cy + cx
    matrix[5] = matrix[3] * -cx + matrix[4] * -cy + cy
    return matrix


def _pil_bicubic_taps(d: float) -> np.ndarray:
    """Weights of taps -1, 0, 1, 2 for a sample d of a pixel past tap 0, as PIL's affine bicubic (Geometry.c's
    BICUBIC, Keys a = -1 in Horner form: v2 + d (v3 - v1 + d (2 (v1 - v2) + v3 - v4 + d (v2 - v1 + v4 - v3))))."""
    return np.array([-d + 2 * d * d - d ** 3, 1 - 2 * d * d + d ** 3, d + d * d - d ** 3, d ** 3 - d * d], np.float32)


def shift(img, pixels: float, axis: int, resample, fillcolor):
    """PIL's translation by `pixels` along axis 1 (x: matrix (1, 0, pixels, 0, 1, 0)) or 0 (y). Bicubic: every
    output pixel samples the same fraction of a pixel, so PIL's per-pixel cubic is one 4-tap filter with its own
    weights (cv2.filter2D, 0.15 ms against the warp's 0.8), over the taps clamped to the image as PIL clamps them,
    truncated as PIL truncates (delta -0.499 before OpenCV's rounding): PIL's values but for float32 ties (~0.05 %
    of values, by 1). Other filters: affine()."""
    from PIL import Image

    cv2 = _cv2()
    if cv2 is None or img.mode not in ("L", "RGB") or resample != Image.BICUBIC:
        return affine(img, (1, 0, pixels, 0, 1, 0) if axis == 1 else (1, 0, 0, 0, 1, pixels), resample, fillcolor)
    pixels_in, n = np.asarray(img), img.size[1 - axis]
    start = math.floor(pixels)
    # output i samples i + pixels (pixel centres at integers): inside the image for i in [lo, hi), fill elsewhere
    lo, hi = max(0, math.ceil(-0.5 - pixels)), min(n, math.ceil(n - 0.5 - pixels))
    out = _flat(pixels_in.shape, 0 if fillcolor is None else fillcolor).copy()
    if lo < hi:
        first, end = lo + start - 1, hi + start + 2  # the taps of outputs lo .. hi - 1, clamped to the image
        view = pixels_in[:, max(first, 0):min(end, n)] if axis == 1 else pixels_in[max(first, 0):min(end, n)]
        before, after = max(0, -first), max(0, end - n)
        taps = cv2.copyMakeBorder(view, *((0, 0, before, after) if axis == 1 else (before, after, 0, 0)),
                                  cv2.BORDER_REPLICATE)
        kernel, anchor = _pil_bicubic_taps(pixels - start), (1, 0) if axis == 1 else (0, 1)
        filtered = cv2.filter2D(taps, -1, kernel[None] if axis == 1 else kernel[:, None], anchor=anchor, delta=-0.499)
        inside, valid = [slice(None)] * out.ndim, [slice(None)] * out.ndim
        inside[axis], valid[axis] = slice(lo, hi), slice(1, 1 + hi - lo)
        out[tuple(inside)] = filtered[tuple(valid)]
    return Image.fromarray(out)


# timm.data.auto_augment's geometric ops, argument for argument (its PIL >= 5.2 branches)
def rotate(img, degrees, **kwargs):
    return affine(img, rotate_matrix(*img.size, degrees), _resample(kwargs), kwargs.get("fillcolor"))


def shear_x(img, factor, **kwargs):
    return affine(img, (1, factor, 0, 0, 1, 0), _resample(kwargs), kwargs.get("fillcolor"))


def shear_y(img, factor, **kwargs):
    return affine(img, (1, 0, 0, factor, 1, 0), _resample(kwargs), kwargs.get("fillcolor"))


def translate_x_rel(img, pct, **kwargs):
    return shift(img, pct * img.size[0], 1, _resample(kwargs), kwargs.get("fillcolor"))


def translate_y_rel(img, pct, **kwargs):
    return shift(img, pct * img.size[1], 0, _resample(kwargs), kwargs.get("fillcolor"))


def translate_x_abs(img, pixels, **kwargs):
    return shift(img, pixels, 1, _resample(kwargs), kwargs.get("fillcolor"))


def translate_y_abs(img, pixels, **kwargs):
    return shift(img, pixels, 0, _resample(kwargs), kwargs.get("fillcolor"))


def opencv_geometric_ops(transform) -> int:
    """Swap the geometric ops of a timm RandAugment (rand_augment_transform) for the OpenCV ones above, in place:
    op choice, probabilities, magnitudes and fill stay timm's. Returns how many ops were swapped (0 without
    OpenCV)."""
    from timm.data import auto_augment as aa

    if _cv2() is None:
        return 0
    ours = {aa.rotate: rotate, aa.shear_x: shear_x, aa.shear_y: shear_y, aa.translate_x_rel: translate_x_rel,
            aa.translate_y_rel: translate_y_rel, aa.translate_x_abs: translate_x_abs,
            aa.translate_y_abs: translate_y_abs}
    swapped = 0
    for op in transform.ops:
        if op.aug_fn in ours:
            op.aug_fn, swapped = ours[op.aug_fn], swapped + 1
    return swapped
