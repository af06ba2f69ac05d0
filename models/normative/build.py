"""Build the normative model (:mod:`openrecon_stroke.normative`) from healthy heads.

Healthy cases (``models/lesion/cases.py`` with ``--healthy-seeds``: every head through the
pipeline's own preprocessing and template registration) of the given heads give, per contrast,
per-voxel mean and standard deviation of the white-matter-relative intensity and of its left-right
difference (intensity minus the intensity at the mirrored position); their deformations
give the log-Jacobian statistics; their lateral ventricles (the template's ventricles carried
back, measured as the anomaly stage measures them) the healthy ventricle range.

The anomaly score's threshold is calibrated on healthy brains the statistics never saw: the
heads are split into two halves; each half is scored against statistics built from the other
half, and the threshold of each contrast combination is the 99.9th percentile of those scores
inside the brain (eroded 2 mm); the same for each part of the score alone (``ablation_calibration``,
for the evaluation's ablation). The shipped statistics then use every head.

    .venv/bin/python models/normative/build.py --cache CASES --out models/normative [--exclude chris_t1]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "models" / "lesion"))

from cases import REAL_HEADS, list_cases, load_case, model_view  # noqa: E402

from openrecon_stroke import resample, template, voxel_features  # noqa: E402
from openrecon_stroke.model_card import file_sha256  # noqa: E402
from openrecon_stroke.normative import (  # noqa: E402
    CSF_PLACES,
    PARTS,
    Stats,
    anomaly_score,
    csf_relative,
    relative_image,
    ventricles_apart,
    write_stats,
)

log = logging.getLogger("normative")
GRID_MM = 1.5


@dataclass(frozen=True)
class CsfRule:
    """How images are standardised before statistics and scores (the card's ``csf_reference``
    and ``csf_measured_in``): the healthy CSF level per contrast (none: not standardised) and
    where each image's own level is measured."""

    reference: dict = field(default_factory=dict)
    measured_in: str = "brain"
    #: contrasts put on fixed tissue levels instead (the card's ``tissue_standardised``)
    tissue: tuple = ()


NOT_STANDARDISED = CsfRule()
HEADS = tuple(f"synthseg_{i:02d}" for i in range(1, 15)) + ("mni",) + tuple(REAL_HEADS)
SMOOTH_STATS_MM = 2.0
MIN_STD = 0.04
SCORE_SMOOTHING_MM = 2.0
PERCENTILE = 99.9


def healthy_cases(cache: Path, heads) -> list[tuple[str, int]]:
    out = []
    for head, seed in list_cases(cache, heads):
        arrays = load_case(cache, head, seed)
        if not any(float(arrays[k].max()) > 0 for k in arrays if k.endswith("_truth")):
            out.append((head, seed))
    return out


def contrast_views(arrays: dict, priors: dict, contrasts=("t1", "flair")):
    """Per contrast of ``contrasts`` present in the case: ``(contrast, image on the template grid,
    its tissue means, the brain it is measured in)`` (the case's brain for that contrast, inside
    the template's brain)."""
    b = (arrays["brain"] > 0) & (priors["brain"] > 0)
    for c in contrasts:
        v = model_view(arrays, (c,))
        if v is None:
            continue
        inside = v["brain"] & b
        image = v["images"][c]
        yield c, image, template.tissue_means(image, priors["gm"], priors["wm"], priors["csf"], inside), inside


def relative_images(
    arrays: dict, priors: dict, csf: CsfRule = NOT_STANDARDISED
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per contrast the white-matter-relative image on the template grid, standardised by
    ``csf`` as the anomaly stage does (:func:`openrecon_stroke.normative.relative_image`), and
    the brain mask."""
    rel = {
        c: relative_image(c, image, m, inside, csf.reference, csf.measured_in, GRID_MM, csf.tissue)
        for c, image, m, inside in contrast_views(arrays, priors)
    }
    return rel, arrays["brain"] > 0


def case_ventricles(arrays: dict, priors: dict) -> np.ndarray:
    """The case's lateral ventricles as the anomaly stage leaves them out of the score
    (:func:`openrecon_stroke.normative.ventricles_apart`), measured on its reference image (the
    T1-w when it has one, as the stage's reference series)."""
    for _c, image, m, inside in contrast_views(arrays, priors):
        return ventricles_apart(image, inside, m, GRID_MM)
    return np.zeros(arrays["brain"].shape, bool)


def accumulate(cache: Path, cases, priors, csf: CsfRule = NOT_STANDARDISED) -> dict[str, list[np.ndarray]]:
    acc: dict[str, list[np.ndarray]] = {}
    for head, seed in cases:
        arrays = load_case(cache, head, seed)
        rel, brain = relative_images(arrays, priors, csf)
        les = arrays["lesion"].astype(np.float32) > 0.1
        if les.any():  # a head with lesions (--with-lesion-cases): its tissue 4 mm away from them
            brain = brain & ~ndimage.binary_dilation(les, iterations=max(1, int(round(4.0 / GRID_MM))))
        both = brain & voxel_features.mirror(brain)  # left-right differences: both sides usable
        for c, r in rel.items():
            for key, value, where in ((c, r, brain), (f"{c}_mirror", r - voxel_features.mirror(r), both)):
                s = acc.setdefault(key, [np.zeros(brain.shape, np.float64) for _ in range(3)])
                s[0] += where
                s[1] += np.where(where, value, 0)
                s[2] += np.where(where, value.astype(np.float64) ** 2, 0)
        if "log_jacobian" in arrays and not les.any():
            lj = arrays["log_jacobian"].astype(np.float64)
            s = acc.setdefault("jacobian", [np.zeros(lj.shape, np.float64) for _ in range(3)])
            s[0] += 1
            s[1] += lj
            s[2] += lj**2
    return acc


def finish(n, s1, s2, spacing_mm: float, min_std: float) -> tuple[Stats, np.ndarray]:
    """Smoothed (normalised inside the voxels with data) mean and std, std floored at ``min_std``."""
    sig = SMOOTH_STATS_MM / spacing_mm
    nf = ndimage.gaussian_filter(n, sig)
    mu = ndimage.gaussian_filter(s1, sig) / np.maximum(nf, 1e-6)
    ex2 = ndimage.gaussian_filter(s2, sig) / np.maximum(nf, 1e-6)
    sd = np.sqrt(np.maximum(ex2 - mu * mu, 0))
    has = n >= 3
    return Stats(
        np.where(has, mu, 0).astype(np.float32), np.where(has, np.maximum(sd, min_std), 1.0).astype(np.float32)
    ), has


def build_stats(
    cache: Path, cases, priors, csf: CsfRule = NOT_STANDARDISED
) -> tuple[dict[str, Stats], dict[str, np.ndarray]]:
    acc = accumulate(cache, cases, priors, csf)
    stats, has = {}, {}
    for k, (n, s1, s2) in acc.items():
        stats[k], has[k] = finish(n, s1, s2, 2.0 if k == "jacobian" else GRID_MM, 0.02 if k == "jacobian" else MIN_STD)
    return stats, has


def healthy_csf(cache: Path, cases, priors, measured_in: str, contrasts) -> dict[str, float]:
    """Per contrast of ``contrasts`` the healthy CSF level relative to white matter that
    :func:`relative_images` standardises to: for ``brain``, the CSF of the healthy brains' mean
    image (white-matter-relative, not standardised); for ``lateral_ventricles``, the median over
    the cases of each brain's own level there (:func:`openrecon_stroke.normative.csf_relative`)."""
    out = {}
    if measured_in == "brain":
        stats, _ = build_stats(cache, cases, priors)
        inside = priors["brain"] > 0
        for c in contrasts:
            if c in stats:
                m = template.tissue_means(stats[c].mean, priors["gm"], priors["wm"], priors["csf"], inside)
                out[c] = round(m["csf"] / m["wm"], 4)
        return out
    levels: dict[str, list[float]] = {}
    for head, seed in cases:
        for c, image, m, inside in contrast_views(load_case(cache, head, seed), priors, contrasts):
            level = csf_relative(image, m, inside, measured_in, GRID_MM)
            if level is not None:
                levels.setdefault(c, []).append(level)
    return {c: round(float(np.median(v)), 4) for c, v in levels.items()}


#: The score's parts calibrated: the shipped score, then each part alone (the ablation).
SCORE_PARTS = {"score": PARTS, "intensity": ("intensity",), "asymmetry": ("asymmetry",)}


def raw_scores(
    stats: dict[str, Stats], rel: dict[str, np.ndarray], brain: np.ndarray, darker_only: tuple[str, ...] = ()
) -> dict[tuple[str, str], np.ndarray]:
    """The uncalibrated score (:func:`openrecon_stroke.normative.anomaly_score`) of every contrast
    combination present, for each entry of :data:`SCORE_PARTS`: ``{(parts name, combo): score}``."""
    intensity = {c: stats[c] for c in rel if c in stats}
    asym = {c: stats[f"{c}_mirror"] for c in rel if f"{c}_mirror" in stats}
    out = {}
    for combo in (("t1",), ("flair",), ("t1", "flair")):
        if all(c in intensity for c in combo):
            sub = {c: rel[c] for c in combo}
            for name, parts in SCORE_PARTS.items():
                out[(name, "+".join(combo))] = anomaly_score(
                    sub, brain, intensity, asym, SCORE_SMOOTHING_MM, GRID_MM, parts, darker_only
                )
    return out


def calibrate(
    cache: Path,
    cases,
    priors,
    csf: CsfRule = NOT_STANDARDISED,
    darker_only: tuple[str, ...] = (),
    apart: bool = False,
    healthy_only: bool = False,
) -> dict[str, dict[str, float]]:
    """99.9th percentile of each combination's score in healthy brains scored against statistics
    built from the other half of the heads (two folds by head): ``{parts name: {combo: value}}``
    (``apart``: each brain's own lateral ventricles left out, :func:`case_ventricles`). The
    brains scored: every case's tissue 4 mm away from its lesions, or with ``healthy_only`` the
    cases without a lesion alone (the statistics still come from every case)."""
    heads = sorted({h for h, _ in cases})
    folds = [heads[0::2], heads[1::2]]
    pooled: dict[tuple[str, str], list[np.ndarray]] = {}
    for k, held in enumerate(folds):
        stats, _ = build_stats(cache, [c for c in cases if c[0] not in held], priors, csf)
        for head, seed in [c for c in cases if c[0] in held]:
            arrays = load_case(cache, head, seed)
            rel, brain = relative_images(arrays, priors, csf)
            core = ndimage.binary_erosion(brain, iterations=max(1, int(round(2.0 / GRID_MM))))
            les = arrays["lesion"].astype(np.float32) > 0.1
            if les.any() and healthy_only:
                continue
            if les.any():
                core &= ~ndimage.binary_dilation(les, iterations=max(1, int(round(4.0 / GRID_MM))))
            if apart:
                core &= ~case_ventricles(arrays, priors)
            for key, sc in raw_scores(stats, rel, brain, darker_only).items():
                pooled.setdefault(key, []).append(sc[core])
        log.info("calibration fold %d/2 done", k + 1)
    out: dict[str, dict[str, float]] = {}
    for (name, combo), v in pooled.items():
        out.setdefault(name, {})[combo] = float(np.percentile(np.concatenate(v), PERCENTILE))
    return out


def box_of(mask: np.ndarray) -> list[list[int]]:
    """The mask's bounding box as the card stores it: ``[[lo, hi], ...]`` per axis (z, y, x)."""
    box = resample.box_of(mask, margin=0)
    if box is None:
        raise ValueError("empty mask: no healthy voxel to build statistics from")
    return [[s.start, s.stop] for s in box]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--heads", nargs="+", default=list(HEADS))
    ap.add_argument("--exclude", nargs="*", default=[])
    ap.add_argument("--with-lesion-cases", action="store_true",
                    help="also use heads with lesions, their tissue 4 mm away from the lesions (intensity only)")
    ap.add_argument("--standardise", nargs="*", choices=["t1", "flair"], metavar="CONTRAST",
                    help="standardise the images of these contrasts (none named: both) so that their CSF sits at "
                    "the healthy brains' level (card csf_reference; see MODEL_CARD.md)")
    ap.add_argument("--standardise-tissue", nargs="*", choices=["t1", "flair"], metavar="CONTRAST",
                    help="put the CSF, grey and white matter of these contrasts (none named: both) on fixed levels, "
                    "the lesion features' rule (card tissue_standardised); instead of --standardise for them")
    ap.add_argument("--darker-only", nargs="*", choices=["t1", "flair"], metavar="CONTRAST",
                    help="these contrasts' score counts only what is darker than healthy (card darker_only; "
                    "on a T1-w, brighter is mostly contrast agent)")
    ap.add_argument("--ventricles-apart", action="store_true",
                    help="the score leaves out each head's own lateral ventricles, as measured on its image "
                    "(card ventricles_apart): their size is the ventricle measure's")
    ap.add_argument("--calibrate-on", choices=["all", "healthy"], default="all",
                    help="the brains the threshold is the 99.9th percentile of: every case's tissue away from its "
                    "lesions, or the healthy cases alone (the statistics come from every case either way)")
    ap.add_argument("--csf-in", choices=CSF_PLACES, default="lateral_ventricles",
                    help="where each image's CSF level is measured for --standardise (card csf_measured_in)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    heads = [h for h in args.heads if h not in args.exclude]
    cases = list_cases(args.cache, heads) if args.with_lesion_cases else healthy_cases(args.cache, heads)
    if not cases:
        log.error(
            "no healthy cases of %s in %s (make them with models/lesion/cases.py --healthy-seeds)", heads, args.cache
        )
        return 2
    log.info("%d healthy cases of %d heads", len(cases), len({h for h, _ in cases}))
    t0 = time.perf_counter()
    priors = template.load_template(GRID_MM).arrays()
    tissue = () if args.standardise_tissue is None else tuple(args.standardise_tissue or ["t1", "flair"])
    csf = CsfRule(tissue=tissue)
    if args.standardise is not None:
        named = [c for c in args.standardise or ["t1", "flair"] if c not in tissue]
        reference = healthy_csf(args.cache, cases, priors, args.csf_in, named) if named else {}
        log.info("healthy CSF relative to white matter (%s): %s", args.csf_in, reference)
        csf = CsfRule(reference, args.csf_in, tissue)
    csf_reference = csf.reference
    darker = tuple(args.darker_only or ())
    calibration = calibrate(
        args.cache, cases, priors, csf, darker, args.ventricles_apart, healthy_only=args.calibrate_on == "healthy"
    )
    stats, has = build_stats(args.cache, cases, priors, csf)
    args.out.mkdir(parents=True, exist_ok=True)
    contrasts = [c for c in ("t1", "flair") if c in stats]
    box = box_of(sum(has[c] for c in contrasts) > 0)
    files = []
    for c in contrasts:
        write_stats(args.out / f"{c}.npz", stats[c], box)
        files.append(f"{c}.npz")
    asymmetry = [c for c in contrasts if f"{c}_mirror" in stats]
    for c in asymmetry:
        write_stats(args.out / f"{c}_mirror.npz", stats[f"{c}_mirror"], box)
        files.append(f"{c}_mirror.npz")
    jac = None
    if "jacobian" in stats:
        jbox = box_of(has["jacobian"] & (template.load_template(2.0).arrays()["brain"] > 0))
        write_stats(args.out / "jacobian.npz", stats["jacobian"], jbox)
        files.append("jacobian.npz")
        jac = {"spacing_mm": 2.0, "shape": list(stats["jacobian"].mean.shape), "box": jbox}
    shape = list(stats[contrasts[0]].mean.shape)
    card = {
        "kind": "normative",
        "name": "normative-mni152",
        "version": "0.4.0" if tissue else "0.3.0" if csf_reference else "0.2.0",
        "description": "healthy-brain statistics in MNI152 2009a sym template space: per-voxel white-matter-"
        + (f"relative intensity (the {'/'.join(sorted(csf_reference))} standardised so that the brain's CSF, "
           f"measured in the {csf.measured_in.replace('_', ' ')}, sits at the healthy level)" if csf_reference
           else "relative intensity")
        + (f" (the {'/'.join(tissue)} with the brain's CSF, grey and white matter on fixed levels)" if tissue else "")
        + " and its left-right difference (mean, std) per contrast, log-Jacobian of the deformation to the "
        "template, calibrated anomaly threshold",
        "contrasts": contrasts,
        "template": {"name": template.TEMPLATE_NAME, "spacing_mm": GRID_MM},
        "shape": shape,
        "box": box,
        "asymmetry": asymmetry,
        **({"csf_reference": csf_reference, "csf_measured_in": csf.measured_in} if csf_reference else {}),
        **({"tissue_standardised": list(tissue)} if tissue else {}),
        **({"darker_only": list(darker)} if darker else {}),
        **({"ventricles_apart": True} if args.ventricles_apart else {}),
        "score": "max(mean |z| of intensity, mean |z| of left-right difference on the side farther from healthy), "
        "smoothed" + (f"; on the {'/'.join(darker)} only what is darker than healthy" if darker else "")
        + ("; 0 in the head's own lateral ventricles where left-right symmetric" if args.ventricles_apart else ""),
        "smoothing_mm": SCORE_SMOOTHING_MM,
        "calibration": {k: round(v, 5) for k, v in calibration["score"].items()},
        "ablation_calibration": {
            name: {k: round(v, 5) for k, v in cal.items()} for name, cal in calibration.items() if name != "score"
        },
        "calibration_rule": f"{PERCENTILE}th percentile of held-out healthy brains (two folds by head), brain eroded "
        "2 mm"
        + (", their own lateral ventricles left out" if args.ventricles_apart else "")
        + (
            "; the healthy cases alone"
            if args.calibrate_on == "healthy"
            else "; healthy cases and the tissue of lesion cases 4 mm away from their lesions"
            if args.with_lesion_cases
            else ""
        ),
        "jacobian": jac,
        "files": [{"file": f, "sha256": file_sha256(args.out / f)} for f in files],
        "training": {
            "heads": sorted({h for h, _ in cases}),
            "cases": len(cases),
            "excluded": args.exclude,
            "voxel_counts": {c: int(has[c].sum()) for c in contrasts},
            "seconds": round(time.perf_counter() - t0, 1),
            "command": "models/normative/build.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    log.info("normative model -> %s (%s; calibration %s)", args.out, ", ".join(files), card["calibration"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
