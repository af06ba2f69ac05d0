"""Evaluate template-space lesion models on held-out cases, as the scanner delivers them.

Each case (``models/lesion/cases.py``) went through the pipeline's own preprocessing and template
registration; here the model computes its probability in template space
(:class:`openrecon_stroke.lesion_voxel.VoxelLesionModel`), which is mapped back onto each series'
own grid through the case's template transform, cut to the series' HD-BET brain mask,
thresholded and cleaned of small components (:func:`openrecon_stroke.lesion.postprocess`),
exactly as the lesion stage does, and scored there against the truth mask of that grid
(:mod:`openrecon_stroke.metrics`). Healthy cases report the false-positive volume.

    .venv/bin/python models/lesion/evaluate_voxel.py MODELS --cache CASES [--heads synthseg_15-20]
        [--inputs t1 flair fusion] [--thresholds 0.2] [--json OUT.json]
    # leave-one-head-out: MODELS/<head>/ holds models trained without <head>; --edges '{...}' scores
    # the models with a lesion-edge rule (model_card.EdgeRefinement) instead of their cards' own
    .venv/bin/python models/lesion/evaluate_voxel.py ROOT --loo --heads chris_t1 gd_t1 flair_real ...
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import expand, flair_alone_failed, model_view  # noqa: E402

from openrecon_stroke.lesion import postprocess  # noqa: E402
from openrecon_stroke.lesion_voxel import VoxelLesionModel  # noqa: E402
from openrecon_stroke.metrics import lesion_table, summarise  # noqa: E402
from openrecon_stroke.model_card import EdgeRefinement, VoxelClassifierCard  # noqa: E402

log = logging.getLogger("evaluate_voxel")
INPUTS = {"t1": ("t1",), "flair": ("flair",), "fusion": ("t1", "flair")}


def load_case(cache: Path, head: str, seed: int):
    p = Path(cache) / f"{head}_{seed}.npz"
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    with open(p.with_suffix(".pkl"), "rb") as f:
        side = pickle.load(f)
    return arrays, side


def predict_native(model: VoxelLesionModel, arrays: dict, side: dict) -> tuple[np.ndarray, str] | None:
    """The model's probability on the native grid of the series it speaks for, cut to that
    series' brain mask, and the series' contrast (None if the case lacks an input)."""
    if model.card.inputs == ("flair",) and flair_alone_failed(side):
        # as the scanner would: a FLAIR that came alone and was not registered gets no mask
        return np.zeros(arrays["native_flair_truth"].shape, np.float32), "flair"
    v = model_view(arrays, model.card.inputs)
    if v is None or v["transform"] not in side["to_template"]:
        return None
    prob_img = model.probability_image(v["images"], v["brain"])
    p = model.on_grid(prob_img, side["native_grids"][v["target"]], side["to_template"][v["transform"]])
    return np.where(arrays[v["native_brain"]] > 0, p, 0.0), v["target"]


def case_list(cache: Path, heads) -> list[tuple[str, int]]:
    return [
        (h, int(p.stem.rpartition("_")[2]))
        for h in heads
        for p in sorted(Path(cache).glob(f"{h}_*.npz"))
        if not p.name.endswith(".tmp.npz") and p.with_suffix(".pkl").exists()
    ]


def evaluate(
    model_for_head, cache: Path, heads, thresholds, key: str, seeds=(None,), edges: EdgeRefinement | None = None
) -> dict | None:
    """Score every case of ``heads`` with the model ``model_for_head(head)`` returns (a model
    folder, or None to skip the head), at each threshold and hysteresis seed (None: the card's);
    pooled over the cases. ``edges``: the lesion-edge rule to use instead of the card's (it finds
    the lesions at the card's own threshold and seed)."""
    settings = [(t, sd) for sd in seeds for t in thresholds]
    rows: dict = {st: [] for st in settings}
    healthy: dict = {st: [] for st in settings}
    per_case, name, inputs = [], None, None
    models: dict[Path, VoxelLesionModel] = {}
    for head, case_seed in case_list(cache, heads):
        folder = model_for_head(head)
        if folder is None or not (folder / "card.json").exists():
            continue
        if folder not in models:
            card = VoxelClassifierCard.load(folder)
            models[folder] = VoxelLesionModel(card if edges is None else replace(card, edge_refinement=edges))
        model = models[folder]
        name, inputs = model.card.name, list(model.card.inputs)
        arrays, side = load_case(cache, head, case_seed)
        got = predict_native(model, arrays, side)
        if got is None:
            continue
        p, target = got
        grid = side["native_grids"][target]
        spacing_zyx = tuple(float(v) for v in grid.GetSpacing())[::-1]
        vox = float(np.prod(spacing_zyx))
        truth = arrays[f"native_{target}_truth"] > 0
        for st in settings:
            t, sd = st
            pred = postprocess(p, vox, t, model.card.min_lesion_mm3, model.card.seed_probability if sd is None else sd)
            first = st == settings[0]
            if truth.any():
                r = lesion_table(truth, pred, spacing_zyx)
                rows[st].append(r)
                if first:
                    per_case.append(
                        {
                            "case": f"{head}_{case_seed}",
                            "dice": round(r["dice"], 3),
                            "f1": round(r["lesion_f1"], 3),
                            "true_ml": round(r["true_volume_ml"], 2),
                            "pred_ml": round(r["pred_volume_ml"], 2),
                            "missed_ge_1ml": _missed(truth, pred, vox),
                        }
                    )
            else:
                fp = float(pred.sum()) * vox / 1000
                healthy[st].append(fp)
                if first:
                    per_case.append({"case": f"{head}_{case_seed}", "healthy_fp_ml": round(fp, 3)})
        log.info("%s %s_%d done", key, head, case_seed)
    if name is None:
        return None
    out = {"model": name, "inputs": inputs, "by_threshold": {}, "cases": per_case}
    for st in settings:
        s = summarise(rows[st]) if rows[st] else {}
        s["n_cases"] = len(rows[st])
        s["healthy_cases"] = len(healthy[st])
        s["healthy_fp_ml_mean"] = float(np.mean(healthy[st])) if healthy[st] else None
        s["healthy_fp_ml_max"] = float(np.max(healthy[st])) if healthy[st] else None
        out["by_threshold"][f"{st[0]}" + ("" if st[1] is None else f" seed {st[1]}")] = s
    return out


def _missed(truth: np.ndarray, pred: np.ndarray, vox_mm3: float, min_ml: float = 1.0) -> int:
    from scipy import ndimage

    lab, n = ndimage.label(truth, np.ones((3, 3, 3), bool))
    if not n:
        return 0
    sizes = np.bincount(lab.ravel())[1:] * vox_mm3 / 1000
    hit = np.zeros(n + 1, bool)
    hit[np.unique(lab[pred & truth])] = True
    return int(sum(1 for i in range(1, n + 1) if sizes[i - 1] >= min_ml and not hit[i]))


def fmt(res: dict) -> str:
    lines = []
    for t, s in res["by_threshold"].items():
        b = s.get("buckets", {})
        bs = "; ".join(f"{k}: recall {v['recall']:.2f} dice {v['dice']:.2f} (n={v['n_true']})" for k, v in b.items())
        lines.append(
            f"{res['model']:24s} thr {t}: Dice {s.get('dice', float('nan')):.3f} F1 {s.get('lesion_f1', float('nan')):.3f} "
            f"ASD {s.get('asd_mm', float('nan')):.1f} mm, pred {s.get('pred_volume_ml', float('nan')):.1f} / true "
            f"{s.get('true_volume_ml', float('nan')):.1f} mL (n={s['n_cases']}); healthy FP mean "
            f"{s['healthy_fp_ml_mean'] if s['healthy_fp_ml_mean'] is not None else float('nan'):.2f} max "
            f"{s['healthy_fp_ml_max'] if s['healthy_fp_ml_max'] is not None else float('nan'):.2f} mL "
            f"(n={s['healthy_cases']}) | {bs}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from openrecon_stroke.runtime import flush_denormals

    flush_denormals()  # as every entry point of the package does (denormals cost 7x on Intel hosts)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--heads", nargs="+", default=["synthseg_15-20"])
    ap.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    ap.add_argument("--thresholds", default="0.2")
    ap.add_argument(
        "--seeds",
        default="",
        help="hysteresis seeds to try, e.g. 0.5,0.8 (keep components whose peak reaches it); default: the card's",
    )
    ap.add_argument("--loo", action="store_true", help="MODELS/<head>/ holds the models trained without <head>")
    ap.add_argument(
        "--edges",
        default="",
        help="lesion edges instead of the card's, as JSON (model_card.EdgeRefinement), e.g. "
        '\'{"contrast": "t1", "reach_mm": 3, "edge_fraction": 0.5, "min_contrast": 0.1, "p_floor": 0, '
        '"fill_holes": true, "mirror": true}\'',
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    seeds = [float(v) for v in args.seeds.split(",") if v] or [None]
    heads = expand(args.heads)
    edges = EdgeRefinement(**json.loads(args.edges)) if args.edges else None
    results = {}
    for key in args.inputs:
        if args.loo:
            res = evaluate(lambda h, k=key: args.models / h / k, args.cache, heads, thresholds, key, seeds, edges)
        else:
            res = evaluate(lambda h, k=key: args.models / k, args.cache, heads, thresholds, key, seeds, edges)
        if res is None:
            log.warning("%s: no model or no case", key)
            continue
        if args.loo:
            res["model"] += " (leave one head out)"
        results[key] = res
        print(fmt(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
