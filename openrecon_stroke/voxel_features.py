"""Per-voxel features in template space: what a voxel classifier sees of a registered brain.

Everything here works on ``(nz, ny, nx)`` arrays on one template-space grid
(:func:`openrecon_stroke.template.template_grid`, LPS, axis-aligned, with a voxel column on the
mid-sagittal plane, so that flipping the x axis mirrors left and right about the template's plane
of symmetry). A model card lists the features it was trained on by name; :func:`compute` returns
them in that order, so the card alone decides what a model gets.

Names: ``<contrast>_<feature>`` for image features (contrast ``t1`` or ``flair``) and
``prior_<feature>`` for features of the template alone:

* ``int``: intensity relative to the brain's own white matter (1 = white matter);
* ``int_s2``, ``int_s5``: the same smoothed (Gaussian, 2 and 5 mm), inside the brain only;
* ``z``, ``z_s2``, ``z_s4``: normative z-score against healthy heads at the same template
  position (:class:`Normative`), raw and smoothed;
* ``expect``: intensity minus what the template's tissue probabilities predict for this brain
  (grey matter, white matter and CSF intensities estimated on the brain itself);
* ``mirror``, ``mirror_s3``: intensity minus the intensity at the mirrored position (the other
  hemisphere), raw and smoothed 3 mm; ``zmirror_s2``: the same on the normative z-score;
* ``lstd3``: local standard deviation of the intensity (3 mm Gaussian window);
* ``prior_gm``, ``prior_wm``, ``prior_csf``: the template's tissue probabilities;
  ``prior_csf_s4``: CSF probability smoothed 4 mm (nearness of CSF); ``prior_depth``: distance
  to the template brain's surface (mm);
* ``tint``, ``tint_s2``, ``tint_s5``, ``texpect``, ``tmirror``, ``tmirror_s3``, ``tlstd3``: the
  intensity features on the tissue-standardised scale (:func:`tissue_standardised`: the brain's
  own CSF, grey and white matter mapped onto fixed levels), so that they do not change with the
  scanner's contrast. No shipped card uses them yet (measured 2026-12-01, `MODEL_CARD.md`).

Smoothing inside the brain is normalised convolution (the smoothed image divided by the smoothed
mask), so values near the brain's edge are not pulled towards 0 by the background.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .memo import ContentMemo
from .resample import box_of

IMAGE_FEATURES = (
    "int",
    "int_s2",
    "int_s5",
    "z",
    "z_s2",
    "z_s4",
    "expect",
    "mirror",
    "mirror_s3",
    "zmirror_s2",
    "lstd3",
)
PRIOR_FEATURES = ("prior_gm", "prior_wm", "prior_csf", "prior_csf_s4", "prior_depth")
#: The intensity features on the brain's tissue-standardised scale (:func:`tissue_standardised`):
#: ``t<feature>`` is ``<feature>`` of that image (``tint``, ``tint_s2``, ...).
STANDARDISED_FEATURES = ("tint", "tint_s2", "tint_s5", "texpect", "tmirror", "tmirror_s3", "tlstd3")
#: Tissue levels (relative to white matter) that :func:`tissue_standardised` maps each brain's own
#: CSF, grey and white matter to: a typical MPRAGE and a typical dark-fluid FLAIR at 3 T.
TISSUE_LEVELS = {"t1": {"csf": 0.25, "gm": 0.70, "wm": 1.0}, "flair": {"csf": 0.20, "wm": 1.0, "gm": 1.25}}
#: Features that need a normative model.
NORMATIVE_FEATURES = ("z", "z_s2", "z_s4", "zmirror_s2")


@dataclass(frozen=True)
class Normative:
    """Per-voxel mean and standard deviation of white-matter-relative intensity in healthy heads,
    per contrast, on the template grid: ``mean[c]``, ``std[c]`` (``(nz, ny, nx)`` float32);
    the contrasts in ``tissue`` are of :func:`tissue_standardised` intensity, and their z-scores
    are taken of that."""

    mean: dict
    std: dict
    tissue: tuple = ()

    def z(self, contrast: str, rel: np.ndarray) -> np.ndarray:
        return ((rel - self.mean[contrast]) / self.std[contrast]).astype(np.float32)


def smooth_in(
    a: np.ndarray, mask: np.ndarray, sigma_mm: float, spacing_mm: float, den: np.ndarray | None = None
) -> np.ndarray:
    """Gaussian smoothing of ``a`` inside ``mask`` (normalised convolution; 0 outside).
    ``den``: the smoothed mask (:func:`smoothed_mask`), when the caller already has it."""
    s = sigma_mm / spacing_mm
    num = ndimage.gaussian_filter(np.where(mask, a, 0).astype(np.float32), s, mode="constant")
    if den is None:
        den = smoothed_mask(mask, sigma_mm, spacing_mm)
    return np.where(mask, num / np.maximum(den, 1e-3), 0).astype(np.float32)


def smoothed_mask(mask: np.ndarray, sigma_mm: float, spacing_mm: float) -> np.ndarray:
    """The denominator of :func:`smooth_in`: ``mask`` as float, Gaussian-smoothed."""
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma_mm / spacing_mm, mode="constant")


#: Features of the template alone (no image): the same for every study on one template grid.
TEMPLATE_FEATURES = ("csf_s4", "depth")


def template_feature(f: str, priors: dict[str, np.ndarray], spacing_mm: float) -> np.ndarray:
    """``prior_csf_s4`` / ``prior_depth`` of a template (``priors`` as :func:`compute` takes
    them); a caller that keeps them in ``priors`` under ``csf_s4`` / ``depth`` computes them once."""
    if f == "csf_s4":
        return ndimage.gaussian_filter(priors["csf"], 4.0 / spacing_mm)
    if f == "depth":
        return ndimage.distance_transform_edt(priors["brain"] > 0, sampling=spacing_mm).astype(np.float32)
    raise ValueError(f"unknown feature prior_{f!r}")


def mirror(a: np.ndarray) -> np.ndarray:
    """The array mirrored left-right about the template's mid-sagittal plane (x axis flipped)."""
    return a[:, :, ::-1]


def brain_box(brain: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``brain`` (bool, template grid), widened in x to be symmetric about
    the grid's middle column (the mid-sagittal plane), so that :func:`mirror` of a crop is the
    crop of the mirror. The whole grid when the brain is empty."""
    box = box_of(brain, 0)
    if box is None:
        return (slice(None),) * 3
    x0 = min(box[2].start, brain.shape[2] - box[2].stop)
    return (box[0], box[1], slice(x0, brain.shape[2] - x0))


def check_names(names, inputs, has_normative: bool) -> str:
    """Why a feature list cannot be computed for these inputs ("" when it can)."""
    known = set(PRIOR_FEATURES) | {f"{c}_{f}" for c in inputs for f in IMAGE_FEATURES + STANDARDISED_FEATURES}
    bad = [n for n in names if n not in known]
    if bad or not names:
        return f"unknown features {bad} for inputs {list(inputs)} (known: {sorted(known)})"
    if not has_normative and any(n.split("_", 1)[1] in NORMATIVE_FEATURES for n in names if not n.startswith("prior_")):
        return "normative features need a 'normative' model folder"
    return ""


def feature_names(inputs: tuple[str, ...], image_features=IMAGE_FEATURES, prior_features=PRIOR_FEATURES) -> list[str]:
    """Column names: ``image_features`` of each contrast of ``inputs`` (one list for all, or a dict
    contrast -> list), then ``prior_features``."""
    per = image_features if isinstance(image_features, dict) else dict.fromkeys(inputs, image_features)
    return [f"{c}_{f}" for c in inputs for f in per[c]] + list(prior_features)


def relative_intensity(image: np.ndarray, wm_intensity: float) -> np.ndarray:
    return (image / (wm_intensity if wm_intensity > 0 else 1.0)).astype(np.float32)


def tissue_levels(means: dict[str, float], contrast: str) -> dict[str, float] | None:
    """The levels :func:`tissue_standardised` puts this brain's CSF, grey and white matter on
    (:data:`TISSUE_LEVELS` of ``contrast``), or None where it leaves the image as it is: the
    brain's tissues (``means``) not in the contrast's order, within 5 % of each other, or
    unmeasured (the measurement is not to be trusted)."""
    wm = means.get("wm", 0.0)
    levels = TISSUE_LEVELS[contrast]
    src = [means[t] / wm if wm > 0 else 0.0 for t in sorted(levels, key=levels.__getitem__)]
    if src[0] <= 0 or any(b < a * 1.05 for a, b in zip(src, src[1:])):
        return None
    return levels


def tissue_standardised(rel: np.ndarray, means: dict[str, float], contrast: str) -> np.ndarray:
    """A white-matter-relative image mapped piecewise linearly so that the brain's own CSF, grey and
    white matter (``means``, :func:`openrecon_stroke.template.tissue_means`) land on
    :data:`TISSUE_LEVELS` of ``contrast``: the same tissue reads the same whatever the scanner's
    contrast. Through 0 below the darkest tissue; the last segment's slope above the brightest.
    Unchanged where :func:`tissue_levels` says the brain's tissues cannot be trusted."""
    levels = tissue_levels(means, contrast)
    if levels is None:
        return rel
    order = sorted(levels, key=levels.__getitem__)
    src = [0.0] + [means[t] / means["wm"] for t in order]
    dst = [0.0] + [levels[t] for t in order]
    slope = (dst[-1] - dst[-2]) / (src[-1] - src[-2])
    out = np.interp(rel, src, dst)
    top = rel > src[-1]
    out[top] = dst[-1] + (rel[top] - src[-1]) * slope
    return out.astype(np.float32)


def compute(
    names: list[str] | tuple[str, ...],
    images: dict[str, np.ndarray],
    brain: np.ndarray,
    means: dict[str, dict[str, float]],
    priors: dict[str, np.ndarray],
    spacing_mm: float,
    normative: Normative | None = None,
    workers: int = 1,
    reuse: tuple[ContentMemo, dict[str, str]] | None = None,
) -> np.ndarray:
    """Feature matrix ``(n_brain_voxels, len(names))`` float32, rows in ``np.flatnonzero(brain)``
    order.

    ``images``: per contrast, the N4-corrected image on the template grid; ``brain``: bool mask
    there; ``means``: per contrast, the brain's ``gm``/``wm``/``csf`` intensities
    (:func:`openrecon_stroke.template.tissue_means`); ``priors``: the template's ``gm``, ``wm``,
    ``csf`` and ``brain`` on the same grid, and optionally its :data:`TEMPLATE_FEATURES` already
    computed (:func:`template_feature`).

    Works in the brain's box (symmetric about the mid-sagittal plane, so mirroring stays exact):
    every image feature is 0 outside the brain before it is smoothed (``mode="constant"``), so
    the box gives the same values as the whole grid, at about half the voxels.

    ``workers`` > 1 computes the columns side by side (SciPy's filters release the GIL); the
    pieces columns share (intensity, z-score, smoothed masks) are made once, and the result is
    the same as with one worker.

    ``reuse``: ``(memo, keys)``, where ``keys[c]`` is a :func:`openrecon_stroke.memo.digest` of
    everything contrast ``c``'s columns depend on besides their names (its image, the brain mask,
    its tissue means, the grid, the normative model): each image column of ``c`` is taken from
    ``memo`` when there, else computed and kept (the T1-w columns of the fused model on a FLAIR
    connection are the T1-w model's of the T1-w connection). Prior columns are always made.
    """
    box = brain_box(brain)
    full_priors = priors
    priors = {k: v[box] for k, v in priors.items()}  # views, no copies
    if normative is not None:
        normative = Normative(
            {c: m[box] for c, m in normative.mean.items()},
            {c: v[box] for c, v in normative.std.items()},
            normative.tissue,
        )
    images = {c: a[box] for c, a in images.items()}
    brain = brain[box]
    memo = _Memo()
    sel = brain.ravel()
    both = brain & mirror(brain)  # brain in both hemispheres: where mirror features are defined

    def smooth(a: np.ndarray, where: str, sigma_mm: float) -> np.ndarray:
        mask = brain if where == "brain" else both
        den = memo.get(("den", where, sigma_mm), lambda: smoothed_mask(mask, sigma_mm, spacing_mm))
        return smooth_in(a, mask, sigma_mm, spacing_mm, den)

    def rel(c):
        return memo.get(
            ("int", c), lambda: np.where(brain, relative_intensity(images[c], means[c]["wm"]), 0).astype(np.float32)
        )

    def trel(c):
        return memo.get(
            ("tint", c),
            lambda: np.where(brain, tissue_standardised(rel(c), means[c], c), 0).astype(np.float32),
        )

    def z(c):
        if normative is None:
            raise ValueError(f"feature {c}_z needs a normative model")
        src = trel if c in normative.tissue else rel
        return memo.get(("z", c), lambda: np.where(brain, normative.z(c, src(c)), 0).astype(np.float32))

    def one(name: str) -> np.ndarray:
        if name.startswith("prior_"):
            f = name[len("prior_") :]
            if f in priors:  # gm, wm, csf; csf_s4 and depth where the caller keeps them
                return priors[f]
            return template_feature(f, full_priors, spacing_mm)[box]  # smooths beyond the brain
        c, _, f = name.partition("_")
        if c not in images:
            raise ValueError(f"feature {name!r} needs the {c} image")
        if f in STANDARDISED_FEATURES:
            # the tissue levels of the image the features see: the fixed ones, or the brain's own
            # where it was left as it is
            m = tissue_levels(means[c], c) or {k: v / (means[c]["wm"] or 1.0) for k, v in means[c].items()}
            return image_feature(c, f[1:], trel(c), m)
        return image_feature(c, f, rel(c), means[c])

    def image_feature(c: str, f: str, r: np.ndarray, m: dict[str, float]) -> np.ndarray:
        """Feature ``f`` of contrast ``c`` from its intensity ``r`` whose tissue levels are ``m``."""
        if f == "int":
            return r
        if f in ("int_s2", "int_s5"):
            return smooth(r, "brain", float(f[-1]))
        if f == "z":
            return z(c)
        if f in ("z_s2", "z_s4"):
            return smooth(z(c), "brain", float(f[-1]))
        if f == "expect":
            wm = m["wm"] if m["wm"] > 0 else 1.0
            e = (m["gm"] * priors["gm"] + m["wm"] * priors["wm"] + m["csf"] * priors["csf"]) / wm
            return r - e
        if f == "mirror":
            return r - mirror(r)
        if f == "mirror_s3":
            return smooth(r - mirror(r), "both", 3.0)
        if f == "zmirror_s2":
            return smooth(z(c) - mirror(z(c)), "both", 2.0)
        if f == "lstd3":
            m1 = smooth(r, "brain", 3.0)
            m2 = smooth(r**2, "brain", 3.0)
            return np.sqrt(np.maximum(m2 - m1 * m1, 0))
        raise ValueError(f"unknown feature {c}_{f!r}")

    out = np.empty((int(sel.sum()), len(names)), np.float32)

    kept_columns, keys = reuse if reuse is not None else (None, {})

    def column(j: int) -> None:
        name = names[j]
        c = name.partition("_")[0]  # a contrast; "prior" is never one of the keys
        key = f"{keys[c]}:{name}" if kept_columns is not None and c in keys else None
        kept = kept_columns.get(key) if kept_columns is not None and key is not None else None
        if kept is not None:
            out[:, j] = kept
            return
        out[:, j] = col = one(name).ravel()[sel]
        if kept_columns is not None and key is not None:
            kept_columns.put(key, col)

    if workers > 1 and len(names) > 1:
        # the slowest columns (two smoothings each) first, so that no worker is left with one at the end
        order = sorted(range(len(names)), key=lambda j: not names[j].endswith("lstd3"))
        with ThreadPoolExecutor(min(workers, len(names)), "features") as pool:
            list(pool.map(column, order))
    else:
        for j in range(len(names)):
            column(j)
    return out


class _Memo:
    """Values made once by whichever thread asks first; the others wait for it."""

    def __init__(self) -> None:
        self._values: dict = {}
        self._locks: dict = {}
        self._lock = threading.Lock()

    def get(self, key, make: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = make()
            return self._values[key]
