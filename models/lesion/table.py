"""Markdown tables of lesion evaluations (``evaluate_voxel.py --json``) at one operating point.

    .venv/bin/python models/lesion/table.py EVAL.json [EVAL2.json ...] --point "0.5 seed 0.9" [--label NAME ...]
    .venv/bin/python models/lesion/table.py EVAL.json --cards models/lesion   # each card's own point
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEAD = ("| model | Dice | lesion F1 | ASD mm | predicted / true mL | healthy FP mL mean (max) | "
        "recall / Dice < 1 mL | 1-10 mL | >= 10 mL |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def row(label: str, f: dict) -> str:
    b = f.get("buckets", {})

    def bucket(prefix):
        x = next((v for k, v in b.items() if k.startswith(prefix)), None)
        return f"{x['recall']:.2f} / {x['dice']:.2f} (n={x['n_true']})" if x and x.get("n_true") else "-"

    fp = (f"{f['healthy_fp_ml_mean']:.2f} ({f['healthy_fp_ml_max']:.2f})" if f.get("healthy_cases") else "-")
    return (f"| {label} | {f['dice']:.3f} | {f['lesion_f1']:.3f} | {f['asd_mm']:.1f} | "
            f"{f['pred_volume_ml']:.1f} / {f['true_volume_ml']:.1f} | {fp} | {bucket('small')} | "
            f"{bucket('medium')} | {bucket('large')} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evals", nargs="+", type=Path)
    ap.add_argument("--point", help='operating point key, e.g. "0.5 seed 0.9"')
    ap.add_argument("--cards", type=Path, help="use each model card's threshold and seed")
    ap.add_argument("--label", nargs="*", default=[])
    args = ap.parse_args(argv)
    print(HEAD)
    for i, path in enumerate(args.evals):
        d = json.loads(path.read_text())
        for inp, e in d.items():
            key = args.point
            if args.cards:
                c = json.loads((args.cards / inp / "card.json").read_text())
                key = f"{c['threshold']} seed {c.get('seed_probability') or 0.0}"
            f = e["by_threshold"].get(key)
            if f is None:
                sys.exit(f"{path}: no operating point {key!r} for {inp} (have {sorted(e['by_threshold'])})")
            label = (args.label[i] + " " if i < len(args.label) else "") + f"{inp} (p>={key.replace(' seed ', ', seed ')})"
            print(row(label, f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
