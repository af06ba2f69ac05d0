"""Load an image volume from a file or folder: NIfTI, DICOM (classic or enhanced), ISMRMRD.

:func:`load_volume` returns a :class:`~openrecon_stroke.geometry.Volume` on an exact LPS grid
(conventions in :mod:`openrecon_stroke.geometry`) with identity and sequence facts in
``Volume.info``. One module per format: :mod:`.dicom` (with the DICOM geometry conventions in
:mod:`.dicom_stack`), :mod:`.itk` (NIfTI and other SimpleITK formats), :mod:`.mrd` (ISMRMRD).

Every failure is a :class:`InputError` (a ``ValueError``) with a sentence that says what is
wrong with the input.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..geometry import Volume
from .common import InputError
from .dicom import load_dicom_file, load_dicom_folder
from .itk import NIFTI_SUFFIXES, OTHER_ITK_SUFFIXES, load_itk
from .mrd import HDF5_SUFFIXES, has_hdf5_signature, load_mrd

__all__ = ["InputError", "load_volume"]


def load_volume(path: str | os.PathLike, *, series: str | int | None = None) -> Volume:
    """Load one 3D volume from ``path``.

    Args:
        path: a NIfTI file (``.nii``/``.nii.gz``; other SimpleITK formats such as ``.mha``
            and ``.nrrd`` also work), a folder of DICOM files (classic single-frame slices of one
            series, or an enhanced multi-frame object; other files are ignored), a single
            DICOM file, or an ISMRMRD HDF5 file (images, or raw data when a k-space
            reconstruction is available).
        series: which series to take where the input holds several: a SeriesInstanceUID or
            SeriesNumber for DICOM folders, an ``image_series_index`` for ISMRMRD files. By
            default the DICOM series with most files, or the first MRD image series, is taken
            (with a warning when there was a choice).

    Returns:
        The volume (float32 data ``(nz, ny, nx)`` on an LPS grid) with ``info`` filled from the
        DICOM tags / MRD header where present.

    Raises:
        InputError: (a ``ValueError``) with the reason, for every input that does not give one
            regular volume.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    try:
        if p.is_dir():
            return load_dicom_folder(p, series)
        name = p.name.lower()
        if name.endswith(NIFTI_SUFFIXES) or name.endswith(OTHER_ITK_SUFFIXES):
            return load_itk(p)
        if name.endswith(HDF5_SUFFIXES) or has_hdf5_signature(p):
            return load_mrd(p, series)
        return load_dicom_file(p)
    except InputError:
        raise
    except ValueError as e:  # GeometryError and friends already speak plainly
        raise InputError(str(e) if str(p) in str(e) else f"{p}: {e}") from None
    except MemoryError:
        raise InputError(f"{p}: the image is too large to load into memory") from None
    except Exception as e:  # never a bare traceback for bad input
        raise InputError(f"{p} could not be read ({type(e).__name__}: {e})") from None
