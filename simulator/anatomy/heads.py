"""Heads: 1 mm label maps of the MNI template (built once, cached on disk) or of a SynthSeg /
FreeSurfer label map, and their left/right hemisphere split."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from openrecon_stroke.templates import template_dir

from .labels import LEFT, RIGHT, Tissue, isin_labels, signed_distance, smooth_field


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
    dgm = (deep | hippo) & (pg > 0.3) & isin_labels(labels, (Tissue.GM, Tissue.WM))
    labels[dgm] = Tissue.DEEP_GM

    # cerebellum: below the tentorium (a surface rising towards the midline and forwards)
    tent = np.minimum(-6.0 + 0.45 * (Y + 55), -6.0) - 0.0075 * X ** 2
    cereb = (Z < tent) & (Y < -36 - 0.25 * np.abs(X)) & ~(((X / 14) ** 2 + ((Y + 26) / 17) ** 2) < 1)
    tissue = isin_labels(labels, (Tissue.GM, Tissue.WM, Tissue.DEEP_GM))
    labels[cereb & tissue & (pg >= pw)] = Tissue.CEREBELLUM_GM
    labels[cereb & tissue & (pg < pw)] = Tissue.CEREBELLUM_WM
    # brainstem: midline tissue below the thalami, in front of the cerebellum
    stem = (((X / 15) ** 2 + ((Y + 26) / 17) ** 2) < 1) & (Z < -6)
    stem |= (Z < -48) & ~cereb
    labels[stem & isin_labels(labels, (Tissue.GM, Tissue.WM, Tissue.DEEP_GM))] = Tissue.BRAINSTEM

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
