"""Pictures for the cohort's HTML reports: axial mosaics and thumbnails, as PNG bytes.

Display convention (radiological, like a scanner console): every volume is turned by whole axis
permutations and flips (never resampled) into LPS index order, so that an axial tile has the
patient's right on the viewer's left and anterior at the top; tiles run inferior to superior.
Pixels are stretched to their physical size (mm), so thick slices look right.
"""

from __future__ import annotations

import io

import numpy as np
import SimpleITK as sitk
from PIL import Image

from .. import render
from ..geometry import Grid

#: Brain mask outline colour on the mosaics (pure green: no other layer uses it).
MASK_OUTLINE = (0, 255, 0)
TILE_PX = 220


_AXIS = {"L": (0, False), "R": (0, True), "P": (1, False), "A": (1, True), "S": (2, False), "I": (2, True)}


def to_display(grid: Grid, array: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` on ``grid`` (``(nz, ny, nx)`` or ``(nz, ny, nx, 3)``) reordered, by axis
    permutation and flips only, to LPS index order: array axis 0 inferior->superior, 1
    anterior->posterior, 2 right->left. Returns the array and its (x, y, z) spacing in mm.

    Each index axis goes to the patient axis closest to its direction (SimpleITK's DICOM
    orientation code, which also settles 45-degree ties)."""
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        [float(v) for v in np.asarray(grid.direction, float).flatten()]
    )
    src = [0, 0, 0]  # output array axis -> input array axis
    flip = [False, False, False]
    spacing = [0.0, 0.0, 0.0]
    for i, letter in enumerate(code):  # index axis i (x, y, z) points towards ``letter``
        a, neg = _AXIS[letter]
        src[2 - a] = 2 - i
        flip[2 - a] = neg
        spacing[a] = float(grid.spacing[i])
    out = np.transpose(array, src + list(range(3, array.ndim)))
    for ax in range(3):
        if flip[ax]:
            out = np.flip(out, axis=ax)
    return np.ascontiguousarray(out), (spacing[0], spacing[1], spacing[2])


def _tile(rgb: np.ndarray, sx: float, sy: float, height: int = TILE_PX) -> Image.Image:
    ny, nx = rgb.shape[:2]
    w_mm, h_mm = nx * sx, ny * sy
    scale = height / max(h_mm, 1e-6)
    w = max(1, int(round(w_mm * scale)))
    return Image.fromarray(np.ascontiguousarray(rgb)).resize((w, height), Image.Resampling.BILINEAR)


def pick_slices(extent: np.ndarray, n: int, must: int | None = None) -> list[int]:
    """``n`` slice indices spread over the slices where ``extent`` (bool per slice) holds, from
    12 % to 88 % of that range; ``must`` replaces the nearest one."""
    hit = np.flatnonzero(extent)
    lo, hi = (int(hit[0]), int(hit[-1])) if hit.size else (0, len(extent) - 1)
    span = hi - lo
    picks = sorted(set(int(round(lo + span * f)) for f in np.linspace(0.12, 0.88, n)))
    if must is not None and must not in picks:
        picks[int(np.argmin([abs(p - must) for p in picks]))] = int(must)
        picks = sorted(set(picks))
    return picks


def mosaic(tiles: list[Image.Image], columns: int = 4, gap: int = 4) -> Image.Image:
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    width = max(sum(t.width for t in r) + gap * (len(r) - 1) for r in rows)
    height = sum(max(t.height for t in r) for r in rows) + gap * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    y = 0
    for r in rows:
        x = 0
        for t in r:
            canvas.paste(t, (x, y))
            x += t.width + gap
        y += max(t.height for t in r) + gap
    return canvas


def png(img: Image.Image | np.ndarray) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.ascontiguousarray(img))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class Layers:
    """Anatomy and optional lesion mask / anomaly map of one input, in display order (see
    :func:`to_display`), with the anomaly colouring of the pipeline's own overlay."""

    def __init__(
        self,
        grid: Grid,
        anatomy: np.ndarray,
        lesion: np.ndarray | None = None,
        anomaly: np.ndarray | None = None,
        threshold: float = render.ANOMALY_THRESHOLD,
        top: float | None = None,
        brain: np.ndarray | None = None,
    ):
        self.anatomy, self.spacing = to_display(grid, anatomy)
        self.lesion = None if lesion is None else to_display(grid, (lesion > 0).astype(np.uint8))[0]
        self.anomaly = None if anomaly is None else to_display(grid, anomaly.astype(np.float32))[0]
        self.brain = None if brain is None else to_display(grid, (brain > 0).astype(np.uint8))[0]
        self.threshold, self.top = threshold, top
        self.window = render.grey_window(self.anatomy)

    def key_slice(self) -> int | None:
        """The slice with the largest lesion area, or None without lesions."""
        if self.lesion is None or not self.lesion.any():
            return None
        return int(np.argmax(self.lesion.reshape(self.lesion.shape[0], -1).sum(axis=1)))

    def overlay(self, zs: list[int]) -> np.ndarray:
        """``(len(zs), ny, nx, 3)`` uint8: the pipeline's overlay colours, without the legend."""
        return render.overlay_volume(
            self.anatomy[zs],
            None if self.lesion is None else self.lesion[zs],
            None if self.anomaly is None else self.anomaly[zs],
            anomaly_threshold=self.threshold,
            anomaly_max=self.top,
            window=self.window,
            legend=render.Legend(None, None, None),
        )


def _extent(mask: np.ndarray) -> np.ndarray:
    """Per slice (axis 0): does the mask hold any voxel there."""
    return np.asarray(mask.reshape(mask.shape[0], -1).any(axis=1))


def brain_mask_mosaic(layers: Layers, n: int = 8) -> Image.Image:
    """Axial tiles of the anatomy (grey) with the outline of ``layers.brain`` in green."""
    brain = layers.brain
    if brain is None:
        raise ValueError("brain_mask_mosaic needs layers with a brain (or head) mask")
    lo, hi = layers.window
    grey = (np.clip((layers.anatomy - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    width = 1 if min(grey.shape[1:]) < 384 else 2
    edge = render.outline(np.asarray(brain > 0), width)
    sx, sy, _ = layers.spacing
    tiles = []
    for z in pick_slices(_extent(brain), n):
        rgb = np.repeat(grey[z][..., None], 3, axis=-1)
        rgb[edge[z]] = MASK_OUTLINE
        tiles.append(_tile(rgb, sx, sy))
    return mosaic(tiles)


def overlay_mosaic(layers: Layers, n: int = 8) -> Image.Image:
    """Axial tiles with the lesion (red, yellow outline) and the anomaly above threshold (blue to
    white), always including the slice with the largest lesion area."""
    extent = _extent(layers.brain) if layers.brain is not None else np.ones(layers.anatomy.shape[0], bool)
    zs = pick_slices(extent, n, layers.key_slice())
    sx, sy, _ = layers.spacing
    return mosaic([_tile(rgb, sx, sy) for rgb in layers.overlay(zs)])


def thumbnail(layers: Layers, height: int = 120) -> Image.Image:
    """One axial tile (largest lesion slice, else the middle) for the cohort index."""
    z = layers.key_slice()
    z = layers.anatomy.shape[0] // 2 if z is None else z
    sx, sy, _ = layers.spacing
    return _tile(layers.overlay([z])[0], sx, sy, height)
