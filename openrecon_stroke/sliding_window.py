"""Patch-wise (sliding-window) inference of a 3D network with Gaussian importance weighting and
optional mirroring test-time augmentation, on ONNX Runtime. Model-agnostic: the caller says
which output channel(s) and activation to use.

Arrays are ``(channels, z, y, x)``; patches ``(z, y, x)``.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations, product

import numpy as np


@lru_cache(maxsize=8)
def gaussian_importance(patch: tuple[int, int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """Weights peaking at 1 at the patch centre (sigma = ``sigma_scale`` x patch size), clipped
    below at 1e-3 so that every voxel, corners included, keeps a usable weight."""
    g = np.ones(patch, np.float32)
    for ax, n in enumerate(patch):
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2
        w = np.exp(-0.5 * (x / (sigma_scale * n)) ** 2)
        shape = [1, 1, 1]
        shape[ax] = n
        g = g * w.reshape(shape)
    g /= g.max()
    return np.maximum(g, 1e-3).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis: step = patch x (1 - overlap), first and last window flush
    with the borders (nnU-Net style)."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(v)) for v in np.linspace(0, size - patch, n)]


def _softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def activate(raw: np.ndarray, activation: str, channel: int) -> np.ndarray:
    """Probability map ``(z, y, x)`` of one class from network output ``(C, z, y, x)``."""
    if activation == "softmax":
        return _softmax(raw, 0)[channel]
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-raw[channel]))
    if activation in ("none", "probability"):
        return raw[channel]
    raise ValueError(f"unknown output activation {activation!r}")


def predict(
    sessions,
    image: np.ndarray,
    patch: tuple[int, int, int],
    *,
    overlap: float = 0.5,
    activation: str = "softmax",
    channel: int = 1,
    mirror_axes: tuple[int, ...] = (),
    sigma_scale: float = 0.125,
    input_name: str | None = None,
    progress=None,
) -> np.ndarray:
    """Mean over ``sessions`` (model folds) and mirrorings of the Gaussian-weighted patch
    predictions: a probability map ``(z, y, x)`` in [0, 1] (float32).

    ``image`` is ``(C, z, y, x)`` float32; it is zero-padded (centred) up to the patch size
    where smaller, and the padding is removed from the result.
    """
    c, *spatial = image.shape
    pad = [(0, 0)] + [((max(p - s, 0)) // 2, max(p - s, 0) - (max(p - s, 0)) // 2) for s, p in zip(spatial, patch)]
    x = np.pad(image, pad) if any(a or b for a, b in pad[1:]) else image
    shape = x.shape[1:]
    acc = np.zeros(shape, np.float32)
    weight = np.zeros(shape, np.float32)
    g = gaussian_importance(tuple(patch), sigma_scale)
    starts = list(product(*(window_starts(s, p, overlap) for s, p in zip(shape, patch))))
    flips = [()] + [ax for r in range(1, len(mirror_axes) + 1) for ax in combinations(mirror_axes, r)]
    for z, y, xx in starts:
        sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(xx, xx + patch[2]))
        tile = x[(slice(None),) + sl][None]
        prob = np.zeros(patch, np.float32)
        n = 0
        for sess in sessions:
            name = input_name or sess.get_inputs()[0].name
            for f in flips:
                axes = tuple(a + 2 for a in f)
                t = np.ascontiguousarray(np.flip(tile, axes)) if f else tile
                out = sess.run(None, {name: t.astype(np.float32)})[0][0]
                p = activate(out, activation, channel)
                prob += np.flip(p, tuple(a for a in f)) if f else p
                n += 1
        acc[sl] += g * (prob / n)
        weight[sl] += g
        if progress is not None:
            progress()
    out = acc / weight
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pad[1:], spatial))
    return out[crop]
