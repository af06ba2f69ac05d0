"""NIfTI and the other formats SimpleITK reads (``.mha``, ``.nrrd`` ...) -> Volume (NIfTI is RAS
on disk; SimpleITK gives LPS)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..geometry import Grid, Volume
from .common import InputError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
OTHER_ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
_ITK_INTEGER = {
    sitk.sitkUInt8,
    sitk.sitkInt8,
    sitk.sitkUInt16,
    sitk.sitkInt16,
    sitk.sitkUInt32,
    sitk.sitkInt32,
    sitk.sitkUInt64,
    sitk.sitkInt64,
}


def load_itk(p: Path) -> Volume:
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()
        detail = next((m for m in msg if "orthonormal" in m.lower()), msg[-1] if msg else "")
        raise InputError(f"{p} could not be read as an image file ({detail.strip()})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{p} holds {img.GetNumberOfComponentsPerPixel()} values per voxel "
            "(colour, vector or complex data); a scalar image is needed"
        )
    dim = img.GetDimension()
    if dim == 4:
        size = list(img.GetSize())
        log.warning("%s is 4D (%d volumes); using the first volume", p, size[3])
        size[3] = 0
        f = sitk.ExtractImageFilter()
        f.SetSize(size)
        f.SetIndex([0, 0, 0, 0])
        f.SetDirectionCollapseToStrategy(sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
        img = f.Execute(img)
    elif dim == 2:
        log.warning(
            "%s is a single 2D image; treating it as one slice 1 mm thick at z = 0 "
            "(a 2D file has no through-plane position)",
            p,
        )
        d2 = np.array(img.GetDirection()).reshape(2, 2)
        o2, s2 = img.GetOrigin(), img.GetSpacing()
        img = sitk.JoinSeries([img])
        d3 = np.eye(3)
        d3[:2, :2] = d2
        img.SetDirection(tuple(d3.flatten()))
        img.SetOrigin((o2[0], o2[1], 0.0))
        img.SetSpacing((s2[0], s2[1], 1.0))
    elif dim != 3:
        raise InputError(f"{p} is a {dim}D image; a 3D volume is needed")
    integer = img.GetPixelID() in _ITK_INTEGER
    arr = sitk.GetArrayFromImage(img)
    if not np.all(np.isfinite(arr)) and not integer:
        log.warning("%s contains non-finite values; they are set to 0", p)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    try:
        grid = Grid.from_sitk(img)
    except ValueError as e:
        raise InputError(f"{p}: the image geometry is unusable ({e})") from None
    desc = p.name
    for suf in NIFTI_SUFFIXES + OTHER_ITK_SUFFIXES:
        if desc.lower().endswith(suf):
            desc = desc[: -len(suf)]
            break
    info = {"series_description": desc, "protocol_name": desc, "source_integer": bool(integer)}
    return Volume(data=arr.astype(np.float32), grid=grid, description=desc, info=info)
