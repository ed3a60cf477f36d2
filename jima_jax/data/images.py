"""Image files -> the model's uint8 input, without TensorFlow (exported models, `jima_jax.predict`).

A study's views go through the two steps a prepared test study goes through:
1. prepare time (`builders.base.fit_views`, PIL bilinear): grayscale, `data.image_size` square
   (`data.resize`: squashed, or the short side scaled and the central square kept), exactly
   `data.num_views` views (fewer -> the last one repeated);
2. eval time (`pipeline.SplitPipeline`, unaugmented): `tf.image.resize(..., 'bilinear')` to
   `input.image_size`, rounded and clipped to uint8. `resize_like_tf` is that resize in numpy
   (half-pixel centres, float32 arithmetic in TF's order): equal to TF's to the bit, which
   tests/test_export.py checks against TF on random images.

`fit_views` repeats `builders.base.fit_views` because that module imports tensorflow_datasets
(hence TensorFlow); tests/test_export.py checks that both give the same arrays.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from jima_jax.data import sources

RESIZE_MODES = ('square', 'short_side')


def check_resize(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise ValueError(f'data.resize={mode!r}: expected one of {RESIZE_MODES}.')
    return mode


def _short_side(im: Image.Image, size: int) -> Image.Image:
    """The short side scaled to `size`, aspect kept (torchvision's Resize(size)), then the central
    size x size square: the release's Resize(256) + crop, with the crop fixed at prepare time."""
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def fit_views(views: Sequence[np.ndarray], num_views: int, size: int,
              resize: str = 'square') -> np.ndarray:
    """Grayscale views of any size -> uint8 [num_views, size, size], as at prepare time."""
    check_resize(resize)
    if not len(views):
        raise ValueError('no views')
    chosen = list(views[:num_views]) + [views[-1]] * max(0, num_views - len(views))
    out = np.empty((num_views, size, size), np.uint8)
    for k, v in enumerate(chosen):
        v = np.asarray(v)
        if v.ndim != 2 or v.dtype != np.uint8:
            raise ValueError(f'view {k} must be a 2-D uint8 array, got {v.dtype} {v.shape}')
        im = Image.fromarray(v)
        if im.size != (size, size) and resize == 'short_side':
            im = _short_side(im, size)
        out[k] = np.asarray(im if im.size == (size, size)
                            else im.resize((size, size), Image.Resampling.BILINEAR))
    return out


def _taps(in_size: int, out_size: int):
    """TF's ResizeBilinear (half_pixel_centers) source rows/columns and weights, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    x = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(x)
    low = np.maximum(floor.astype(np.int64), 0)
    high = np.minimum(np.ceil(x).astype(np.int64), in_size - 1)
    return low, high, (x - floor).astype(np.float32)


def resize_like_tf(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [size, size]: the eval pipeline's bilinear resize, round, clip."""
    image = np.asarray(image)
    if image.shape == (size, size):
        return image.astype(np.uint8)
    y0, y1, wy = _taps(image.shape[0], size)
    x0, x1, wx = _taps(image.shape[1], size)
    a = image.astype(np.float32)
    top_left, top_right = a[y0][:, x0], a[y0][:, x1]
    bottom_left, bottom_right = a[y1][:, x0], a[y1][:, x1]
    top = top_left + (top_right - top_left) * wx[None, :]
    bottom = bottom_left + (bottom_right - bottom_left) * wx[None, :]
    out = top + (bottom - top) * wy[:, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def model_input(paths: Sequence[str], *, num_views: int, stored_size: int, input_size: int,
                resize: str = 'square') -> np.ndarray:
    """Image files of one study -> uint8 [num_views, input_size, input_size] (the model's input
    before normalisation, which happens on the device)."""
    views = fit_views([sources.read_grayscale(p) for p in paths], num_views, stored_size, resize)
    return np.stack([resize_like_tf(v, input_size) for v in views])
