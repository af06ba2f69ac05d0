"""Does the preprocessing stage tell a skull-stripped series from a head? (``stages.brain``
``brain_of_series`` in ``fast`` mode.) Each SynthSeg map through the simulator (T1-w and FLAIR),
three ways:

* a head with its air zeroed (as many exports store a full head): must keep HD-BET's mask;
* stripped to the exact brain (a tight strip, without the CSF outside the brain);
* stripped to the intracranial mask (brain plus that CSF, as HD-BET itself cuts).

Per series: where HD-BET's brain surface lies (fraction at the content's edge), how much of the
content it covers and how much of it lies inside, the stage's decision, and the Dice of the mask
the stage returns to what was kept. Then a summary per kind.

    .venv/bin/python models/hdbet/validate_stripped.py [--maps 8] [--data ../shared/data] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

KINDS = ("head, air zeroed", "stripped to the brain", "stripped to brain + outer CSF")


def main(argv=None) -> int:
    from openrecon_stroke.brain_extraction import extract_brain
    from openrecon_stroke.geometry import Grid, Volume
    from openrecon_stroke.metrics import dice
    from openrecon_stroke.preprocess import series_own_brain, surface_at_content_edge
    from openrecon_stroke.runtime import flush_denormals
    from openrecon_stroke.stages.brain import brain_of_series
    from simulator import anatomy
    from simulator.phantom import make_study

    flush_denormals()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--maps", type=int, default=8, help="SynthSeg maps 01..N")
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    maps = sorted((args.data / "synthseg_label_maps").glob("training_seg_*.nii.gz"))[: args.maps]
    if not maps:
        print(f"no SynthSeg label maps under {args.data}: set --data or OPENRECON_SHARED_DATA")
        return 1
    rows = []
    for i, mp in enumerate(maps):
        st = make_study(str(mp), seed=300 + i, n_lesions=0)
        lab = st["labels"]
        on_labels = Grid.from_sitk(lab)
        icv_src = on_labels.to_sitk(anatomy.intracranial_mask(lab).astype(np.float32))
        head_src = on_labels.to_sitk((sitk.GetArrayViewFromImage(lab) > 0).astype(np.float32))
        for c, s in st["series"].items():
            v = s["volume"]

            head, icv = (anatomy.resample(src, v.grid, sitk.sitkLinear, s["slice_thickness_mm"]).data >= 0.5
                         for src in (head_src, icv_src))
            for kind, keep in zip(KINDS, (head, s["brain_mask"] > 0, icv)):
                img = Volume(np.where(keep, v.data, 0).astype(np.float32), v.grid).to_sitk()
                hd_img = extract_brain(img, folds="fast")
                hd = sitk.GetArrayViewFromImage(hd_img) > 0
                own = series_own_brain(img)[0]  # named: a view must not outlive its image
                content = sitk.GetArrayViewFromImage(own) > 0
                both = float((hd & content).sum())
                got = brain_of_series(img, c, "fast")
                row = {
                    "series": f"{mp.name.split('.')[0]}_{c}",
                    "kind": kind,
                    "surface_at_edge": round(surface_at_content_edge(hd_img, img), 3),
                    "covered": round(both / content.sum(), 3),
                    "inside": round(both / max(1, hd.sum()), 3),
                    "own_brain": got.own,
                    "note": bool(got.note),
                    "dice_hdbet_to_kept": round(dice(hd, keep), 3),
                    "dice_to_kept": round(dice(sitk.GetArrayViewFromImage(got.mask) > 0, keep), 3),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        print(f"{kind}: own brain used on {sum(r['own_brain'] for r in rs)} of {len(rs)}, note alone on "
              f"{sum(r['note'] and not r['own_brain'] for r in rs)}; Dice to what was kept: HD-BET alone "
              f"{np.mean([r['dice_hdbet_to_kept'] for r in rs]):.3f} mean "
              f"({min(r['dice_hdbet_to_kept'] for r in rs):.3f} min), the stage "
              f"{np.mean([r['dice_to_kept'] for r in rs]):.3f} ({min(r['dice_to_kept'] for r in rs):.3f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
