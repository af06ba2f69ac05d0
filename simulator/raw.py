"""Forward model: an image volume -> raw Cartesian multi-coil k-space readouts (MRD acquisitions).

The inverse of :func:`openrecon_stroke.kspace.reconstruct`: coil images are the volume times
smooth complex coil sensitivities normalised to unit root-sum-of-squares, so that the RSS
reconstruction gives the volume back. Readouts are oversampled by ``oversampling`` along read
(as scanners do), one noise readout comes first (to be skipped by the reconstruction).
"""

from __future__ import annotations

import ismrmrd
import numpy as np

from openrecon_stroke.geometry import Volume


def coil_sensitivities(shape: tuple[int, int, int], n_coils: int) -> np.ndarray:
    """Smooth complex sensitivities ``(coils, nz, ny, nx)`` with sum |s|^2 = 1 at every voxel."""
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx),
                          indexing="ij")
    maps = []
    for c in range(n_coils):
        a = 2 * np.pi * c / n_coils
        cx, cy = 1.4 * np.cos(a), 1.4 * np.sin(a)
        mag = np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + 0.3 * z**2) / 2.0)
        phase = np.exp(1j * (a + 0.5 * x * np.cos(a) - 0.5 * y * np.sin(a)))
        maps.append(mag * phase)
    s = np.array(maps)
    s /= np.sqrt((np.abs(s) ** 2).sum(axis=0, keepdims=True))
    return s.astype(np.complex64)


def _centered_fft(a, axes):
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a, axes=axes), axes=axes, norm="ortho"), axes=axes)


def _acq(data, *, position, grid, ky, kz, slc, flags, scan, oversampled_nx):
    read, phase, normal = grid.direction.T
    a = ismrmrd.Acquisition.from_array(data.astype(np.complex64))
    a.version = 1
    a.scan_counter = scan
    a.center_sample = oversampled_nx // 2
    a.available_channels = data.shape[0]
    a.position[:] = position
    a.read_dir[:] = read
    a.phase_dir[:] = phase
    a.slice_dir[:] = normal
    a.idx.kspace_encode_step_1 = ky
    a.idx.kspace_encode_step_2 = kz
    a.idx.slice = slc
    a.sample_time_us = 5.0
    for f in flags:
        a.set_flag(f)
    return a


def volume_to_acquisitions(volume: Volume, n_coils: int = 4, oversampling: int = 2,
                           as_3d: bool = False) -> tuple[list, dict]:
    """Readouts that reconstruct to ``volume`` on ``volume.grid``.

    Returns:
        ``(acquisitions, header_kwargs)``; ``header_kwargs`` are the encoding keywords for
        :func:`openrecon_stroke.mrdfile.make_header_xml` (matrix, fov, encoded matrix/fov, slices).
    """
    g = volume.grid
    nz, ny, nx = g.shape
    dx, dy, dz = g.spacing
    onx = nx * oversampling
    img = volume.data.astype(np.complex64)[None] * coil_sensitivities(g.shape, n_coils)
    pad = ((0, 0), (0, 0), (0, 0), ((onx - nx) // 2, onx - nx - (onx - nx) // 2))
    img = np.pad(img, pad)
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal((n_coils, onx)) + 1j * rng.standard_normal((n_coils, onx))) * 1e-3
    acqs = []
    scan = 0
    first = _acq(noise, position=g.index_to_lps(((nx - 1) / 2, (ny - 1) / 2, 0)), grid=g, ky=0, kz=0,
                 slc=0, flags=[ismrmrd.ACQ_IS_NOISE_MEASUREMENT], scan=scan, oversampled_nx=onx)
    acqs.append(first)
    if as_3d:
        k = _centered_fft(img, (1, 2, 3))
        centre = g.index_to_lps(((nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2))
        for kz in range(nz):
            for ky in range(ny):
                scan += 1
                flags = [ismrmrd.ACQ_LAST_IN_MEASUREMENT] if (kz == nz - 1 and ky == ny - 1) else []
                acqs.append(_acq(k[:, kz, ky, :], position=centre, grid=g, ky=ky, kz=kz, slc=0,
                                 flags=flags, scan=scan, oversampled_nx=onx))
        kwargs = dict(matrix=(nx, ny, nz), fov_mm=(nx * dx, ny * dy, nz * dz),
                      encoded_matrix=(onx, ny, nz), encoded_fov_mm=(onx * dx, ny * dy, nz * dz),
                      slices=1)
        return acqs, kwargs
    k = _centered_fft(img, (2, 3))
    heads = g.slice_headers()
    for s in range(nz):
        for ky in range(ny):
            scan += 1
            flags = []
            if ky == 0:
                flags.append(ismrmrd.ACQ_FIRST_IN_SLICE)
            if ky == ny - 1:
                flags.append(ismrmrd.ACQ_LAST_IN_SLICE)
                if s == nz - 1:
                    flags.append(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
            acqs.append(_acq(k[:, s, ky, :], position=np.array(heads[s].position), grid=g, ky=ky, kz=0,
                             slc=s, flags=flags, scan=scan, oversampled_nx=onx))
    kwargs = dict(matrix=(nx, ny, 1), fov_mm=(nx * dx, ny * dy, dz),
                  encoded_matrix=(onx, ny, 1), encoded_fov_mm=(onx * dx, ny * dy, dz), slices=nz)
    return acqs, kwargs
