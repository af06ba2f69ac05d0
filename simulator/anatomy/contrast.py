"""MR contrasts: label map -> T1-w or FLAIR intensities (tissue means, texture, bias field,
Rician noise)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from openrecon_stroke.geometry import Grid

from .labels import N_LABELS, Tissue, smooth_field

# ============================================================================================
# MR contrasts
# ============================================================================================
#: Mean intensity of each tissue (WM of T1-w = 1) as (MPRAGE-like T1-w, dark-fluid FLAIR) at 3 T.
_MEANS_T1_FLAIR = {
    Tissue.BACKGROUND: (0.0, 0.0), Tissue.CSF: (0.16, 0.06), Tissue.GM: (0.60, 0.78), Tissue.WM: (1.0, 0.58),
    Tissue.DEEP_GM: (0.76, 0.68), Tissue.CEREBELLUM_GM: (0.62, 0.74), Tissue.CEREBELLUM_WM: (0.94, 0.56),
    Tissue.BRAINSTEM: (0.86, 0.64), Tissue.EXTRA_CSF: (0.14, 0.07), Tissue.SKIN: (0.55, 0.55),
    Tissue.FAT: (1.05, 0.82), Tissue.SKULL: (0.06, 0.05), Tissue.MUSCLE: (0.40, 0.30), Tissue.EYES: (0.10, 0.07),
    Tissue.SPINAL_CORD: (0.84, 0.60), Tissue.LESION_CORE: (0.18, 0.10), Tissue.LESION_RIM: (0.66, 1.12),
}
#: contrast -> tissue -> mean intensity
CONTRAST_MEANS = {c: {t: v[i] for t, v in _MEANS_T1_FLAIR.items()} for i, c in enumerate(("t1", "flair"))}
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
                        randomize: bool | str = False) -> dict:
    """The intensity model of :func:`synthesize`: per-label ``means`` and ``texture`` lookup
    tables, ``voxel_std`` (per label, white noise before blurring), ``pv_sigma_mm``,
    ``bias_strength``, ``gamma``, ``noise`` (relative to the reference tissue) and
    ``periventricular``. ``randomize`` draws them SynthSeg-style (needs ``rng``): with
    probability 1/2 every tissue mean is uniform in [0, 1] (any contrast), otherwise the means
    of ``contrast`` are jittered by ~25 %; texture, blur, bias, gamma and noise are random too.
    ``randomize="realistic"`` always jitters (the same random draws, so the same generator
    state gives the same jittered contrasts): images keep the contrast's tissue order."""
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
    if randomize not in (True, "realistic"):
        raise ValueError(f"randomize must be False, True or 'realistic', not {randomize!r}")
    if rng.random() < 0.5 and randomize != "realistic":
        m = rng.uniform(0.0, 1.0, N_LABELS).astype(np.float32)
    else:
        m = (means * np.exp(rng.normal(0, 0.25, N_LABELS))).astype(np.float32)
    if randomize == "realistic":
        m = _in_tissue_order(m, means)
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


#: Tissues whose order of brightness a "realistic" contrast keeps (that of the contrast's means).
ORDERED_TISSUES = (Tissue.CSF, Tissue.GM, Tissue.WM)
#: ... each at least this factor brighter than the next darker one.
ORDER_MARGIN = 1.05


def _in_tissue_order(m: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Jittered means ``m`` with the values drawn for :data:`ORDERED_TISSUES` given back to them in
    the order of ``base`` (the darkest drawn value to the tissue darkest in ``base``), then spread
    to :data:`ORDER_MARGIN` apart by darkening the darker one. Without this, independent jitter
    made 6 % of T1-w images with grey matter brighter than white matter and 9 % of FLAIRs with it
    darker (measured on 240 cases, 2026-12-01). No random draw: the rest of the draws stay."""
    out = m.copy()
    tissues = sorted(ORDERED_TISSUES, key=lambda t: float(base[t]))
    values = sorted(float(m[t]) for t in tissues)
    for i in range(len(tissues) - 1, 0, -1):  # from the brightest down
        values[i - 1] = min(values[i - 1], values[i] / ORDER_MARGIN)
    for t, v in zip(tissues, values):
        out[t] = v
    return out


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
