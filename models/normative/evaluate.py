"""Evaluate the anomaly map on held-out heads, as the scanner delivers it, with an intensity
baseline in the same run; and the ventricle measurement on heads whose ventricles were enlarged
by a known amount.

Anomaly map (cases of ``models/lesion/cases.py``, never seen by the normative model): the
normative score in template space (:class:`openrecon_stroke.normative.NormativeModel`) mapped back
onto the reference series' own grid through the case's template transform, inside its HD-BET
mask, exactly as the anomaly stage does. Per case with lesions: voxel AUPRC of the score against
the truth mask, Dice and lesion detection at the threshold 1.0 (components under 50 mm³ dropped);
per healthy case: the volume above the threshold. The baseline scores each voxel by how unusual
its white-matter-relative intensity is under the healthy training brains' intensity histogram
(-log density, per contrast, mean over contrasts), with the same smoothing and the same
calibration rule (99.9th percentile of held-out healthy brains).

Ventricles (``--ventricles N``): N held-out synthetic heads, each as acquired and with its lateral
ventricles enlarged by 20 % and 50 %, through the pipeline's own stages (preprocessing, template
registration, anomaly): the measured volume against the truth.

Ventricles in lesion studies (``--ventricle-lesion-heads``): lesion studies of those heads (seeds
0-1; ``--ventricle-lesion-series`` t1, flair or t1,flair) through the default pipeline up to
``anomaly_load``: the volume as the anomaly stage measured it (lesion counted) and as reported
(the segmented lesion left out where it touches the ventricles), against the truth.

    .venv/bin/python models/normative/evaluate.py models/normative --cache CASES \\
        [--train-cache TRAIN_CASES] [--heads synthseg_15-20]
        [--ventricles 3 | --ventricle-heads synthseg_15 ...] [--no-maps] [--json OUT.json]
        [--ventricle-lesion-heads synthseg_15-20 [--ventricle-lesion-series t1,flair]]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "models" / "lesion"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from build import GRID_MM, CsfRule, case_ventricles, healthy_cases, relative_images  # noqa: E402
from cases import expand, head_source, list_cases, load_case  # noqa: E402

from openrecon_stroke import template, voxel_features  # noqa: E402
from openrecon_stroke.lesion import postprocess  # noqa: E402
from openrecon_stroke.metrics import lesion_table  # noqa: E402
from openrecon_stroke.model_card import NormativeCard  # noqa: E402
from openrecon_stroke.normative import NormativeModel  # noqa: E402

log = logging.getLogger("evaluate_normative")
MIN_MM3 = 50.0
#: the normative card's CSF standardisation (set in main): every image here is standardised as
#: the anomaly stage standardises it, the baseline's included (the same intensities as the map)
CSF_RULE = CsfRule()
#: the card's ``ventricles_apart`` (set in main): the map leaves out each head's own ventricles
APART = False


def auprc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision) of ``score`` for ``truth``."""
    order = np.argsort(-score, kind="stable")
    t = truth[order].astype(np.float64)
    tp = np.cumsum(t)
    prec = tp / np.arange(1, t.size + 1)
    return float((prec * t).sum() / max(t.sum(), 1))


class HistogramBaseline:
    """-log density of the white-matter-relative intensity under healthy brains' histogram."""

    def __init__(self, cache: Path, cases, priors, bins=np.linspace(0, 3, 301)):
        self.bins = bins
        counts: dict[str, np.ndarray] = {}
        for head, seed in cases:
            arrays = load_case(cache, head, seed)
            rel, brain = relative_images(arrays, priors, CSF_RULE)
            les = arrays["lesion"].astype(np.float32) > 0.1
            if les.any():  # a head with lesions: its tissue 4 mm away from them
                brain = brain & ~ndimage.binary_dilation(les, iterations=3)
            for c, r in rel.items():
                h, _ = np.histogram(np.clip(r[brain], bins[0], bins[-1]), bins)
                counts[c] = counts.get(c, 0) + h
        self.nlogp = {c: -np.log((h + 1) / (h + 1).sum()).astype(np.float32) for c, h in counts.items()}

    def raw(self, rel: dict[str, np.ndarray], brain: np.ndarray) -> np.ndarray:
        total = np.zeros(brain.shape, np.float32)
        for c, r in rel.items():
            idx = np.clip(np.digitize(r, self.bins) - 1, 0, len(self.bins) - 2)
            total += np.where(brain, self.nlogp[c][idx], 0)
        total /= max(len(rel), 1)
        return voxel_features.smooth_in(total, brain, 2.0, GRID_MM)


def native(score_t: np.ndarray, side: dict, target: str) -> np.ndarray:
    img = sitk.GetImageFromArray(score_t.astype(np.float32))
    img.CopyInformation(template.template_grid(GRID_MM))
    return sitk.GetArrayFromImage(sitk.Resample(img, side["native_grids"][target], side["to_template"][target],
                                                sitk.sitkLinear, 0.0, sitk.sitkFloat32))


def score_cases(methods: dict, cache: Path, cases) -> dict:
    """``methods``: name -> (score function (rel, brain, ventricles left out or None) -> calibrated
    score on the template grid)."""
    out = {m: {"auprc": [], "dice": [], "f1": [], "healthy_ml": [], "buckets": {}} for m in methods}
    for head, seed in cases:
        arrays, side = load_case(cache, head, seed, side=True)
        priors = template.load_template(GRID_MM).arrays()
        rel, brain = relative_images(arrays, priors, CSF_RULE)
        ref = side["reference"]
        rel = {c: r for c, r in rel.items() if c in side["to_template"]}
        truth = arrays[f"native_{ref}_truth"] > 0
        inside = arrays[f"native_{ref}_brain"] > 0
        spacing_zyx = tuple(float(v) for v in side["native_grids"][ref].GetSpacing())[::-1]
        vox = float(np.prod(spacing_zyx))
        said = []
        apart = case_ventricles(arrays, priors) if APART else None
        for m, fn in methods.items():
            s = np.where(inside, native(fn(rel, brain, apart), side, ref), 0.0)
            pred = postprocess(s, vox, 1.0, MIN_MM3)
            if truth.any():
                out[m]["auprc"].append(auprc(s[inside], truth[inside]))
                t = lesion_table(truth, pred, spacing_zyx)
                out[m]["dice"].append(t["dice"])
                out[m]["f1"].append(t["lesion_f1"])
                for b, v in t["buckets"].items():
                    out[m]["buckets"].setdefault(b, []).append((v["recall"], v["n_true"]))
                said.append(f"{m}: Dice {t['dice']:.3f}")
            else:
                out[m]["healthy_ml"].append(float(pred.sum()) * vox / 1000)
                said.append(f"{m}: {out[m]['healthy_ml'][-1]:.2f} mL")
        log.info("%s_%d scored (%s; %s)", head, seed, "+".join(sorted(rel)), ", ".join(said))
    summary = {}
    for m, r in out.items():
        summary[m] = {
            "auprc_mean": float(np.mean(r["auprc"])) if r["auprc"] else None,
            "dice_mean": float(np.mean(r["dice"])) if r["dice"] else None,
            "lesion_f1_mean": float(np.mean(r["f1"])) if r["f1"] else None,
            "lesion_cases": len(r["auprc"]),
            "healthy_fp_ml_mean": float(np.mean(r["healthy_ml"])) if r["healthy_ml"] else None,
            "healthy_fp_ml_max": float(np.max(r["healthy_ml"])) if r["healthy_ml"] else None,
            "healthy_cases": len(r["healthy_ml"]),
            "recall_by_size": {b: round(sum(x * n for x, n in v) / sum(n for _, n in v), 3)
                               for b, v in r["buckets"].items()},
        }
    return summary


def _part_only(nm: NormativeModel, part: str, calibration: dict):
    def score(rel, brain, apart):
        combo = "+".join(c for c in ("t1", "flair") if c in rel)
        s = nm.raw_score(rel, brain, (part,)) / float(calibration[combo])
        if apart is not None:
            s[apart] = 0.0
        return s

    return score


def ventricle_test(folder: Path, heads: list[str], growths=(0.0, 0.2, 0.5)) -> list[dict]:
    """Each head acquired with its ventricles grown by each fraction, through the pipeline's
    preprocessing, template and anomaly stages; measured against the true volume."""
    import os

    from openrecon_stroke.pipeline import Pipeline
    from openrecon_stroke.stages.anomaly import AnomalyDetection
    from openrecon_stroke.stages.basic import InputCheck
    from openrecon_stroke.stages.brain import Preprocess
    from openrecon_stroke.stages.results import AnomalyMapResult
    from openrecon_stroke.stages.template import TemplateRegistrationStage
    from openrecon_stroke.study import Study
    from simulator.phantom import make_study

    os.environ["OPENRECON_NORMATIVE_DIR"] = str(folder)
    rows = []
    for head in heads:
        for g in growths:
            st = make_study(head_source(head), 4242, randomize="realistic", series=("t1",), n_lesions=0,
                            ventricle_growth=g)
            study = Study(inputs={"t1": st["series"]["t1"]["volume"]})
            pipe = Pipeline("ventricles", [InputCheck(), Preprocess(), TemplateRegistrationStage(), AnomalyDetection()])
            pipe.run(study)
            m = study.result(AnomalyMapResult)  # the measures before the load is split by a lesion mask
            a = m.measures if m is not None else None
            measured = a.csf["ventricle_ml"] if a is not None and a.csf else None
            rows.append({"head": head, "growth": g, "true_ml": round(st["ventricle_ml"], 1), "measured_ml": measured,
                         "ventricle_z": a.ventricle_z if a is not None else None,
                         "expansion": [d for d in (a.deformation if a else []) if d["kind"] == "expansion"][:3]})
            log.info("ventricles %s +%d%%: true %.1f mL, measured %s", head, int(g * 100), st["ventricle_ml"], measured)
    return rows


def ventricle_lesion_test(folder: Path, heads: list[str], series: tuple[str, ...], seeds=(0, 1)) -> list[dict]:
    """Lesion studies through the default pipeline up to ``anomaly_load``: the ventricle volume as
    first measured (lesion counted) and as reported, against the true volume."""
    import os

    from openrecon_stroke.pipeline import Pipeline, build_pipeline
    from openrecon_stroke.stages.results import AnomalyMapResult, AnomalyResult
    from openrecon_stroke.study import Study
    from simulator.phantom import make_study

    os.environ["OPENRECON_NORMATIVE_DIR"] = str(folder)
    stages = build_pipeline("openrecon-stroke").stages
    stages = stages[: [st.name for st in stages].index("anomaly_load") + 1]
    rows = []
    for head in heads:
        for seed in seeds:
            st = make_study(head_source(head), seed, randomize="realistic", series=series)
            study = Study(inputs={c: st["series"][c]["volume"] for c in series})
            Pipeline("ventricles-lesion", stages).run(study)
            m, a = study.result(AnomalyMapResult), study.result(AnomalyResult)
            if m is None or a is None or not a.csf or not m.measures.csf:
                log.warning("%s seed %d: no ventricle measure (%s)", head, seed, "; ".join(study.warnings))
                rows.append({"head": head, "seed": seed, "true_ml": round(st["ventricle_ml"], 1), "measured_ml": None})
                continue
            ref = m.ventricles.reference if m.ventricles else series[0]
            les = st["series"][ref]["lesion_mask"] > 0
            vox_ml = study.inputs[ref].grid.voxel_volume_mm3 / 1000
            row = {"head": head, "seed": seed, "series": "+".join(series), "measured_on": ref,
                   "true_ml": round(st["ventricle_ml"], 1), "lesion_ml": round(float(les.sum()) * vox_ml, 1),
                   "first_ml": m.measures.csf["ventricle_ml"], "measured_ml": a.csf["ventricle_ml"]}
            rows.append(row)
            log.info("ventricles %s seed %d: true %.1f mL, lesion counted %.1f, reported %.1f", head, seed,
                     st["ventricle_ml"], row["first_ml"], row["measured_ml"])
    for key in ("first_ml", "measured_ml"):
        err = [abs(r[key] / r["true_ml"] - 1) for r in rows if r.get(key) is not None]
        if err:
            log.info("%s: mean error %.1f %%, %d of %d within 10 %%", key, 100 * float(np.mean(err)),
                     sum(e <= 0.1 for e in err), len(err))
    return rows


def main(argv=None) -> int:
    from openrecon_stroke.runtime import flush_denormals

    flush_denormals()  # as every entry point of the package does (denormals cost 7x on Intel hosts)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("normative", type=Path)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--heads", nargs="+", default=["synthseg_15-20"])
    ap.add_argument("--train-heads", nargs="+", default=["synthseg_01-14", "mni"],
                    help="healthy heads the baseline's histogram is built from")
    ap.add_argument("--train-cache", type=Path,
                    help="cases of --train-heads, when not in --cache (default: --cache)")
    ap.add_argument("--ventricles", type=int, default=0, help="also the ventricle test on this many heads")
    ap.add_argument("--ventricle-heads", nargs="+",
                    help="heads of the ventricle test (default: the first --ventricles of --heads)")
    ap.add_argument("--ventricle-lesion-heads", nargs="+",
                    help="heads of the ventricle test in lesion studies (seeds 0-1)")
    ap.add_argument("--ventricle-lesion-series", default="t1", help="t1, flair or t1,flair")
    ap.add_argument("--no-maps", action="store_true", help="only the ventricle tests")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    nm = NormativeModel(NormativeCard.load(args.normative))
    global CSF_RULE, APART
    CSF_RULE = CsfRule(dict(nm.card.csf_reference), nm.card.csf_measured_in, nm.card.tissue_standardised)
    APART = nm.card.ventricles_apart
    priors = template.load_template(GRID_MM).arrays()
    tcache = args.train_cache or args.cache
    train = healthy_cases(tcache, expand(args.train_heads)) or list_cases(tcache, expand(args.train_heads))
    if not train:
        log.error("no cases of %s in %s for the baseline (give --train-cache)", args.train_heads, tcache)
        return 2
    half = sorted({h for h, _ in train})[::2]
    base = HistogramBaseline(tcache, [c for c in train if c[0] not in half], priors)
    cal = []
    for head, seed in [c for c in train if c[0] in half]:
        arrays = load_case(tcache, head, seed)
        rel, brain = relative_images(arrays, priors, CSF_RULE)
        core = ndimage.binary_erosion(brain, iterations=2) & ~ndimage.binary_dilation(
            arrays["lesion"].astype(np.float32) > 0.1, iterations=3)
        cal.append(base.raw(rel, brain)[core])
    base_thr = float(np.percentile(np.concatenate(cal), 99.9)) if cal else 1.0
    methods = {
        "normative z-map": lambda rel, brain, apart: nm.score(rel, brain, apart),
        # the named baseline as it always was: intensity alone, no anatomy
        "baseline: intensity histogram": lambda rel, brain, apart: base.raw(rel, brain) / base_thr,
    }
    # ablation: each part of the score alone, with its own calibration (same rule, written by build.py)
    for name, cal in (nm.card.get("ablation_calibration") or {}).items():
        methods[f"ablation: {name} only"] = _part_only(nm, name, cal)
    heads = expand(args.heads)
    results = {"heads": heads, "normative": str(args.normative)}
    if not args.no_maps:
        results["scores"] = score_cases(methods, args.cache, list_cases(args.cache, heads))
    if args.ventricles or args.ventricle_heads:
        results["ventricles"] = ventricle_test(
            args.normative, expand(args.ventricle_heads) if args.ventricle_heads else heads[: args.ventricles]
        )
    if args.ventricle_lesion_heads:
        results["ventricles_in_lesion_studies"] = ventricle_lesion_test(
            args.normative, expand(args.ventricle_lesion_heads), tuple(args.ventricle_lesion_series.split(","))
        )
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results.get("scores"), indent=1))
    for r in results.get("ventricles", []) + results.get("ventricles_in_lesion_studies", []):
        print(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
