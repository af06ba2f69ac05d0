"""Raw Cartesian k-space (MRD acquisitions) -> magnitude images on the scanner's geometry.

Supports 2D multi-slice and 3D Cartesian encodings as described by the MRD header's first
``encoding``: readouts are placed by ``kspace_encode_step_1`` (ky), ``kspace_encode_step_2``
(kz) and ``slice``; unsampled lines stay zero (zero-filled partial Fourier / undersampling);
readout oversampling (encoded x > recon x) is removed after the FFT; coils are combined by
root-sum-of-squares. Each output image carries the acquisitions' ``position`` (centre of the
slice or slab, LPS mm) and direction vectors, and the recon field of view.
"""

from __future__ import annotations

import logging

import ismrmrd
import numpy as np

log = logging.getLogger(__name__)

#: Readouts with any of these flags carry no image data.
SKIP_FLAGS = (
    ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
    ismrmrd.ACQ_IS_PARALLEL_CALIBRATION,
    ismrmrd.ACQ_IS_NAVIGATION_DATA,
    ismrmrd.ACQ_IS_PHASECORR_DATA,
    ismrmrd.ACQ_IS_HPFEEDBACK_DATA,
    ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
    ismrmrd.ACQ_IS_RTFEEDBACK_DATA,
    ismrmrd.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION_REFERENCE,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION,
)

#: Refuse k-space arrays above this many complex samples per slice/slab (memory bound).
MAX_KSPACE_SAMPLES = 512 * 2**20 // 8


class ReconError(ValueError):
    """The raw data cannot be reconstructed; the message says why."""


def _centered_ifft(k: np.ndarray, axes) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(k, axes=axes), axes=axes, norm="ortho"), axes=axes)


def _crop_or_pad(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    m = a.shape[axis]
    if m == n:
        return a
    if m > n:
        s = (m - n) // 2
        return np.take(a, np.arange(s, s + n), axis=axis)
    pad = [(0, 0)] * a.ndim
    pad[axis] = ((n - m) // 2, n - m - (n - m) // 2)
    return np.pad(a, pad)


def is_imaging(acq: ismrmrd.Acquisition) -> bool:
    return not any(acq.is_flag_set(f) for f in SKIP_FLAGS)


def reconstruct(acquisitions: list, header, series_index: int = 1) -> list[ismrmrd.Image]:
    """Reconstruct magnitude images (float32) from Cartesian acquisitions.

    Args:
        acquisitions: ``ismrmrd.Acquisition`` readouts in any order (noise, calibration and
            navigator readouts are skipped).
        header: the parsed MRD header (``ismrmrd.xsd.ismrmrdHeader``).
        series_index: ``image_series_index`` given to the images.

    Returns:
        One 2D image per slice (2D encodings) or one 3D image (3D encodings).
    """
    if header is None or not header.encoding:
        raise ReconError("raw data arrived without an MRD header describing the encoding")
    enc = header.encoding[0]
    traj = getattr(enc.trajectory, "value", enc.trajectory)
    if str(traj).lower() != "cartesian":
        raise ReconError(f"only Cartesian raw data can be reconstructed (trajectory is {traj})")
    em, rm, rf = enc.encodedSpace.matrixSize, enc.reconSpace.matrixSize, enc.reconSpace.fieldOfView_mm
    ex, ey, ez = int(em.x), int(em.y), max(int(em.z), 1)
    rx, ry, rz = int(rm.x), int(rm.y), max(int(rm.z), 1)
    is3d = ez > 1
    data = [a for a in acquisitions if is_imaging(a)]
    if not data:
        raise ReconError("no imaging readouts among the raw data (only noise/calibration?)")
    ncoil = int(data[0].active_channels)
    if ex * ey * ez * ncoil > MAX_KSPACE_SAMPLES:
        raise ReconError(f"encoded matrix {ex}x{ey}x{ez} with {ncoil} coils is too large to reconstruct")

    groups: dict[int, list] = {}
    for a in data:
        groups.setdefault(0 if is3d else int(a.idx.slice), []).append(a)

    images = []
    for n, (slc, acqs) in enumerate(sorted(groups.items())):
        k = np.zeros((ncoil, ez, ey, ex), dtype=np.complex64)
        filled = 0
        for a in acqs:
            if a.active_channels != ncoil:
                raise ReconError(f"readout {a.scan_counter} has {a.active_channels} coils, expected {ncoil}")
            ky, kz = int(a.idx.kspace_encode_step_1), int(a.idx.kspace_encode_step_2)
            if ky >= ey or (kz >= ez):
                raise ReconError(
                    f"readout {a.scan_counter} has encoding step ({ky}, {kz}) outside the "
                    f"encoded matrix {ey}x{ez} declared in the header"
                )
            d = a.data
            if d.shape[1] != ex:
                c = int(a.center_sample) if a.center_sample else d.shape[1] // 2
                start = ex // 2 - c
                if start < 0 or start + d.shape[1] > ex:
                    raise ReconError(f"readout {a.scan_counter} has {d.shape[1]} samples; the header declares {ex}")
                k[:, kz, ky, start : start + d.shape[1]] = d
            else:
                k[:, kz, ky, :] = d
            filled += 1
        axes = (1, 2, 3) if is3d else (2, 3)
        img = _centered_ifft(k, axes)
        img = np.sqrt((np.abs(img) ** 2).sum(axis=0)).astype(np.float32)  # (ez, ey, ex)
        img = _crop_or_pad(img, 2, rx)
        img = _crop_or_pad(img, 1, ry)
        if is3d:
            img = _crop_or_pad(img, 0, rz)
        ref = acqs[len(acqs) // 2]
        im = ismrmrd.Image.from_array(img)
        h = im.getHead()
        h.version = 1
        h.field_of_view[:] = (float(rf.x), float(rf.y), float(rf.z))
        h.position[:] = ref.position
        h.read_dir[:] = ref.read_dir
        h.phase_dir[:] = ref.phase_dir
        h.slice_dir[:] = ref.slice_dir
        h.patient_table_position[:] = ref.patient_table_position
        h.measurement_uid = ref.measurement_uid
        h.slice = slc
        h.image_index = n + 1
        h.image_series_index = series_index
        h.image_type = ismrmrd.IMTYPE_MAGNITUDE
        h.acquisition_time_stamp = ref.acquisition_time_stamp
        im.setHead(h)
        im.data[:] = img[None]
        images.append(im)
        log.debug("reconstructed slice %d from %d readouts", slc, filled)
    return images
