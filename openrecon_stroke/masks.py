"""Binary mask operations used by more than one stage or tool (numpy ``(z, y, x)`` arrays)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray, connectivity: int = 3) -> np.ndarray:
    """The largest connected component of a boolean mask (a new boolean array).

    ``connectivity``: 3 = 26-connected (faces, edges and corners), 1 = 6-connected (faces).
    The first of equally large components wins.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    # label only inside the mask's bounding box (a brain is a fraction of a head FOV)
    box = []
    for a in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(j for j in range(mask.ndim) if j != a)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    inner = tuple(box)
    lab, n = ndimage.label(mask[inner], structure=ndimage.generate_binary_structure(mask.ndim, connectivity))
    out = np.zeros_like(mask)
    if n <= 1:
        out[inner] = mask[inner]
        return out
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    out[inner] = lab == int(sizes.argmax())
    return out


def solid_object(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected object of a boolean mask with its enclosed holes filled (a new
    boolean array): a head's foreground, or the brain of a series stripped by another tool."""
    return ndimage.binary_fill_holes(largest_component(mask, connectivity=1))
