"""DICOM slices (classic files or frames of a multi-frame object) -> one stack on an exact grid.

Geometry, stated once:

* ``ImagePositionPatient`` (IPP) is the LPS centre of the first transmitted pixel (row 0,
  column 0) of a slice; it is the grid origin of the slice lowest along the slice normal.
* ``ImageOrientationPatient`` (IOP) holds the *row* direction cosine (direction in which the
  column index grows: grid x / MRD ``read_dir``) then the *column* direction cosine (direction
  in which the row index grows: grid y / MRD ``phase_dir``). The slice normal is their cross
  product (grid z, right-handed); slices are sorted along it, never by InstanceNumber.
* ``PixelSpacing`` is ``(row spacing, column spacing)`` = ``(dy, dx)``: the first value is
  the distance between rows, i.e. along the column direction.
* The slice spacing comes from the slice positions (not SliceThickness or
  SpacingBetweenSlices), and must be regular.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import SAME_POSITION_MM, GeometryError, Grid, stack_slices
from .common import InputError

log = logging.getLogger(__name__)

#: Orientation cosines of one stack agree within this.
ORIENTATION_TOL = 1e-3


def _orthonormal_frame(row, col, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row and column cosines (column made exactly orthogonal) and their normal."""
    row = np.asarray(row, dtype=np.float64)
    col = np.asarray(col, dtype=np.float64)
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if not (np.isfinite(nr) and np.isfinite(nc)) or abs(nr - 1) > 0.01 or abs(nc - 1) > 0.01:
        raise InputError(
            f"{what}: ImageOrientationPatient {tuple(np.r_[row, col])} does not hold two unit direction cosines"
        )
    row = row / nr
    col = col / nc
    if abs(row @ col) > 0.01:
        raise InputError(
            f"{what}: the row and column directions of ImageOrientationPatient are "
            f"not perpendicular (cosine {row @ col:.4f})"
        )
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


@dataclass
class Slice:
    """One 2D image (a classic file or a frame of a multi-frame object) with its geometry."""

    ipp: np.ndarray
    row: np.ndarray
    col: np.ndarray
    spacing_rc: tuple[float, float]  # PixelSpacing: (row spacing = dy, column spacing = dx)
    rows: int
    cols: int
    key: tuple = ()  # non-spatial identity (echo, time point, ...) for splitting stacks
    source: Any = None  # file path (classic) or frame index (multi-frame)
    sop_uid: str = ""
    slope: float = 1.0
    intercept: float = 0.0
    extra: dict = field(default_factory=dict)


def stack_geometry(slices: list[Slice], what: str, thickness: float | None) -> tuple[Grid, list[Slice]]:
    """Sort slices of one stack along the normal and build the grid; checks consistency."""
    first = slices[0]
    row, col, normal = _orthonormal_frame(first.row, first.col, what)
    for s in slices[1:]:
        if not (
            np.allclose(s.row, first.row, atol=ORIENTATION_TOL) and np.allclose(s.col, first.col, atol=ORIENTATION_TOL)
        ):
            raise InputError(
                f"{what}: DICOM slices have different orientations (for example "
                f"{_fmt(first.row)}/{_fmt(first.col)} and {_fmt(s.row)}/{_fmt(s.col)}); "
                "a localizer or a multi-stack series cannot form one volume"
            )
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise InputError(
                f"{what}: DICOM slices have different matrix sizes "
                f"({first.cols}x{first.rows} and {s.cols}x{s.rows} columns x rows)"
            )
        if not np.allclose(s.spacing_rc, first.spacing_rc, rtol=1e-4, atol=1e-6):
            raise InputError(
                f"{what}: DICOM slices have different pixel spacings ({first.spacing_rc} and {s.spacing_rc} mm)"
            )
    dy, dx = (float(v) for v in first.spacing_rc)
    if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
        raise InputError(f"{what}: PixelSpacing {first.spacing_rc} is not a pair of positive numbers")
    try:
        order, dz = stack_slices([s.ipp for s in slices], normal, min(dx, dy), what)
    except GeometryError as e:
        raise InputError(str(e)) from None
    slices = [slices[i] for i in order]
    if dz is None:
        dz = thickness if thickness and thickness > 0 else None
        if dz is None:
            dz = 1.0
            log.warning("%s: a single slice without SliceThickness; assuming 1 mm", what)
    grid = Grid(
        shape=(len(slices), first.rows, first.cols),
        spacing=(dx, dy, dz),
        direction=np.stack([row, col, normal], axis=1),
        origin=slices[0].ipp,
    )
    return grid, slices


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):.3f}" for x in v) + ")"


def select_stack(slices: list[Slice], what: str, fields: list[str]) -> list[Slice]:
    """From slices of one orientation, keep one complete stack (one image per position).

    ``Slice.key`` holds values named by ``fields`` (echo, time point, ...). When positions
    repeat, slices are split by those values and the first split (in value order) that has an
    image at every position is kept, with a warning.
    """
    normal = _orthonormal_frame(slices[0].row, slices[0].col, what)[2]
    along = np.array([s.ipp @ normal for s in slices])
    uniq = np.sort(along)
    starts = [uniq[0]]
    for a in uniq[1:]:
        if a - starts[-1] >= SAME_POSITION_MM:
            starts.append(a)
    clusters = np.array(starts)
    pos_ids = np.argmin(np.abs(along[:, None] - clusters[None, :]), axis=1)
    npos = len(clusters)
    if npos == len(slices):
        return slices

    def sort_key(k):
        return tuple((v is None, v if isinstance(v, (int, float)) else str(v)) for v in k)

    def try_split(index: list[int]):
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(slices):
            groups.setdefault(tuple(s.key[j] for j in index), []).append(i)
        if len(groups) < 2:
            return None
        for k in sorted(groups, key=sort_key):
            ids = groups[k]
            got = pos_ids[ids]
            if len(set(got.tolist())) == npos and len(ids) == npos:
                return k, ids, len(groups)
        return None

    varying = [j for j in range(len(fields)) if len({s.key[j] for s in slices}) > 1]
    for index in ([varying] if varying else []) + [[j] for j in varying]:
        found = try_split(index)
        if found:
            k, ids, n = found
            label = ", ".join(f"{fields[j]} {v}" for j, v in zip(index, k))
            log.warning(
                "%s: %d images at %d positions form %d stacks (different %s); kept the first complete one (%s)",
                what,
                len(slices),
                npos,
                n,
                "/".join(fields[j] for j in index),
                label,
            )
            return [slices[i] for i in ids]
    # No field separates them. Equal repeats at every position (repetitions): keep the first
    # image at each position (by InstanceNumber / frame number); anything else is an error.
    counts = np.bincount(pos_ids, minlength=npos)
    if counts.min() != counts.max():
        raise InputError(
            f"{what}: {len(slices) - npos} slice(s) share a position with another slice, and not "
            f"every position has the same number of images ({counts.min()} to {counts.max()}); "
            "cannot tell which images form one volume"
        )
    order = sorted(range(len(slices)), key=lambda i: (slices[i].extra.get("order", i), i))
    seen: set[int] = set()
    keep = []
    for i in order:
        if int(pos_ids[i]) not in seen:
            seen.add(int(pos_ids[i]))
            keep.append(slices[i])
    log.warning(
        "%s: %d images at %d positions (%d per position: repetitions?); kept the first image at each position",
        what,
        len(slices),
        npos,
        int(counts[0]),
    )
    return keep
