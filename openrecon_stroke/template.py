"""Registration to the symmetric MNI ICBM152 2009a template, the anatomical frame later stages use.

The template (T1-w brain, grey- and white-matter probability maps, 1 mm) is found by
:mod:`openrecon_stroke.templates` (the scanner image carries just these files; licence there).

Conventions: SimpleITK images in LPS millimetres. MNI coordinates are RAS (x towards the patient's
Right, y Anterior, z Superior): an LPS point (x, y, z) has MNI coordinates (-x, -y, z) in
template space. The template is symmetric: the mirror of an MNI point (x, y, z) is (-x, y, z).

A :class:`TemplateRegistration` holds both directions:

* ``to_native``: maps *template* points to *native* points (ITK's resampling convention: resample a
  native image with it to bring it into template space);
* ``to_template``: maps native points to template points (resample a template-space map with it
  to bring it back onto a series' own grid).

Method (contrast-agnostic, so a FLAIR alone registers as well as a T1-w):

1. affine: the HD-BET brain (N4-corrected, masked) onto the template brain by Mattes mutual
   information, from a centre-of-mass start (seven head pitches tried), rigid then affine, on an
   8, 4 and 2 mm pyramid; image gradients are taken at the metric's sampled points only;
2. deformable: the affinely registered brain against a *synthetic template in its own contrast*
   (the template's tissue probability maps weighted by the brain's own grey matter, white matter
   and CSF intensities, estimated robustly), by diffeomorphic demons on 2 mm copies (the field
   smoothed by 3 mm; a result that fails the check is tried again with a smoother field: over
   1.125 of a thick-slice series' slices, then 4.5 mm). Voxels far brighter or darker than that template
   expects *and* away from the template's CSF (a lesion cavity in white matter, say) are
   replaced by the expected value first, so that a lesion does not drive the deformation
   (cost-function masking), while enlarged ventricles, which border template CSF, are still
   followed;
3. check: brain overlap (Dice of the warped HD-BET mask with the template brain), correlation
   with the synthetic template, and the Jacobian determinant range. A deformable step that fails
   its check falls back to the affine one; an affine step that fails leaves the study without
   template space, with a warning saying so (unless its correlation alone falls short by a
   little: then only a deformable result that passes may be used, :class:`TemplateCheck`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .resample import same_grid

log = logging.getLogger(__name__)

TEMPLATE_NAME = "MNI ICBM152 2009a nonlinear symmetric"


@dataclass(frozen=True)
class Template:
    """The template on one grid (LPS, axis-aligned): T1-w brain (0 outside), tissue
    probabilities ``gm``, ``wm``, ``csf`` (0-1, summing to 1 inside the brain) and the brain
    mask (``uint8``), all SimpleITK images on the same grid."""

    t1: sitk.Image
    gm: sitk.Image
    wm: sitk.Image
    csf: sitk.Image
    brain: sitk.Image
    spacing_mm: float

    def arrays(self) -> dict[str, np.ndarray]:
        """``(nz, ny, nx)`` float32 arrays of every map (brain as 0/1): made on the first call,
        then the same read-only arrays for every caller (the template is cached per spacing)."""
        if "_arrays" not in self.__dict__:
            out = {}
            for k in ("t1", "gm", "wm", "csf", "brain"):
                a = sitk.GetArrayFromImage(getattr(self, k)).astype(np.float32)
                a.setflags(write=False)
                out[k] = a
            object.__setattr__(self, "_arrays", out)  # a cache on a frozen dataclass
        return dict(self.__dict__["_arrays"])

    @property
    def grid(self) -> sitk.Image:
        return self.brain


def _read(kind: str) -> sitk.Image:
    from .templates import template_path

    img = sitk.ReadImage(str(template_path(kind)))
    return sitk.Cast(sitk.DICOMOrient(img, "LPS"), sitk.sitkFloat32)


def template_grid(spacing_mm: float) -> sitk.Image:
    """Empty float image on an isotropic ``spacing_mm`` grid over the template's box, with a voxel
    column on the mid-sagittal plane (MNI x = 0), so that flipping the array's x axis mirrors
    the brain about the template's plane of symmetry exactly."""
    ref = _read("t1")
    o = np.array(ref.GetOrigin())
    ext = (np.array(ref.GetSize()) - 1) * np.array(ref.GetSpacing())
    half = int(np.floor(abs(o[0]) / spacing_mm + 1e-6))
    size = [2 * half + 1] + [int(np.floor(e / spacing_mm + 1e-6)) + 1 for e in ext[1:]]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing((float(spacing_mm),) * 3)
    grid.SetDirection(ref.GetDirection())
    grid.SetOrigin((float(np.sign(o[0]) * half * spacing_mm), float(o[1]), float(o[2])))
    return grid


@lru_cache(maxsize=4)
def load_template(spacing_mm: float = 1.0) -> Template:
    """The template on :func:`template_grid` (linear interpolation; each map smoothed to the new
    voxel size first). Cached per spacing."""
    t1 = _read("t1")
    gm, wm = (sitk.Cast(_read(k) / 255.0, sitk.sitkFloat32) for k in ("gm", "wm"))
    brain_a = sitk.GetArrayFromImage(t1) > 0
    brain_a = ndimage.binary_fill_holes(
        ndimage.binary_opening(brain_a, iterations=1) | (sitk.GetArrayFromImage(gm + wm) > 0.5)
    )
    brain = sitk.GetImageFromArray(brain_a.astype(np.float32))
    brain.CopyInformation(t1)
    gm_a, wm_a = sitk.GetArrayFromImage(gm), sitk.GetArrayFromImage(wm)
    csf = sitk.GetImageFromArray((np.clip(1.0 - gm_a - wm_a, 0, 1) * brain_a).astype(np.float32))
    csf.CopyInformation(t1)
    maps = {"t1": t1, "gm": gm, "wm": wm, "csf": csf, "brain": brain}
    ref = template_grid(spacing_mm)
    sigma = 0.5 * np.sqrt(max(spacing_mm**2 - 1.0, 0.0))
    maps = {
        k: sitk.Resample(
            sitk.SmoothingRecursiveGaussian(v, sigma) if sigma > 0 else v,
            ref,
            sitk.Transform(),
            sitk.sitkLinear,
            0.0,
            sitk.sitkFloat32,
        )
        for k, v in maps.items()
    }
    maps["brain"] = sitk.Cast(maps["brain"] >= 0.5, sitk.sitkUInt8)
    return Template(spacing_mm=float(spacing_mm), **maps)


def mni_to_lps(xyz_mni) -> np.ndarray:
    """MNI (RAS) millimetres -> template-space LPS millimetres (and back: the map is its own inverse)."""
    p = np.asarray(xyz_mni, dtype=float)
    return p * np.array([-1.0, -1.0, 1.0])


lps_to_mni = mni_to_lps


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TemplateCheck:
    """Limits a registration must respect to be used.

    ``min_inside``: share of the registered brain mask that falls inside the template's brain
    (dilated by 4 mm); a misregistered brain spills out of it. (Overlap the other way, how much
    of the template the series covers, is reported as ``coverage``, not checked: a series may
    cover only part of the brain.) ``min_correlation``: Pearson correlation between the
    registered brain and the template in its contrast (both smoothed by 2 mm), inside the
    brain. ``jacobian_range``: allowed range of the deformation's Jacobian determinant (1 = no
    local volume change; its 0.5th and 99.5th percentiles inside the brain are checked).

    ``min_affine_correlation``: when no affine fit tried reaches ``min_correlation``, the
    best-correlated one that reaches this and passes every other check goes on to the deformable
    step on probation: it is used only if the deformable result passes the whole check (never
    alone as an affine-only registration). Correctly placed affine fits of SynthSeg-jittered
    FLAIRs reached only 0.42-0.47 (within 1.8 mm of the same head's T1-w fit), where fits from
    a wrong start reached at most 0.36 (6 test studies, 12 wrong fits; 2026-12-01).
    """

    min_inside: float = 0.93
    min_correlation: float = 0.5
    jacobian_range: tuple[float, float] = (0.2, 5.0)
    min_affine_correlation: float = 0.4


@dataclass(frozen=True)
class DemonsSettings:
    """Diffeomorphic demons on a pyramid of the 2 mm working copies.

    ``iterations`` per level (coarse to fine), ``shrink`` factors per level, ``smoothing_mm``:
    standard deviation of the Gaussian that regularises the displacement field (mm); where the
    result fails its check and ``smoothing_per_slice`` times the series' largest voxel size is
    more, the step is tried again with that (a thick-slice series holds no detail finer than its
    slices for the field to follow). ``outlier_z``: residuals beyond this many robust standard
    deviations, away from the template's CSF, are masked from the cost (see the module
    docstring).
    """

    #: 40 + 25 and 60 + 80 were measured and not adopted (2026-12-01, models/lesion/MODEL_CARD.md):
    #: fewer save 0.5 s but add false lesion on healthy heads (FLAIR, map 16: 14.6 -> 16.3 mL);
    #: more help every figure a little for 1.0 s more
    iterations: tuple[int, ...] = (60, 40)
    shrink: tuple[int, ...] = (4, 2)
    smoothing_mm: float = 3.0
    #: 4 mm FLAIR slices -> 4.5 mm. On FLAIRs registered alone with oblique 4 mm slices, 3 mm
    #: let the field fold (Jacobian 0.16 at the 0.5th percentile, check fails) where the affine
    #: fit was right (within 1.6-2.6 mm of the same head's T1-w fit). Used for every thick-slice
    #: series, it added false lesion on healthy heads; as a second try it only rescues (lesion
    #: card, 2026-12-01)
    smoothing_per_slice: float = 1.125
    #: A result that still fails its check (after the thick-slice try, if there was one) is tried
    #: once more with the field smoothed by this much (mm) when that is smoother than every try
    #: so far. On T1-w contrasts no training case had (grey matter 0.35-0.53 of white matter), 3 mm
    #: let the field fold (Jacobian 0.11-0.12 at the 0.5th percentile) and the study fell back to
    #: the affine fit (6 of 10 validation cases, 5 of 18 test cases); 4.5 mm passed (lesion card,
    #: 2026-12-01). Studies that passed before are untouched.
    retry_smoothing_mm: float = 4.5
    update_smoothing_mm: float = 0.0
    outlier_z: float = 3.5
    working_mm: float = 2.0
    inverse_shrink: int = 2


@dataclass
class TemplateRegistration:
    """A series' registration to the template (see the module docstring for directions).

    ``kind``: ``"deformable"``, ``"affine"`` (the deformable step failed its check) or ``"none"``
    (registration failed: ``to_native``/``to_template`` are None). ``log_jacobian``: log of the
    deformation's Jacobian determinant on the 2 mm template grid (0 = no volume change; for the
    affine part add ``log(affine_det)``), or None. ``summary`` holds the check's figures.
    """

    kind: str
    to_native: sitk.Transform | None
    to_template: sitk.Transform | None
    affine: sitk.Transform | None
    log_jacobian: sitk.Image | None
    affine_det: float
    tissue_means: dict[str, float]
    ok: bool
    reason: str
    summary: dict = field(default_factory=dict)
    #: the deformable step's displacement fields on the working template grid (template -> affine
    #: space, and its inverse), kept so that the registration can be stored and rebuilt exactly
    fields: tuple[sitk.Image, sitk.Image] | None = None

    def native_to_mni(self, points_lps) -> np.ndarray:
        """MNI (RAS) millimetres of native LPS points, shape (n, 3)."""
        if self.to_template is None:
            raise ValueError(f"no template transform ({self.reason})")
        tx = self.to_template
        pts = np.atleast_2d(np.asarray(points_lps, dtype=float))
        out = np.array([tx.TransformPoint(tuple(p)) for p in pts])
        return lps_to_mni(out)


def _mask_on(mask: sitk.Image, ref: sitk.Image) -> sitk.Image:
    """``mask > 0`` as float32 (0/1) on ``ref``'s grid (nearest neighbour; no resampling when
    the mask is on that grid already, as the series' brain mask always is)."""
    if not same_grid(mask, ref):
        mask = sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.Cast(mask > 0, sitk.sitkFloat32)


def _masked(img: sitk.Image, mask: sitk.Image) -> sitk.Image:
    f = sitk.Cast(img, sitk.sitkFloat32)
    return f * _mask_on(mask, f)


def _robust_scale(img: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """Intensities divided by the 99th percentile inside ``mask`` (so metrics see a fixed range)."""
    a = sitk.GetArrayViewFromImage(img)
    m = sitk.GetArrayViewFromImage(mask) > 0
    top = float(np.percentile(a[m], 99)) if m.any() else float(a.max() or 1.0)
    return sitk.Cast(img / (top if top > 0 else 1.0), sitk.sitkFloat32)


def _shrink_to(img: sitk.Image, mm: float) -> sitk.Image:
    f = [max(1, int(round(mm / s))) for s in img.GetSpacing()]
    return sitk.Shrink(img, f) if max(f) > 1 else img


#: Head pitch (degrees, about the left-right axis) tried as starting points: a head tilted
#: forwards or back by 30-40 degrees relative to the template is common on a scanner and lies
#: beyond what a local optimiser started upright finds.
PITCH_STARTS_DEG = (-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0)
#: How many of those starts, best coarse metric first, are refined when the fits before fail the
#: affine check (measured 2026-12-01: a thick-slice FLAIR whose best start lands in the wrong
#: basin, correlation 0.46, passes from its second, 0.91)
AFFINE_TRIES = 3


def _affine_fixed(template: Template) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """The affine step's fixed side, the same for every series (so made once per template and
    kept on it): the template's T1-w scaled by its 99th percentile, its brain mask dilated by
    2 voxels (the metric's mask), and the scaled T1-w smoothed by 4 mm for the coarse starts."""
    if "_affine_fixed" not in template.__dict__:
        fixed = _robust_scale(template.t1, template.brain)
        fixed_mask = sitk.Cast(sitk.BinaryDilate(template.brain, [2, 2, 2]), sitk.sitkUInt8)
        object.__setattr__(template, "_affine_fixed", (fixed, fixed_mask, sitk.SmoothingRecursiveGaussian(fixed, 4.0)))
    return template.__dict__["_affine_fixed"]


def affine_register(
    moving: sitk.Image, moving_mask: sitk.Image, template: Template, seed: int = 1
) -> sitk.AffineTransform:
    """Affine transform mapping template points to native points (brain onto template brain):
    the first of :func:`affine_candidates`."""
    return next(affine_candidates(moving, moving_mask, template, seed))


def affine_candidates(
    moving: sitk.Image, moving_mask: sitk.Image, template: Template, seed: int = 1
) -> Iterator[sitk.AffineTransform]:
    """Affine transforms mapping template points to native points (brain onto template brain),
    best first.

    Mattes mutual information between the masked brain and the template brain: a similarity
    transform from each of :data:`PITCH_STARTS_DEG` (centres of mass aligned, scale from the
    brain volumes) on 8 mm copies; the start with the best metric is refined at 8 and 4 mm,
    then as a full affine at 4 and 2 mm, and yielded. Asked for more, the generator refines the
    next-best start the same way (a caller whose check rejects the first fit: a thick-slice
    series whose best coarse start lies in the wrong basin)."""
    fixed, fixed_mask, fixed_coarse = _affine_fixed(template)
    mov = _robust_scale(_masked(moving, moving_mask), moving_mask)
    mov_s = _shrink_to(sitk.SmoothingRecursiveGaussian(mov, 1.0), 2.0)
    mmask_s = _shrink_to(sitk.Cast(moving_mask > 0, sitk.sitkUInt8), 2.0)
    init = sitk.Similarity3DTransform(
        sitk.CenteredTransformInitializer(
            sitk.Cast(template.brain, sitk.sitkFloat32),
            sitk.Cast(mmask_s, sitk.sitkFloat32),
            sitk.Similarity3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
    )
    vol_t = float(sitk.GetArrayViewFromImage(template.brain).sum()) * np.prod(template.brain.GetSpacing())
    vol_m = float(sitk.GetArrayViewFromImage(mmask_s).sum()) * np.prod(mmask_s.GetSpacing())
    init.SetScale(float(np.clip((vol_m / vol_t) ** (1 / 3), 0.7, 1.4)))

    def run(transform, shrink, sigmas, iters, images=None):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.05, seed=seed)
        reg.SetMetricFixedMask(fixed_mask)
        # image gradients at the sampled points only, not a gradient image of each level
        # (a third faster, same optimum: measured on the demo head)
        reg.SetMetricUseFixedImageGradientFilter(False)
        reg.SetMetricUseMovingImageGradientFilter(False)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0,
            minStep=1e-4,
            numberOfIterations=iters,
            relaxationFactor=0.6,
            gradientMagnitudeTolerance=1e-6,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(list(shrink))
        reg.SetSmoothingSigmasPerLevel(list(sigmas))
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(transform, inPlace=True)
        reg.Execute(*(images or (fixed, mov_s)))
        return transform, reg.GetMetricValue()

    # the starts share one smoothing of both images (ITK would redo it in each run; the same
    # result, since its own pyramid smooths with this filter before shrinking)
    coarse = (fixed_coarse, sitk.SmoothingRecursiveGaussian(mov_s, 4.0))
    starts = []
    for pitch in PITCH_STARTS_DEG:
        t = sitk.Similarity3DTransform(init)
        t.SetRotation((1.0, 0.0, 0.0), float(np.deg2rad(pitch)))
        starts.append(run(t, (4,), (0.0,), 40, coarse))
    for start, _ in sorted(starts, key=lambda tm: tm[1]):
        sim, _ = run(start, (4, 2), (4.0, 2.0), 100)
        aff = sitk.AffineTransform(3)
        aff.SetCenter(sim.GetCenter())
        aff.SetMatrix(sim.GetMatrix())
        aff.SetTranslation(sim.GetTranslation())
        yield run(aff, (2, 1), (2.0, 1.0), 100)[0]


def tissue_means(
    img_t: np.ndarray, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, brain: np.ndarray
) -> dict[str, float]:
    """Robust grey-matter, white-matter and CSF intensities of an image already in template space:
    the median over the voxels each prior holds with >= 0.9 probability (relaxed to the
    top-probability voxels where too few reach it)."""
    out = {}
    for name, p in (("gm", gm), ("wm", wm), ("csf", csf)):
        sel = brain & (p >= 0.9)
        if sel.sum() < 200:
            thr = np.percentile(p[brain], 97) if brain.any() else 0.5
            sel = brain & (p >= thr)
        out[name] = float(np.median(img_t[sel])) if sel.any() else 0.0
    return out


def synthetic_template(means: dict[str, float], gm: np.ndarray, wm: np.ndarray, csf: np.ndarray) -> np.ndarray:
    """The template in the image's own contrast: tissue probabilities times tissue intensities."""
    return (means["gm"] * gm + means["wm"] * wm + means["csf"] * csf).astype(np.float32)


def _quality(
    warped: np.ndarray, wmask: np.ndarray, synth: np.ndarray, tmpl: dict[str, np.ndarray], mm: float
) -> dict[str, float]:
    brain_t = tmpl["brain"] > 0
    near = ndimage.binary_dilation(brain_t, iterations=max(1, int(round(4.0 / mm))))
    n = max(int(wmask.sum()), 1)
    sig = 2.0 / mm
    inside = brain_t & wmask
    return {
        "inside": float((wmask & near).sum()) / n,
        "coverage": float(inside.sum()) / max(int(brain_t.sum()), 1),
        "correlation": _corr(ndimage.gaussian_filter(warped, sig), ndimage.gaussian_filter(synth, sig), inside),
    }


def _failed(q: dict[str, float], check: TemplateCheck) -> list[str]:
    out = []
    if q["inside"] < check.min_inside:
        out.append(
            f"only {q['inside']:.0%} of the brain falls inside the template's brain (needs {check.min_inside:.0%})"
        )
    if q["correlation"] < check.min_correlation:
        out.append(f"correlation with the template {q['correlation']:.2f} (needs {check.min_correlation:.2f})")
    return out


def _affine_failed(q: dict[str, float], det: float, check: TemplateCheck) -> list[str]:
    """Why an affine fit fails ``check`` (empty: it passes): the quality check, and a volume
    change no head shows."""
    out = _failed(q, check)
    if not 0.5 < det < 2.0:
        out.append(f"affine volume change x{det:.2f} is implausible")
    return out


def _demons(fixed: sitk.Image, moving: sitk.Image, demons: DemonsSettings, smoothing_mm: float) -> sitk.Image:
    """Displacement field (template grid) from diffeomorphic demons, coarse to fine, the field
    regularised by a Gaussian of ``smoothing_mm`` (standard deviation, mm)."""
    disp: sitk.Image | None = None
    for it, sh in zip(demons.iterations, demons.shrink):
        f = sitk.Shrink(fixed, [sh] * 3) if sh > 1 else fixed
        m = sitk.Shrink(moving, [sh] * 3) if sh > 1 else moving
        f = sitk.SmoothingRecursiveGaussian(f, 0.5 * sh * demons.working_mm)
        m = sitk.SmoothingRecursiveGaussian(m, 0.5 * sh * demons.working_mm)
        if disp is None:
            init = sitk.Image(f.GetSize(), sitk.sitkVectorFloat64, 3)
            init.CopyInformation(f)
        else:
            init = sitk.Resample(disp, f, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        dem = sitk.DiffeomorphicDemonsRegistrationFilter()
        dem.SetNumberOfIterations(it)
        dem.SetSmoothDisplacementField(True)
        dem.SetStandardDeviations(smoothing_mm / (sh * demons.working_mm))
        if demons.update_smoothing_mm > 0:
            dem.SetSmoothUpdateField(True)
            dem.SetUpdateFieldStandardDeviations(demons.update_smoothing_mm / (sh * demons.working_mm))
        dem.SetMaximumUpdateStepLength(0.5)
        disp = dem.Execute(f, m, init)
    assert disp is not None, "demons settings have no level"
    return sitk.Resample(disp, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)


def _inverse(disp: sitk.Image, shrink: int) -> sitk.Image:
    """Inverse of a displacement field, computed on a grid ``shrink`` times coarser (the field
    is smooth) and brought back to the field's grid."""
    coarse = sitk.Shrink(disp, [shrink] * 3) if shrink > 1 else disp
    inv = sitk.InvertDisplacementField(
        coarse,
        maximumNumberOfIterations=20,
        maxErrorToleranceThreshold=0.1,
        meanErrorToleranceThreshold=0.001,
        enforceBoundaryCondition=True,
    )
    return (
        sitk.Resample(inv, disp, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64) if shrink > 1 else inv
    )


def _not_registered(
    reason: str, det: float = 1.0, means: dict[str, float] | None = None, summary: dict | None = None
) -> TemplateRegistration:
    """A registration that failed (``kind`` "none", no transforms), saying why."""
    return TemplateRegistration("none", None, None, None, None, det, means or {}, False, reason, summary or {})


def register(
    moving: sitk.Image,
    moving_mask: sitk.Image,
    *,
    deformable: bool = True,
    check: TemplateCheck = TemplateCheck(),
    demons: DemonsSettings = DemonsSettings(),
) -> TemplateRegistration:
    """Register a brain (N4-corrected series and its brain mask, both on the series' grid) to
    the template; see the module docstring. Never raises on a poor fit: the result says
    ``ok=False`` with the reason."""
    t0 = time.perf_counter()
    mm = demons.working_mm
    tmpl = load_template(mm)
    arr = tmpl.arrays()
    brain_t = arr["brain"] > 0
    timings = {}
    # the brain (masked) and its mask, to be brought into template space through each affine fit
    mask_f = _mask_on(moving_mask, moving)
    brain_img = sitk.Cast(moving, sitk.sitkFloat32) * mask_f

    def judge(aff: sitk.AffineTransform):
        warped = sitk.GetArrayFromImage(
            sitk.Resample(brain_img, tmpl.grid, aff, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        )
        wmask = (
            sitk.GetArrayFromImage(sitk.Resample(mask_f, tmpl.grid, aff, sitk.sitkLinear, 0.0, sitk.sitkFloat32)) >= 0.5
        )
        means = tissue_means(warped, arr["gm"], arr["wm"], arr["csf"], brain_t & wmask)
        synth = synthetic_template(means, arr["gm"], arr["wm"], arr["csf"])
        q_aff = _quality(warped, wmask, synth, arr, mm)
        det = float(np.linalg.det(np.array(aff.GetMatrix()).reshape(3, 3)))
        return aff, warped, wmask, means, synth, q_aff, det, _affine_failed(q_aff, det, check)

    try:
        fits = affine_candidates(moving, moving_mask, tmpl)
        fit = first = judge(next(fits))
        # a fit that fails its check: the next-best coarse starts, up to AFFINE_TRIES in all
        tried, judged = 1, [first]
        while fit[-1] and tried < AFFINE_TRIES:
            fit, tried = judge(next(fits)), tried + 1
            judged.append(fit)
        probation = False
        if fit[-1]:
            # none passed: the best-correlated fit that fails on correlation alone, if it reaches
            # the lower bar, goes on on probation; otherwise report the best start's reasons
            lower = dataclasses.replace(check, min_correlation=check.min_affine_correlation)
            near = [f for f in judged if not _affine_failed(f[5], f[6], lower)]
            if near and deformable:
                fit, probation = max(near, key=lambda f: f[5]["correlation"]), True
                log.info(
                    "affine registration: no start reached correlation %.2f; the best (%.2f) goes on to the "
                    "deformable step, which must pass the whole check",
                    check.min_correlation,
                    fit[5]["correlation"],
                )
                fit = (*fit[:-1], [])
            else:
                fit = first
        elif tried > 1:
            log.info("affine registration: the best start failed its check; start %d passed", tried)
    except (RuntimeError, StopIteration) as e:  # the optimiser found nothing to work on
        return _not_registered(f"affine registration failed ({e})")
    aff, warped, wmask, means, synth, q_aff, det, reasons = fit
    timings["affine_s"] = time.perf_counter() - t0
    summary: dict = {f"affine_{k}": round(v, 4) for k, v in q_aff.items()}
    summary.update(affine_scale=round(det ** (1 / 3), 4), tissue_means={k: round(v, 3) for k, v in means.items()})
    if reasons:
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        return _not_registered("template registration failed its check: " + "; ".join(reasons), det, means, summary)
    inv_aff = aff.GetInverse()
    affine_only = TemplateRegistration(
        "affine", aff, inv_aff, aff, None, det, means, True, "passed (affine only)", summary
    )
    if not deformable:
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        return affine_only

    # ---- deformable: demons against the synthetic template, lesion-like outliers masked ----
    inside = brain_t & wmask
    resid = warped - synth
    mad = float(np.median(np.abs(resid[inside] - np.median(resid[inside])))) * 1.4826 or 1.0
    near_csf = ndimage.maximum_filter(arr["csf"], size=3) > 0.3
    outlier = inside & (np.abs(resid) > demons.outlier_z * mad) & ~near_csf
    outlier = ndimage.binary_dilation(outlier, iterations=1) & inside
    scale = max(means.values()) or 1.0
    # the template only where the series has brain within a few millimetres: a series that covers
    # part of the brain must not be stretched over the rest
    covered = brain_t & ndimage.binary_dilation(wmask, iterations=max(1, int(round(6.0 / mm))))
    fixed_img = _like(np.where(covered, synth, 0.0) / scale, tmpl.grid)
    moving_img = _like(np.where(brain_t | wmask, np.where(outlier, synth, warped), 0.0) / scale, tmpl.grid)

    def deform(smoothing: float):
        """The deformable step with the field smoothed by ``smoothing`` mm: its displacement
        field, log Jacobian, figures and the check's reasons (empty: passed). The inverse field
        is left to the result that is used."""
        t1 = time.perf_counter()
        disp = _demons(fixed_img, moving_img, demons, smoothing)
        timings["demons_s"] = timings.get("demons_s", 0.0) + time.perf_counter() - t1
        logj = sitk.Log(sitk.Maximum(sitk.DisplacementFieldJacobianDeterminant(disp), 1e-3))
        lj = sitk.GetArrayViewFromImage(logj)[brain_t]
        jlo, jhi = (float(np.exp(v)) for v in np.percentile(lj, [0.5, 99.5]))
        to_native = sitk.CompositeTransform([aff, sitk.DisplacementFieldTransform(sitk.Image(disp))])
        # check: the brain through the whole transform against the template
        warped_d = sitk.GetArrayFromImage(
            sitk.Resample(brain_img, tmpl.grid, to_native, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        )
        wmask_d = (
            sitk.GetArrayFromImage(sitk.Resample(mask_f, tmpl.grid, to_native, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            >= 0.5
        )
        q = _quality(warped_d, wmask_d, synth, arr, mm)
        figures = {k: round(v, 4) for k, v in q.items()}
        figures.update({"jacobian_p0.5": round(jlo, 3), "jacobian_p99.5": round(jhi, 3)})
        figures["demons_smoothing_mm"] = round(smoothing, 2)
        reasons = _failed(q, check)
        if q["correlation"] < q_aff["correlation"] - 0.02:
            reasons.append(f"correlation {q['correlation']:.3f} below the affine step's {q_aff['correlation']:.3f}")
        if not (check.jacobian_range[0] <= jlo and jhi <= check.jacobian_range[1]):
            reasons.append(
                f"Jacobian range {jlo:.2f}-{jhi:.2f} outside {check.jacobian_range[0]}-{check.jacobian_range[1]}"
            )
        return disp, logj, figures, reasons

    disp, logj, figures, reasons = deform(demons.smoothing_mm)
    # a failed result: again with a smoother field, first over a thick-slice series' slices, then
    # by ``retry_smoothing_mm`` (each only when smoother than every try so far)
    thick = demons.smoothing_per_slice * max(moving.GetSpacing())
    smoothest = demons.smoothing_mm
    for smoothing, why in (
        (thick, f"over the series' {max(moving.GetSpacing()):.1f} mm slices"),
        (demons.retry_smoothing_mm, "a smoother field"),
    ):
        if not reasons or smoothing <= smoothest:
            continue
        retry = deform(smoothing)
        smoothest = smoothing
        log.info(
            "deformable step failed its check (%s); again with the field smoothed by %.1f mm (%s): %s",
            "; ".join(reasons),
            smoothing,
            why,
            "; ".join(retry[-1]) or "passed",
        )
        if not retry[-1]:
            disp, logj, figures, reasons = retry
            figures["first_try"] = "failed"
    if not reasons:  # the inverse only for a result that is used
        t2 = time.perf_counter()
        inv = _inverse(disp, demons.inverse_shrink)
        timings["inverse_s"] = time.perf_counter() - t2
    summary.update(figures)
    summary["outlier_ml"] = round(float(outlier.sum()) * mm**3 / 1000, 2)
    summary.update({k: round(v, 2) for k, v in timings.items()})
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if reasons and probation:  # the affine fit alone did not pass: nothing to fall back on
        return _not_registered(
            "template registration failed its check: the affine fit's correlation "
            f"{q_aff['correlation']:.2f} (needs {check.min_correlation:.2f}), and the deformable step's "
            + "; ".join(reasons),
            det,
            means,
            summary,
        )
    if reasons:
        affine_only.reason = "deformable step failed its check (" + "; ".join(reasons) + "): affine registration used"
        return affine_only
    reason = (
        "passed"
        if "first_try" not in figures
        else f"passed (the field smoothed by {figures['demons_smoothing_mm']:.1f} mm after a failed first try)"
    )
    to_native, to_template = _compose(aff, disp, inv)
    return TemplateRegistration(
        "deformable", to_native, to_template, aff, logj, det, means, True, reason, summary, (disp, inv)
    )


def _compose(aff: sitk.AffineTransform, disp: sitk.Image, inv: sitk.Image) -> tuple[sitk.Transform, sitk.Transform]:
    """``(to_native, to_template)`` from the affine and the displacement fields (copied: a
    displacement field transform takes its image over)."""
    to_native = sitk.CompositeTransform([aff, sitk.DisplacementFieldTransform(sitk.Image(disp))])
    to_template = sitk.CompositeTransform([sitk.DisplacementFieldTransform(sitk.Image(inv)), aff.GetInverse()])
    return to_native, to_template


def to_cache(reg: TemplateRegistration) -> tuple[dict[str, sitk.Image], dict]:
    """A passed registration as images and JSON-able meta (:class:`openrecon_stroke.study_cache.StudyCache`)."""
    if not reg.ok or reg.affine is None:
        raise ValueError("only a passed registration is stored")
    aff = sitk.AffineTransform(reg.affine)
    meta = {
        "kind": reg.kind,
        "reason": reg.reason,
        "summary": reg.summary,
        "tissue_means": reg.tissue_means,
        "affine_det": reg.affine_det,
        "matrix": list(aff.GetMatrix()),
        "translation": list(aff.GetTranslation()),
        "center": list(aff.GetCenter()),
    }
    images = {}
    if reg.fields is not None:
        images = {"forward": reg.fields[0], "inverse": reg.fields[1]}
        if reg.log_jacobian is not None:
            images["log_jacobian"] = reg.log_jacobian
    return images, meta


def from_cache(images: dict[str, sitk.Image], meta: dict) -> TemplateRegistration:
    """The registration :func:`to_cache` stored, rebuilt exactly."""
    aff = sitk.AffineTransform(3)
    aff.SetCenter(tuple(meta["center"]))
    aff.SetMatrix(tuple(meta["matrix"]))
    aff.SetTranslation(tuple(meta["translation"]))
    common = dict(
        affine_det=float(meta["affine_det"]),
        tissue_means=meta["tissue_means"],
        ok=True,
        reason=meta["reason"],
        summary=meta["summary"],
    )
    if meta["kind"] == "deformable":
        disp = sitk.Cast(images["forward"], sitk.sitkVectorFloat64)
        inv = sitk.Cast(images["inverse"], sitk.sitkVectorFloat64)
        to_native, to_template = _compose(aff, disp, inv)
        return TemplateRegistration(
            "deformable", to_native, to_template, aff, images.get("log_jacobian"), fields=(disp, inv), **common
        )
    return TemplateRegistration("affine", aff, aff.GetInverse(), aff, None, **common)


def _like(a: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(a.astype(np.float32))
    img.CopyInformation(ref)
    return img


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def _corr(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    if m.sum() < 10:
        return 0.0
    x, y = a[m].astype(np.float64), b[m].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    d = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d > 0 else 0.0


def to_template_space(
    image: sitk.Image, reg: TemplateRegistration, grid: sitk.Image, interpolator=sitk.sitkLinear, default: float = 0.0
) -> sitk.Image:
    """A native image resampled onto a template-space grid (float32)."""
    return sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), grid, reg.to_native, interpolator, default, sitk.sitkFloat32
    )


def to_native_space(
    image_t: sitk.Image,
    reg: TemplateRegistration,
    reference: sitk.Image,
    interpolator=sitk.sitkLinear,
    default: float = 0.0,
) -> sitk.Image:
    """A template-space map resampled onto a series' own grid (float32)."""
    return sitk.Resample(
        sitk.Cast(image_t, sitk.sitkFloat32), reference, reg.to_template, interpolator, default, sitk.sitkFloat32
    )


def series_transforms(
    reg: TemplateRegistration, reference: str, contrasts, flair_to_t1: sitk.Transform | None
) -> tuple[dict[str, sitk.Transform], dict[str, sitk.Transform]]:
    """Per contrast of the study, the composed transforms ``(to_native, to_template)``: template
    points -> that series' points, and back. The reference series has the registration's own;
    the other contrast goes through the T1-w/FLAIR rigid transform (``flair_to_t1``: T1-w points
    -> FLAIR points), composed, never applied one after the other. A contrast without a
    transform (registration between the series failed) is left out."""
    if reg.to_native is None or reg.to_template is None:
        raise ValueError(f"the registration has no transform ({reg.reason})")
    to_native = {reference: reg.to_native}
    to_template = {reference: reg.to_template}
    for c in contrasts:
        if c == reference or flair_to_t1 is None:
            continue
        if reference == "t1":  # template -> T1-w -> FLAIR
            to_native[c] = sitk.CompositeTransform([flair_to_t1, reg.to_native])
            to_template[c] = sitk.CompositeTransform([reg.to_template, flair_to_t1.GetInverse()])
        else:  # template -> FLAIR -> T1-w
            to_native[c] = sitk.CompositeTransform([flair_to_t1.GetInverse(), reg.to_native])
            to_template[c] = sitk.CompositeTransform([reg.to_template, flair_to_t1])
    return to_native, to_template


def resample_to_template(
    image: sitk.Image, to_native: sitk.Transform, spacing_mm: float, interpolator=sitk.sitkLinear
) -> np.ndarray:
    """A series image on the template grid of ``spacing_mm`` (``(nz, ny, nx)`` float32)."""
    return sitk.GetArrayFromImage(
        sitk.Resample(
            sitk.Cast(image, sitk.sitkFloat32),
            template_grid(spacing_mm),
            to_native,
            interpolator,
            0.0,
            sitk.sitkFloat32,
        )
    )
