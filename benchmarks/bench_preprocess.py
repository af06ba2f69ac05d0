"""Benchmark: the preprocessing stage (HD-BET brain mask, N4, T1-w/FLAIR registration) on one
synthetic study (both contrasts in one run), and brain-mask accuracy on synthetic heads.

Part 1, timing (median of --runs, each run in a fresh subprocess so that peak memory is the
stage's own): the stage in its default ``fast`` mode against the named baseline ``accurate``
mode (every shipped HD-BET fold with mirroring, HD-BET's own default) on the same study.
Part 2, accuracy: Dice of our brain mask against the exact brain mask of heads generated from
the SynthSeg label maps (skull and scalp included), T1-w and FLAIR, one head per map.

    .venv/bin/python benchmarks/bench_preprocess.py [--runs 3] [--heads 10] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _one_run(mode: str) -> dict:
    from openrecon_stroke.params import coerce
    from openrecon_stroke.pipeline import file_result
    from openrecon_stroke.stages.brain import Preprocess
    from openrecon_stroke.stages.results import BrainResult, SeriesRegistration
    from openrecon_stroke.study import Study
    from simulator.phantom import make_study

    from openrecon_stroke.brain_extraction import get_extractor

    st = make_study("mni", seed=0)
    inputs = {k: s["volume"] for k, s in st["series"].items()}
    # the server loads the networks once at start-up; time that apart from the study
    ex = get_extractor()
    t0 = time.perf_counter()
    for i in range(ex.resolve(mode, None)[0]):
        ex.session(i)
    load_s = time.perf_counter() - t0
    study = Study(inputs=inputs, params=coerce({"betmode": mode}))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    file_result(study, Preprocess().run(study))
    total = time.perf_counter() - t0
    brain, reg = study.need(BrainResult), study.result(SeriesRegistration)
    out = {k: round(v, 2) for k, v in brain.timings_s.items()}
    out["total"] = total
    out["model_load_once"] = load_s
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["rss_before_gib"] = rss0 / 2**20
    out["registration_ok"] = reg.ok if reg is not None else None
    for k in ("t1", "flair"):
        m = brain.brain_mask[k]
        import SimpleITK as sitk

        a = sitk.GetArrayFromImage(m) > 0
        b = st["series"][k]["brain_mask"] > 0
        out[f"dice_{k}"] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
    return out


def timing(runs: int, baseline_runs: int):
    results = {}
    for mode, n in (("fast", runs), ("accurate", baseline_runs)):
        rows = []
        for _ in range(n):
            p = subprocess.run([sys.executable, __file__, "--_one", mode], capture_output=True, text=True,
                               cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-2000:])
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)]
        med = {k: statistics.median(r[k] for r in rows) for k in keys}
        med["registration_ok"] = [r["registration_ok"] for r in rows]
        results[mode] = med
    f, a = results["fast"], results["accurate"]
    print(f"\npreprocessing, both contrasts (MNI phantom: T1-w 1 mm sagittal, FLAIR 0.9x0.9x4 mm), "
          f"median of {runs} runs (fast) and {baseline_runs} (baseline: accurate = all folds + mirroring)")
    print(f"{'step':24s} {'fast (s)':>10s} {'accurate (s)':>13s}")
    for k in f:
        if k == "registration_ok":
            continue
        print(f"{k:24s} {f[k]:10.2f} {a.get(k, float('nan')):13.2f}")
    print(f"ratio accurate/fast (total): {a['total'] / f['total']:.2f}x; registration ok: {f['registration_ok']}")
    return results


def accuracy(data: Path, heads: int):
    import SimpleITK as sitk

    from openrecon_stroke.brain_extraction import extract_brain
    from simulator.phantom import make_study

    maps = sorted((data / "synthseg_label_maps").glob("training_seg_*.nii.gz"))[:heads]
    if not maps:
        print(f"no SynthSeg maps under {data}; skipping the accuracy part")
        return {}
    rows = []
    for i, m in enumerate(maps):
        st = make_study(str(m), seed=100 + i, n_lesions=0)
        row = {"map": m.name}
        for k, s in st["series"].items():
            img = s["volume"].to_sitk()
            t0 = time.perf_counter()
            mask = sitk.GetArrayFromImage(extract_brain(img)) > 0
            row[f"seconds_{k}"] = time.perf_counter() - t0
            truth = s["brain_mask"] > 0
            row[f"dice_{k}"] = float(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
        rows.append(row)
        print(f"{m.name}: Dice T1-w {row['dice_t1']:.4f}  FLAIR {row['dice_flair']:.4f}", flush=True)
    for k in ("t1", "flair"):
        d = np.array([r[f"dice_{k}"] for r in rows])
        print(f"{k}: Dice mean {d.mean():.4f}, median {np.median(d):.4f}, min {d.min():.4f} over {len(d)} heads")
    return rows


def main():
    from openrecon_stroke.runtime import flush_denormals

    flush_denormals()  # as every entry point of the package does (denormals cost 7x on Intel hosts)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline-runs", type=int, default=1, help="runs of the (slow) accurate baseline")
    ap.add_argument("--heads", type=int, default=10)
    ap.add_argument("--data", default=os.environ.get("OPENRECON_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(_one_run(args._one)))
        return
    out = {}
    if not args.skip_timing:
        out["timing"] = timing(args.runs, args.baseline_runs)
    if not args.skip_accuracy:
        out["accuracy"] = accuracy(Path(args.data), args.heads)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
