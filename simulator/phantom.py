"""Write a synthetic stroke study (T1-w + FLAIR) as ISMRMRD files plus truth masks.

A whole head (the MNI ICBM152 brain inside a modelled skull, scalp, face and neck, or a SynthSeg
label map given with --source) gets seeded chronic stroke lesions (territorial, cortical,
subcortical or lacunar: a CSF-like cavity in a gliotic rim). One study of two series is then
simulated and acquired, with the same patient, study and frame of reference: t1.h5 (T1-w MPRAGE,
1 mm isotropic, sagittal, series 1, sent as 2D slices or with --t1-3d as one 3D image) and
flair.h5 (dark-fluid FLAIR, 0.9 x 0.9 mm in-plane, 4 mm axial slices, series 2). Truth masks
(uint8 0/1 NIfTI) lie on exactly each series' grid: t1_lesion_mask.nii.gz, t1_brain_mask.nii.gz,
flair_lesion_mask.nii.gz and flair_brain_mask.nii.gz; lesions.json lists each lesion's kind,
hemisphere, volume and centroid (LPS mm) and the series geometry. With --raw the ISMRMRD files
hold multi-coil Cartesian k-space readouts instead of images. The same --seed gives
byte-identical volumes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from openrecon_stroke import mrdfile
from openrecon_stroke.geometry import Grid, Volume

from . import anatomy

log = logging.getLogger(__name__)

#: The two series of the study. ``protocol`` gets the base plane (tra/sag/cor) filled in.
SERIES = {
    "t1": dict(contrast="t1", series_index=1, protocol="t1_mprage_{plane}_p2_iso",
               description="T1w MPRAGE {plane}", tr_ms=2300.0, te_ms=2.98, ti_ms=900.0,
               spacing=(1.0, 1.0, 1.0), thickness=None, orientation="sagittal", scale=1000.0,
               slab_margin_mm=10.0),
    "flair": dict(contrast="flair", series_index=2, protocol="t2_tirm_{plane}_dark-fluid",
                  description="FLAIR dark-fluid {plane}", tr_ms=9000.0, te_ms=81.0, ti_ms=2500.0,
                  spacing=(0.9, 0.9, 4.0), thickness=4.0, orientation="axial", scale=1000.0,
                  slab_margin_mm=4.0),
}
_PLANE = {"axial": "tra", "oblique": "tra", "flipped": "tra", "sagittal": "sag", "coronal": "cor"}
FIELD_STRENGTH_T = 3.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (created; files overwritten)")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--raw", action="store_true",
                   help="write raw multi-coil Cartesian k-space readouts instead of images")
    p.add_argument("--orientation", choices=tuple(anatomy.ORIENTATIONS), default=None,
                   help="slice orientation of both series (default: T1-w sagittal, FLAIR axial); "
                        "'oblique' is axial tilted 18 deg (left-right axis) and 12 deg "
                        "(anterior-posterior axis), 'flipped' is axial with read left->right and "
                        "slices superior->inferior")
    p.add_argument("--source", default="mni", metavar="SRC",
                   help="head: 'mni' (default; MNI ICBM152 template from nilearn) or the path of a "
                        "SynthSeg label map training_seg_XX.nii.gz")
    p.add_argument("--lesions", metavar="N", type=int, default=None,
                   help="number of lesions (default: 1-3 drawn from the seed)")
    p.add_argument("--kinds", metavar="K[,K...]", default=None,
                   help=f"lesion kinds to draw from ({', '.join(anatomy.LESION_KINDS)}); without "
                        "--lesions exactly one of each listed kind")
    p.add_argument("--t1-3d", action=argparse.BooleanOptionalAction, default=False,
                   help="send the T1-w as one 3D image instead of 2D slices (default: slices)")
    p.add_argument("--randomize", action="store_true",
                   help="domain-randomised (SynthSeg-like) contrasts instead of realistic ones")


def study_uids(seed: int, source: str) -> dict:
    """Deterministic, valid DICOM UIDs (study, frame of reference) for a seed and head source."""
    from pydicom.uid import generate_uid

    tag = "mni" if anatomy.is_mni(source) else Path(source).name
    base = ["openrecon-stroke phantom", str(int(seed)), tag]
    return dict(study_uid=str(generate_uid(entropy_srcs=base + ["study"])),
                frame_of_reference_uid=str(generate_uid(entropy_srcs=base + ["frame-of-reference"])))


def make_study(source: str | None = "mni", seed: int = 0, *, n_lesions: int | None = None,
               kinds=None, orientation: str | None = None, randomize: bool = False,
               t1_3d: bool = False, series=("t1", "flair"), abnormality: str | None = None,
               ventricle_growth: float = 0.0) -> dict:
    """Simulate the study in memory (``series``: which of :data:`SERIES` to make; each series
    draws from its own random stream, so a subset gives the same volumes as the full study).

    ``ventricle_growth``: the lateral ventricles enlarged by this fraction of their volume
    (:func:`simulator.anatomy.enlarge_ventricles`).

    Returns ``{"labels": sitk.Image, "lesion_mask": sitk.Image, "lesions": [...],
    "ventricle_ml": true lateral-ventricle volume (mL), "series": {"t1": {...}, "flair": {...}}}``;
    each series dict holds ``volume`` (a
    :class:`Volume` of uint16-range float32 values with ``info`` filled), ``as_3d``,
    ``header_kwargs`` (for :func:`mrdfile.make_header_xml`), ``lesion_mask`` and ``brain_mask``
    (uint8 arrays on the volume's grid).
    """
    seeds = np.random.SeedSequence([int(seed), 7305]).spawn(5)
    rng_lesion, rng_t1, rng_flair, rng_n1, rng_n2 = (np.random.default_rng(s) for s in seeds)
    labels = anatomy.load_head(source)
    hemi = anatomy.load_hemispheres(source)
    labels_l, inst, lesions = anatomy.insert_lesions(labels, rng_lesion, n_lesions, kinds, hemispheres=hemi)
    abnormal = None
    ventricle_ml = None
    if ventricle_growth:  # lateral ventricles enlarged by a known fraction (anomaly evaluation)
        labels_l, _, ventricle_ml = anatomy.enlarge_ventricles(labels_l, ventricle_growth)
    if abnormality:  # a non-lesional abnormality (anomaly evaluation), from its own random stream
        rng_abn = np.random.default_rng(np.random.SeedSequence([int(seed), 7305, 1]))
        labels_l, abnormal = anatomy.add_abnormality(labels_l, rng_abn, abnormality, hemispheres=hemi)
    log.info("lesions: %s", ", ".join(f"{les['kind']} {les['hemisphere']} {les['volume_ml']:.2f} mL"
                                      for les in lesions) or "none")
    grid_src = Grid.from_sitk(labels_l)
    lab_arr = sitk.GetArrayViewFromImage(labels_l)
    brain_img = grid_src.to_sitk(anatomy.brain_mask(lab_arr).astype(np.float32))
    lesion_img = grid_src.to_sitk((sitk.GetArrayViewFromImage(inst) > 0).astype(np.float32))
    uids = study_uids(seed, source or "mni")
    identity = dict(patient_id=f"PHANTOM{int(seed):04d}", patient_name=f"Phantom^Stroke{int(seed)}", **uids)
    if ventricle_ml is None:
        lab_v = sitk.GetArrayViewFromImage(labels_l)
        ventricle_ml = float((lab_v == anatomy.Tissue.CSF).sum()) * float(np.prod(labels_l.GetSpacing())) / 1000
    out = dict(labels=labels_l, lesion_mask=inst, lesions=lesions, series={}, abnormal_mask=abnormal,
               ventricle_ml=ventricle_ml)
    unknown = set(series) - set(SERIES)
    if unknown:
        raise ValueError(f"unknown series {sorted(unknown)}; choose from {', '.join(SERIES)}")
    for name, rng_c, rng_n in (("t1", rng_t1, rng_n1), ("flair", rng_flair, rng_n2)):
        if name not in series:
            continue
        spec = SERIES[name]
        orient = orientation or spec["orientation"]
        plane = _PLANE[orient]
        as_3d = bool(t1_3d and name == "t1")
        grid = anatomy.acquisition_grid(labels_l, orient, spec["spacing"],
                                        slab_margin_mm=spec["slab_margin_mm"])
        params = anatomy.contrast_parameters(spec["contrast"], rng_c, randomize)
        img = anatomy.synthesize(labels_l, spec["contrast"], rng_c, params=params, noise=False)
        vol = anatomy.resample(img, grid, sitk.sitkLinear, spec["thickness"])
        del img
        ref = float(params["means"][anatomy.REFERENCE_TISSUE]) or 1.0
        data = anatomy.add_rician_noise(vol.data, rng_n, float(params["noise"]) * ref)
        if randomize:
            top = float(np.percentile(data, 99.5)) or 1.0
            data *= spec["scale"] / top
        else:
            data *= spec["scale"]
        data = np.clip(np.rint(data), 0, 65535).astype(np.float32)
        nz, ny, nx = grid.shape
        dx, dy, dz = grid.spacing
        info = dict(identity, protocol_name=spec["protocol"].format(plane=plane),
                    series_description=spec["description"].format(plane=plane),
                    tr_ms=spec["tr_ms"], te_ms=spec["te_ms"], ti_ms=spec["ti_ms"],
                    field_strength_t=FIELD_STRENGTH_T)
        volume = Volume(data, grid, is_3d=as_3d, series_index=spec["series_index"],
                        description=info["series_description"], info=info)
        header_kwargs = dict(info)
        header_kwargs.update(matrix=(nx, ny, nz if as_3d else 1),
                             fov_mm=(nx * dx, ny * dy, nz * dz if as_3d else (spec["thickness"] or dz)),
                             slices=1 if as_3d else nz)
        masks = {}
        for mname, mimg in (("lesion", lesion_img), ("brain", brain_img)):
            m = anatomy.resample(mimg, grid, sitk.sitkLinear, spec["thickness"])
            masks[mname] = (m.data >= 0.5).astype(np.uint8)
        out["series"][name] = dict(volume=volume, as_3d=as_3d, orientation=orient,
                                   header_kwargs=header_kwargs, lesion_mask=masks["lesion"],
                                   brain_mask=masks["brain"], slice_thickness_mm=spec["thickness"] or dz)
    return out


def _series_stream(s: dict, raw: bool) -> mrdfile.MrdStream:
    vol: Volume = s["volume"]
    kwargs = dict(s["header_kwargs"])
    if raw:
        from . import raw as raw_mod  # imported only when needed

        acqs, hk = raw_mod.volume_to_acquisitions(vol, n_coils=4, oversampling=2, as_3d=s["as_3d"])
        kwargs.update(hk)
        return mrdfile.MrdStream(header_xml=mrdfile.make_header_xml(**kwargs), acquisitions=acqs)
    images = mrdfile.volume_to_images(vol, vol.series_index, as_3d=s["as_3d"])
    return mrdfile.MrdStream(header_xml=mrdfile.make_header_xml(**kwargs), images=images)


def _grid_json(g: Grid) -> dict:
    return dict(shape_zyx=list(g.shape), spacing_mm=list(g.spacing),
                direction=np.round(g.direction, 6).tolist(), origin_lps_mm=np.round(g.origin, 4).tolist())


def write_study(study: dict, out_dir: str | Path, *, raw: bool = False, seed: int | None = None,
                source: str | None = None) -> list[Path]:
    """Write a study from :func:`make_study`; returns the paths written (in order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    series_info = {}
    for name, s in study["series"].items():
        vol: Volume = s["volume"]
        path = mrdfile.write(out / f"{name}.h5", _series_stream(s, raw))
        written.append(path)
        for mname in ("lesion", "brain"):
            mp = out / f"{name}_{mname}_mask.nii.gz"
            sitk.WriteImage(vol.grid.to_sitk(s[f"{mname}_mask"]), str(mp), True)
            written.append(mp)
        series_info[name] = dict(file=f"{name}.h5", series_index=vol.series_index,
                                 protocol_name=vol.info["protocol_name"], orientation=s["orientation"],
                                 as_3d=s["as_3d"], raw=raw, slice_thickness_mm=s["slice_thickness_mm"],
                                 lesion_voxels=int(s["lesion_mask"].sum()), grid=_grid_json(vol.grid))
    first = next(iter(study["series"].values()))["volume"].info
    doc = dict(seed=seed, source=source, study_uid=first["study_uid"],
               frame_of_reference_uid=first["frame_of_reference_uid"], patient_id=first["patient_id"],
               labels={t.name: int(t) for t in anatomy.Tissue}, lesions=study["lesions"], series=series_info)
    jp = out / "lesions.json"
    jp.write_text(json.dumps(doc, indent=2) + "\n")
    written.append(jp)
    return written


def run(args) -> int:
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    study = make_study(args.source, args.seed, n_lesions=args.lesions, kinds=kinds,
                       orientation=args.orientation, randomize=args.randomize, t1_3d=args.t1_3d)
    for p in write_study(study, args.out, raw=args.raw, seed=args.seed, source=args.source):
        print(p)
    return 0
