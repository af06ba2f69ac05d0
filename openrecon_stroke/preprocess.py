"""Preprocessing building blocks: RAS reorientation, N4 bias correction, rigid T1-w <-> FLAIR
registration with a measured quality check, resampling.

All images are SimpleITK images in LPS physical space (ITK's convention). "RAS reorientation"
permutes/flips the voxel axes so that x, y, z increase towards patient Right, Anterior,
Superior (the neuroimaging canonical array order of NIfTI tools); it never resamples, so it is
exact and invertible.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .metrics import dice

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# orientation
# --------------------------------------------------------------------------------------------
def to_ras(img: sitk.Image) -> sitk.Image:
    """Voxel axes permuted/flipped to increase towards R, A, S (no interpolation)."""
    return sitk.DICOMOrient(img, "RAS")


def orientation_code(img: sitk.Image) -> str:
    """ITK three-letter code of the directions the voxel axes increase towards, e.g. 'RAS'."""
    return sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(img.GetDirection())


def from_ras(img_ras: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Back from :func:`to_ras` to ``reference``'s axis order (exact; no interpolation)."""
    out = sitk.DICOMOrient(img_ras, orientation_code(reference))
    out.CopyInformation(reference)  # identical up to floating-point noise in origin/direction
    return out


# --------------------------------------------------------------------------------------------
# N4
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class N4Settings:
    """N4 on a shrunken copy; the bias field is then evaluated at full resolution.

    ``working_spacing_mm``: the copy's approximate voxel size (each axis shrunk by an integer
    factor towards it; the bias field is smooth, so ~6 mm loses nothing and is fast);
    ``iterations``: per fitting level; ``spline_distance_mm``: B-spline control point spacing.
    """

    working_spacing_mm: float = 6.0
    iterations: tuple[int, ...] = (30, 20, 10)
    spline_distance_mm: float = 100.0
    convergence: float = 1e-3


def n4_correct(
    img: sitk.Image, mask: sitk.Image | None = None, settings: N4Settings = N4Settings()
) -> tuple[sitk.Image, sitk.Image]:
    """Bias-field corrected image (float32) and the multiplicative bias field, same grid.

    ``mask`` (uint8, same grid) restricts where the field is fitted; by default an Otsu
    foreground mask is used.
    """
    f = sitk.Cast(img, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(f)
    shift = float(min(0.0, arr.min()))
    if shift < 0:  # N4 needs positive intensities
        f = f - shift
    if mask is None:
        mask = sitk.OtsuThreshold(f, 0, 1, 200)
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    shrink = [
        max(1, min(int(round(settings.working_spacing_mm / sp)), sz // 16))
        for sp, sz in zip(f.GetSpacing(), f.GetSize())
    ]
    small = sitk.Shrink(f, shrink)
    small_mask = sitk.Shrink(mask, shrink)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(settings.iterations))
    n4.SetConvergenceThreshold(settings.convergence)
    phys = [sz * sp for sz, sp in zip(small.GetSize(), small.GetSpacing())]
    n4.SetNumberOfControlPoints([max(4, int(math.ceil(p / settings.spline_distance_mm)) + 3) for p in phys])
    n4.Execute(small, small_mask)
    log_field = n4.GetLogBiasFieldAsImage(f)
    field = sitk.Exp(log_field)
    corrected = sitk.Cast(f / field, sitk.sitkFloat32)
    if shift < 0:
        corrected = corrected + shift
    return corrected, sitk.Cast(field, sitk.sitkFloat32)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistrationCheck:
    """Limits a rigid inter-series registration must respect to be used.

    Series of one study share the scanner's frame of reference, so a plausible correction is
    small; a large one means the optimiser went astray. The head overlap (Otsu head masks of
    both series, inside the moving series' field of view) is judged against the overlap with
    the scanner's own geometry: the registration may not lose more than ``max_overlap_loss``
    of it, and must keep at least ``min_mask_dice``. (An absolute bar alone fails good
    registrations: Otsu splits a thick-slice FLAIR and a T1-w head differently, e.g. 0.71 for a
    registration whose brain masks agree to 0.95.) The centres of the two head masks (inside the
    moving series' field of view, after registration) may lie at most ``max_centre_offset_mm``
    apart: an optimiser stuck short of a large geometry error leaves them far apart even when
    the overlap looks acceptable.
    """

    max_rotation_deg: float = 15.0
    max_translation_mm: float = 20.0
    min_mask_dice: float = 0.6
    max_overlap_loss: float = 0.03
    max_centre_offset_mm: float = 10.0


@dataclass
class RigidRegistration:
    transform: sitk.Transform  # maps fixed physical points to moving physical points
    rotation_deg: float
    translation_mm: float
    metric_before: float
    metric_after: float
    mask_dice: float
    ok: bool
    reason: str
    seconds: float

    def summary(self) -> dict:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "rotation_deg": round(self.rotation_deg, 2),
            "translation_mm": round(self.translation_mm, 2),
            "mutual_information_before": round(self.metric_before, 4),
            "mutual_information_after": round(self.metric_after, 4),
            "mask_dice": round(self.mask_dice, 4),
            "seconds": round(self.seconds, 2),
        }


def _mi(fixed, moving, transform, fixed_mask=None) -> float:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.25, seed=1)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(transform, inPlace=False)
    return float(reg.MetricEvaluate(fixed, moving))


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_mask: sitk.Image | None = None,
    check: RegistrationCheck = RegistrationCheck(),
    seed: int = 1,
) -> RigidRegistration:
    """Rigid (6 degrees of freedom) registration by Mattes mutual information.

    Multi-resolution (shrink 4, 2, 1... capped at 2 mm working resolution), starting from the
    scanner geometry (identity). The returned transform maps points of ``fixed`` to ``moving``
    (ITK convention: resample ``moving`` with it to bring it onto ``fixed``).
    """
    import time

    t0 = time.perf_counter()
    f = sitk.Cast(fixed, sitk.sitkFloat32)
    m = sitk.Cast(moving, sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(
        f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    init.SetTranslation((0.0, 0.0, 0.0))  # both series share the frame of reference
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, seed=seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    # image gradients at the sampled points only: no gradient image of the whole 1 mm series
    # per level (a quarter of the time on the demo study)
    reg.SetMetricUseFixedImageGradientFilter(False)
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=100, relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    tx = reg.Execute(f, m)
    # the check runs on ~3 mm copies: enough to judge alignment, a fraction of the cost
    shrink = [max(1, int(round(3.0 / sp))) for sp in f.GetSpacing()]
    fs, ms = sitk.Shrink(f, shrink), sitk.Shrink(m, [max(1, int(round(3.0 / sp))) for sp in m.GetSpacing()])
    fmask = sitk.Shrink(fixed_mask, shrink) if fixed_mask is not None else None
    before = _mi(fs, ms, init, fmask)
    after = _mi(fs, ms, tx, fmask)
    euler = (
        sitk.Euler3DTransform(sitk.CompositeTransform(tx).GetNthTransform(0))
        if tx.GetName() == "CompositeTransform"
        else sitk.Euler3DTransform(tx)
    )
    kept_scanner = False
    if after > before:  # Mattes MI is negative: the optimiser ended worse than where it began
        # Series of one study share the scanner's frame: its geometry is the other candidate.
        # Keep the better of the two; the overlap check below still judges the one kept.
        euler = sitk.Euler3DTransform(init)
        after, kept_scanner = before, True
    rot = math.degrees(max(abs(a) for a in (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())))
    trans = float(np.linalg.norm(euler.GetTranslation()))
    # overlap of the two head masks (on the fixed grid), registered and with the scanner geometry
    fm = sitk.GetArrayFromImage(sitk.OtsuThreshold(fs, 0, 1, 200)).astype(bool)
    ms_head = sitk.OtsuThreshold(ms, 0, 1, 200)
    ones = sitk.Image(ms.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(ms)

    def head_overlap(t):
        mm = sitk.GetArrayFromImage(sitk.Resample(ms_head, fs, t, sitk.sitkNearestNeighbor, 0)).astype(bool)
        inside = sitk.GetArrayFromImage(sitk.Resample(ones, fs, t, sitk.sitkNearestNeighbor, 0)).astype(bool)
        return dice(fm & inside, mm & inside)

    def whole_head(img: sitk.Image) -> sitk.Image:
        """Everything brighter than a tenth of the 99th percentile, closed and filled: the head
        whatever the contrast (Otsu splits a FLAIR and a T1-w head at different tissues)."""
        a = sitk.GetArrayFromImage(img)
        m = ndimage.binary_fill_holes(ndimage.binary_closing(a > 0.1 * np.percentile(a, 99), iterations=2))
        out = sitk.GetImageFromArray(m.astype(np.uint8))
        out.CopyInformation(img)
        return out

    f_whole = sitk.GetArrayFromImage(whole_head(fs)).astype(bool)
    m_whole = whole_head(ms)

    def centre_offset(t) -> float:
        """Distance (mm) between the centres of the two whole-head masks, inside the moving series' field of view."""
        mm = sitk.GetArrayFromImage(sitk.Resample(m_whole, fs, t, sitk.sitkNearestNeighbor, 0)).astype(bool)
        inside = sitk.GetArrayFromImage(sitk.Resample(ones, fs, t, sitk.sitkNearestNeighbor, 0)).astype(bool)
        a, b = f_whole & inside, mm & inside
        if not a.any() or not b.any():
            return float("inf")
        sp = np.asarray(fs.GetSpacing(), float)[::-1]
        return float(np.linalg.norm((np.argwhere(a).mean(0) - np.argwhere(b).mean(0)) * sp))

    overlap = head_overlap(euler)
    overlap_scanner = overlap if kept_scanner else head_overlap(init)
    offset = centre_offset(euler)
    reasons = []
    if rot > check.max_rotation_deg:
        reasons.append(f"rotation {rot:.1f} deg exceeds {check.max_rotation_deg:.0f} deg")
    if trans > check.max_translation_mm:
        reasons.append(f"translation {trans:.1f} mm exceeds {check.max_translation_mm:.0f} mm")
    if overlap < check.min_mask_dice:
        reasons.append(f"head overlap after registration is {overlap:.2f} (< {check.min_mask_dice:.2f})")
    elif overlap < overlap_scanner - check.max_overlap_loss:
        reasons.append(
            f"head overlap after registration is {overlap:.2f}, below the scanner geometry's {overlap_scanner:.2f}"
        )
    if offset > check.max_centre_offset_mm:
        reasons.append(f"head centres {offset:.0f} mm apart after registration (> {check.max_centre_offset_mm:.0f} mm)")
    ok = not reasons
    reason = "; ".join(reasons) or (
        "passed (scanner geometry kept: the optimiser did not improve on it)" if kept_scanner else "passed"
    )
    return RigidRegistration(euler, rot, trans, before, after, overlap, ok, reason, time.perf_counter() - t0)


def resample_to(
    img: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    interpolator=sitk.sitkLinear,
    default: float = 0.0,
) -> sitk.Image:
    """``img`` on ``reference``'s grid (through ``transform``: reference points -> img points)."""
    return sitk.Resample(img, reference, transform or sitk.Transform(), interpolator, default, img.GetPixelID())


def resample_spacing(img: sitk.Image, spacing_mm, interpolator=sitk.sitkLinear) -> sitk.Image:
    """``img`` on a grid with the same origin and direction and the given voxel size (mm),
    covering the same physical extent."""
    size = [max(1, int(round(sz * sp / ns))) for sz, sp, ns in zip(img.GetSize(), img.GetSpacing(), spacing_mm)]
    d = np.array(img.GetDirection()).reshape(3, 3)
    shift = d @ ((np.array(spacing_mm, float) - np.array(img.GetSpacing())) / 2)
    origin = tuple(np.array(img.GetOrigin()) + shift)
    return sitk.Resample(
        img,
        size,
        sitk.Transform(),
        interpolator,
        origin,
        tuple(float(s) for s in spacing_mm),
        img.GetDirection(),
        0.0,
        img.GetPixelID(),
    )
