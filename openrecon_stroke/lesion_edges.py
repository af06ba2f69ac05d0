"""Lesion edges: each lesion the voxel classifier found grown to its own intensity edge.

A voxel classifier is surest in a lesion's core and least sure at its border, where partial
volume mixes the lesion with the tissue around it. On contrasts it was not trained on it keeps
the core only (the T1-w card found a third of the lesion volume on real heads) and can even leave
the middle of a clear cavity out while its rim is certain (a ring). Both are mended by what a
reader does: the lesion ends where the image is halfway between the lesion and the tissue that
should be there.

For every lesion of the probability map (a 26-connected component of ``probability >=
threshold`` whose peak reaches ``seed``, :func:`openrecon_stroke.lesion_candidates.label`), on
the contrast the card's ``edge_refinement`` names (:class:`~openrecon_stroke.model_card.EdgeRefinement`;
a chronic T1-w lesion is darker than the tissue it replaced), with ``core`` its median intensity
and ``expected`` each voxel's healthy intensity (the template's tissue probabilities times this
brain's tissue intensities, :func:`healthy_intensity`; optionally no brighter than the other
hemisphere there):

1. a voxel within ``reach_mm`` of the lesion, inside the brain, joins it when it is darker than
   ``core + edge_fraction * (expected - core)`` where ``expected`` is at least ``min_contrast``
   above ``core`` (so CSF where the template expects CSF stays out: it is not darker than it
   should be), its probability is at least ``p_floor``, and it is connected to the lesion;
2. with ``fill_holes``, what the lesion then encloses (in 3D) joins it too.

Intensities are relative to the brain's white matter. Joined voxels get probability 1 (the
lesion's own keep theirs): the map stays the one thing that goes back onto each series' grid and
is thresholded there (:mod:`openrecon_stroke.stages.lesion`). Arrays ``(nz, ny, nx)`` on the
template grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import lesion_candidates, template, voxel_features
from .model_card import EdgeRefinement

_FULL = np.ones((3, 3, 3), bool)


def healthy_intensity(
    relative: np.ndarray,
    brain: np.ndarray,
    means: dict[str, float],
    priors: dict[str, np.ndarray],
    spacing_mm: float,
    mirror: bool = False,
) -> np.ndarray:
    """Each voxel's expected healthy intensity, relative to white matter: the template's tissue
    probabilities (``priors`` ``gm``, ``wm``, ``csf``) times this brain's tissue ``means``
    (:func:`openrecon_stroke.template.tissue_means`); with ``mirror``, no brighter than the
    mirrored voxel of the other hemisphere (``relative`` smoothed 2 mm inside ``brain``) where
    that is brain, so that tissue dark on both sides is not taken for missing tissue."""
    expected = template.synthetic_template(means, priors["gm"], priors["wm"], priors["csf"]) / means["wm"]
    if mirror:
        other = voxel_features.mirror(voxel_features.smooth_in(relative, brain, 2.0, spacing_mm))
        expected = np.where(voxel_features.mirror(brain), np.minimum(expected, other), expected)
    return expected.astype(np.float32)


def grow_to_edges(
    prob: np.ndarray,
    relative: np.ndarray,
    expected: np.ndarray,
    brain: np.ndarray,
    threshold: float,
    seed: float,
    min_mm3: float,
    spacing_mm: float,
    rule: EdgeRefinement,
) -> tuple[np.ndarray, float]:
    """``prob`` with each lesion grown to its edge in ``relative`` (the rule's contrast over its
    white-matter intensity; ``expected``: the healthy intensity there, same scale), and the
    volume added (mL). ``prob`` is not changed."""
    lab, ids = lesion_candidates.label(prob, threshold, seed, min_mm3, spacing_mm**3)
    out = prob.copy()
    if not ids:
        return out, 0.0
    reach = int(round(rule.reach_mm / spacing_mm))
    pad = reach + 1
    objs = ndimage.find_objects(lab)
    added = 0
    for k in ids:
        box = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(objs[k - 1], lab.shape))
        comp = lab[box] == k
        inside = brain[box]
        img, exp = relative[box], expected[box]
        joined = comp
        if reach > 0:
            core = float(np.median(img[comp]))
            zone = ndimage.binary_dilation(comp, _FULL, reach) & inside & (prob[box] >= rule.p_floor)
            zone &= (exp - core >= rule.min_contrast) & (img < core + rule.edge_fraction * (exp - core))
            zl, _ = ndimage.label(zone | comp, _FULL)
            touching = np.unique(zl[comp])
            joined = np.isin(zl, touching[touching > 0])
        if rule.fill_holes:
            joined = ndimage.binary_fill_holes(joined) & inside
        new = joined & ~comp
        added += int(new.sum())
        out[box][new] = 1.0
    return out, added * spacing_mm**3 / 1000.0
