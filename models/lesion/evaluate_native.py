"""The native-space lesion models (before the template-space ones) on the same held-out cases,
through the pipeline's own stages: the ablation table's first row.

Each case of ``models/lesion/cases.py`` is made again from its head and seed (the simulator is
deterministic; real heads: lesions painted again with the same seed), run through the input
check, preprocessing and lesion stages with the lesion models of ``MODELS`` (native-space
``segmentation`` cards, e.g. the models shipped before this change), and scored on each
series' own grid against the truth, as ``evaluate_voxel.py`` scores the template-space models.

    .venv/bin/python models/lesion/evaluate_native.py MODELS --cache CASES [--heads synthseg_15-20]
        [--inputs t1 flair fusion] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import REAL_HEADS, expand, real_study, synthetic_study  # noqa: E402
from evaluate_voxel import case_list, fmt  # noqa: E402

from openrecon_stroke.metrics import lesion_table, summarise  # noqa: E402

log = logging.getLogger("evaluate_native")
CONTRASTS = {"t1": ("t1",), "flair": ("flair",), "fusion": ("t1", "flair")}


def run_case(head: str, seed: int, inputs: tuple[str, ...]) -> tuple[dict, dict]:
    from openrecon_stroke.pipeline import Pipeline
    from openrecon_stroke.stages.basic import InputCheck
    from openrecon_stroke.stages.brain import Preprocess
    from openrecon_stroke.stages.lesion import LesionSegmentation
    from openrecon_stroke.study import Study

    lesions = 0 if seed >= 100 else None
    if head in REAL_HEADS:
        vols, truth, _, _ = real_study(head, seed, lesions if lesions == 0 else int(1 + seed % 3))
    else:
        vols, truth, _, _ = synthetic_study(head, seed, lesions)
    study = Study(inputs={c: v for c, v in vols.items() if c in inputs})
    if set(study.inputs) != set(inputs):
        return {}, {}
    Pipeline("native", [InputCheck(), Preprocess(), LesionSegmentation()]).run(study)
    return {d.reference: d.data for d in study.derived if d.name == "lesion_mask"}, {
        c: (truth[c], vols[c].grid) for c in study.inputs
    }


def main(argv=None) -> int:
    from openrecon_stroke.runtime import flush_denormals

    flush_denormals()  # as every entry point of the package does (denormals cost 7x on Intel hosts)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--heads", nargs="+", default=["synthseg_15-20"])
    ap.add_argument("--inputs", nargs="+", default=list(CONTRASTS), choices=list(CONTRASTS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ["OPENRECON_LESION_DIR"] = str(args.models)
    results = {}
    for key in args.inputs:
        inputs = CONTRASTS[key]
        rows, healthy = [], []
        for head, seed in case_list(args.cache, expand(args.heads)):
            masks, truths = run_case(head, seed, inputs)
            if not masks:
                continue
            target = inputs[0]
            truth, grid = truths[target]
            spacing_zyx = tuple(grid.spacing)[::-1]
            pred = masks[target] > 0
            if truth.any():
                rows.append(lesion_table(truth > 0, pred, spacing_zyx))
            else:
                healthy.append(float(pred.sum()) * float(np.prod(spacing_zyx)) / 1000)
            log.info("%s %s_%d done", key, head, seed)
        s = summarise(rows) if rows else {}
        s.update(
            n_cases=len(rows),
            healthy_cases=len(healthy),
            healthy_fp_ml_mean=float(np.mean(healthy)) if healthy else None,
            healthy_fp_ml_max=float(np.max(healthy)) if healthy else None,
        )
        results[key] = {"model": f"native {key}", "inputs": list(inputs), "by_threshold": {"card": s}}
        print(fmt(results[key]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
