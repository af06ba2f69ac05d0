"""Benchmark: template registration, lesion segmentation and anomaly detection for one study
(T1-w + FLAIR), stage by stage, on the shipped models, against the models they replaced, run as
named baselines in the same session.

Each configuration runs in a fresh subprocess (so that its peak memory is its own): the study
(the default synthetic phantom, T1-w + FLAIR) is preprocessed once there (HD-BET, N4, T1-w/FLAIR
registration), untimed, and the stage is then run ``--runs`` times; the median is reported.
Models are loaded before timing, as the server does at start-up.

* ``template``: MNI152 registration of the T1-w (affine + demons, checked) and both contrasts
  resampled onto the 1.5 mm template grid;
* ``lesion_ours``: the template-space fusion model (features, ONNX, back onto both grids);
  baseline ``lesion_native_cnn``: the native-space 3D U-Net fusion ensemble (3 folds) that shipped
  before it, taken from git (``--baseline-rev``, default the last commit that had it);
* ``lesion_t1``: the same study's T1-w alone through the template-space T1-w card (its candidate
  filter and lesion edges included); baseline ``lesion_t1_before``: the T1-w card of
  ``--t1-baseline-rev`` (default: the commit before card 0.4.0);
* ``anomaly_ours``: the normative z-map in template space, with ventricles and deformation;
  baseline ``anomaly_flow``: the rectified flow (card default steps) on the native brain box.

    .venv/bin/python benchmarks/bench_models.py [--runs 3] [--baseline-rev e9de0e9] [--t1-baseline-rev 58de6c9]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the last commit whose models/lesion held the native-space CNN ensembles
BASELINE_REV = "e9de0e9"
#: the last commit with the T1-w card 0.3.0 (before the anatomy filter and lesion edges)
T1_BASELINE_REV = "58de6c9"
CONFIGS = (
    "template", "lesion_ours", "lesion_native_cnn", "lesion_t1", "lesion_t1_before", "anomaly_ours", "anomaly_flow"
)


def baseline_lesion_models(rev: str, dest: Path) -> Path:
    """``models/lesion`` of git revision ``rev`` unpacked into ``dest`` (the named baseline)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "lesion.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", rev, "models/lesion"], cwd=REPO, stdout=f, check=True)
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")
    return dest / "models" / "lesion"


def _one(config: str, runs: int) -> dict:
    sys.path.insert(0, str(REPO))
    from openrecon_stroke.pipeline import file_result
    from openrecon_stroke.stages.anomaly import AnomalyDetection
    from openrecon_stroke.stages.brain import Preprocess
    from openrecon_stroke.stages.lesion import LesionSegmentation, get_segmenter
    from openrecon_stroke.stages.results import TemplateResult
    from openrecon_stroke.stages.template import TemplateRegistrationStage
    from openrecon_stroke.study import Study
    from simulator.phantom import make_study

    st = make_study("mni", seed=0)
    alone = config.startswith("lesion_t1")
    study = Study(inputs={k: s["volume"] for k, s in st["series"].items() if k == "t1" or not alone})
    file_result(study, Preprocess().run(study))
    tmpl_stage = TemplateRegistrationStage()
    tmpl_stage.warm_up()
    if config != "template":
        file_result(study, tmpl_stage.run(study))
    if config == "lesion_native_cnn" or config == "anomaly_flow":
        del study.results[TemplateResult]  # the baselines worked without template space
    if config.startswith("lesion"):
        get_segmenter(("t1",) if alone else ("t1", "flair")).load()
        stage = LesionSegmentation()
    elif config.startswith("anomaly"):
        file_result(study, LesionSegmentation().run(study))  # the anomaly load needs the lesion mask
        stage = AnomalyDetection()
        if config == "anomaly_flow":
            from openrecon_stroke.anomaly import get_model

            get_model().session
        else:
            from openrecon_stroke.normative import get_normative

            get_normative().load()
    else:
        stage = tmpl_stage
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = stage.run(study)
        times.append(time.perf_counter() - t0)
    findings = {k: v for res in r.results for k, v in res.findings().items()
                if k in ("lesion_count", "lesion_volume_ml", "lesion_model", "anomaly", "template_registration")}
    return {"config": config, "median_s": statistics.median(times), "runs_s": times,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss_before_gib": rss0,
            "findings": findings, "warnings": r.warnings}


def main(argv=None):
    from openrecon_stroke.runtime import flush_denormals

    flush_denormals()  # as every entry point of the package does (denormals cost 7x on Intel hosts)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision holding the native CNN lesion models")
    ap.add_argument("--t1-baseline-rev", default=T1_BASELINE_REV, help="git revision holding the earlier T1-w card")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print("RESULT " + json.dumps(_one(a.one, a.runs)))
        return
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_lesion_models(a.baseline_rev, Path(tmp) / "cnn")
        t1_before = baseline_lesion_models(a.t1_baseline_rev, Path(tmp) / "t1")
        for config in CONFIGS:
            env = dict(os.environ)
            if config == "lesion_native_cnn" or config == "anomaly_flow":
                env["OPENRECON_LESION_DIR"] = str(old)
            if config == "lesion_t1_before":
                env["OPENRECON_LESION_DIR"] = str(t1_before)
            if config == "anomaly_flow":
                env["OPENRECON_NORMATIVE_DIR"] = str(Path(tmp) / "none")
            p = subprocess.run([sys.executable, __file__, "--one", config, "--runs", str(a.runs)],
                               capture_output=True, text=True, cwd=REPO, env=env)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(p.stdout[-2000:], p.stderr[-3000:])
                raise SystemExit(f"{config} failed")
            out[config] = r = json.loads(line[0][7:])
            print(f"{config:18s} median {r['median_s']:6.2f} s  runs {[round(t, 2) for t in r['runs_s']]}  "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    les, base = out["lesion_ours"]["median_s"], out["lesion_native_cnn"]["median_s"]
    print(f"lesion: template-space fusion {les:.2f} s vs native CNN ensemble {base:.2f} s: {base / les:.1f}x")
    t1, t1b = out["lesion_t1"]["median_s"], out["lesion_t1_before"]["median_s"]
    print(f"lesion, T1-w alone: this card {t1:.2f} s vs the card of {a.t1_baseline_rev} {t1b:.2f} s: {t1b / t1:.2f}x")
    ano, flow = out["anomaly_ours"]["median_s"], out["anomaly_flow"]["median_s"]
    print(f"anomaly: normative {ano:.2f} s vs rectified flow {flow:.2f} s: {flow / ano:.1f}x")
    print(f"template registration: {out['template']['median_s']:.2f} s (new work, no baseline)")
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "models.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
