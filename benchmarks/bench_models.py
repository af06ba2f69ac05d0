"""Benchmark: lesion segmentation (fusion ensemble) and anomaly detection for one study, stage by
stage, on the shipped ONNX models, against named baselines run in the same session.

Each configuration runs in a fresh subprocess (so that its peak memory is its own): the study
(the default synthetic phantom, T1-w + FLAIR) is preprocessed once there, untimed, and the stage
is then run ``--runs`` times; the median is reported. Networks are loaded before timing, as the
server does at start-up.

* lesion, ours: the whole brain box in one window of its own size (rounded up to the card's
  ``size_divisor``), 3 folds, no mirroring; baselines: "patch 112" the card's 112x136x112
  patch slid over the box with 25 % overlap (the runner before whole-box windows), and
  "sliding 48" 48-voxel windows (the training patch) with 50 % overlap, nnU-Net's usual way;
  "describe per lesion" the lesion description as it was before 2026-11-26 (a pass over the whole
  volume, and the surface distance of the whole volume, for every lesion);
* anomaly, ours: the card's default number of Euler steps; baseline: 8 steps.

    .venv/bin/python benchmarks/bench_models.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _describe_per_lesion_pass(mask, image, midline_x_lps, brain=None):
    """Baseline: the earlier ``openrecon_stroke.lesion.describe`` (same output, one whole-volume
    mask per lesion and a whole-volume distance transform)."""
    import numpy as np
    from scipy import ndimage

    from openrecon_stroke.lesion import CORTICAL_MM, Lesion, largest_first

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    vox = float(np.prod(image.GetSpacing())) / 1000.0
    depth = (ndimage.distance_transform_edt(brain, sampling=tuple(image.GetSpacing())[::-1])
             if brain is not None and n else None)
    out = []
    for i, com in enumerate(ndimage.center_of_mass(mask, lab, range(1, n + 1)), start=1):
        pt = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in com[::-1]))
        sel = lab == i
        region = ""
        if depth is not None:
            region = "cortical" if float(np.mean(depth[sel] <= CORTICAL_MM)) >= 0.5 else "subcortical"
        out.append(Lesion(i, float(sel.sum()) * vox, tuple(pt), "left" if pt[0] > midline_x_lps else "right", region))
    return largest_first(out)


def _one(config: str, runs: int) -> dict:
    sys.path.insert(0, str(REPO))
    from openrecon_stroke.params import coerce
    from openrecon_stroke.pipeline import file_result
    from openrecon_stroke.stages.anomaly import AnomalyDetection
    from openrecon_stroke.stages.brain import Preprocess
    from openrecon_stroke.stages.lesion import LesionSegmentation, get_segmenter
    from openrecon_stroke.study import Study
    from simulator.phantom import make_study

    st = make_study("mni", seed=0)
    inputs = {k: s["volume"] for k, s in st["series"].items()}
    raw = {"anomalysteps": 8} if config == "anomaly_8_steps" else {}
    study = Study(inputs=inputs, params=coerce(raw))
    file_result(study, Preprocess().run(study))
    seg = get_segmenter(("t1", "flair"))
    seg.sessions
    if config in ("lesion_sliding_48", "lesion_patch_112"):
        import dataclasses

        seg.card = dataclasses.replace(seg.card, max_window_voxels=0)  # no whole-box window
        if config == "lesion_sliding_48":
            seg.card = dataclasses.replace(seg.card, patch_size=(48, 48, 48), overlap=0.5)
    if config == "lesion_describe_per_lesion":
        import openrecon_stroke.stages.lesion as stage_module

        stage_module.describe = _describe_per_lesion_pass
    stage = LesionSegmentation() if config.startswith("lesion") else AnomalyDetection()
    if config.startswith("anomaly"):
        from openrecon_stroke.anomaly import get_model

        get_model().session
        file_result(study, LesionSegmentation().run(study))  # the anomaly load needs the lesion mask
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = stage.run(study)
        times.append(time.perf_counter() - t0)
    return {"config": config, "median_s": statistics.median(times), "runs_s": times,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss_before_gib": rss0,
            "findings": {k: v for res in r.results for k, v in res.findings().items()
                         if k in ("lesion_count", "lesion_volume_ml", "anomaly")}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print("RESULT " + json.dumps(_one(a.one, a.runs)))
        return
    out = {}
    for config in ("lesion_ours", "lesion_describe_per_lesion", "lesion_patch_112", "lesion_sliding_48",
                   "anomaly_ours", "anomaly_8_steps"):
        p = subprocess.run([sys.executable, __file__, "--one", config, "--runs", str(a.runs)], capture_output=True,
                           text=True, cwd=REPO)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(p.stdout[-2000:], p.stderr[-3000:])
            raise SystemExit(f"{config} failed")
        out[config] = json.loads(line[0][7:])
        r = out[config]
        print(f"{config:20s} median {r['median_s']:6.2f} s  runs {[round(t, 2) for t in r['runs_s']]}  "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB  {r['findings']}", flush=True)
    ours = out["lesion_ours"]["median_s"]
    for base in ("lesion_describe_per_lesion", "lesion_patch_112", "lesion_sliding_48"):
        print(f"lesion: ours {ours:.2f} s vs {base} {out[base]['median_s']:.2f} s: {out[base]['median_s'] / ours:.1f}x")
    print(f"anomaly: ours {out['anomaly_ours']['median_s']:.2f} s vs 8-step baseline "
          f"{out['anomaly_8_steps']['median_s']:.2f} s: {out['anomaly_8_steps']['median_s'] / out['anomaly_ours']['median_s']:.1f}x")
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "models.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
