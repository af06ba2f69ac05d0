"""Chronic stroke lesions (territorial, cortical, subcortical, lacunar) and other abnormalities
(enlarged ventricles, atrophy) inserted into a label map."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from openrecon_stroke.geometry import Grid
from openrecon_stroke.masks import largest_component

from .labels import (
    CEREBRAL_LABELS,
    HEMISPHERE_NAMES,
    LEFT,
    LESION_KINDS,
    LESION_LABELS,
    PARENCHYMA_LABELS,
    RIGHT,
    Tissue,
    hemisphere_split,
    isin_labels,
    lps_axis_coords,
    lps_coords,
    smooth_field,
)


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
    X, Y, Z = lps_coords(grid, sl)
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
        vent = np.argwhere(isin_labels(arr, CEREBRAL_LABELS) & (hemi == side))
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
    x = lps_axis_coords(grid, sl, 0)
    on_side = np.nonzero(np.any(s * (x - apex[0]) > -2, axis=(0, 1)))[0]
    if on_side.size:
        sl = (sl[0], sl[1], slice(sl[2].start + int(on_side.min()), sl[2].start + int(on_side.max()) + 1))
    X, Y, Z = lps_coords(grid, sl)
    vx, vy, vz = X - apex[0], Y - apex[1], Z - apex[2]
    r = np.sqrt(vx * vx + vy * vy + vz * vz) + 1e-6
    cosang = (vx * axis[0] + vy * axis[1] + vz * axis[2]) / r
    shp = tuple(t.stop - t.start for t in sl)
    sig = 6.0 / min(grid.spacing)
    f1 = smooth_field(shp, rng, sig, factor=3)
    f2 = smooth_field(shp, rng, sig, factor=3)
    region = cosang > np.cos(np.minimum(alpha * (1 + 0.3 * f1), np.pi / 2))
    region &= (r > r0 * (1 + 0.25 * f2)) & (r < radius - 2)
    region &= isin_labels(arr[sl], CEREBRAL_LABELS) & (hemi[sl] == side)
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
    region = (q < 1) & isin_labels(arr[sl], allowed) & (hemi[sl] == side)
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
        if not np.any(isin_labels(near, (Tissue.GM, Tissue.EXTRA_CSF, Tissue.CEREBELLUM_GM,
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


def _cerebellar(arr, hemi, grid, rng, side):
    """A posterior-circulation infarct: an irregular blob in one cerebellar hemisphere."""
    c = _pick_voxel(isin_labels(arr, (Tissue.CEREBELLUM_GM, Tissue.CEREBELLUM_WM)) & (hemi == side), rng)
    if c is None:
        return None
    radii = rng.uniform(4, 14) * rng.uniform(0.7, 1.3, 3)
    return _blob(arr, hemi, grid, rng, side, c, radii, (Tissue.CEREBELLUM_GM, Tissue.CEREBELLUM_WM), 0.3)


_MAKERS = {"territorial": _territorial, "cortical": _cortical, "subcortical": _subcortical,
           "lacunar": _lacunar, "cerebellar": _cerebellar}
#: Minimum size (mL, core) of each kind of lesion.
_MIN_ML = {"territorial": 2.0, "cortical": 0.3, "subcortical": 0.3, "lacunar": 0.01, "cerebellar": 0.2}


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
            plan.append(str(rng.choice(LESION_KINDS[:4], p=[0.45, 0.15, 0.2, 0.2])))
        else:  # at most one territorial infarct unless asked for
            plan.append(str(rng.choice(LESION_KINDS[:4], p=[0.0, 0.6, 0.25, 0.15])))
    return plan


def insert_lesions(labels: sitk.Image, rng: np.random.Generator, n_lesions: int | None = None,
                   kinds=None, *, hemispheres: sitk.Image | np.ndarray | None = None,
                   ex_vacuo: bool = True) -> tuple[sitk.Image, sitk.Image, list[dict]]:
    """Insert chronic stroke lesions into a tissue label map.

    Kinds (:data:`LESION_KINDS`): ``territorial`` (MCA-like wedge from beside the lateral
    ventricle out to the cortex of one hemisphere, ~2 to >100 mL), ``cortical`` (cortex and
    subjacent white matter, ~0.3-15 mL), ``subcortical`` (deep white matter / basal ganglia,
    ~0.3-10 mL), ``lacunar`` (3-15 mm ellipsoids in deep grey matter, periventricular white
    matter or the pons) and ``cerebellar`` (one cerebellar hemisphere, ~0.2-10 mL; drawn only
    when asked for in ``kinds``). Borders are made irregular with smoothed random fields. Each lesion is
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
        rim = ndi.binary_dilation(core, iterations=rim_mm) & ~core & isin_labels(sub, PARENCHYMA_LABELS)
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


def enlarge_ventricles(labels: sitk.Image, fraction: float) -> tuple[sitk.Image, float, float]:
    """Both lateral ventricles (``Tissue.CSF``) grown by ``fraction`` of their volume (0.2 =
    20 % larger) into the white matter and deep grey matter around them, nearest voxels first
    (a uniform shell, as in ventricular enlargement). Returns ``(labels, volume_before_ml,
    volume_after_ml)``."""
    if fraction < 0:
        raise ValueError("fraction must be >= 0")
    grid = Grid.from_sitk(labels)
    arr = sitk.GetArrayFromImage(labels).astype(np.int16)
    vent = arr == Tissue.CSF
    vox_ml = grid.voxel_volume_mm3 / 1000.0
    before = float(vent.sum()) * vox_ml
    grow = int(round(vent.sum() * fraction))
    if grow:
        dist = ndi.distance_transform_edt(~vent, sampling=grid.spacing[::-1])
        allowed = isin_labels(arr, (Tissue.WM, Tissue.DEEP_GM)) & (dist <= 25.0)
        cand = np.flatnonzero(allowed)
        order = cand[np.argsort(dist.ravel()[cand], kind="stable")][:grow]
        arr.ravel()[order] = Tissue.CSF
    after = float((arr == Tissue.CSF).sum()) * vox_ml
    return grid.to_sitk(arr), before, after


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
    grow = grown & isin_labels(sub, (Tissue.WM, Tissue.DEEP_GM)) & (hemi[sl] == side)
    sub[grow] = Tissue.CSF
