"""Exact image geometry: MRD image headers <-> voxel grids <-> SimpleITK images.

Conventions (stated once, used everywhere):

* Patient coordinates are **LPS** in mm (x towards the patient's Left, y Posterior,
  z Superior), as in MRD, DICOM and ITK. NIfTI files are RAS on disk; SimpleITK converts.
* Voxel arrays are numpy ``(nz, ny, nx)``: ``x`` (fastest) runs along the MRD ``read_dir``
  (image columns), ``y`` along ``phase_dir`` (image rows), ``z`` along the slice axis.
  This is also SimpleITK's ``GetArrayFromImage`` order.
* An MRD image ``position`` is the centre of the image's field of view (Siemens and Gadgetron
  convention), not the centre of its first pixel. :class:`Grid` ``origin`` is the centre of
  voxel ``(0, 0, 0)``, as in ITK/DICOM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import ismrmrd
import numpy as np
import SimpleITK as sitk

#: Direction vectors must be unit length and mutually orthogonal within this tolerance.
DIRECTION_TOL = 1e-3
#: Relative tolerance for uniform slice spacing and for slices lying on one stack.
SPACING_RTOL = 0.02
#: Slices closer than this along the normal (mm) are at the same position.
SAME_POSITION_MM = 0.01


class GeometryError(ValueError):
    """The images of a series do not describe one consistent volume."""


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in LPS patient space.

    Attributes:
        shape: ``(nz, ny, nx)`` voxel counts.
        spacing: ``(dx, dy, dz)`` voxel size in mm along the read, phase and slice axes.
        direction: 3x3 matrix whose columns are the unit LPS directions of the x (read),
            y (phase) and z (slice) axes. May be left-handed.
        origin: LPS position (mm) of the centre of voxel ``(0, 0, 0)``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: np.ndarray
    origin: np.ndarray

    def __post_init__(self):
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=DIRECTION_TOL):
            raise GeometryError(f"direction vectors are not orthonormal:\n{d}")
        if any(s <= 0 or not np.isfinite(s) for s in self.spacing):
            raise GeometryError(f"voxel spacing must be positive and finite, got {self.spacing}")
        if any(int(n) < 1 for n in self.shape):
            raise GeometryError(f"grid shape must be positive, got {self.shape}")
        object.__setattr__(self, "direction", d)
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(3))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    # --- coordinates -------------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping voxel indices ``(x, y, z, 1)`` to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_lps(self, xyz) -> np.ndarray:
        """LPS mm of (fractional) voxel index ``(x, y, z)``; accepts ``(..., 3)`` arrays."""
        xyz = np.asarray(xyz, dtype=np.float64)
        return xyz @ (self.direction * np.asarray(self.spacing)[None, :]).T + self.origin

    def lps_to_index(self, lps) -> np.ndarray:
        """Fractional voxel index ``(x, y, z)`` of LPS point(s) in mm."""
        lps = np.asarray(lps, dtype=np.float64)
        m = self.direction * np.asarray(self.spacing)[None, :]
        return (lps - self.origin) @ np.linalg.inv(m).T

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def same_as(self, other: Grid, atol: float = 1e-3) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol * 100)
        )

    # --- SimpleITK -----------------------------------------------------------------------
    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """Wrap a ``(nz, ny, nx)`` array on this grid as a SimpleITK image (LPS)."""
        if tuple(array.shape[:3]) != self.shape:
            raise GeometryError(f"array shape {array.shape} does not match grid {self.shape}")
        img = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
        img.SetSpacing(self.spacing)
        img.SetOrigin(tuple(self.origin))
        img.SetDirection(tuple(self.direction.flatten()))
        return img

    @staticmethod
    def from_sitk(img: sitk.Image) -> Grid:
        if img.GetDimension() != 3:
            raise GeometryError(f"expected a 3D image, got {img.GetDimension()}D")
        nx, ny, nz = img.GetSize()
        return Grid(
            shape=(nz, ny, nx),
            spacing=img.GetSpacing(),
            direction=np.array(img.GetDirection()).reshape(3, 3),
            origin=np.array(img.GetOrigin()),
        )

    # --- MRD headers ---------------------------------------------------------------------
    def slice_headers(self) -> list[ismrmrd.ImageHeader]:
        """One MRD header per z-slice (2D images), ``position`` at each slice's FOV centre."""
        nz, ny, nx = self.shape
        dx, dy, dz = self.spacing
        read, phase, normal = self.direction.T
        centre_in_plane = read * (nx - 1) * dx / 2 + phase * (ny - 1) * dy / 2
        heads = []
        for k in range(nz):
            h = ismrmrd.ImageHeader()
            h.version = 1
            h.matrix_size[:] = (nx, ny, 1)
            h.field_of_view[:] = (nx * dx, ny * dy, dz)
            h.position[:] = self.origin + centre_in_plane + normal * k * dz
            h.read_dir[:] = read
            h.phase_dir[:] = phase
            h.slice_dir[:] = normal
            h.slice = k
            h.image_index = k + 1
            h.channels = 1
            h.image_type = ismrmrd.IMTYPE_MAGNITUDE
            heads.append(h)
        return heads

    def volume_header(self) -> ismrmrd.ImageHeader:
        """A single 3D MRD header (``matrix_size[2] = nz``), ``position`` at the volume centre."""
        nz, ny, nx = self.shape
        dx, dy, dz = self.spacing
        h = ismrmrd.ImageHeader()
        h.version = 1
        h.matrix_size[:] = (nx, ny, nz)
        h.field_of_view[:] = (nx * dx, ny * dy, nz * dz)
        h.position[:] = self.index_to_lps(((nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2))
        h.read_dir[:], h.phase_dir[:], h.slice_dir[:] = self.direction.T
        h.image_index = 1
        h.channels = 1
        h.image_type = ismrmrd.IMTYPE_MAGNITUDE
        return h


def copy_header(h: ismrmrd.ImageHeader) -> ismrmrd.ImageHeader:
    return ismrmrd.ImageHeader.from_buffer_copy(bytes(h))


def images_on_headers(
    data: np.ndarray,
    headers: list,
    series_index: int,
    *,
    image_type: int | None = None,
    meta: Callable[[ismrmrd.ImageHeader], ismrmrd.Meta] | None = None,
) -> list[ismrmrd.Image]:
    """MRD images of ``data`` (``(channels, nz, ny, nx)``) on the given geometry headers: one image
    per header (slice ``k`` of ``data`` for the ``k``-th), or one 3D image for a single header.

    Each image gets ``image_series_index``, ``image_index`` (1-based), ``image_type`` when given,
    matrix size, channels and data type from the data, and ``meta(header)`` (default: empty).
    """
    out = []
    for k, h in enumerate(headers):
        part = data if len(headers) == 1 else data[:, k : k + 1]
        img = ismrmrd.Image(head=h, data=np.ascontiguousarray(part))
        hh = img.getHead()
        hh.image_series_index = series_index
        hh.image_index = k + 1
        if image_type is not None:
            hh.image_type = image_type
        img.setHead(hh)
        img.meta = meta(h) if meta is not None else ismrmrd.Meta()
        out.append(img)
    return out


@dataclass
class Volume:
    """A 3D image on an exact grid, with the MRD headers it came from (if any).

    Attributes:
        data: float32 array ``(nz, ny, nx)``.
        grid: where each voxel is (LPS).
        headers: MRD headers of the source images in grid z order (one per slice for a 2D
            series, a single one for a 3D image); outputs derived from this volume reuse them
            so that they go back on exactly the input geometry. Empty for NIfTI/DICOM input.
        metas: the source images' meta attributes, aligned with ``headers``.
        is_3d: the source was one 3D MRD image rather than a stack of 2D slices.
        series_index: the source ``image_series_index``.
        description: human-readable series description (protocol or file name).
        info: identity and sequence facts carried along for headers and DICOM export, keys
            as in :func:`openrecon_stroke.mrdfile.make_header_xml` (``patient_name``,
            ``patient_id``, ``study_uid``, ``frame_of_reference_uid``, ``protocol_name``,
            ``series_description``, ``tr_ms``, ``te_ms``, ``ti_ms``, ``field_strength_t``).
    """

    data: np.ndarray
    grid: Grid
    headers: list = field(default_factory=list)
    metas: list = field(default_factory=list)
    is_3d: bool = False
    series_index: int = 0
    description: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if tuple(self.data.shape) != self.grid.shape:
            raise GeometryError(f"data shape {self.data.shape} does not match grid {self.grid.shape}")

    def to_sitk(self) -> sitk.Image:
        return self.grid.to_sitk(self.data)

    @staticmethod
    def from_sitk(img: sitk.Image, description: str = "") -> Volume:
        grid = Grid.from_sitk(img)
        data = sitk.GetArrayFromImage(img).astype(np.float32)
        return Volume(data=data, grid=grid, description=description)

    def mrd_headers(self) -> list[ismrmrd.ImageHeader]:
        """Headers to send images of this volume with: the source's own, or made from the grid."""
        if self.headers:
            return [copy_header(h) for h in self.headers]
        return self.grid.slice_headers()


# --------------------------------------------------------------------------------------------
# Assembly: MRD images of one series -> Volume
# --------------------------------------------------------------------------------------------
def _unit(v, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or abs(n - 1) > 0.01:
        raise GeometryError(f"{what} {tuple(round(float(x), 4) for x in v)} is not a unit vector")
    return v / n


def image_magnitude(img: ismrmrd.Image) -> np.ndarray:
    """The image as float32 ``(nz, ny, nx)``: magnitude of complex data, root-sum-of-squares
    over channels (coil images)."""
    d = img.data  # (channels, z, y, x)
    if np.iscomplexobj(d):
        d = np.abs(d)
    d = d.astype(np.float32, copy=False)
    if d.shape[0] > 1:
        d = np.sqrt((d.astype(np.float32) ** 2).sum(axis=0))
    else:
        d = d[0]
    return d


def image_frame(h) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit read, phase and slice-normal directions (LPS) of an MRD image header; the normal is
    ``slice_dir`` when set, else read x phase."""
    read = _unit(h.read_dir, "read_dir")
    phase = _unit(h.phase_dir, "phase_dir")
    if abs(read @ phase) > DIRECTION_TOL * 10:
        raise GeometryError("read_dir and phase_dir are not orthogonal")
    s = np.asarray(h.slice_dir, dtype=np.float64)
    normal = np.cross(read, phase)
    if np.linalg.norm(s) > 0.5:
        s = _unit(s, "slice_dir")
        if abs(abs(s @ normal) - 1) > 0.01:
            raise GeometryError("slice_dir is not perpendicular to read_dir and phase_dir")
        normal = s
    return read, phase, normal


def slice_order(positions, normal) -> np.ndarray:
    """Indices that sort slice positions (``(n, 3)`` LPS mm) along ``normal`` (stable)."""
    return np.argsort(np.asarray(positions, dtype=np.float64) @ np.asarray(normal, dtype=np.float64), kind="stable")


def stack_slices(positions, normal, pixel_mm: float, what: str) -> tuple[np.ndarray, float | None]:
    """Order and spacing of the slices of one stack: ``(order, dz)`` with ``positions[order]``
    running along ``normal``, ``dz`` the slice spacing in mm (None for a single slice).

    ``positions`` are ``(n, 3)`` LPS points of the slices (same in-plane point of each);
    ``pixel_mm`` the smaller in-plane voxel size. Raises :class:`GeometryError` (message starting
    with ``what``) when slices share a position, are irregularly spaced or shifted in-plane.
    """
    positions = np.asarray(positions, dtype=np.float64)
    order = slice_order(positions, normal)
    if len(order) == 1:
        return order, None
    pos = positions[order]
    steps = np.diff(pos @ normal)
    if np.any(steps < SAME_POSITION_MM):
        raise GeometryError(
            f"{what}: {int(np.sum(steps < SAME_POSITION_MM))} slice(s) share a position with another slice "
            "(repetitions, echoes or several acquisitions in one series?); cannot form one volume"
        )
    dz = float(np.median(steps))
    if np.max(np.abs(steps - dz)) > SPACING_RTOL * dz + 1e-3:
        raise GeometryError(
            f"{what}: irregular slice spacing ({steps.min():.3f} to {steps.max():.3f} mm between neighbouring "
            "slices; missing slices or a gap?); cannot form one volume"
        )
    off = pos - pos[0]
    shift = float(np.max(np.linalg.norm(off - np.outer(off @ normal, normal), axis=1)))
    if shift > max(0.05 * pixel_mm, 1e-2):
        raise GeometryError(
            f"{what}: slice positions are shifted in-plane by up to {shift:.2f} mm, so the slices do not "
            "stack along their normal; cannot form one volume"
        )
    return order, dz


def assemble_series(images: list[ismrmrd.Image], description: str = "") -> Volume:
    """Assemble the images of one series (2D slices or one 3D image) into a :class:`Volume`.

    Slices are sorted along the slice normal; spacing comes from the slice positions.
    Raises :class:`GeometryError` with a message a physicist can act on when the images
    do not form one regular volume.
    """
    if not images:
        raise GeometryError("no images in series")
    first = images[0].getHead()
    series_index = int(first.image_series_index)
    for im in images:
        h = im.getHead()
        if min(h.matrix_size[0], h.matrix_size[1], h.matrix_size[2]) < 1:
            raise GeometryError(f"image {h.image_index} has an empty matrix {tuple(h.matrix_size)}")
        if any(not np.isfinite(f) or f <= 0 for f in h.field_of_view):
            raise GeometryError(
                f"image {h.image_index} has field_of_view {tuple(h.field_of_view)} mm; "
                "all three values must be positive"
            )

    if len(images) == 1 and first.matrix_size[2] > 1:
        h = first
        read, phase, normal = image_frame(h)
        nx, ny, nz = (int(v) for v in h.matrix_size)
        spacing = (h.field_of_view[0] / nx, h.field_of_view[1] / ny, h.field_of_view[2] / nz)
        centre = np.asarray(h.position, dtype=np.float64)
        direction = np.stack([read, phase, normal], axis=1)
        origin = centre - direction @ (np.array(spacing) * (np.array([nx, ny, nz]) - 1) / 2)
        grid = Grid((nz, ny, nx), spacing, direction, origin)
        return Volume(
            image_magnitude(images[0]), grid, [copy_header(h)], [images[0].meta], True, series_index, description
        )

    if any(im.getHead().matrix_size[2] > 1 for im in images):
        raise GeometryError(
            f"series {series_index} mixes {len(images)} images of which some are 3D; "
            "send a 3D volume as one image or as 2D slices"
        )

    heads = [im.getHead() for im in images]
    read, phase, normal = image_frame(heads[0])
    nx, ny = int(heads[0].matrix_size[0]), int(heads[0].matrix_size[1])
    fov = np.asarray(heads[0].field_of_view, dtype=np.float64)
    for h in heads[1:]:
        if (int(h.matrix_size[0]), int(h.matrix_size[1])) != (nx, ny):
            raise GeometryError(
                f"series {series_index}: slices have different matrix sizes "
                f"({nx}x{ny} and {h.matrix_size[0]}x{h.matrix_size[1]})"
            )
        if not np.allclose(h.field_of_view[:2], fov[:2], rtol=1e-4):
            raise GeometryError(f"series {series_index}: slices have different fields of view")
        r, p, _ = image_frame(h)
        if not (np.allclose(r, read, atol=1e-3) and np.allclose(p, phase, atol=1e-3)):
            raise GeometryError(
                f"series {series_index}: slices have different orientations "
                "(a localizer or a multi-stack series?); send one stack per series"
            )
    dx, dy = fov[0] / nx, fov[1] / ny
    order, dz = stack_slices([h.position for h in heads], normal, min(dx, dy), f"series {series_index}")
    positions = np.array([heads[i].position for i in order], dtype=np.float64)
    if dz is None:
        dz = float(fov[2])
    direction = np.stack([read, phase, normal], axis=1)
    origin = positions[0] - read * (nx - 1) * dx / 2 - phase * (ny - 1) * dy / 2
    grid = Grid((len(images), ny, nx), (dx, dy, dz), direction, origin)
    data = np.stack([image_magnitude(images[i])[0] for i in order]).astype(np.float32)
    return Volume(
        data,
        grid,
        [copy_header(heads[i]) for i in order],
        [images[i].meta for i in order],
        False,
        series_index,
        description,
    )


def group_series(images: list[ismrmrd.Image]) -> dict[int, list[ismrmrd.Image]]:
    """Group magnitude/complex images by ``image_series_index`` (arrival order kept)."""
    out: dict[int, list[ismrmrd.Image]] = {}
    for im in images:
        out.setdefault(int(im.image_series_index), []).append(im)
    return out
