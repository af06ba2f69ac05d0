"""The normative model: what healthy brains look like in template space, and how far a brain is
from it.

Built by ``models/normative/build.py`` from healthy heads (synthetic heads, the MNI head and real
heads, each through the pipeline's own preprocessing and template registration); one card
(``kind: "normative"``, :class:`~openrecon_stroke.model_card.NormativeCard`) and its files:

* per contrast ``<contrast>.npz``: per-voxel mean and standard deviation of the intensity relative
  to the brain's own white matter (1 = white matter), on the template grid of ``spacing_mm``,
  cropped to a box (float16);
* per contrast listed under ``asymmetry`` in the card, ``<contrast>_mirror.npz``: per-voxel mean
  and standard deviation of the same intensity minus the intensity at the mirrored position (the
  other hemisphere; the template is symmetric), same grid and box;
* ``jacobian.npz``: per-voxel mean and standard deviation of the log-Jacobian determinant of the
  deformation to the template (2 mm grid): how much larger or smaller than the template each
  region of a healthy brain is;
* in the card: the healthy range of the lateral-ventricle volume, and the calibration of the
  anomaly score: per contrast combination, the score the held-out healthy brains exceed in only
  0.1 % of their voxels, so that **1.0 is the anomaly threshold** in every study.

The anomaly score of a voxel (:func:`anomaly_score`) takes the larger of two parts, each a mean
over contrasts: the absolute normative z-score of its intensity, and, with mirror statistics, the
absolute z-score of its left-right difference, counted only on the side whose own intensity is the
farther from healthy (so that a lesion does not light up its healthy mirror image). The result is
smoothed inside the brain (``smoothing_mm``) and divided by that calibration. The lesion models use
the same statistics as features (:mod:`openrecon_stroke.voxel_features`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import regions, voxel_features
from .model_card import CSF_PLACES, ModelCardError, NormativeCard
from .regions import lateral_ventricles_on_template
from .resample import box_of
from .runtime import ModelCache, model_folder


@dataclass(frozen=True)
class Stats:
    """Mean and standard deviation maps (``(nz, ny, nx)`` float32) on one template grid."""

    mean: np.ndarray
    std: np.ndarray

    def z(self, value: np.ndarray) -> np.ndarray:
        return ((value - self.mean) / self.std).astype(np.float32)


def read_stats(file: Path, shape, box) -> Stats:
    """Stats stored cropped to ``box`` (float16) back on the full grid of ``shape`` (mean 0 and
    standard deviation 1 outside the box)."""
    with np.load(file) as z:
        m = np.zeros(shape, np.float32)
        s = np.ones(shape, np.float32)
        sl = tuple(slice(a, b) for a, b in box)
        m[sl] = z["mean"].astype(np.float32)
        s[sl] = np.maximum(z["std"].astype(np.float32), 1e-3)
    return Stats(m, s)


def write_stats(file: Path, stats: Stats, box) -> None:
    sl = tuple(slice(a, b) for a, b in box)
    np.savez_compressed(file, mean=stats.mean[sl].astype(np.float16), std=stats.std[sl].astype(np.float16))


#: The parts of the anomaly score (:func:`anomaly_score`).
PARTS = ("intensity", "asymmetry")


#: fewer ventricle voxels inside the brain than this: the image is not standardised
MIN_VENTRICLE_VOXELS = 100


def csf_relative(
    image_t: np.ndarray, means: dict[str, float], brain_t: np.ndarray, measured_in: str, spacing_mm: float
) -> float | None:
    """The brain's CSF intensity relative to its white matter, on the template grid of
    ``spacing_mm``: the tissue mean (``means``, :func:`openrecon_stroke.template.tissue_means`)
    for ``brain``; for ``lateral_ventricles`` the median of ``image_t`` inside the template's
    lateral ventricles within ``brain_t``. None when it cannot be measured."""
    wm = float(means.get("wm", 0.0))
    if wm <= 0:
        return None
    if measured_in == "brain":
        return float(means["csf"]) / wm
    if measured_in != "lateral_ventricles":
        raise ValueError(f"unknown CSF place {measured_in!r} (one of {CSF_PLACES})")
    inside = lateral_ventricles_on_template(spacing_mm) & brain_t
    if int(inside.sum()) < MIN_VENTRICLE_VOXELS:
        return None
    return float(np.median(image_t[inside])) / wm


def standardise(rel: np.ndarray, csf_relative: float, csf_reference: float) -> np.ndarray:
    """A white-matter-relative image mapped linearly so that its brain's CSF intensity
    (``csf_relative``, relative to its white matter) lands on healthy brains' (``csf_reference``)
    while white matter stays at 1: the contrast between CSF and white matter differs from scanner
    to scanner and sequence to sequence, and without this every CSF border of a high-contrast
    T1-w looked abnormal. The slope is kept within 0.5-2."""
    a = float(np.clip((1.0 - csf_reference) / max(1.0 - csf_relative, 1e-3), 0.5, 2.0))
    return (a * rel + (1.0 - a)).astype(np.float32)


def ventricles_on_template(
    image_t: np.ndarray, brain_t: np.ndarray, means: dict[str, float], spacing_mm: float
) -> np.ndarray:
    """The voxels :func:`ventricle_measure` counts as this head's lateral ventricles on the template
    grid of ``spacing_mm`` (``image_t`` CSF darkest; ``means`` its tissue intensities), seeded by
    the template's own (:func:`openrecon_stroke.regions.regions_on_template`)."""
    labels = regions.regions_on_template(spacing_mm)
    return ventricle_measure(image_t, brain_t, labels, means, (spacing_mm,) * 3).counted


def ventricles_apart(
    image_t: np.ndarray, brain_t: np.ndarray, means: dict[str, float], spacing_mm: float
) -> np.ndarray:
    """This head's lateral ventricles on the template grid of ``spacing_mm`` where they are
    left-right symmetric: the voxels :func:`ventricle_measure` finds on ``image_t`` (CSF darkest:
    T1-w, dark-fluid FLAIR; ``means`` its tissue intensities) whose mirror image (the template is
    symmetric) it finds too, each side widened by one voxel first. Where a card with
    ``ventricles_apart`` scores nothing. Ventricles larger than the template's lie over its white
    matter and read as darker than healthy there; their size is the ventricle measure's (volume
    against the healthy range), not the map's. A cavity against one ventricle (a periventricular
    lesion, which the measure joins to the ventricle) has no such mirror and stays in the map."""
    vent = ventricles_on_template(image_t, brain_t, means, spacing_mm)
    if not vent.any():
        return vent
    wide = ndimage.binary_dilation(vent)
    return wide & voxel_features.mirror(wide)


def relative_image(
    contrast: str,
    image_t: np.ndarray,
    means: dict[str, float],
    brain_t: np.ndarray,
    csf_reference: dict[str, float],
    measured_in: str,
    spacing_mm: float,
    tissue: tuple[str, ...] = (),
) -> np.ndarray:
    """White-matter-relative ``image_t``: for a contrast in ``tissue``, its CSF, grey and white
    matter put on fixed levels (:func:`openrecon_stroke.voxel_features.tissue_standardised`, the
    lesion features' rule); otherwise :func:`standardise`-d to ``csf_reference[contrast]`` when that
    is given and the brain's CSF level can be measured (:func:`csf_relative`). The one rule for the
    anomaly stage, the model's build and its evaluation."""
    rel = voxel_features.relative_intensity(image_t, float(means.get("wm", 0.0)))
    if contrast in tissue:
        return voxel_features.tissue_standardised(rel, means, contrast)
    ref = csf_reference.get(contrast)
    if ref is None:
        return rel
    level = csf_relative(image_t, means, brain_t, measured_in, spacing_mm)
    return rel if level is None else standardise(rel, level, ref)


def anomaly_score(
    rel: dict[str, np.ndarray],
    brain: np.ndarray,
    intensity: dict[str, Stats],
    asymmetry: dict[str, Stats],
    smoothing_mm: float,
    spacing_mm: float,
    parts: tuple[str, ...] = PARTS,
    darker_only: tuple[str, ...] = (),
) -> np.ndarray:
    """The uncalibrated anomaly score on the template grid, 0 outside ``brain``.

    ``rel``: per contrast the white-matter-relative image; ``intensity`` / ``asymmetry``: per
    contrast the healthy statistics of that image and of its left-right difference
    (``rel - mirror(rel)``). Per voxel the larger of the mean over contrasts of |z| of the
    intensity and the mean over contrasts of |z| of the difference, the latter only where the voxel
    is farther from healthy than its mirror (``|z| >= |z at the mirror|``) and both are in the brain;
    smoothed ``smoothing_mm`` (Gaussian sigma) inside ``brain``. ``parts`` leaves one out (ablation).
    A contrast in ``darker_only`` counts only what is darker than healthy: ``max(-z, 0)`` of the
    intensity, and of the difference only where the voxel is darker than its mirror and itself
    below healthy, more so than its mirror (``min(z, 0) < min(z at the mirror, 0)``: the healthy
    side across from a bright vessel is not flagged). On a T1-w image the anomalies sought (a
    lesion's cavity, CSF where tissue belongs) are darker; brighter is mostly contrast agent in
    vessels, dura and choroid plexus.
    """
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"anomaly score parts must be among {PARTS}; got {parts}")
    both = brain & voxel_features.mirror(brain)
    total = np.zeros(brain.shape, np.float32)
    asym = np.zeros(brain.shape, np.float32)
    n = max(len(rel), 1)
    for c, r in rel.items():
        z = np.where(brain, intensity[c].z(r), 0)
        darker = c in darker_only
        total += np.maximum(-z, 0) if darker else np.abs(z)
        if "asymmetry" in parts and c in asymmetry:
            zd = asymmetry[c].z(r - voxel_features.mirror(r))
            if darker:  # the voxel itself below healthy, and further below than its mirror is off
                zd, farther = np.maximum(-zd, 0), np.minimum(z, 0) < np.minimum(voxel_features.mirror(z), 0)
            else:
                zd, farther = np.abs(zd), np.abs(z) >= np.abs(voxel_features.mirror(z))
            asym += np.where(both & farther, zd, 0)
    score = np.maximum(total / n if "intensity" in parts else 0, asym / n).astype(np.float32)
    if smoothing_mm > 0:
        score = voxel_features.smooth_in(score, brain, smoothing_mm, spacing_mm)
    return np.where(brain, score, 0).astype(np.float32)


class NormativeModel:
    """A normative card with its statistics (read once)."""

    def __init__(self, card: NormativeCard):
        self.card = card
        self._intensity: dict[str, Stats] = {}
        self._asymmetry: dict[str, Stats] = {}
        self._jacobian: Stats | None = None

    def intensity(self, contrast: str) -> Stats:
        if contrast not in self._intensity:
            if contrast not in self.card.contrasts:
                raise ModelCardError(f"{self.card.path}: no normative statistics for {contrast}")
            self._intensity[contrast] = read_stats(
                self.card.path.parent / f"{contrast}.npz", self.card.shape, self.card.box
            )
        return self._intensity[contrast]

    def relative(self, contrast: str, image_t: np.ndarray, means: dict[str, float], brain_t: np.ndarray) -> np.ndarray:
        """The image (template grid) as the statistics see it: relative to the brain's white
        matter, tissue-standardised when the card's ``tissue_standardised`` names ``contrast``, or
        :func:`standardise`-d when the card has a CSF reference for it (its CSF level measured
        where the card's ``csf_measured_in`` says, :func:`csf_relative`).
        ``means``: the brain's tissue intensities (:func:`openrecon_stroke.template.tissue_means`);
        ``brain_t``: the brain mask on the template grid."""
        return relative_image(
            contrast,
            image_t,
            means,
            brain_t,
            self.card.csf_reference,
            self.card.csf_measured_in,
            self.card.spacing_mm,
            self.card.tissue_standardised,
        )

    def asymmetry(self, contrast: str) -> Stats | None:
        """Healthy statistics of the left-right difference of ``contrast`` (None without them)."""
        if contrast not in self.card.asymmetry:
            return None
        if contrast not in self._asymmetry:
            self._asymmetry[contrast] = read_stats(
                self.card.path.parent / f"{contrast}_mirror.npz", self.card.shape, self.card.box
            )
        return self._asymmetry[contrast]

    def jacobian(self) -> Stats | None:
        if self._jacobian is None and self.card.jacobian is not None:
            f = self.card.path.parent / "jacobian.npz"
            self._jacobian = read_stats(f, self.card.jacobian["shape"], self.card.jacobian["box"])
        return self._jacobian

    def load(self) -> None:
        for c in self.card.contrasts:
            self.intensity(c)
            self.asymmetry(c)
        self.jacobian()
        if self.card.csf_reference and self.card.csf_measured_in == "lateral_ventricles":
            lateral_ventricles_on_template(self.card.spacing_mm)  # 0.15 s: at warm-up, not in a study

    def as_features(self) -> voxel_features.Normative:
        """The intensity statistics in the form the lesion features read (which standardise only
        by tissue levels: a card with a CSF reference cannot feed them)."""
        if self.card.csf_reference:
            raise ModelCardError(
                f"{self.card.path}: statistics standardised to a CSF reference cannot give the lesion features' "
                "z-scores; build the lesion models' normative model without --standardise"
            )
        return voxel_features.Normative(
            {c: self.intensity(c).mean for c in self.card.contrasts},
            {c: self.intensity(c).std for c in self.card.contrasts},
            self.card.tissue_standardised,
        )

    def raw_score(self, rel: dict[str, np.ndarray], brain: np.ndarray, parts: tuple[str, ...] = PARTS) -> np.ndarray:
        """:func:`anomaly_score` of the white-matter-relative images ``rel`` (before calibration)."""
        asym = {c: a for c in rel if (a := self.asymmetry(c)) is not None}
        intensity = {c: self.intensity(c) for c in rel}
        return anomaly_score(
            rel, brain, intensity, asym, self.card.smoothing_mm, self.card.spacing_mm, parts, self.card.darker_only
        )

    def score(self, rel: dict[str, np.ndarray], brain: np.ndarray, apart: np.ndarray | None = None) -> np.ndarray:
        """The anomaly score (1 = threshold fixed on held-out healthy brains), 0 outside ``brain``
        and in ``apart`` (this head's symmetric lateral ventricles when the card sets
        ``ventricles_apart``, :meth:`ventricles`)."""
        combo = "+".join(c for c in ("t1", "flair") if c in rel)
        thr = self.card.calibration.get(combo)
        if not thr:
            raise ModelCardError(f"{self.card.path}: no calibration for {combo}")
        s = self.raw_score(rel, brain) / thr
        if apart is not None:
            s[apart] = 0.0
        return s.astype(np.float32)

    def ventricles(self, image_t: np.ndarray, brain_t: np.ndarray, means: dict[str, float]) -> np.ndarray | None:
        """:func:`ventricles_apart` of the image when the card sets ``ventricles_apart``, else None."""
        if not self.card.ventricles_apart:
            return None
        return ventricles_apart(image_t, brain_t, means, self.card.spacing_mm)

    def ventricle_z(self, ventricle_ml: float) -> float | None:
        v = self.card.ventricle_ml
        if not v or not v.get("std"):
            return None
        return (ventricle_ml - float(v["mean"])) / float(v["std"])


_models: ModelCache[Path, NormativeModel] = ModelCache(lambda folder: NormativeModel(NormativeCard.load(folder)))


def get_normative(folder: str | Path | None = None) -> NormativeModel:
    """The (process-wide, loaded once) normative model of ``folder`` (default: ``models/normative``)."""
    return _models.get(Path(folder) if folder is not None else model_folder("normative"))


def stats_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def eroded(mask: np.ndarray, mm: float, spacing_mm: float) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=max(1, int(round(mm / spacing_mm))))


def _ball(radius_mm: float, spacing_zyx) -> np.ndarray:
    """Ellipsoidal structuring element of ``radius_mm`` on a grid of ``spacing_zyx`` (mm); an axis
    whose voxels are thicker than the radius gets no extent."""
    r = [int(radius_mm // float(s)) for s in spacing_zyx]
    zz, yy, xx = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1, -r[2] : r[2] + 1]
    d = (zz / max(r[0], 1)) ** 2 + (yy / max(r[1], 1)) ** 2 + (xx / max(r[2], 1)) ** 2
    return np.asarray(d <= 1.0, bool)


def _coarse_distance(mask: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Distance (mm) to the nearest False voxel of ``mask``, measured on every second voxel and
    repeated back onto the full grid (within about a voxel of the exact distance)."""
    d = ndimage.distance_transform_edt(mask[::2, ::2, ::2], sampling=2 * sp)
    full = d.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    return full[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


def _midline(labels: np.ndarray, where: np.ndarray, sp: np.ndarray, mm: float) -> np.ndarray:
    """Voxels of ``where`` within about ``mm`` of the plane between the left and right regions of
    the region map ``labels``: where the distances to the nearest left and the nearest right
    region differ by less than ``mm`` (``|d_left - d_right| / 2`` is the distance to the plane,
    also across an unlabelled gap between the two sides)."""
    out = np.zeros(labels.shape, bool)
    left_ids, right_ids = regions.side_ids()
    left, right = np.isin(labels, left_ids), np.isin(labels, right_ids)
    # first on every second voxel, to find the slab near the plane (within 8 mm of both sides);
    # then exactly, in that slab's box (+ 8 mm, so that the nearest voxel of each side is in it)
    zone = (_coarse_distance(~left, sp) < 8.0) & (_coarse_distance(~right, sp) < 8.0) & where
    box = box_of(zone, [int(g) for g in np.ceil(8.0 / sp) + 1])
    if box is None:
        return out
    to_left = ndimage.distance_transform_edt(~left[box], sampling=sp)
    to_right = ndimage.distance_transform_edt(~right[box], sampling=sp)
    out[box] = np.abs(to_left - to_right) < mm
    return out & where


@dataclass(frozen=True)
class _VentricleSearch:
    """What :func:`ventricle_measure` found before pieces and partial volume: the measurement box
    on the input grid and, in it, the image, brain, template ventricles, CSF-dark voxels and the
    candidates (dark, near the template's ventricles, off the midline); the settings after it."""

    box: tuple[slice, ...]
    shape: tuple[int, ...]
    image: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    dark: np.ndarray
    candidates: np.ndarray
    means: dict[str, float]
    sp: np.ndarray
    opening_mm: float
    tissue_mm: float
    shell_mm: float


@dataclass(frozen=True)
class VentricleMeasure:
    """The lateral ventricles as measured on a series' grid (:func:`ventricle_measure`)."""

    #: volume, partial volume counted (mL)
    ml: float
    #: bool, the voxels that counted (the core and its shell), on the measured arrays' grid
    counted: np.ndarray
    _search: _VentricleSearch | None = field(default=None, repr=False, compare=False)

    def without(self, exclude: np.ndarray) -> VentricleMeasure:
        """The ventricles measured again with ``exclude`` (bool, on the measured arrays' grid:
        voxels known not to be ventricle, e.g. the segmented lesion) left out: never counted, and
        pieces cannot join through them. The search (distances to the template's ventricles and
        to the midline) is this measure's; only pieces and partial volume are found again."""
        s = self._search
        if s is None:  # nothing was found to measure
            return self
        out = np.asarray(exclude[s.box], bool)
        return _ventricle_pieces(
            dataclasses.replace(s, brain=s.brain & ~out, dark=s.dark & ~out, candidates=s.candidates & ~out)
        )


def ventricle_measure(
    image: np.ndarray,
    brain: np.ndarray,
    labels: np.ndarray,
    means: dict[str, float],
    spacing_zyx,
    reach_mm: float = 20.0,
    opening_mm: float = 2.0,
    dark_fraction: float = 0.35,
    midline_mm: float = 2.0,
    tissue_mm: float = 3.0,
    shell_mm: float = 2.0,
) -> VentricleMeasure:
    """The lateral ventricles on a series' own grid: their volume (mL, partial volume counted) and
    the voxels that counted (:meth:`VentricleMeasure.without` measures again with a lesion left
    out).

    ``labels``: the template's region map carried onto this grid (:mod:`openrecon_stroke.regions`);
    its lateral ventricles are the seed, not the answer (the deformable registration follows
    enlarged ventricles only in part). ``image``: the (bias-corrected) series, CSF darkest (T1-w,
    dark-fluid FLAIR); ``means``: the brain's CSF, grey- and white-matter intensities.

    1. The ventricles' core: CSF-dark voxels (below the CSF intensity plus ``dark_fraction`` of the
       way to grey matter) within ``reach_mm`` of the template's ventricles, opened with an
       ``opening_mm`` ball, the pieces that overlap the template's ventricles, widened back by the
       same ball inside the dark voxels. Voxels within ``midline_mm`` of the plane between the
       left and right regions cannot join pieces: the interhemispheric fissure's CSF, which
       touches the ventricles along the midline, stays out.
    2. Partial volume: each voxel's CSF fraction between the core's CSF level and the tissue
       around it (the mean of clearly-not-CSF voxels, Gaussian ``tissue_mm``), counted over the
       core and a shell ``shell_mm`` wide around it. The shell's fraction is taken above what
       tissue a few mm further out shows (3-5 mm beyond the shell), so that grey matter and noise
       next to the ventricles are not counted as CSF.

    Settings chosen on two synthetic heads (maps 17-18, ventricles grown by 0/20/50 %); held-out
    figures in ``models/normative/MODEL_CARD.md``."""
    sp = np.asarray(spacing_zyx, float)
    shape = tuple(np.shape(image))
    ventricles = np.isin(labels, regions.lateral_ventricle_ids())
    if not ventricles.any():
        return VentricleMeasure(0.0, np.zeros(shape, bool))
    # nothing beyond reach_mm (+ the ball, + the shell and its tissue band, + a voxel) of the
    # template's ventricles can count: the same measurement in their box grown by that much
    margin = reach_mm + opening_mm + shell_mm + 5.0
    box = box_of(ventricles, [int(g) for g in np.ceil(margin / sp) + 2])
    assert box is not None  # the ventricles are not empty
    # a copy: the measure keeps it for :meth:`VentricleMeasure.without`, and ``image`` may be a view
    # of a SimpleITK image's buffer
    image, brain, labels, ventricles = np.array(image[box], np.float32), brain[box], labels[box], ventricles[box]
    dark = (image < means["csf"] + dark_fraction * (means["gm"] - means["csf"])) & brain
    # distances that only bound the search, on every second voxel (an eighth of the work)
    near = _coarse_distance(~ventricles, sp) <= reach_mm
    candidates = dark & near
    candidates &= ~_midline(labels, candidates, sp, midline_mm)
    search = _VentricleSearch(
        box, shape, image, brain, ventricles, dark, candidates, dict(means), sp, opening_mm, tissue_mm, shell_mm
    )
    return _ventricle_pieces(search)


def _ventricle_pieces(s: _VentricleSearch) -> VentricleMeasure:
    """Steps 1 (from the candidates on) and 2 of :func:`ventricle_measure`."""
    sp, means, image, brain = s.sp, s.means, s.image, s.brain
    counted = np.zeros(s.shape, bool)
    ball = _ball(s.opening_mm, sp)
    opened = ndimage.binary_opening(s.candidates, ball)
    pieces, _ = ndimage.label(opened)
    keep = np.unique(pieces[s.ventricles & opened])
    core = ndimage.binary_dilation(np.isin(pieces, keep[keep > 0]), ball) & s.dark
    if not core.any():
        return VentricleMeasure(0.0, counted, s)
    # partial volume, in the box of the core, its shell and the tissue band beyond (the tissue
    # level is smoothed in that box grown by the Gaussian's reach, so that it is the same there as
    # smoothed over the whole measurement box, unless the core comes within that reach of the
    # box's edge)
    csf = float(np.median(image[core]))
    reach = np.ceil((s.shell_mm + 3.0) / sp) + 1
    around = box_of(core, [int(g) for g in reach])
    wide = box_of(core, [int(g) for g in reach + np.ceil(4.0 * s.tissue_mm / sp) + 1])
    assert around is not None and wide is not None
    img_w, brain_w = image[wide], brain[wide]
    tissue = brain_w & (img_w > csf + 0.6 * (means["gm"] - csf))
    sigma = s.tissue_mm / sp
    num = ndimage.gaussian_filter(np.where(tissue, img_w, 0.0).astype(np.float32), sigma)
    den = ndimage.gaussian_filter(tissue.astype(np.float32), sigma)
    level = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
    level = np.where(level > csf, level, means["wm"])
    fraction_w = np.clip((level - img_w) / np.maximum(level - csf, 1e-6), 0.0, 1.0)
    # ``around`` inside ``wide``
    fr = fraction_w[tuple(slice(a.start - w.start, a.stop - w.start) for a, w in zip(around, wide))]
    out = ndimage.distance_transform_edt(~core[around], sampling=sp)
    inside = brain[around]
    shell = (out > 0) & (out <= s.shell_mm) & inside
    band = (out > s.shell_mm + 1.0) & (out <= s.shell_mm + 3.0) & inside
    floor = float(fr[band].mean()) if band.any() else 0.0
    total = float(fr[core[around]].sum()) + float(np.clip(fr[shell] - floor, 0.0, None).sum())
    counted[s.box][around] = core[around] | shell
    return VentricleMeasure(total * float(np.prod(sp)) / 1000.0, counted, s)


def deformation_regions(
    log_jacobian: np.ndarray,
    stats: Stats,
    brain: np.ndarray,
    spacing_mm: float,
    z_limit: float = 3.0,
    min_ml: float = 1.0,
) -> list[dict]:
    """Regions where the brain is larger (expansion) or smaller (contraction) than healthy brains
    at the same template position: clusters of |z| > ``z_limit`` of the deformation's
    log-Jacobian against the healthy statistics, of at least ``min_ml`` (template mL), largest
    first: ``{"kind", "volume_ml", "peak_z", "centroid_zyx"}`` (voxel index on the grid)."""
    z = np.where(brain, stats.z(log_jacobian), 0)
    vox_ml = spacing_mm**3 / 1000.0
    out = []
    for kind, sel in (("expansion", z > z_limit), ("contraction", z < -z_limit)):
        lab, n = ndimage.label(sel)
        if not n:
            continue
        sizes = np.bincount(lab.ravel())[1:] * vox_ml
        for i in np.flatnonzero(sizes >= min_ml) + 1:
            m = lab == i
            out.append(
                {
                    "kind": kind,
                    "volume_ml": round(float(sizes[i - 1]), 1),
                    "peak_z": round(float(np.abs(z[m]).max()), 1),
                    "centroid_zyx": [float(v) for v in np.argwhere(m).mean(0)],
                }
            )
    return sorted(out, key=lambda r: -r["volume_ml"])
