"""ISMRMRD HDF5 files (images, or raw data reconstructed) -> Volume."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import mrdfile
from ..geometry import Volume, assemble_series, group_series
from ..kspace import reconstruct
from .common import InputError

log = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5", ".mrd", ".ismrmrd")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def has_hdf5_signature(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def _info_from_mrd_header(xml: str) -> dict:
    if not xml:
        return {}
    try:
        return mrdfile.header_info(mrdfile.parse_header(xml))
    except ValueError as e:
        log.warning("MRD header not used: %s", e)
        return {}


def _reconstruct_raw(stream: mrdfile.MrdStream, p: Path) -> list:
    if not stream.header_xml:
        raise InputError(f"{p} holds raw data but no MRD XML header describing the encoding")
    try:
        return reconstruct(stream.acquisitions, mrdfile.parse_header(stream.header_xml))
    except ValueError as e:
        raise InputError(f"{p}: raw data could not be reconstructed: {e}") from None


def load_mrd(p: Path, series) -> Volume:
    stream = mrdfile.read(p)
    images = stream.images
    if not images:
        if stream.acquisitions:
            images = _reconstruct_raw(stream, p)
        if not images:
            raise InputError(f"{p} holds no images and no raw data")
    groups = group_series(images)
    if series is not None:
        try:
            key = int(series)
        except (TypeError, ValueError):
            raise InputError(f"{p}: series must be an image series index (a number), got {series!r}") from None
        if key not in groups:
            raise InputError(f"{p} has no image series {key} (it has {sorted(groups)})")
    else:
        key = next(iter(groups))
        if len(groups) > 1:
            log.warning("%s holds image series %s; using series %d", p, sorted(groups), key)
    info = _info_from_mrd_header(stream.header_xml)
    desc = info.get("series_description") or info.get("protocol_name") or p.stem
    vol = assemble_series(groups[key], description=desc)
    vol.info = info
    vol.info.setdefault("source_integer", all(np.issubdtype(im.data.dtype, np.integer) for im in groups[key]))
    return vol
