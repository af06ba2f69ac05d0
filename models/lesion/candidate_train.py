"""Train the candidate filter of a template-space lesion model: a second classifier that keeps or
drops each connected lesion candidate (:mod:`openrecon_stroke.lesion_candidates`).

Its training candidates must look like the ones the shipped model makes on heads it never saw,
so they come from out-of-fold models: the training heads split into folds, one voxel model per
fold trained without that fold's heads (and a normative model built without them), run on that
fold's cases. A candidate is a true lesion when at least 20 % of its voxels, or at least 100 mm3,
lie in the truth (template space). The cut (``min_probability``) is chosen on the validation
heads with the shipped model's own candidates: the highest cut that drops no true candidate
there (of at least ``--min-true-ml``: pieces of a lesion far smaller than it may go), times
``--margin``; or, with ``--cut healthy``, just above the highest false candidate of at least
``--healthy-ml`` on a healthy validation case (the operating-point rule: no healthy head keeps such
a candidate), whatever true candidates that costs (logged, and kept in the card).

    .venv/bin/python models/lesion/candidate_train.py models/lesion/flair --cache CASES \\
        --fold FOLD_A/flair synthseg_01-04 chris_t1 --fold FOLD_B/flair ... \\
        --val synthseg_13 synthseg_14 [--write]

``--cache`` takes several case caches (e.g. the main one, more lesion cases in the real heads,
healthy heads with enlarged ventricles): the training candidates come from all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import expand, model_view  # noqa: E402
from evaluate_voxel import case_list, load_case  # noqa: E402

from openrecon_stroke import lesion_candidates  # noqa: E402
from openrecon_stroke.lesion_voxel import VoxelLesionModel  # noqa: E402
from openrecon_stroke.model_card import VoxelClassifierCard, file_sha256  # noqa: E402

log = logging.getLogger("candidate_train")
#: A candidate is a true lesion when this fraction of its voxels, or this many mm3, are lesion.
TRUE_FRACTION, TRUE_MM3 = 0.2, 100.0


def collect(
    model: VoxelLesionModel, cache: Path, heads, threshold: float, seed: float, anatomy: bool = False
) -> dict:
    """Every candidate of ``model`` on the cases of ``heads``: feature rows, truth, case, volume
    (``anatomy``: with the features of each head's own anatomy)."""
    sp = model.card.spacing_mm
    rows, truth, case, ml = [], [], [], []
    for head, s in case_list(cache, heads):
        arrays, _ = load_case(cache, head, s)
        v = model_view(arrays, model.card.inputs)
        if v is None:
            continue
        x, prob, lab, ids = model.candidates(v["images"], v["brain"], threshold, seed)
        if ids:
            rows.append(model.describe_candidates(x, prob, v["brain"], lab, ids, v["images"], anatomy))
            les = v["lesion"] > 0.5
            for k in ids:
                comp = lab == k
                hit = int((comp & les).sum())
                n = int(comp.sum())
                truth.append(hit >= TRUE_FRACTION * n or hit * sp**3 >= TRUE_MM3)
                case.append(f"{head}_{s}")
                ml.append(n * sp**3 / 1000)
        log.info("%s_%d: %d candidates", head, s, len(ids))
    d = len(lesion_candidates.feature_names(model.card.inputs, model.card.features, anatomy))
    return {
        "x": np.concatenate(rows) if rows else np.zeros((0, d), np.float32),
        "y": np.asarray(truth, bool),
        "case": np.asarray(case),
        "ml": np.asarray(ml, np.float32),
    }


def kept(
    keep: Path | None, model: VoxelLesionModel, cache: Path, heads, threshold: float, seed: float, anatomy: bool
) -> dict:
    """:func:`collect`, read from ``keep`` when an earlier run kept the same candidates there."""
    if keep is None:
        return collect(model, cache, heads, threshold, seed, anatomy)
    what = [str(model.card.path.resolve()), str(Path(cache).resolve()), sorted(heads), threshold, seed]
    if anatomy:  # (without, the key of the candidates kept before the option existed)
        what.append("anatomy")
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
    path = keep / f"{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    got = collect(model, cache, heads, threshold, seed, anatomy)
    keep.mkdir(parents=True, exist_ok=True)
    np.savez(path, **got)
    return got


def healthy_case_names(cache: Path, heads) -> list[str]:
    """The cases of ``heads`` in ``cache`` without any lesion (``HEAD_SEED``)."""
    out = []
    for head, s in case_list(cache, heads):
        arrays, _ = load_case(cache, head, s)
        if not (arrays["lesion"] > 0.5).any():
            out.append(f"{head}_{s}")
    return out


def train(x: np.ndarray, y: np.ndarray, ml: np.ndarray, rounds: int, seed: int = 0):
    import lightgbm as lgb

    # a candidate's weight grows with its size: a large false candidate costs the reader more
    w = 1.0 + np.log1p(ml * 10.0)
    params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 7,
        "min_data_in_leaf": 10,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "num_threads": 2,
        "verbose": -1,
    }
    return lgb.train(params, lgb.Dataset(x, y.astype(np.float32), weight=w), num_boost_round=rounds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="the shipped model's folder (its card gets the filter)")
    ap.add_argument("--cache", type=Path, nargs="+", required=True,
                    help="case caches; training candidates come from every one (each fold's heads), "
                         "validation candidates from the first")
    ap.add_argument("--fold", nargs="+", action="append", required=True, metavar=("MODEL", "HEAD"),
                    help="an out-of-fold model folder and the heads it never saw (repeat per fold)")
    ap.add_argument("--val", nargs="+", default=["synthseg_13", "synthseg_14"])
    ap.add_argument("--exclude", nargs="*", default=[], help="heads whose candidates are left out (LOO)")
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--margin", type=float, default=0.25)
    ap.add_argument("--min-true-ml", type=float, default=0.0,
                    help="the cut keeps every true validation candidate of at least this volume (mL; default 0: "
                         "every true candidate, however small)")
    ap.add_argument("--cut", choices=["margin", "healthy"], default="margin",
                    help="margin: the lowest true validation candidate (of --min-true-ml) times --margin; healthy: "
                         "just above the highest false candidate of at least --healthy-ml on a healthy validation case")
    ap.add_argument("--healthy-ml", type=float, default=0.5)
    ap.add_argument("--out", type=Path, help="folder for the filter (default: the model's folder)")
    ap.add_argument("--keep", type=Path, help="folder to keep collected candidates in (reused on a rerun)")
    ap.add_argument("--anatomy-features", action="store_true",
                    help="describe candidates also by each head's own anatomy (lesion_candidates.ANATOMY_FEATURES: "
                         "its measured ventricles, the CSF-dark voxels joined to a candidate)")
    ap.add_argument("--write", action="store_true", help="write candidates.onnx and the card's candidate_filter")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    shipped = VoxelLesionModel(VoxelClassifierCard.load(args.model))
    thr, seed = shipped.card.threshold, shipped.card.seed_probability or 0.0
    parts = []
    for fold in args.fold:
        folder, heads = Path(fold[0]), [h for h in expand(fold[1:]) if h not in args.exclude]
        m = VoxelLesionModel(VoxelClassifierCard.load(folder))
        if tuple(m.card.features) != tuple(shipped.card.features):
            log.error("%s has other features than %s", folder, args.model)
            return 2
        parts += [kept(args.keep, m, cache, heads, thr, seed, args.anatomy_features) for cache in args.cache]
    tr = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    log.info("training candidates: %d (%d true)", len(tr["y"]), int(tr["y"].sum()))
    t0 = time.perf_counter()
    booster = train(tr["x"], tr["y"], tr["ml"], args.rounds)
    val = kept(args.keep, shipped, args.cache[0], expand(args.val), thr, seed, args.anatomy_features)
    pv = booster.predict(val["x"]) if len(val["y"]) else np.zeros(0)
    counted = val["y"] & (val["ml"] >= args.min_true_ml)
    lowest_true = float(pv[counted].min()) if counted.any() else 0.5
    cut = round(lowest_true * args.margin, 5)
    highest_healthy = None
    if args.cut == "healthy":
        # the lowest cut that drops every false candidate of at least --healthy-ml on the healthy
        # validation cases, whatever true candidates it costs (counted below)
        healthy = healthy_case_names(args.cache[0], expand(args.val))
        big = np.isin(val["case"], healthy) & ~val["y"] & (val["ml"] >= args.healthy_ml)
        highest_healthy = float(pv[big].max()) if big.any() else 0.0
        cut = float(np.ceil(highest_healthy * 1000 + 1e-9) / 1000) if big.any() else cut
    kept_false = val["ml"][(~val["y"]) & (pv >= cut)].sum()
    lost = val["y"] & (pv < cut)
    log.info(
        "validation: %d candidates (%d true, %d of them >= %.2f mL); lowest such true %.4f; highest false on a "
        "healthy case %s -> cut %.5f (%s rule); false candidates %.2f -> %.2f mL; true candidates cut: %d (%.2f mL)",
        len(val["y"]), int(val["y"].sum()), int(counted.sum()), args.min_true_ml, lowest_true,
        "-" if highest_healthy is None else f"{highest_healthy:.4f}", cut, args.cut,
        float(val["ml"][~val["y"]].sum()), float(kept_false), int(lost.sum()), float(val["ml"][lost].sum()),
    )
    names = lesion_candidates.feature_names(shipped.card.inputs, shipped.card.features, args.anatomy_features)
    gain = dict(zip(names, booster.feature_importance("gain").round(1).tolist()))
    log.info("gain: %s", json.dumps(gain))
    if not args.write:
        return 0
    from voxel_train import export_onnx

    out = args.out or args.model
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(booster, len(names), out / "candidates.onnx")
    card_path = out / "card.json"
    card = json.loads(card_path.read_text())
    card["candidate_filter"] = {
        "file": "candidates.onnx",
        "sha256": file_sha256(out / "candidates.onnx"),
        "features": names,
        "threshold": thr,
        "seed_probability": seed,
        "min_probability": cut,
        "training": {
            "candidates": int(len(tr["y"])),
            "true": int(tr["y"].sum()),
            "folds": [[str(f[0])] + list(f[1:]) for f in args.fold],
            "excluded": list(args.exclude),
            "validation": {"heads": list(args.val), "candidates": int(len(val["y"])), "true": int(val["y"].sum()),
                           "lowest_true_probability": round(lowest_true, 5), "margin": args.margin,
                           "min_true_ml": args.min_true_ml, "rule": args.cut,
                           **({"highest_healthy_false_probability": round(highest_healthy, 5),
                               "healthy_ml": args.healthy_ml} if highest_healthy is not None else {}),
                           "true_cut": {"candidates": int(lost.sum()), "ml": round(float(val["ml"][lost].sum()), 3)}},
            "rounds": args.rounds,
            "seconds": round(time.perf_counter() - t0, 1),
            "feature_gain": gain,
            "command": "models/lesion/candidate_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
    }
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    log.info("candidate filter -> %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
