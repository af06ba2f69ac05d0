"""Evaluate lesion models (one card, or several fold files as an ensemble) on the seeded
held-out synthetic test set, and print a table.

    .venv/bin/python models/lesion/evaluate.py models/lesion/fusion [--cases 20] [--single-folds]
        [--brain exact|hd-bet]

Test cases come from the SynthSeg maps that training never sees (``TEST_MAPS``), with fixed
seeds, prepared as the runner prepares scanner data (:mod:`simulator.training`), inside either
the simulator's exact brain mask or (``--brain hd-bet``) the mask the pipeline computes with
HD-BET, which is what a model meets on the scanner. Prediction uses
the card's patch size, overlap, activation, threshold and minimum lesion size; metrics are those
of :mod:`openrecon_stroke.metrics` (overall and per lesion-size bucket).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from openrecon_stroke.lesion import LesionSegmenter, postprocess  # noqa: E402
from openrecon_stroke.metrics import SIZE_BUCKETS, lesion_table, summarise  # noqa: E402
from openrecon_stroke.model_card import ModelCard  # noqa: E402
from openrecon_stroke.sliding_window import predict  # noqa: E402

TEST_MAPS = tuple(range(15, 21))


def test_cases(data: Path, n: int, cache: Path, spacing_mm=(1.5, 1.5, 1.5), brain: str = "exact"):
    """Seeded held-out cases on the network grid (``spacing_mm``); metrics are computed there.

    ``brain="exact"``: images z-scored inside, and cut to, the simulator's exact brain mask;
    ``brain="hd-bet"``: inside the mask the pipeline computes itself (HD-BET on the whole T1-w
    head), as on the scanner."""
    from simulator.training import evaluation_case

    maps = [data / "synthseg_label_maps" / f"training_seg_{i:02d}.nii.gz" for i in TEST_MAPS]
    for k in range(n):
        yield evaluation_case(cache, str(maps[k % len(maps)]), seed=900000 + k, brain=brain,
                              spacing_mm=tuple(spacing_mm))


def evaluate(card: ModelCard, cases, sessions=None, desc: str = "") -> dict:
    from tqdm import tqdm

    seg = LesionSegmenter(card)
    sess = sessions if sessions is not None else seg.sessions
    chan = [("t1", "flair").index(c) for c in card.inputs]
    rows = []
    for case in tqdm(cases, desc=desc or card.name, leave=False):
        prob = predict(sess, case["x"][chan], card.window_for(case["x"].shape[1:]), overlap=card.overlap,
                       activation=card.activation,
                       channel=card.channel)
        prob = np.where(case["brain"], prob, 0)
        mask = postprocess(prob, float(np.prod(card.spacing_mm)), card.threshold, card.min_lesion_mm3)
        rows.append(lesion_table(case["y"], mask, tuple(card.spacing_mm)[::-1]))
    return summarise(rows)


def print_table(results: dict[str, dict]):
    cols = ["dice", "lesion_f1", "asd_mm", "hd95_mm", "true_volume_ml", "pred_volume_ml"]
    print(f"{'model':28s}" + "".join(f"{c:>15s}" for c in cols))
    for name, r in results.items():
        print(f"{name:28s}" + "".join(f"{r[c]:15.3f}" for c in cols))
    print("\nper size bucket of true lesions (recall / Dice):")
    print(f"{'model':28s}" + "".join(f"{b[0]:>22s}" for b in SIZE_BUCKETS))
    for name, r in results.items():
        cells = []
        for b, _, _ in SIZE_BUCKETS:
            v = r["buckets"].get(b)
            cells.append(f"{v['recall']:.2f} / {v['dice']:.2f} (n={v['n_true']})" if v else "-")
        print(f"{name:28s}" + "".join(f"{c:>22s}" for c in cells))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model folders (each with card.json)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--cache", default=None, help="case cache (default /tmp/lesion-test-cases-<spacing>)")
    ap.add_argument("--single-folds", action="store_true", help="also evaluate each fold alone")
    ap.add_argument("--brain", choices=("exact", "hd-bet"), default="exact",
                    help="brain mask the images are normalised in and cut to: the simulator's exact one, or "
                         "HD-BET's as in the pipeline")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    cards = [ModelCard.load(f) for f in args.models]
    sp = cards[0].spacing_mm
    cache = Path(args.cache or f"/tmp/lesion-test-cases-{sp[0]:g}")
    from tqdm import tqdm

    cases = list(tqdm(test_cases(Path(args.data), args.cases, cache, sp, args.brain), total=args.cases,
                      desc="test cases"))
    results = {}
    for card in cards:
        if card.spacing_mm != sp:
            raise SystemExit("all models evaluated together must share one network spacing")
        seg = LesionSegmenter(card)
        tag = "" if args.brain == "exact" else f" [{args.brain} mask]"
        name = f"{card.name} (ensemble of {len(card.files)}){tag}"
        results[name] = evaluate(card, cases, desc=name)
        print(f"{name}: " + ", ".join(f"{k} {results[name][k]:.3f}" for k in ("dice", "lesion_f1", "asd_mm",
                                                                             "pred_volume_ml")), flush=True)
        if args.single_folds and len(card.files) > 1:
            for i, s in enumerate(seg.sessions):
                results[f"{card.name} fold {i}{tag}"] = evaluate(card, cases, [s], desc=f"{card.name} fold {i}")
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
