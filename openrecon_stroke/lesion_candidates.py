"""Lesion candidates: the connected parts of a template-space lesion probability, each described
as a reader would judge it, for a second classifier that keeps or drops each one.

A voxel classifier judges one voxel at a time, from its neighbourhood. Some healthy anatomy looks
like a lesion voxel by voxel (an occipital horn larger on one side looks like a CSF-like cavity in
white matter, with a darker mirror) but not as a whole: no gliotic rim around it, the same shape
on both sides, joined to the ventricles. Each candidate here is one 26-connected component of
``probability >= threshold`` whose peak reaches ``seed`` and that is at least ``min_mm3`` large;
:func:`describe` gives one row per candidate (columns :func:`feature_names`):

* ``log_ml``: log10 of its volume (mL); ``p_max``, ``p_mean``: the voxel probabilities in it;
* ``p_mirror``: mean probability at the mirrored voxels (other hemisphere);
* ``extent``: its voxels over its bounding box's; ``edge``: fraction of its 3 mm shell outside
  the brain mask;
* ``prior_csf``, ``prior_wm``, ``prior_depth``: the template's CSF and white-matter probability
  and depth below the brain surface (mm), mean over it; ``vent_mm``: distance from the template's
  lateral ventricles to its nearest voxel (mm);
* optional (:data:`ANATOMY_FEATURES`, a filter trained with them; from this head's own image,
  :func:`openrecon_stroke.lesion_voxel.head_anatomy`): ``vent_share``, the fraction of its
  voxels within one voxel of this head's lateral ventricles as measured on its image (they
  follow a ventricle larger than the template's, where the registration did not);
  ``vent_shell``, the fraction of its 3 mm shell inside them; ``dark_beyond``,
  ``log10(1 + V / v)``: ``V`` the CSF-dark voxels joined to it (26-connected, through dark
  voxels, within 15 mm) outside it, ``v`` its own volume. A cavity in white matter stands
  alone; a widened sulcus or a ventricle wall continues into more CSF;
* per contrast ``c``: ``c_int``, ``c_z``, ``c_mirror``: mean white-matter-relative intensity,
  normative z-score and mirror difference inside (the voxel features of the same names);
  ``c_shell``, ``c_shell_p90``: mean and 90th percentile of the relative intensity in the
  3 mm shell around it, inside the brain; ``c_rim``: shell mean minus inside mean. A model that
  reads a contrast only on the tissue-standardised scale (voxel features ``c_tint``,
  ``c_tmirror``: :data:`openrecon_stroke.voxel_features.STANDARDISED_FEATURES`) gets these on
  that scale, named ``c_tint``, ``c_z``, ``c_tmirror``, ``c_tshell``, ``c_tshell_p90``, ``c_trim``
  (:func:`scale`).

Arrays are ``(nz, ny, nx)`` on the template grid (LPS, x mirrored by flipping the last axis:
:func:`openrecon_stroke.voxel_features.mirror`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .voxel_features import mirror

GLOBAL_FEATURES = (
    "log_ml",
    "p_max",
    "p_mean",
    "p_mirror",
    "extent",
    "edge",
    "prior_csf",
    "prior_wm",
    "prior_depth",
    "vent_mm",
)
#: Optional global features, from this head's own anatomy (:class:`HeadAnatomy`).
ANATOMY_FEATURES = ("vent_share", "vent_shell", "dark_beyond")
#: How far (mm) from a candidate ``dark_beyond`` follows the CSF-dark voxels joined to it.
DARK_REACH_MM = 15.0
#: CSF-dark: below the CSF intensity plus this fraction of the way to grey matter (as the
#: ventricle measurement, :func:`openrecon_stroke.normative.ventricle_measure`).
DARK_FRACTION = 0.35
CONTRAST_FEATURES = ("int", "z", "mirror", "shell", "shell_p90", "rim")
#: Voxel features a candidate description reads, per contrast (the card's model must have them);
#: on the tissue-standardised scale ``tint`` and ``tmirror`` instead (:func:`scale`).
VOXEL_FEATURES = ("int", "z", "mirror")
#: Shell around a candidate: dilation steps of one voxel (3 mm on the 1.5 mm grid).
SHELL_STEPS = 2


def scale(contrast: str, voxel_features: Sequence[str] | None = None) -> str:
    """The intensity scale a candidate description reads for ``contrast``, as the prefix of its
    intensity features: ``""`` (white-matter-relative, ``c_int``) unless the model's
    ``voxel_features`` hold the tissue-standardised intensity ``c_tint`` and not ``c_int``, then
    ``"t"``. The normative z-score ``c_z`` has no prefix (the normative card fixes its scale)."""
    if voxel_features is not None and f"{contrast}_tint" in voxel_features and f"{contrast}_int" not in voxel_features:
        return "t"
    return ""


def _named(contrast: str, feature: str, prefix: str) -> str:
    return f"{contrast}_{feature}" if feature == "z" else f"{contrast}_{prefix}{feature}"


def voxel_keys(inputs: Sequence[str], voxel_features: Sequence[str] | None = None) -> list[str]:
    """The voxel features a candidate description of a model with these contrasts and voxel
    features reads (:data:`VOXEL_FEATURES` on each contrast's :func:`scale`)."""
    return [_named(c, f, scale(c, voxel_features)) for c in inputs for f in VOXEL_FEATURES]


def feature_names(
    inputs: Sequence[str], voxel_features: Sequence[str] | None = None, anatomy: bool = False
) -> list[str]:
    """Column names of :func:`describe`'s rows for a model with these contrasts and voxel features
    (``None``: white-matter-relative on every contrast); ``anatomy``: with
    :data:`ANATOMY_FEATURES` after the global ones."""
    extra = list(ANATOMY_FEATURES) if anatomy else []
    return (
        list(GLOBAL_FEATURES)
        + extra
        + [_named(c, f, scale(c, voxel_features)) for c in inputs for f in CONTRAST_FEATURES]
    )


@lru_cache(maxsize=2)
def ventricle_distance_mm(spacing_mm: float) -> np.ndarray:
    """Distance (mm) of every template-grid voxel to the template's lateral ventricles
    (:func:`openrecon_stroke.regions.lateral_ventricles_on_template`); read-only."""
    from .regions import lateral_ventricles_on_template

    vent = lateral_ventricles_on_template(spacing_mm)
    d = ndimage.distance_transform_edt(~vent, sampling=spacing_mm).astype(np.float32)
    d.flags.writeable = False
    return d


@dataclass(frozen=True)
class HeadAnatomy:
    """What :data:`ANATOMY_FEATURES` read of one head, on the template grid (bool arrays)."""

    #: its lateral ventricles as measured on its image
    ventricles: np.ndarray
    #: its CSF-dark brain voxels
    dark: np.ndarray


def label(
    prob: np.ndarray, threshold: float, seed: float, min_mm3: float, voxel_mm3: float
) -> tuple[np.ndarray, list[int]]:
    """Components of ``prob >= threshold`` (26-connected) and the labels of those that are
    candidates (peak ``>= seed``, at least ``min_mm3``; ``voxel_mm3``: one voxel's volume)."""
    lab, n = ndimage.label(prob >= threshold, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return lab, []
    inside = lab > 0  # only the labelled voxels (ndimage.maximum would sort the whole grid)
    labels = lab[inside]
    size = np.bincount(labels, minlength=n + 1) * voxel_mm3
    peak = np.zeros(n + 1, prob.dtype)
    np.maximum.at(peak, labels, prob[inside])
    keep = (size >= min_mm3) & (peak >= seed)
    return lab, [int(k) for k in np.flatnonzero(keep[1:]) + 1]


def describe(
    prob: np.ndarray,
    lab: np.ndarray,
    ids: list[int],
    brain: np.ndarray,
    voxel: dict[str, np.ndarray],
    inputs: tuple[str, ...] | list[str],
    priors: dict[str, np.ndarray],
    spacing_mm: float,
    anatomy: HeadAnatomy | None = None,
) -> np.ndarray:
    """Rows ``(len(ids), len(feature_names(inputs)))`` float32, one per candidate label in ``ids``.

    ``voxel``: the voxel features :func:`voxel_keys` of each contrast as whole-grid arrays,
    keyed by name (0 outside the brain; :func:`voxel_arrays`); their names set each contrast's
    :func:`scale`; ``priors``: the template's ``csf``, ``wm`` and ``depth`` on the grid;
    ``anatomy``: this head's (:func:`openrecon_stroke.lesion_voxel.head_anatomy`), for the
    :data:`ANATOMY_FEATURES`. Columns: ``feature_names(inputs, list(voxel), anatomy is not None)``."""
    names = feature_names(inputs, list(voxel), anatomy is not None)
    prefix = {c: scale(c, list(voxel)) for c in inputs}
    out = np.zeros((len(ids), len(names)), np.float32)
    if not ids:
        return out
    vent = ventricle_distance_mm(spacing_mm)
    pm = mirror(prob)
    objs = ndimage.find_objects(lab)
    pad = SHELL_STEPS + 1
    if anatomy is not None:
        pad = max(pad, int(np.ceil(DARK_REACH_MM / spacing_mm)) + 1)
    for row, k in enumerate(ids):
        sl = objs[k - 1]
        box = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, lab.shape))
        comp = lab[box] == k
        n_vox = int(comp.sum())
        grown = ndimage.binary_dilation(comp, iterations=SHELL_STEPS)
        ring = grown & ~comp
        shell = ring & brain[box]
        f: dict[str, float] = {
            "log_ml": float(np.log10(n_vox * spacing_mm**3 / 1000.0)),
            "p_max": float(prob[box][comp].max()),
            "p_mean": float(prob[box][comp].mean()),
            "p_mirror": float(pm[box][comp].mean()),
            "extent": n_vox / float(np.prod([s.stop - s.start for s in sl])),
            "edge": 1.0 - float(shell.sum()) / max(int(ring.sum()), 1),
            "prior_csf": float(priors["csf"][box][comp].mean()),
            "prior_wm": float(priors["wm"][box][comp].mean()),
            "prior_depth": float(priors["depth"][box][comp].mean()),
            "vent_mm": float(vent[box][comp].min()),
        }
        if anatomy is not None:
            measured = anatomy.ventricles[box]
            f["vent_share"] = float((ndimage.binary_dilation(measured, iterations=1) & comp).sum()) / n_vox
            f["vent_shell"] = float((measured & ring).sum()) / max(int(ring.sum()), 1)
            joined, _ = ndimage.label(anatomy.dark[box] | comp, structure=np.ones((3, 3, 3), bool))
            beyond = np.isin(joined, np.unique(joined[comp])) & ~comp
            f["dark_beyond"] = float(np.log10(1.0 + beyond.sum() / n_vox))
        for c in inputs:
            t = f"{c}_{prefix[c]}"  # the contrast's intensity features, on its scale
            inside = voxel[f"{t}int"][box][comp]
            around = voxel[f"{t}int"][box][shell]
            f[f"{t}int"] = float(inside.mean())
            f[f"{c}_z"] = float(voxel[f"{c}_z"][box][comp].mean())
            f[f"{t}mirror"] = float(voxel[f"{t}mirror"][box][comp].mean())
            f[f"{t}shell"] = float(around.mean()) if around.size else f[f"{t}int"]
            f[f"{t}shell_p90"] = float(np.percentile(around, 90)) if around.size else f[f"{t}int"]
            f[f"{t}rim"] = f[f"{t}shell"] - f[f"{t}int"]
        out[row] = [f[n] for n in names]
    return out


def voxel_arrays(x: np.ndarray, names: list[str], brain: np.ndarray, inputs) -> dict[str, np.ndarray]:
    """The :func:`voxel_keys` columns of a voxel feature matrix (rows in
    ``np.flatnonzero(brain)`` order, columns ``names``) as whole-grid arrays."""
    out = {}
    for key in voxel_keys(inputs, names):
        if key not in names:
            raise ValueError(f"candidate features need the voxel feature {key!r}, which the model lacks")
        a = np.zeros(brain.shape, np.float32)
        a[brain] = x[:, names.index(key)]
        out[key] = a
    return out
