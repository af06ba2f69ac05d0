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
    """Start indices along one axis, nnU-Net's rule: at most ``patch x (1 - overlap)`` apart,
    as few as that allows, evenly spread, the first and last window flush with the borders."""
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * (1 - overlap)))) + 1
    step = (size - patch) / (n - 1)
    return [int(np.round(step * i)) for i in range(n)]


def windows(shape, patch, overlap: float) -> list[tuple[slice, ...]]:
    """Every window position over a ``(z, y, x)`` volume at least as large as ``patch``."""
    return [
        tuple(slice(a, a + p) for a, p in zip(start, patch))
        for start in product(*(window_starts(s, p, overlap) for s, p in zip(shape, patch)))
    ]


def pad_to_patch(image: np.ndarray, patch) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``(C, z, y, x)`` zero-padded up to ``patch`` where smaller (centred, the odd voxel after),
    and the slices that remove the padding again."""
    spatial = image.shape[1:]
    pad = [(0, 0)] + [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(spatial, patch)]
    x = np.pad(image, pad) if any(a or b for a, b in pad[1:]) else image
    return x, tuple(slice(a, a + s) for (a, _), s in zip(pad[1:], spatial))


def mirrorings(mirror_axes) -> list[tuple[int, ...]]:
    """No flip first, then every combination of ``mirror_axes`` (spatial axes 0-2), by size."""
    return [()] + [ax for r in range(1, len(mirror_axes) + 1) for ax in combinations(mirror_axes, r)]


def mirrored_mean(sess, tile: np.ndarray, flips, name: str, transform=None) -> np.ndarray:
    """Mean over ``flips`` of the (``transform``-ed) network output for a ``(1, C, z, y, x)``
    tile, each flipped back: ``(K, z, y, x)`` float32, summed in ``flips`` order."""
    total: np.ndarray | None = None
    for f in flips:
        axes = tuple(a + 2 for a in f)
        t = np.ascontiguousarray(np.flip(tile, axes)) if f else tile
        out = sess.run(None, {name: t.astype(np.float32, copy=False)})[0][0]
        out = transform(out) if transform is not None else out
        out = np.flip(out, tuple(a - 3 for a in f)) if f else out  # spatial axes are the last three
        total = out.astype(np.float32) if total is None else total + out
    assert total is not None, "no mirroring given (the identity, (), must be among them)"
    return total / len(flips)


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
    x, crop = pad_to_patch(image, patch)
    shape = x.shape[1:]
    acc = np.zeros(shape, np.float32)
    weight = np.zeros(shape, np.float32)
    g = gaussian_importance(tuple(patch), sigma_scale)
    flips = mirrorings(mirror_axes)
    for sl in windows(shape, patch, overlap):
        tile = x[(slice(None),) + sl][None]
        prob = np.zeros(patch, np.float32)
        for sess in sessions:
            name = input_name or sess.get_inputs()[0].name
            prob += mirrored_mean(sess, tile, flips, name, lambda out: activate(out, activation, channel))
        acc[sl] += g * (prob / len(sessions))
        weight[sl] += g
        if progress is not None:
            progress()
    return (acc / weight)[crop]
