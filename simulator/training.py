"""Training and test cases for the lesion models, from the same generator as the phantom.

One case = a synthetic head (SynthSeg label map or MNI) with stroke lesions, acquired as a
domain-randomised T1-w (1 mm, sagittal or other orientation) and FLAIR (thick slices), then
prepared exactly as the runner prepares scanner data (:mod:`openrecon_stroke.lesion`): both
contrasts resampled onto the network grid (RAS, 1 mm, the brain's bounding box plus margin)
and z-scored inside the brain. Seeded and reproducible; cases are cached as ``.npz``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from openrecon_stroke.lesion import brain_box_grid, normalise

log = logging.getLogger(__name__)

ORIENTATIONS_T1 = ("sagittal", "axial", "coronal", "oblique")
ORIENTATIONS_FLAIR = ("axial", "oblique", "coronal")


def make_case(source: str | None, seed: int, spacing_mm=(1.0, 1.0, 1.0), margin_mm: float = 8.0,
              randomize: bool = True, n_lesions: int | None = None, abnormality: str | None = None,
              brain_extraction: bool = False) -> dict:
    """``{"x": (2, z, y, x) float32 [t1, flair], "y": (z, y, x) uint8 lesion, "brain": bool,
    "icv": bool, "raw": (2, z, y, x) float32, "lesions": [...]}`` on the network grid; ``x`` is
    ``raw`` z-scored inside the exact brain (zero outside); ``icv`` is the exact brain plus the
    extra-cerebral CSF (:func:`simulator.anatomy.intracranial_mask`), the extent a brain
    extraction such as HD-BET keeps. With ``abnormality`` (see
    :func:`simulator.anatomy.add_abnormality`) also ``"abn"``, the changed voxels (uint8).
    With ``brain_extraction`` also ``"brain_bet"``: the mask the pipeline itself would use (HD-BET
    on the whole T1-w head, :mod:`openrecon_stroke.brain_extraction`), on the same grid.
    ``n_lesions=0`` makes a healthy head."""
    from simulator.phantom import make_study

    rng = np.random.default_rng(seed)
    orient = {"t1": ORIENTATIONS_T1[rng.integers(len(ORIENTATIONS_T1))],
              "flair": ORIENTATIONS_FLAIR[rng.integers(len(ORIENTATIONS_FLAIR))]}
    chans, brain_ref = {}, None
    st = None
    for c in ("t1", "flair"):
        st = make_study(source, seed, randomize=randomize, orientation=orient[c], series=(c,),
                        n_lesions=n_lesions, abnormality=abnormality)
        s = st["series"][c]
        img = s["volume"].to_sitk()
        if c == "t1":
            brain_ref = s["volume"].grid.to_sitk(s["brain_mask"])
            grid = brain_box_grid(img, brain_ref, "RAS", spacing_mm, margin_mm)
            if brain_extraction:
                from openrecon_stroke.brain_extraction import get_extractor

                bet = get_extractor(threads=1).extract(img)
                bet = sitk.GetArrayFromImage(sitk.Resample(bet, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                           sitk.sitkUInt8)) > 0
        chans[c] = sitk.GetArrayFromImage(sitk.Resample(img, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                        sitk.sitkFloat32))
    labels = st["labels"]
    lesion = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(st["lesion_mask"] > 0, sitk.sitkUInt8), grid,
                                                  sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    from simulator.anatomy import brain_mask, intracranial_mask

    on_grid = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(labels, sitk.sitkInt16), grid, sitk.Transform(),
                                                   sitk.sitkNearestNeighbor, 0))
    brain = brain_mask(on_grid)
    x = np.stack([normalise(chans[c], brain, "zscore_brain") for c in ("t1", "flair")])
    out = {"x": x.astype(np.float32), "y": (lesion > 0).astype(np.uint8), "brain": brain,
           "icv": intracranial_mask(on_grid),
           "raw": np.stack([chans["t1"], chans["flair"]]).astype(np.float32),
           "lesions": st["lesions"], "spacing_mm": tuple(grid.GetSpacing())}
    if brain_extraction:
        out["brain_bet"] = bet
    if st.get("abnormal_mask") is not None:
        out["abn"] = sitk.GetArrayFromImage(sitk.Resample(st["abnormal_mask"], grid, sitk.Transform(),
                                                          sitk.sitkNearestNeighbor, 0)).astype(np.uint8)
    return out


def in_pipeline_mask(case: dict, channels=(0, 1)) -> np.ndarray:
    """The case's images (``channels`` of [t1, flair], in that order) as the pipeline prepares
    them: ``raw`` z-scored inside, and cut to, HD-BET's mask ``brain_bet`` instead of the exact
    brain. Needs a case made with ``brain_extraction``."""
    return in_mask(case, case["brain_bet"] > 0, channels)


def in_mask(case: dict, mask: np.ndarray, channels=(0, 1)) -> np.ndarray:
    """The case's images (``channels`` of [t1, flair]) z-scored inside, and cut to, ``mask``
    (e.g. ``case["icv"]``) instead of the exact brain; needs ``raw``."""
    return np.stack([normalise(case["raw"][i], mask, "zscore_brain") for i in channels])


def as_in_pipeline(case: dict) -> dict:
    """The case as the scanner's pipeline meets it: ``brain`` is HD-BET's mask and ``x`` both
    contrasts z-scored inside, and cut to, it (:func:`in_pipeline_mask`); other keys as they are."""
    return {**case, "brain": case["brain_bet"] > 0, "x": in_pipeline_mask(case)}


def evaluation_case(cache: Path, source: str | None, seed: int, brain: str = "exact", **kw) -> dict:
    """:func:`cached_case` as an evaluation scores it: ``brain="exact"`` the case as made (the
    simulator's exact brain), ``brain="hd-bet"`` the case as the scanner's pipeline meets it
    (:func:`as_in_pipeline`; HD-BET's mask computed once into the cache)."""
    if brain == "hd-bet":
        return as_in_pipeline(cached_case(cache, source, seed, require=("raw", "brain_bet"), **kw))
    if brain != "exact":
        raise ValueError(f"brain must be 'exact' or 'hd-bet', not {brain!r}")
    return cached_case(cache, source, seed, **kw)


def cached_case(cache: Path, source: str | None, seed: int, require=(), **kw) -> dict:
    """:func:`make_case`, stored as ``.npz`` under ``cache``; a corrupt file, or one written
    before it held every key in ``require`` (e.g. ``"brain_bet"``), is remade."""
    name = f"{Path(source).name.split('.')[0] if source else 'mni'}_{seed}.npz"
    path = Path(cache) / name
    if "brain_bet" in require:
        kw["brain_extraction"] = True
    if path.exists():
        try:
            with np.load(path) as z:
                missing = sorted(set(require) - set(z.files))
                if not missing:
                    return {k: z[k] for k in z.files}
            log.info("cached case %s lacks %s; remaking it", path, missing)
        except Exception as e:
            log.warning("cached case %s unreadable (%s); remaking it", path, e)
    case = make_case(source, seed, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **{k: case[k] for k in ("x", "y", "brain", "icv", "abn", "raw", "brain_bet") if k in case})
    tmp.replace(path)
    return case
