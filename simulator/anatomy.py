"""Synthetic heads with chronic stroke lesions: labels, lesions, MR contrasts and scan planning.

A library of seeded, reusable functions (the ``phantom`` command is a thin wrapper round it),
meant also for making training and test data for lesion segmentation and anomaly models.

Conventions (as in :mod:`openrecon_stroke.geometry`):

* Images are SimpleITK images in **LPS** millimetres (x towards the patient's Left, y Posterior,
  z Superior); numpy arrays taken from them are ``(nz, ny, nx)``.
* Heads from :func:`load_head` are 1 mm isotropic int16 label maps with identity direction.
* Every random choice draws from a ``numpy.random.Generator`` passed in by the caller: the same
  generator state gives byte-identical results.

Tissue labels (:class:`Tissue`)::

    0 BACKGROUND (air)          8 EXTRA_CSF (subarachnoid CSF)   14 SPINAL_CORD
    1 CSF (ventricles)          9 SKIN (scalp, skin)             20 LESION_CORE (chronic cavity)
    2 GM (cerebral cortex)     10 FAT (subcutaneous, orbital,    21 LESION_RIM (gliotic rim)
    3 WM (cerebral)                diploe and marrow)
    4 DEEP_GM (basal ganglia,  11 SKULL (cortical bone)
       thalamus, hippocampus)  12 MUSCLE (muscle and other soft
    5 CEREBELLUM_GM                tissue, vessels, nerves)
    6 CEREBELLUM_WM            13 EYES (vitreous)
    7 BRAINSTEM

The brain (what a brain mask should contain) is labels 1-7 plus the lesion labels 20 and 21;
the spinal cord (14) is not brain. Lesions are placed in the parenchyma only (labels 2-7).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from enum import IntEnum
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from openrecon_stroke.geometry import Grid, Volume
from openrecon_stroke.templates import template_dir
from openrecon_stroke.masks import largest_component


class Tissue(IntEnum):
    BACKGROUND = 0
    CSF = 1
    GM = 2
    WM = 3
    DEEP_GM = 4
    CEREBELLUM_GM = 5
    CEREBELLUM_WM = 6
    BRAINSTEM = 7
    EXTRA_CSF = 8
    SKIN = 9
    FAT = 10
    SKULL = 11
    MUSCLE = 12
    EYES = 13
    SPINAL_CORD = 14
    LESION_CORE = 20
    LESION_RIM = 21


#: Labels that make up the brain (brain mask).
BRAIN_LABELS = (Tissue.CSF, Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.CEREBELLUM_GM,
                Tissue.CEREBELLUM_WM, Tissue.BRAINSTEM, Tissue.LESION_CORE, Tissue.LESION_RIM)
#: The brain plus the extra-cerebral CSF: what brain-extraction masks such as HD-BET's hold.
INTRACRANIAL_LABELS = BRAIN_LABELS + (Tissue.EXTRA_CSF,)
#: Brain tissue proper, where lesions may go.
PARENCHYMA_LABELS = (Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.CEREBELLUM_GM,
                     Tissue.CEREBELLUM_WM, Tissue.BRAINSTEM)
CEREBRAL_LABELS = (Tissue.GM, Tissue.WM, Tissue.DEEP_GM)
LESION_LABELS = (Tissue.LESION_CORE, Tissue.LESION_RIM)
N_LABELS = 32  # size of per-label lookup tables

#: Hemisphere codes of :func:`hemisphere_split` / :func:`load_hemispheres`.
RIGHT, LEFT = 1, 2
HEMISPHERE_NAMES = {RIGHT: "right", LEFT: "left"}

LESION_KINDS = ("territorial", "lacunar", "cortical", "subcortical")


def _isin(arr: np.ndarray, labels) -> np.ndarray:
    lut = np.zeros(max(N_LABELS, int(arr.max()) + 1 if arr.size else 1), bool)
    lut[[int(v) for v in labels]] = True
    return lut[arr]


def brain_mask(labels: sitk.Image | np.ndarray) -> np.ndarray:
    """Boolean ``(nz, ny, nx)`` brain mask (labels 1-7, 20, 21)."""
    arr = sitk.GetArrayViewFromImage(labels) if isinstance(labels, sitk.Image) else labels
    return _isin(np.asarray(arr), BRAIN_LABELS)


def intracranial_mask(labels: sitk.Image | np.ndarray) -> np.ndarray:
    """Boolean ``(nz, ny, nx)`` mask of the brain plus the extra-cerebral CSF (sulci,
    subarachnoid space, basal cisterns): what brain-extraction masks such as HD-BET's hold."""
    arr = sitk.GetArrayViewFromImage(labels) if isinstance(labels, sitk.Image) else labels
    return _isin(np.asarray(arr), INTRACRANIAL_LABELS)


# ============================================================================================
# Random fields
# ============================================================================================
def smooth_field(shape, rng: np.random.Generator, sigma_vox: float, *, factor: int = 4) -> np.ndarray:
    """A smooth Gaussian random field of unit standard deviation (float32, ``shape``).

    White noise on a grid ``factor`` times coarser is Gaussian-smoothed there (to correlation
    length ``sigma_vox`` full-resolution voxels) and linearly upsampled: cheap for big volumes.
    """
    shape = tuple(int(s) for s in shape)
    factor = max(1, min(int(factor), int(max(sigma_vox, 1))))
    coarse = tuple(max(2, -(-s // factor) + 2) for s in shape)
    f = ndi.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma_vox / factor,
                            mode="wrap")
    if factor > 1:
        # map full-resolution index i to coarse coordinate (i + 0.5) / factor + 0.5
        coords = [(np.arange(s, dtype=np.float32) + 0.5) / factor + 0.5 for s in shape]
        f = _separable_linear_upsample(f, coords)
    else:
        f = f[tuple(slice(0, s) for s in shape)]
    sd = float(f.std())
    return ((f - f.mean()) / (sd if sd > 0 else 1.0)).astype(np.float32)


def _separable_linear_upsample(a: np.ndarray, coords) -> np.ndarray:
    """Linear interpolation of ``a`` at the outer product of 1-D coordinates (one axis at a time)."""
    for axis, c in enumerate(coords):
        i0 = np.clip(np.floor(c).astype(int), 0, a.shape[axis] - 2)
        w = (c - i0).astype(np.float32)
        shp = [1] * a.ndim
        shp[axis] = -1
        w = w.reshape(shp)
        a = np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i0 + 1, axis=axis) * w
    return a


def signed_distance(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Signed Euclidean distance (mm, float32): outside ``mask``, the distance to the nearest mask
    voxel; inside, minus the distance to the nearest outside voxel (exact for flat borders,
    within ~0.7 voxel otherwise). SimpleITK's multi-threaded Maurer transform; ``spacing`` is
    ``(dx, dy, dz)``."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    img = sitk.GetImageFromArray(mask)
    img.SetSpacing(tuple(float(v) for v in spacing))
    d = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False,
                                     useImageSpacing=True)
    d = sitk.GetArrayFromImage(d).astype(np.float32, copy=False)
    d[mask > 0] -= float(min(spacing))  # ITK measures inside distances to the mask's own border voxels
    return d


def _rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


# ============================================================================================
# Heads
# ============================================================================================
def mni_template_dir() -> Path:
    """Folder of the MNI ICBM152 2009a (symmetric) template files (nilearn's, or
    ``$OPENRECON_TEMPLATES_DIR``): :func:`openrecon_stroke.templates.template_dir`."""
    return template_dir()


def is_mni(source: str | Path | None) -> bool:
    """Whether ``source`` names the MNI template head (``None``, ``""`` or ``"mni"``)."""
    return source is None or str(source).strip().lower() in ("", "mni")


def _source_key(source: str | Path | None) -> str:
    if is_mni(source):
        return "mni"
    p = Path(source).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such label map (give 'mni' or a SynthSeg training_seg_XX.nii.gz)")
    return str(p.resolve())


def load_head(source: str | Path | None = None) -> sitk.Image:
    """A whole-head tissue label map (:class:`Tissue`, int16, 1 mm, LPS, identity direction).

    ``source``: ``None`` or ``"mni"`` builds a head around the MNI ICBM152 2009a brain template
    shipped in ``nilearn`` (the template is skull-stripped, so skull, scalp, face, eyes and neck
    are modelled around it); otherwise the path of a SynthSeg ``training_seg_XX.nii.gz`` label
    map (FreeSurfer labels + extra-cerebral labels >= 500), mapped onto :class:`Tissue`.
    Loading is cached in memory; the built MNI head is also kept on disk (see
    :func:`_disk_cache_dir`; ``OPENRECON_STROKE_CACHE=off`` disables). The returned image is a
    (copy-on-write) copy.
    """
    return sitk.Image(_load_cached(_source_key(source))[0])


def load_hemispheres(source: str | Path | None = None) -> sitk.Image:
    """Hemisphere map (uint8) on the grid of :func:`load_head`: 1 = right, 2 = left (LPS +x is
    the patient's left), 0 = background. SynthSeg maps use their own left/right labels; voxels
    of unlateralised structures (brainstem, CSF, extra-cerebral tissue) are split by the plane
    half-way between the left and right structures."""
    return sitk.Image(_load_cached(_source_key(source))[1])


def _disk_cache_dir() -> Path | None:
    """Where the built MNI head is kept between runs: ``$OPENRECON_STROKE_CACHE`` (empty or
    ``off`` disables), else ``$XDG_CACHE_HOME/openrecon-stroke`` or ``~/.cache/openrecon-stroke``."""
    env = os.environ.get("OPENRECON_STROKE_CACHE")
    if env is not None:
        return Path(env).expanduser() if env.strip() and env.strip().lower() not in ("0", "off", "none") else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openrecon-stroke"


def _mni_head_cached():
    """:func:`_build_mni_head`, kept on disk keyed by a hash of this module and the template
    (building takes a few seconds; loading ~0.2 s). Any failure to use the cache just rebuilds."""
    d = _disk_cache_dir()
    path = None
    if d is not None:
        h = hashlib.sha1(Path(__file__).read_bytes())
        for f in sorted(mni_template_dir().glob("mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz")):
            h.update(f.name.encode() + str(f.stat().st_size).encode())
        path = d / f"mni_head_{h.hexdigest()[:16]}.npz"
        try:
            with np.load(path) as z:
                return z["labels"], z["hemi"], z["origin"]
        except (OSError, KeyError, ValueError):
            pass
    labels, hemi, origin = _build_mni_head()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            np.savez_compressed(tmp, labels=labels.astype(np.int16), hemi=hemi.astype(np.uint8), origin=origin)
            os.replace(tmp, path)
        except OSError:
            pass
    return labels, hemi, origin


@functools.lru_cache(maxsize=4)
def _load_cached(key: str) -> tuple[sitk.Image, sitk.Image]:
    if key == "mni":
        labels, hemi, origin = _mni_head_cached()
    else:
        labels, hemi, origin = _load_synthseg(key)
    out = []
    for a in (labels.astype(np.int16), hemi.astype(np.uint8)):
        img = sitk.GetImageFromArray(a)
        img.SetOrigin(tuple(float(v) for v in origin))
        img.SetSpacing((1.0, 1.0, 1.0))
        img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
        out.append(img)
    return out[0], out[1]


# --- SynthSeg / FreeSurfer label maps ------------------------------------------------------------
#: FreeSurfer aseg label -> Tissue. Labels not listed (and unknown labels) become MUSCLE/OTHER.
FREESURFER_TO_TISSUE = {
    0: Tissue.BACKGROUND,
    2: Tissue.WM, 41: Tissue.WM,
    3: Tissue.GM, 42: Tissue.GM,
    4: Tissue.CSF, 5: Tissue.CSF, 43: Tissue.CSF, 44: Tissue.CSF, 14: Tissue.CSF, 15: Tissue.CSF,
    72: Tissue.CSF,                                     # 5th ventricle
    10: Tissue.DEEP_GM, 11: Tissue.DEEP_GM, 12: Tissue.DEEP_GM, 13: Tissue.DEEP_GM,
    17: Tissue.DEEP_GM, 18: Tissue.DEEP_GM, 26: Tissue.DEEP_GM, 28: Tissue.DEEP_GM,
    49: Tissue.DEEP_GM, 50: Tissue.DEEP_GM, 51: Tissue.DEEP_GM, 52: Tissue.DEEP_GM,
    53: Tissue.DEEP_GM, 54: Tissue.DEEP_GM, 58: Tissue.DEEP_GM, 60: Tissue.DEEP_GM,
    30: Tissue.DEEP_GM, 62: Tissue.DEEP_GM,             # vessels within the basal ganglia
    7: Tissue.CEREBELLUM_WM, 46: Tissue.CEREBELLUM_WM,
    8: Tissue.CEREBELLUM_GM, 47: Tissue.CEREBELLUM_GM,
    16: Tissue.BRAINSTEM,
    24: Tissue.EXTRA_CSF,
    # In the SynthSeg training maps 25/57 are periventricular white-matter (hypointensity)
    # regions and 136/137, 163/164 parts of the left/right lateral ventricles; 85 the chiasm.
    25: Tissue.WM, 57: Tissue.WM, 77: Tissue.WM, 85: Tissue.WM,
    136: Tissue.CSF, 137: Tissue.CSF, 163: Tissue.CSF, 164: Tissue.CSF,
    31: Tissue.CSF, 63: Tissue.CSF,                      # choroid plexus
    # Extra-cerebral labels (>= 500), identified by where they lie in the maps:
    511: Tissue.SKIN,        # outermost layer
    516: Tissue.FAT,         # subcutaneous fat and marrow
    515: Tissue.SKULL,       # bone between the CSF and the scalp
    507: Tissue.MUSCLE,      # bulk soft tissue of face and neck
    506: Tissue.EYES,        # the two globes
    512: Tissue.SPINAL_CORD,  # narrow midline structure below the brainstem
    508: Tissue.MUSCLE,      # optic nerves and orbital tissue
    530: Tissue.MUSCLE,      # retro-orbital soft tissue
    502: Tissue.MUSCLE,      # neck vessels
    514: Tissue.MUSCLE,      # venous sinuses and vessels
    509: Tissue.MUSCLE,      # nose and nasal soft tissue
}
_FS_LEFT = (2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 17, 18, 25, 26, 28, 30, 31, 136, 137)
_FS_RIGHT = (41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 57, 58, 60, 62, 63, 163, 164)


def map_freesurfer_labels(fs: np.ndarray) -> np.ndarray:
    """FreeSurfer/SynthSeg label values -> :class:`Tissue` (int16); unknown non-zero -> MUSCLE."""
    fs = np.asarray(fs).astype(np.int32)
    lut = np.full(max(int(fs.max()) + 1, 1024), int(Tissue.MUSCLE), np.int16)
    for k, v in FREESURFER_TO_TISSUE.items():
        if k < lut.size:
            lut[k] = int(v)
    return lut[np.clip(fs, 0, lut.size - 1)]


def _load_synthseg(path: str):
    img = sitk.ReadImage(path)
    if img.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D label map")
    img = sitk.DICOMOrient(img, "LPS")
    fs = np.rint(sitk.GetArrayFromImage(img)).astype(np.int32)
    if not np.allclose(img.GetSpacing(), 1.0, atol=1e-3):
        raise ValueError(f"{path}: expected 1 mm voxels, got {img.GetSpacing()}")
    labels = map_freesurfer_labels(fs)
    nz = np.nonzero(labels)
    if nz[0].size == 0:
        raise ValueError(f"{path}: the label map is empty")
    lo = [max(int(a.min()) - 4, 0) for a in nz]
    hi = [min(int(a.max()) + 5, s) for a, s in zip(nz, labels.shape)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    labels, fs = labels[crop], fs[crop]
    origin = np.asarray(img.TransformIndexToPhysicalPoint((lo[2], lo[1], lo[0])), float)
    # hemispheres: own labels, the rest split by the plane between the left and right clouds
    left, right = np.isin(fs, _FS_LEFT), np.isin(fs, _FS_RIGHT)
    cl = np.array([a.mean() for a in np.nonzero(left)][::-1])   # (x, y, z) index
    cr = np.array([a.mean() for a in np.nonzero(right)][::-1])
    normal = (cl - cr) / max(np.linalg.norm(cl - cr), 1e-6)
    mid = (cl + cr) / 2
    z, y, x = np.ogrid[:labels.shape[0], :labels.shape[1], :labels.shape[2]]
    side = (x - mid[0]) * normal[0] + (y - mid[1]) * normal[1] + (z - mid[2]) * normal[2]
    hemi = np.where(side > 0, LEFT, RIGHT).astype(np.uint8)
    hemi[left] = LEFT
    hemi[right] = RIGHT
    hemi[labels == 0] = 0
    return labels, hemi, origin


# --- the MNI template head --------------------------------------------------------------------------
#: Head grid around the MNI brain (LPS mm of the first and last voxel centres).
_MNI_HEAD_BOX = ((-90.0, 90.0), (-118.0, 124.0), (-112.0, 100.0))


def _read_lps(path: Path) -> sitk.Image:
    return sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")


def _build_mni_head():
    """Tissue labels for a whole head built around the (skull-stripped) MNI ICBM152 2009a brain.

    Brain tissue comes from the template's GM/WM probability maps and T1 (CSF where neither
    dominates); deep grey matter, ventricles, cerebellum and brainstem from positions in MNI
    space; skull, diploe, scalp, face, orbits, sinuses and neck are modelled geometrically
    around the intracranial volume with fixed (seed 2009) irregularity.
    """
    d = mni_template_dir()
    t1_img = _read_lps(d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    pg_img = _read_lps(d / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    pw_img = _read_lps(d / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    (x0, x1), (y0, y1), (z0, z1) = _MNI_HEAD_BOX
    shape = (int(z1 - z0) + 1, int(y1 - y0) + 1, int(x1 - x0) + 1)
    origin = np.array([x0, y0, z0])
    # place the template arrays in the head box (the template is 1 mm with identity direction
    # after reorientation, at integer LPS positions)
    t_origin = np.rint(np.array(t1_img.GetOrigin())).astype(int)
    off = (t_origin - origin.astype(int))[::-1]  # (z, y, x) offset of the template in the box

    def place(img, scale):
        a = sitk.GetArrayFromImage(img).astype(np.float32) * scale
        out = np.zeros(shape, np.float32)
        src, dst = [], []
        for ax in range(3):
            lo = max(off[ax], 0)
            hi = min(off[ax] + a.shape[ax], shape[ax])
            dst.append(slice(lo, hi))
            src.append(slice(lo - off[ax], hi - off[ax]))
        out[tuple(dst)] = a[tuple(src)]
        return out

    t1 = place(t1_img, 1.0)
    pg = place(pg_img, 1 / 255.0)
    pw = place(pw_img, 1 / 255.0)
    rng = np.random.default_rng(2009)

    # MNI (RAS) coordinates of the voxel centres, broadcastable
    zi, yi, xi = np.ogrid[:shape[0], :shape[1], :shape[2]]
    X = -(origin[0] + xi).astype(np.float32)  # MNI x (right positive)
    Y = -(origin[1] + yi).astype(np.float32)  # MNI y (anterior positive)
    Z = (origin[2] + zi).astype(np.float32)

    inside = t1 > 0
    inside = ndi.binary_opening(inside, iterations=1) | ((pg + pw) > 0.5)
    pc = np.clip(1.0 - pg - pw, 0, 1)
    labels = np.zeros(shape, np.int16)
    is_csf = (pc > pg) & (pc > pw)
    labels[inside] = Tissue.EXTRA_CSF
    labels[inside & ~is_csf & (pg >= pw)] = Tissue.GM
    labels[inside & ~is_csf & (pg < pw)] = Tissue.WM

    # the template's midline column is mostly fissure CSF: give it the tissue on both sides
    ix0 = int(round(-origin[0]))
    if 0 < ix0 < shape[2] - 1:
        mid, lft, rgt = labels[:, :, ix0], labels[:, :, ix0 + 1], labels[:, :, ix0 - 1]
        fill = ((mid == Tissue.EXTRA_CSF) & (lft != Tissue.EXTRA_CSF) & (lft != 0)
                & (rgt != Tissue.EXTRA_CSF) & (rgt != 0))
        mid[fill] = lft[fill]

    # intracranial volume: the brain closed over its sulci, plus a thin subarachnoid layer
    icv = ndi.binary_closing(inside, structure=ndi.generate_binary_structure(3, 1), iterations=4)
    icv = ndi.binary_fill_holes(icv)
    icv = ndi.binary_dilation(icv, iterations=1)
    labels[icv & (labels == 0)] = Tissue.EXTRA_CSF

    # ventricles: CSF deep in the brain, within the central region
    sd = signed_distance(icv)
    depth = -sd
    out_d = np.maximum(sd, 0)
    del sd
    csf = labels == Tissue.EXTRA_CSF
    central = (((X / 32) ** 2 + ((Y + 8) / 48) ** 2 + ((Z - 8) / 30) ** 2) < 1)
    fourth = ((X / 10) ** 2 + ((Y + 45) / 12) ** 2 + ((Z + 32) / 14) ** 2) < 1
    vent = csf & (depth > 9) & (central | fourth)
    lab, n = ndi.label(vent)
    if n:
        keep = np.bincount(lab.ravel(), minlength=n + 1) >= 150
        keep[0] = False
        vent = keep[lab]
    labels[vent] = Tissue.CSF

    # deep grey matter: grey-ish tissue in the basal ganglia / thalamus / hippocampus region
    deep = (((X / 31) ** 2 + ((Y + 6) / 31) ** 2 + ((Z - 2) / 17) ** 2) < 1) & (np.abs(X) > 3)
    hippo = ((((np.abs(X) - 27) / 8) ** 2 + ((Y + 24) / 16) ** 2 + ((Z + 12) / 7) ** 2) < 1)
    dgm = (deep | hippo) & (pg > 0.3) & _isin(labels, (Tissue.GM, Tissue.WM))
    labels[dgm] = Tissue.DEEP_GM

    # cerebellum: below the tentorium (a surface rising towards the midline and forwards)
    tent = np.minimum(-6.0 + 0.45 * (Y + 55), -6.0) - 0.0075 * X ** 2
    cereb = (Z < tent) & (Y < -36 - 0.25 * np.abs(X)) & ~(((X / 14) ** 2 + ((Y + 26) / 17) ** 2) < 1)
    tissue = _isin(labels, (Tissue.GM, Tissue.WM, Tissue.DEEP_GM))
    labels[cereb & tissue & (pg >= pw)] = Tissue.CEREBELLUM_GM
    labels[cereb & tissue & (pg < pw)] = Tissue.CEREBELLUM_WM
    # brainstem: midline tissue below the thalami, in front of the cerebellum
    stem = (((X / 15) ** 2 + ((Y + 26) / 17) ** 2) < 1) & (Z < -6)
    stem |= (Z < -48) & ~cereb
    labels[stem & _isin(labels, (Tissue.GM, Tissue.WM, Tissue.DEEP_GM))] = Tissue.BRAINSTEM

    # ---- extra-cranial tissue ----
    f1 = smooth_field(shape, rng, 12.0)
    f2 = smooth_field(shape, rng, 8.0)
    # skull thickness: ~6 mm, thicker occipitally and at the base, thinner temporally
    temporal = np.exp(-((np.abs(X) - 60) / 14) ** 2) * np.exp(-((Z + 10) / 22) ** 2)
    skull_t = 6.0 + 1.5 * f1 + 2.0 * np.clip(-Y - 60, 0, 30) / 30 - 2.5 * temporal
    skull_t = np.maximum(skull_t, 2.5)
    muscle_t = 1.0 + 7.0 * temporal            # galea; temporalis muscle at the sides
    fat_t = 3.5 + 1.0 * f2
    skin_t = 2.0
    r_skull = skull_t
    r_muscle = r_skull + muscle_t
    r_fat = r_muscle + fat_t
    r_head = r_fat + skin_t
    cranium = (out_d > 0) & (out_d <= r_head)

    def ell(c, r):
        """Box slices and mask of an axis-aligned ellipsoid (MNI centre ``c`` and radii ``r``)."""
        ci = (c[2] - origin[2], -c[1] - origin[1], -c[0] - origin[0])  # (z, y, x) index
        ri = (r[2], r[1], r[0])
        sl = tuple(slice(max(int(math.floor(a - b)), 0), min(int(math.ceil(a + b)) + 1, n))
                   for a, b, n in zip(ci, ri, shape))
        m = (((X[:, :, sl[2]] - c[0]) / r[0]) ** 2 + ((Y[:, sl[1]] - c[1]) / r[1]) ** 2
             + ((Z[sl[0]] - c[2]) / r[2]) ** 2) < 1
        return sl, m

    # face and neck: ellipsoids and an elliptic cylinder below the brain
    soft = cranium | icv
    for c, r in (((0, 42, -52), (58, 48, 48)), ((0, 30, -92), (52, 46, 20))):  # face, jaw
        sl, m = ell(c, r)
        soft[sl] |= m
    sl, _ = ell((0, 82, -56), (15, 16, 22))  # nose: a wedge widening downwards
    w = 3 + 0.28 * np.clip(-(Z[sl[0]] + 30), 0, 40)
    soft[sl] |= ((X[:, :, sl[2]] / w) ** 2 + ((Y[:, sl[1]] - 82) / 16) ** 2 + ((Z[sl[0]] + 56) / 22) ** 2) < 1
    zn = int(-30 - origin[2])
    soft[:zn] |= (((X / 56) ** 2 + ((Y + 22) / 54) ** 2) < 1)  # neck
    soft = ndi.binary_closing(soft, iterations=3)
    soft = ndi.gaussian_filter(soft.astype(np.float32), 2.0) > 0.5
    soft |= icv
    surf_d = -signed_distance(soft)  # depth below the skin

    ext = soft & ~icv
    labels[ext] = Tissue.MUSCLE
    # subcutaneous fat and skin everywhere on the surface
    labels[ext & (surf_d <= skin_t + fat_t)] = Tissue.FAT
    # skull, diploe, galea/temporalis over the cranium
    bone = ext & (out_d <= r_skull)
    labels[ext & (out_d > r_skull) & (out_d <= r_muscle)] = Tissue.MUSCLE
    labels[bone] = Tissue.SKULL
    diploe = bone & (skull_t > 4.5) & (out_d > 0.35 * skull_t) & (out_d < 0.7 * skull_t)
    labels[diploe] = Tissue.FAT
    labels[ext & (surf_d <= skin_t)] = Tissue.SKIN

    def paint(c, r, value, where=None):
        sl, m = ell(c, r)
        m &= ext[sl]
        if where is not None:
            m &= where(labels[sl])
        labels[sl][m] = value

    # orbits (orbital fat, globes), maxillary sinuses with bony walls, nasal cavity, pharynx
    for sx in (-1, 1):
        paint((32.0 * sx, 44.0, -42.0), (18, 24, 17), Tissue.FAT)
        paint((32.0 * sx, 56.0, -42.0), (12, 12, 12), Tissue.EYES)
        paint((30.0 * sx, 42.0, -66.0), (15, 18, 16), Tissue.SKULL, lambda a: a != Tissue.EYES)
        paint((30.0 * sx, 42.0, -66.0), (12, 15, 13), Tissue.BACKGROUND)
    paint((0.0, 60.0, -60.0), (6, 22, 14), Tissue.BACKGROUND)
    sl = (slice(0, max(int(-75 - origin[2]), 0)), slice(None), slice(None))
    air = ((X / 9) ** 2 + ((Y - 18) / 8) ** 2) < 1
    labels[sl][np.broadcast_to(air, labels[sl].shape) & ext[sl]] = Tissue.BACKGROUND

    # spinal cord below the medulla, in CSF, behind vertebral bodies
    bottom = labels[off[0]] if 0 <= off[0] < shape[0] else labels[0]
    stem_xy = np.nonzero(bottom == Tissue.BRAINSTEM)
    if stem_xy[0].size:
        cy, cx = stem_xy[0].mean(), stem_xy[1].mean()
    else:
        cy, cx = -origin[1] + 40, -origin[0]
    rr = np.sqrt((yi[0] - cy) ** 2 + (xi[0] - cx) ** 2)
    vb = np.sqrt((yi[0] - (cy - 19)) ** 2 / 1.0 + (xi[0] - cx) ** 2 / 1.4)
    col = np.zeros(rr.shape, np.int16)  # one axial cross-section of the cervical spine
    col[vb <= 10] = Tissue.SKULL
    col[vb <= 8.5] = Tissue.FAT        # vertebral body marrow
    col[rr <= 10] = Tissue.SKULL       # vertebral arch / canal wall
    col[rr <= 8] = Tissue.EXTRA_CSF
    col[rr <= 4.5] = Tissue.SPINAL_CORD
    below = labels[:max(off[0], 0)]
    below[:] = np.where((col > 0)[None], col[None], below)
    # keep the foramen magnum open above the top of the cord
    zs = slice(max(int(-80 - origin[2]), 0), max(int(-40 - origin[2]), 0))
    fm = (rr <= 9)[None] & (labels[zs] == Tissue.SKULL)
    labels[zs][fm] = Tissue.EXTRA_CSF
    labels[~soft] = Tissue.BACKGROUND

    hemi = np.broadcast_to(np.where(X > 0, RIGHT, LEFT).astype(np.uint8), shape).copy()
    hemi[labels == 0] = 0
    return labels, hemi, origin


# ============================================================================================
# Hemispheres and coordinates
# ============================================================================================
def _lps_axis_coords(grid: Grid, sl=None, axis: int = 0):
    """LPS coordinate ``axis`` (0 = x, 1 = y, 2 = z) of the voxels of ``grid`` (or of the
    sub-box ``sl`` = (z, y, x) slices), broadcastable to the box shape, float32."""
    if sl is None:
        sl = tuple(slice(0, n) for n in grid.shape)
    zi, yi, xi = np.ogrid[sl[0], sl[1], sl[2]]
    a = grid.affine[axis]
    return (a[0] * xi + a[1] * yi + a[2] * zi + a[3]).astype(np.float32)


def _lps_coords(grid: Grid, sl=None):
    return tuple(_lps_axis_coords(grid, sl, ax) for ax in range(3))


def hemisphere_split(labels: sitk.Image) -> np.ndarray:
    """Left/right split of any label map (uint8 ``(nz, ny, nx)``: 1 = right, 2 = left, 0 = background)
    by the sagittal plane through the centroid of the brain (LPS +x is the patient's left).
    Use :func:`load_hemispheres` for the heads of :func:`load_head`, which is exact for them."""
    grid = Grid.from_sitk(labels)
    arr = sitk.GetArrayViewFromImage(labels)
    bm = brain_mask(arr)
    idx = np.argwhere(bm[::2, ::2, ::2]) * 2
    if idx.size == 0:
        idx = np.argwhere(arr[::2, ::2, ::2] > 0) * 2
    xm = grid.index_to_lps(idx[:, ::-1].astype(float))[:, 0].mean() if idx.size else 0.0
    x = _lps_axis_coords(grid, None, 0)
    hemi = np.where(x > xm, LEFT, RIGHT).astype(np.uint8)
    hemi = np.broadcast_to(hemi, arr.shape).copy()
    hemi[arr == 0] = 0
    return hemi


# ============================================================================================
# Lesions
# ============================================================================================
def _box(centre_idx, radius_mm, grid: Grid, pad: int = 0):
    """(z, y, x) slices of a box of half-size ``radius_mm`` around voxel index (z, y, x)."""
    sp = np.asarray(grid.spacing)[::-1]  # (dz, dy, dx)
    out = []
    for c, s, n in zip(centre_idx, sp, grid.shape):
        r = int(math.ceil(radius_mm / s)) + pad
        out.append(slice(max(int(round(c)) - r, 0), min(int(round(c)) + r + 1, n)))
    return tuple(out)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _ellipsoid_q(grid, sl, centre_lps, radii_mm, rot):
    """Normalised ellipsoidal radius (1 on the surface) over the box ``sl``."""
    X, Y, Z = _lps_coords(grid, sl)
    dx, dy, dz = X - centre_lps[0], Y - centre_lps[1], Z - centre_lps[2]
    q = 0
    for k in range(3):
        u = dx * rot[0, k] + dy * rot[1, k] + dz * rot[2, k]
        q = q + (u / radii_mm[k]) ** 2
    return np.sqrt(q)


def _pick_voxel(mask: np.ndarray, rng: np.random.Generator):
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return None
    return np.array(np.unravel_index(int(flat[rng.integers(flat.size)]), mask.shape))


def _territorial(arr, hemi, grid, rng, side):
    """An MCA-like wedge: a cone from beside the lateral ventricle out to the cortex."""
    s = 1.0 if side == LEFT else -1.0
    vent = np.argwhere((arr == Tissue.CSF) & (hemi == side))
    if len(vent) < 20:
        vent = np.argwhere(_isin(arr, CEREBRAL_LABELS) & (hemi == side))
    apex = grid.index_to_lps(vent.mean(axis=0)[::-1])
    apex = apex + np.array([s * 4.0, 0.0, 0.0])
    yaw, pitch = np.deg2rad(rng.uniform(-40, 40)), np.deg2rad(rng.uniform(-10, 35))
    axis = np.array([s * math.cos(pitch) * math.cos(yaw), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    alpha = np.deg2rad(rng.uniform(10, 34))
    r0 = 0.0 if rng.random() < 0.5 else rng.uniform(10, 35)
    radius = 90.0
    centre_idx = grid.lps_to_index(apex)[::-1]
    sl = _box(centre_idx, radius, grid, pad=3)
    # only the ipsilateral side of the apex can be reached (cone half-angle < 60 deg)
    x = _lps_axis_coords(grid, sl, 0)
    on_side = np.nonzero(np.any(s * (x - apex[0]) > -2, axis=(0, 1)))[0]
    if on_side.size:
        sl = (sl[0], sl[1], slice(sl[2].start + int(on_side.min()), sl[2].start + int(on_side.max()) + 1))
    X, Y, Z = _lps_coords(grid, sl)
    vx, vy, vz = X - apex[0], Y - apex[1], Z - apex[2]
    r = np.sqrt(vx * vx + vy * vy + vz * vz) + 1e-6
    cosang = (vx * axis[0] + vy * axis[1] + vz * axis[2]) / r
    shp = tuple(t.stop - t.start for t in sl)
    sig = 6.0 / min(grid.spacing)
    f1 = smooth_field(shp, rng, sig, factor=3)
    f2 = smooth_field(shp, rng, sig, factor=3)
    region = cosang > np.cos(np.minimum(alpha * (1 + 0.3 * f1), np.pi / 2))
    region &= (r > r0 * (1 + 0.25 * f2)) & (r < radius - 2)
    region &= _isin(arr[sl], CEREBRAL_LABELS) & (hemi[sl] == side)
    return sl, largest_component(region, connectivity=1)


def _blob(arr, hemi, grid, rng, side, centre_idx, radii, allowed, irregular=0.3):
    """An irregular ellipsoid around voxel ``centre_idx`` restricted to ``allowed`` labels."""
    rot = _random_rotation(rng)
    sl = _box(centre_idx, max(radii) * (1 + 2 * irregular) + 2, grid, pad=3)
    centre = grid.index_to_lps(np.asarray(centre_idx, float)[::-1])
    q = _ellipsoid_q(grid, sl, centre, radii, rot)
    if irregular > 0:
        shp = q.shape
        q = q + irregular * smooth_field(shp, rng, max(2.0, min(radii) / 2) / min(grid.spacing), factor=2)
    region = (q < 1) & _isin(arr[sl], allowed) & (hemi[sl] == side)
    return sl, largest_component(region, connectivity=1)


def _cortical(arr, hemi, grid, rng, side):
    c = _pick_voxel((arr == Tissue.GM) & (hemi == side), rng)
    if c is None:
        return None
    r = rng.uniform(6, 18)
    radii = r * rng.uniform(0.7, 1.3, 3)
    return _blob(arr, hemi, grid, rng, side, c, radii, CEREBRAL_LABELS, 0.35)


def _subcortical(arr, hemi, grid, rng, side):
    wm = np.flatnonzero((arr == Tissue.WM) & (hemi == side))
    if wm.size == 0:
        return None
    for _ in range(200):
        c = np.array(np.unravel_index(int(wm[rng.integers(wm.size)]), arr.shape))
        near = arr[_box(c, 6.0, grid)]
        if not np.any(_isin(near, (Tissue.GM, Tissue.EXTRA_CSF, Tissue.CEREBELLUM_GM,
                                   Tissue.CEREBELLUM_WM, Tissue.BRAINSTEM) + LESION_LABELS)):
            break
    else:
        return None
    radii = rng.uniform(4, 11) * rng.uniform(0.7, 1.3, 3)
    return _blob(arr, hemi, grid, rng, side, c, radii, (Tissue.WM, Tissue.DEEP_GM), 0.3)


def _lacunar(arr, hemi, grid, rng, side):
    c = None
    if rng.random() < 0.6:
        c = _pick_voxel((arr == Tissue.DEEP_GM) & (hemi == side), rng)
    if c is None:  # periventricular white matter: 4-9 mm out from a ventricle
        vent = np.flatnonzero((arr == Tissue.CSF) & (hemi == side))
        for _ in range(100 if vent.size else 0):
            v = np.array(np.unravel_index(int(vent[rng.integers(vent.size)]), arr.shape))
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            p = np.rint(v + d * rng.uniform(4, 9) / np.asarray(grid.spacing)[::-1]).astype(int)
            if np.all(p >= 0) and np.all(p < grid.shape) and arr[tuple(p)] == Tissue.WM:
                c = p
                break
    if c is None:
        return None
    diameter = math.exp(rng.uniform(math.log(3), math.log(15)))
    radii = diameter / 2 * np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.6)])
    allowed = (Tissue.WM, Tissue.DEEP_GM, Tissue.BRAINSTEM)
    return _blob(arr, hemi, grid, rng, side, c, radii, allowed, 0.1)


_MAKERS = {"territorial": _territorial, "cortical": _cortical, "subcortical": _subcortical,
           "lacunar": _lacunar}
#: Minimum size (mL, core) of each kind of lesion.
_MIN_ML = {"territorial": 2.0, "cortical": 0.3, "subcortical": 0.3, "lacunar": 0.01}


def _plan_kinds(rng, n_lesions, kinds):
    if kinds is not None:
        kinds = [str(k).lower() for k in kinds]
        bad = [k for k in kinds if k not in LESION_KINDS]
        if bad:
            raise ValueError(f"unknown lesion kind(s) {bad}; choose from {', '.join(LESION_KINDS)}")
        if not kinds and n_lesions:
            raise ValueError("kinds is empty")
        if n_lesions is None:
            return list(kinds)
        return [kinds[i] if i < len(kinds) else kinds[int(rng.integers(len(kinds)))]
                for i in range(n_lesions)]
    if n_lesions is None:
        n_lesions = int(rng.integers(1, 4))
    if n_lesions < 0:
        raise ValueError("the number of lesions must be >= 0")
    plan = []
    for i in range(n_lesions):
        if i == 0:
            plan.append(str(rng.choice(LESION_KINDS, p=[0.45, 0.15, 0.2, 0.2])))
        else:  # at most one territorial infarct unless asked for
            plan.append(str(rng.choice(LESION_KINDS, p=[0.0, 0.6, 0.25, 0.15])))
    return plan


def insert_lesions(labels: sitk.Image, rng: np.random.Generator, n_lesions: int | None = None,
                   kinds=None, *, hemispheres: sitk.Image | np.ndarray | None = None,
                   ex_vacuo: bool = True) -> tuple[sitk.Image, sitk.Image, list[dict]]:
    """Insert chronic stroke lesions into a tissue label map.

    Kinds (:data:`LESION_KINDS`): ``territorial`` (MCA-like wedge from beside the lateral
    ventricle out to the cortex of one hemisphere, ~2 to >100 mL), ``cortical`` (cortex and
    subjacent white matter, ~0.3-15 mL), ``subcortical`` (deep white matter / basal ganglia,
    ~0.3-10 mL) and ``lacunar`` (3-15 mm ellipsoids in deep grey matter, periventricular white
    matter or the pons). Borders are made irregular with smoothed random fields. Each lesion is
    a CSF-like cavity (``LESION_CORE``) wrapped in a 1-2 mm gliotic rim (``LESION_RIM``, 1 mm
    for lacunes); both lie in brain parenchyma only. With ``ex_vacuo``, the lateral ventricle
    of a hemisphere holding more than 8 mL of lesion is enlarged by 1-3 mm.

    Args:
        labels: a :class:`Tissue` label map (e.g. from :func:`load_head`).
        rng: the random generator (all choices come from it).
        n_lesions: how many; default 1-3 (the first usually the largest kind).
        kinds: kinds to draw from; with ``n_lesions`` None, exactly one lesion of each listed kind.
        hemispheres: hemisphere map (1 right, 2 left) such as :func:`load_hemispheres`; default
            :func:`hemisphere_split`.

    Returns:
        ``(labels_with_lesions, lesion_mask, lesions)``: the new label map (int16), a uint8 map
        on the same grid numbering each lesion's voxels (core and rim) 1..n (0 elsewhere; use
        ``> 0`` for a binary mask), and one dict per lesion with ``index``, ``kind``,
        ``hemisphere`` ("left"/"right"), ``volume_ml`` (core + rim), ``core_volume_ml``,
        ``rim_mm`` and ``centroid_lps_mm``. A lesion that cannot be placed after several
        attempts is left out (so the list may be shorter than asked).
    """
    grid = Grid.from_sitk(labels)
    arr = sitk.GetArrayFromImage(labels).astype(np.int16)
    if hemispheres is None:
        hemi = hemisphere_split(labels)
    elif isinstance(hemispheres, sitk.Image):
        hemi = sitk.GetArrayFromImage(hemispheres).astype(np.uint8)
    else:
        hemi = np.asarray(hemispheres, dtype=np.uint8)
    if hemi.shape != arr.shape:
        raise ValueError(f"hemisphere map shape {hemi.shape} does not match the labels {arr.shape}")
    plan = _plan_kinds(rng, n_lesions, kinds)
    inst = np.zeros(arr.shape, np.uint8)
    vox_ml = grid.voxel_volume_mm3 / 1000.0
    lesions = []
    for kind in plan:
        placed = None
        for _attempt in range(12):
            side = LEFT if rng.random() < 0.5 else RIGHT
            got = _MAKERS[kind](arr, hemi, grid, rng, side)
            if got is None:
                continue
            sl, core = got
            if core.sum() * vox_ml >= _MIN_ML[kind]:
                placed = (side, sl, core)
                break
        if placed is None or len(lesions) >= 255:
            continue
        side, sl, core = placed
        rim_mm = 1 if kind == "lacunar" else int(rng.integers(1, 3))
        sub = arr[sl]
        rim = ndi.binary_dilation(core, iterations=rim_mm) & ~core & _isin(sub, PARENCHYMA_LABELS)
        rim &= hemi[sl] == side
        sub[core] = Tissue.LESION_CORE
        sub[rim] = Tissue.LESION_RIM
        index = len(lesions) + 1
        inst[sl][core | rim] = index
        lesions.append(dict(index=index, kind=kind, hemisphere=HEMISPHERE_NAMES[side],
                            rim_mm=rim_mm, core_volume_ml=float(core.sum() * vox_ml)))
    # final per-lesion volumes and centroids (later lesions may overlap earlier rims)
    if lesions:
        counts = np.bincount(inst.ravel(), minlength=len(lesions) + 1)
        idx = np.nonzero(inst)
        sums = [np.bincount(inst[idx], weights=a, minlength=len(lesions) + 1) for a in idx]
        for les in lesions:
            i = les["index"]
            n = max(int(counts[i]), 1)
            zyx = np.array([sums[0][i], sums[1][i], sums[2][i]]) / n
            les["volume_ml"] = round(float(counts[i] * vox_ml), 4)
            les["core_volume_ml"] = round(les["core_volume_ml"], 4)
            les["centroid_lps_mm"] = [round(float(v), 2) for v in grid.index_to_lps(zyx[::-1])]
    if ex_vacuo:
        for side in (LEFT, RIGHT):
            vol = sum(les["volume_ml"] for les in lesions if les["hemisphere"] == HEMISPHERE_NAMES[side])
            if vol > 8:
                _enlarge_ventricle(arr, hemi, side, 1 + int(vol > 30) + int(vol > 70))
    out = grid.to_sitk(arr)
    mask = grid.to_sitk(inst)
    return out, mask, lesions


#: Non-lesional abnormalities :func:`add_abnormality` can make (for the anomaly evaluation).
ABNORMALITIES = ("ventricles", "atrophy")


def add_abnormality(labels: sitk.Image, rng: np.random.Generator, kind: str,
                    hemispheres: sitk.Image | np.ndarray | None = None) -> tuple[sitk.Image, sitk.Image]:
    """A non-lesional abnormality in a tissue label map: ``ventricles`` (both lateral ventricles
    enlarged by 2-4 mm into the surrounding white matter and deep grey matter) or ``atrophy``
    (focal cortical thinning: within a 25-40 mm ball on the convexity, the outer 1-2 mm of
    cortex becomes extra-cerebral CSF).

    Returns ``(new_labels, changed)``: the label map and a uint8 mask of the voxels that changed.
    """
    if kind not in ABNORMALITIES:
        raise ValueError(f"unknown abnormality {kind!r}; choose from {', '.join(ABNORMALITIES)}")
    grid = Grid.from_sitk(labels)
    arr = sitk.GetArrayFromImage(labels).astype(np.int16)
    before = arr.copy()
    if hemispheres is None:
        hemi = hemisphere_split(labels)
    else:
        hemi = (sitk.GetArrayFromImage(hemispheres) if isinstance(hemispheres, sitk.Image)
                else np.asarray(hemispheres)).astype(np.uint8)
    if kind == "ventricles":
        mm = int(rng.integers(2, 5))
        for side in (LEFT, RIGHT):
            _enlarge_ventricle(arr, hemi, side, mm)
    else:
        gm = arr == Tissue.GM
        outer = gm & ndi.binary_dilation(arr == Tissue.EXTRA_CSF, iterations=1)
        centre = _pick_voxel(outer, rng)
        radius = float(rng.uniform(25, 40))
        zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in arr.shape)]
        sp = grid.spacing[::-1]
        ball = ((zz - centre[0]) * sp[0]) ** 2 + ((yy - centre[1]) * sp[1]) ** 2 + \
               ((xx - centre[2]) * sp[2]) ** 2 <= radius ** 2
        csf = arr == Tissue.EXTRA_CSF
        for _ in range(int(rng.integers(1, 3))):
            peel = (arr == Tissue.GM) & ndi.binary_dilation(csf, iterations=1) & ball
            arr[peel] = Tissue.EXTRA_CSF
            csf |= peel
    changed = (arr != before).astype(np.uint8)
    return grid.to_sitk(arr), grid.to_sitk(changed)


def _enlarge_ventricle(arr, hemi, side, mm):
    vent = (arr == Tissue.CSF) & (hemi == side)
    pts = np.argwhere(vent)
    if len(pts) == 0:
        return
    lo = np.maximum(pts.min(axis=0) - mm - 1, 0)
    hi = np.minimum(pts.max(axis=0) + mm + 2, arr.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = arr[sl]
    grown = ndi.binary_dilation(vent[sl], iterations=mm)
    grow = grown & _isin(sub, (Tissue.WM, Tissue.DEEP_GM)) & (hemi[sl] == side)
    sub[grow] = Tissue.CSF


# ============================================================================================
# MR contrasts
# ============================================================================================
#: Mean intensity of each tissue (WM of T1-w = 1): MPRAGE-like T1-w and dark-fluid FLAIR at 3 T.
CONTRAST_MEANS = {
    "t1": {
        Tissue.BACKGROUND: 0.0, Tissue.CSF: 0.16, Tissue.GM: 0.60, Tissue.WM: 1.0,
        Tissue.DEEP_GM: 0.76, Tissue.CEREBELLUM_GM: 0.62, Tissue.CEREBELLUM_WM: 0.94,
        Tissue.BRAINSTEM: 0.86, Tissue.EXTRA_CSF: 0.14, Tissue.SKIN: 0.55, Tissue.FAT: 1.05,
        Tissue.SKULL: 0.06, Tissue.MUSCLE: 0.40, Tissue.EYES: 0.10, Tissue.SPINAL_CORD: 0.84,
        Tissue.LESION_CORE: 0.18, Tissue.LESION_RIM: 0.66,
    },
    "flair": {
        Tissue.BACKGROUND: 0.0, Tissue.CSF: 0.06, Tissue.GM: 0.78, Tissue.WM: 0.58,
        Tissue.DEEP_GM: 0.68, Tissue.CEREBELLUM_GM: 0.74, Tissue.CEREBELLUM_WM: 0.56,
        Tissue.BRAINSTEM: 0.64, Tissue.EXTRA_CSF: 0.07, Tissue.SKIN: 0.55, Tissue.FAT: 0.82,
        Tissue.SKULL: 0.05, Tissue.MUSCLE: 0.30, Tissue.EYES: 0.07, Tissue.SPINAL_CORD: 0.60,
        Tissue.LESION_CORE: 0.10, Tissue.LESION_RIM: 1.12,
    },
}
#: Within-tissue texture amplitude (relative std of a smooth multiplicative field).
TEXTURE = {Tissue.GM: 0.04, Tissue.WM: 0.03, Tissue.DEEP_GM: 0.05, Tissue.CEREBELLUM_GM: 0.05,
           Tissue.CEREBELLUM_WM: 0.04, Tissue.BRAINSTEM: 0.04, Tissue.CSF: 0.08, Tissue.EXTRA_CSF: 0.10,
           Tissue.SKIN: 0.08, Tissue.FAT: 0.06, Tissue.SKULL: 0.3, Tissue.MUSCLE: 0.10,
           Tissue.EYES: 0.05, Tissue.SPINAL_CORD: 0.04, Tissue.LESION_CORE: 0.15,
           Tissue.LESION_RIM: 0.08}
#: Reference intensity (the noise level is relative to it): white matter.
REFERENCE_TISSUE = Tissue.WM
#: FLAIR periventricular lining (WM within 2 mm of the ventricles), relative to WM.
FLAIR_PERIVENTRICULAR = 1.22


def _lut(table: dict, default: float = 0.0) -> np.ndarray:
    lut = np.full(N_LABELS, default, np.float32)
    for k, v in table.items():
        lut[int(k)] = v
    return lut


def bias_field(shape, rng: np.random.Generator, strength: float, order: int = 2) -> np.ndarray:
    """A smooth multiplicative field ``exp(strength * f)`` (float32), ``f`` a random sum of
    separable cosines up to ``order`` along each axis with unit standard deviation."""
    if strength <= 0:
        return np.ones(shape, np.float32)
    n = order + 1
    c = rng.standard_normal((n, n, n))
    ii, jj, kk = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    c /= 1.0 + ii + jj + kk
    c[0, 0, 0] = 0.0
    basis = [np.cos(np.pi * np.arange(n)[None, :] * (np.arange(s)[:, None] + 0.5) / s).astype(np.float32)
             for s in shape]  # (nz, n), (ny, n), (nx, n)
    t = np.einsum("ijk,zi->zjk", c, basis[0])
    t = np.einsum("zjk,yj->zyk", t, basis[1])
    f = (t.astype(np.float32) @ basis[2].T)  # (nz, ny, nx)
    sd = float(f.std())
    return np.exp(strength * f / (sd if sd > 0 else 1.0)).astype(np.float32)


def add_rician_noise(data: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of std ``sigma`` per channel."""
    if sigma <= 0:
        return data.astype(np.float32)
    re = data + rng.standard_normal(data.shape, dtype=np.float32) * sigma
    im = rng.standard_normal(data.shape, dtype=np.float32) * sigma
    return np.sqrt(re * re + im * im).astype(np.float32)


def contrast_parameters(contrast: str, rng: np.random.Generator | None = None,
                        randomize: bool = False) -> dict:
    """The intensity model of :func:`synthesize`: per-label ``means`` and ``texture`` lookup
    tables, ``voxel_std`` (per label, white noise before blurring), ``pv_sigma_mm``,
    ``bias_strength``, ``gamma``, ``noise`` (relative to the reference tissue) and
    ``periventricular``. ``randomize`` draws them SynthSeg-style (needs ``rng``): with
    probability 1/2 every tissue mean is uniform in [0, 1] (any contrast), otherwise the means
    of ``contrast`` are jittered by ~25 %; texture, blur, bias, gamma and noise are random too."""
    contrast = contrast.lower()
    if contrast not in CONTRAST_MEANS:
        raise ValueError(f"unknown contrast {contrast!r}; choose from {', '.join(CONTRAST_MEANS)}")
    means = _lut(CONTRAST_MEANS[contrast])
    texture = _lut(TEXTURE)
    p = dict(means=means, texture=texture, voxel_std=np.zeros(N_LABELS, np.float32),
             pv_sigma_mm=0.6, bias_strength=0.10, gamma=1.0, noise=0.02,
             periventricular=contrast == "flair")
    if not randomize:
        return p
    if rng is None:
        raise ValueError("randomize needs a random generator")
    if rng.random() < 0.5:
        m = rng.uniform(0.0, 1.0, N_LABELS).astype(np.float32)
    else:
        m = (means * np.exp(rng.normal(0, 0.25, N_LABELS))).astype(np.float32)
    m[Tissue.BACKGROUND] = rng.uniform(0, 0.03)
    p.update(means=m,
             texture=(texture * rng.uniform(0.3, 2.0, N_LABELS)).astype(np.float32),
             voxel_std=rng.uniform(0.0, 0.05, N_LABELS).astype(np.float32),
             pv_sigma_mm=float(rng.uniform(0.3, 1.2)),
             bias_strength=float(rng.uniform(0.0, 0.3)),
             gamma=float(np.exp(rng.normal(0, 0.2))),
             noise=float(rng.uniform(0.0, 0.06)),
             periventricular=bool(contrast == "flair" and rng.random() < 0.5))
    return p


def synthesize(labels: sitk.Image, contrast: str, rng: np.random.Generator, randomize: bool = False,
               *, noise: bool = True, params: dict | None = None) -> sitk.Image:
    """An MR image (float32, same grid as ``labels``) of a :class:`Tissue` label map.

    ``contrast`` is ``"t1"`` (MPRAGE-like: WM > GM > CSF, fat bright, bone dark, lesion cavity
    dark like CSF, gliotic rim slightly dark) or ``"flair"`` (dark fluid: CSF suppressed, GM a
    little brighter than WM, cavity dark, rim bright, thin bright periventricular lining).

    Model: per-tissue means times a smooth within-tissue texture field, blurred by
    ``pv_sigma_mm`` (a Gaussian on the piecewise-constant image equals mixing blurred one-hot
    tissue maps: soft partial-volume borders), times a smooth bias field, then (``noise``)
    Rician noise. Intensities are on a scale where T1-w white matter is ~1. ``randomize``
    draws all of that SynthSeg-style (see :func:`contrast_parameters`); ``params`` overrides.
    Leave ``noise`` off when the image will be resampled onto an acquisition grid, and add
    noise there (:func:`add_rician_noise`).
    """
    p = params if params is not None else contrast_parameters(contrast, rng, randomize)
    grid = Grid.from_sitk(labels)
    arr = sitk.GetArrayViewFromImage(labels)
    lab = np.clip(np.asarray(arr), 0, N_LABELS - 1).astype(np.intp)
    means = np.asarray(p["means"], np.float32)
    img = means[lab]
    if p.get("periventricular"):
        _periventricular(img, lab, means[Tissue.WM] * FLAIR_PERIVENTRICULAR, grid)
    sp = min(grid.spacing)
    tex = smooth_field(lab.shape, rng, 3.0 / sp, factor=3)
    img *= 1.0 + np.asarray(p["texture"], np.float32)[lab] * tex
    del tex
    vstd = np.asarray(p["voxel_std"], np.float32)
    if np.any(vstd > 0):
        img += vstd[lab] * rng.standard_normal(lab.shape, dtype=np.float32)
    sig = float(p["pv_sigma_mm"])
    if sig > 0:
        img = ndi.gaussian_filter(img, [sig / s for s in grid.spacing[::-1]], mode="nearest")
    np.maximum(img, 0, out=img)
    img *= bias_field(lab.shape, rng, float(p["bias_strength"]))
    if p.get("gamma", 1.0) != 1.0:
        top = float(img.max()) or 1.0
        img = (top * (img / top) ** float(p["gamma"])).astype(np.float32)
    if noise and p["noise"] > 0:
        ref = float(means[REFERENCE_TISSUE]) or float(means.max()) or 1.0
        img = add_rician_noise(img, rng, float(p["noise"]) * ref)
    return grid.to_sitk(img.astype(np.float32, copy=False))


def _periventricular(img, lab, value, grid, mm: float = 2.0):
    vent = lab == Tissue.CSF
    pts = np.argwhere(vent)
    if len(pts) == 0:
        return
    it = max(1, int(round(mm / min(grid.spacing))))
    lo = np.maximum(pts.min(axis=0) - it - 1, 0)
    hi = np.minimum(pts.max(axis=0) + it + 2, lab.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    ring = ndi.binary_dilation(vent[sl], iterations=it) & (lab[sl] == Tissue.WM)
    img[sl][ring] = value


# ============================================================================================
# Scan planning and sampling
# ============================================================================================
#: Read, phase and slice-normal directions (LPS columns) of each named orientation.
#: axial: read R->L (+x), phase A->P (+y), slices inferior->superior (+z) -- as Siemens stores
#: transversal images; sagittal: read A->P, phase S->I, slices left->right (normal -x);
#: coronal: read R->L, phase S->I, slices anterior->posterior; flipped: axial mirrored, read
#: L->R (-x) with phase A->P, so the (right-handed) slice normal points to the feet and slices
#: run superior->inferior; oblique: axial tilted 18 deg about the left-right axis (AC-PC-like)
#: and 12 deg about the anterior-posterior axis.
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "flipped": ((-1, 0, 0), (0, 1, 0)),
    "oblique": None,
}
OBLIQUE_TILT_DEG = (18.0, 12.0)


def orientation_direction(orientation: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """3x3 direction matrix (columns read, phase, normal in LPS) of a named orientation. With
    ``rng``, oblique tilts are drawn (15-20 deg and 5-15 deg, random signs) and the other
    orientations get up to ~3 deg of planning imprecision."""
    orientation = orientation.lower()
    if orientation not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r}; choose from {', '.join(ORIENTATIONS)}")
    if orientation == "oblique":
        read, phase = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        if rng is None:
            ax, ay = OBLIQUE_TILT_DEG
        else:
            ax = rng.uniform(15, 20) * rng.choice([-1, 1])
            ay = rng.uniform(5, 15) * rng.choice([-1, 1])
        rot = _rotation(ax, ay, 0.0)
    else:
        read, phase = (np.asarray(v, float) for v in ORIENTATIONS[orientation])
        rot = np.eye(3) if rng is None else _rotation(*rng.uniform(-3, 3, 3))
    read, phase = rot @ read, rot @ phase
    return np.stack([read, phase, np.cross(read, phase)], axis=1)


def acquisition_grid(label_image: sitk.Image, orientation: str, spacing_mm=(1.0, 1.0, 1.0),
                     rng: np.random.Generator | None = None, *, slab_margin_mm: float = 4.0,
                     inplane_margin_mm: float = 4.0, matrix_multiple: int = 2) -> Grid:
    """Plan a scan of a head: a :class:`Grid` of the named orientation and voxel size.

    The slice direction covers the brain plus ``slab_margin_mm``; the field of view in-plane
    covers the whole head within that slab plus ``inplane_margin_mm``, centred on it; matrix
    sizes are rounded up to multiples of ``matrix_multiple``. ``spacing_mm`` is
    ``(read, phase, slice)``. With ``rng`` the plan varies a little (see
    :func:`orientation_direction`, plus a shift of up to 4 mm).
    """
    d = orientation_direction(orientation, rng)
    spacing = np.asarray(spacing_mm, float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be three positive numbers, got {spacing_mm}")
    src = Grid.from_sitk(label_image)
    arr = sitk.GetArrayViewFromImage(label_image)
    step = 3
    sub = np.asarray(arr[::step, ::step, ::step])
    head = np.argwhere(sub > 0) * step
    brain = np.argwhere(brain_mask(sub)) * step
    if len(head) == 0:
        raise ValueError("the label map is empty")
    if len(brain) == 0:
        brain = head
    ph = src.index_to_lps(head[:, ::-1].astype(float)) @ d  # (n, 3) along read, phase, normal
    pb = src.index_to_lps(brain[:, ::-1].astype(float)) @ d
    lo_n, hi_n = pb[:, 2].min() - slab_margin_mm, pb[:, 2].max() + slab_margin_mm
    in_slab = ph[(ph[:, 2] >= lo_n) & (ph[:, 2] <= hi_n)]
    margin = np.array([inplane_margin_mm, inplane_margin_mm, 0.0])
    lo = np.array([in_slab[:, 0].min(), in_slab[:, 1].min(), lo_n]) - margin
    hi = np.array([in_slab[:, 0].max(), in_slab[:, 1].max(), hi_n]) + margin
    if rng is not None:
        shift = rng.uniform(-4, 4, 3)
        lo, hi = lo + shift, hi + shift
    n = np.ceil((hi - lo) / spacing).astype(int)
    m = max(int(matrix_multiple), 1)
    n[:2] = -(-n[:2] // m) * m
    n = np.maximum(n, 1)
    centre = d @ ((lo + hi) / 2)
    origin = centre - d @ (spacing * (n - 1) / 2)
    return Grid((int(n[2]), int(n[1]), int(n[0])), tuple(spacing), d, origin)


def resample(image: sitk.Image, grid: Grid, interpolator=sitk.sitkLinear,
             slice_thickness_mm: float | None = None, default_value: float = 0.0) -> Volume:
    """Sample ``image`` on ``grid`` (a :class:`Volume`, float32).

    With ``slice_thickness_mm`` (and a non-nearest-neighbour interpolator) each slice
    integrates a Gaussian slice profile of that FWHM: the image is first sampled on slices
    ``k`` times finer than the grid's (at most the source voxel size apart), smoothed along the
    slice normal, then every ``k``-th slice is kept. In-plane, voxels coarser than the source
    are anti-aliased the same way. Labels: use ``sitk.sitkNearestNeighbor`` (never smoothed).
    """
    nz, ny, nx = grid.shape
    dx, dy, dz = grid.spacing
    src_sp = min(image.GetSpacing())
    nearest = interpolator == sitk.sitkNearestNeighbor
    thick = float(slice_thickness_mm or 0.0)
    if nearest or thick <= 1.2 * src_sp:
        data = _sample(image, grid, interpolator, default_value)
        return Volume(data, grid)
    k = max(1, int(math.ceil(dz / src_sp)))
    fine = dz / k
    sig_z = thick / 2.3548 / fine
    pad = int(math.ceil(3 * sig_z))
    normal = grid.direction[:, 2]
    fgrid = Grid(((nz - 1) * k + 1 + 2 * pad, ny, nx), (dx, dy, fine), grid.direction,
                 grid.origin - normal * pad * fine)
    data = _sample(image, fgrid, interpolator, default_value)
    sig_xy = [math.sqrt(max(s * s - src_sp * src_sp, 0.0)) / 2.3548 / s for s in (dy, dx)]
    data = ndi.gaussian_filter(data, [sig_z, sig_xy[0], sig_xy[1]], mode="nearest")
    data = np.ascontiguousarray(data[pad:pad + (nz - 1) * k + 1:k])
    return Volume(data.astype(np.float32, copy=False), grid)


def _sample(image: sitk.Image, grid: Grid, interpolator, default_value: float) -> np.ndarray:
    f = sitk.ResampleImageFilter()
    f.SetSize((grid.shape[2], grid.shape[1], grid.shape[0]))
    f.SetOutputSpacing(grid.spacing)
    f.SetOutputOrigin(tuple(float(v) for v in grid.origin))
    f.SetOutputDirection(tuple(float(v) for v in grid.direction.flatten()))
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(f.Execute(image)).astype(np.float32, copy=False)
