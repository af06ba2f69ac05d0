"""Shared fixtures: a real MRD server on a free loopback port, and synthetic image series
whose geometry is written out explicitly (independently of openrecon_stroke.geometry)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from openrecon_stroke.server import MrdServer, ServerSettings
from simulator.anatomy import rotation_deg as rotation  # rz @ ry @ rx, angles in degrees

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def server():
    srv = MrdServer(("127.0.0.1", 0), ServerSettings(idle_timeout_s=20.0))
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


#: (read_dir, phase_dir) in LPS for each named orientation; slice_dir = read x phase.
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "oblique": (tuple(rotation(15, -20, 10) @ [1, 0, 0]), tuple(rotation(15, -20, 10) @ [0, 1, 0])),
    "flipped": ((-1, 0, 0), (0, -1, 0)),
}


def pixel_lps(h, i, j, k=0):
    """LPS (mm) of pixel column i, row j (and 3D slice k) of an MRD image, from its header alone
    (position = centre of the field of view)."""
    nx, ny, nz = h.matrix_size
    dx, dy, dz = (h.field_of_view[0] / nx, h.field_of_view[1] / ny, h.field_of_view[2] / nz)
    return (np.array(h.position) + (i - (nx - 1) / 2) * dx * np.array(h.read_dir)
            + (j - (ny - 1) / 2) * dy * np.array(h.phase_dir)
            + (k - (nz - 1) / 2) * dz * np.array(h.slice_dir))


def marker_series(orientation: str, *, shape=(40, 36, 12), spacing=(3.0, 3.5, 6.0), marker=(25, 10, 7),
                  centre=(5.0, -12.0, 20.0), as_3d=False, reverse=False, series_index=1, dtype=np.uint16):
    """Images of a dark volume with one bright voxel; returns (images, marker LPS).

    ``shape`` is (nx, ny, nz); ``marker`` the (i, j, k) voxel that is bright.
    """
    read, phase = (np.asarray(v, float) for v in ORIENTATIONS[orientation])
    normal = np.cross(read, phase)
    nx, ny, nz = shape
    dx, dy, dz = spacing
    data = np.full((nz, ny, nx), 10, dtype)
    i, j, k = marker
    data[k, j, i] = 1000
    images = []
    if as_3d:
        img = ismrmrd.Image.from_array(data)
        h = img.getHead()
        h.field_of_view[:] = (nx * dx, ny * dy, nz * dz)
        h.position[:] = centre
        h.read_dir[:], h.phase_dir[:], h.slice_dir[:] = read, phase, normal
        h.image_series_index = series_index
        h.image_type = ismrmrd.IMTYPE_MAGNITUDE
        img.setHead(h)
        img.data[:] = data[None]
        images = [img]
        lps = pixel_lps(h, i, j, k)
    else:
        for s in range(nz):
            img = ismrmrd.Image.from_array(data[s:s + 1])
            h = img.getHead()
            h.field_of_view[:] = (nx * dx, ny * dy, dz)
            h.position[:] = np.asarray(centre) + (s - (nz - 1) / 2) * dz * normal
            h.read_dir[:], h.phase_dir[:], h.slice_dir[:] = read, phase, normal
            h.slice = s
            h.image_index = s + 1
            h.image_series_index = series_index
            h.image_type = ismrmrd.IMTYPE_MAGNITUDE
            img.setHead(h)
            img.data[:] = data[s:s + 1][None]
            images.append(img)
            if s == k:
                lps = pixel_lps(h, i, j)
        if reverse:
            images = images[::-1]
    return images, lps


def brightest_lps(images):
    """LPS of the brightest pixel over a list of returned images (independent of the package)."""
    best, where = -np.inf, None
    for im in images:
        d = im.data[0]  # (z, y, x)
        k, j, i = np.unravel_index(int(np.argmax(d)), d.shape)
        if d[k, j, i] > best:
            best, where = d[k, j, i], pixel_lps(im.getHead(), i, j, k)
    return where


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO)
