"""Convert a DICOM folder (classic or enhanced multi-frame) or NIfTI file into an ISMRMRD file for replay.

The volume keeps its exact patient geometry (LPS): each 2D slice's MRD ``position`` is the centre
of its field of view (the scanner convention), so DICOM ``ImagePositionPatient`` moves by half
the field of view minus half a pixel along the row and column directions. Integer source data
that fits (non-negative, at most 65535) is stored as uint16, anything else as float32.
An ISMRMRD file with images is also accepted (re-written with a new series index / layout).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from openrecon_stroke import mrdfile
from openrecon_stroke.geometry import Volume
from openrecon_stroke.inputs import load_volume
from openrecon_stroke.mrdfile import header_xml_for

_AXES = (("L", "R"), ("P", "A"), ("S", "I"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("INPUT", help="DICOM folder, single DICOM file (e.g. enhanced multi-frame), "
                                 "NIfTI file (.nii/.nii.gz) or ISMRMRD file")
    p.add_argument("--out", metavar="FILE", required=True, help="ISMRMRD HDF5 file to write (overwritten)")
    p.add_argument("--series-index", metavar="N", type=int, default=1,
                   help="image_series_index of the written images (default 1)")
    p.add_argument("--as-3d", action="store_true",
                   help="write one 3D MRD image instead of one 2D image per slice")


def output_dtype(volume: Volume):
    """uint16 for integer source data in 0..65535 (exactly representable), else float32."""
    d = volume.data
    if d.size == 0 or not np.all(np.isfinite(d)):
        return np.float32
    integer = volume.info.get("source_integer")
    if integer is None:  # unknown: decide from the values
        integer = bool(np.all(d == np.rint(d)))
    if integer and float(d.min()) >= 0 and float(d.max()) <= 65535 and np.all(d == np.rint(d)):
        return np.uint16
    return np.float32


def axis_label(v) -> str:
    """Nearest patient axis of a direction cosine, e.g. ``'L'`` or ``'~A'`` (oblique)."""
    v = np.asarray(v, dtype=float)
    i = int(np.argmax(np.abs(v)))
    lab = _AXES[i][0 if v[i] > 0 else 1]
    return lab if abs(v[i]) > 0.999 else f"~{lab}"


def orientation_name(normal) -> str:
    n = np.abs(np.asarray(normal, dtype=float))
    name = ("sagittal", "coronal", "transversal")[int(np.argmax(n))]
    return name if n.max() > 0.999 else f"oblique (near {name})"


def describe(volume: Volume) -> str:
    g = volume.grid
    nz, ny, nx = g.shape
    read, phase, normal = g.direction.T
    vec = lambda v: "(" + ", ".join(f"{x:+.4f}" for x in v) + ")"  # noqa: E731
    return "\n".join([
        f"matrix   {nx} x {ny} x {nz} (read x phase x slices)",
        "spacing  " + " x ".join(f"{s:.4g}" for s in g.spacing) + " mm",
        f"read     {vec(read)} -> {axis_label(read)}",
        f"phase    {vec(phase)} -> {axis_label(phase)}",
        f"slice    {vec(normal)} -> {axis_label(normal)}  [{orientation_name(normal)}"
        f"{', left-handed' if np.linalg.det(g.direction) < 0 else ''}]",
        f"origin   {vec(g.origin).replace('+', ' ')} mm LPS (centre of voxel 0,0,0)",
        f"patient  {volume.info.get('patient_id', '(none)')}",
    ])


def run(args) -> int:
    vol = load_volume(args.INPUT)
    as_3d = bool(args.as_3d)
    if vol.headers and vol.is_3d != as_3d:
        # The source's own MRD headers describe the other layout: make new ones from the grid.
        vol.headers, vol.metas = [], []
    dtype = output_dtype(vol)
    images = mrdfile.volume_to_images(vol, int(args.series_index), as_3d=as_3d, dtype=dtype)
    out = mrdfile.write(args.out, mrdfile.MrdStream(header_xml=header_xml_for(vol, as_3d=as_3d),
                                                    images=images))
    layout = "one 3D image" if as_3d else f"{len(images)} 2D slice image(s)"
    print(f"converted {args.INPUT}")
    print(f"series   {vol.description or '(no description)'}: {layout}, "
          f"{np.dtype(dtype).name}, image_series_index {int(args.series_index)}")
    print(describe(vol))
    print(f"wrote    {Path(out).resolve()}")
    return 0
