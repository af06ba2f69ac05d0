"""Benchmark: the cohort batch on a small BIDS cohort, against a serial loop of ``process``.

The cohort: ``--subjects`` phantom studies (``python -m simulator phantom``, seeds 0..N-1), T1-w
(1 mm, sagittal) and FLAIR (0.9 x 0.9 x 4 mm, axial) as NIfTI in BIDS; every subject runs the
default pipeline fused. Configurations, each timed from the first command to the last output:

* baseline: a serial shell-style loop, one ``openrecon-stroke process --t1 --flair`` process per
  subject (what users wrote before ``batch``): every subject pays Python start-up and model
  loading;
* ``batch --workers 1`` and ``batch --workers 2`` (embedded LocalCluster; each worker's studies get
  cores // workers threads).

Reported per configuration (median over ``--runs``): wall time, subjects per minute, ratio to the
baseline; for the batch also its start-up (cluster + workers + network loading, before the first
subject) and the network loading time per worker, and the mean in-worker time per subject. CPU
seconds per subject (user + system of the ``process`` children; of the workers, their start-up
shared over the subjects) show what loading once saves even when other jobs share the machine.

    .venv/bin/python benchmarks/bench_batch.py [--subjects 4] [--runs 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from openrecon_stroke.batch.engine import BatchSettings, run_batch
from openrecon_stroke.inputs import load_volume
from openrecon_stroke.runtime import physical_cores


def make_cohort(root: Path, n: int) -> list[tuple[Path, Path]]:
    """BIDS cohort of ``n`` phantom subjects; returns (T1w, FLAIR) paths per subject."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "phantom cohort", "BIDSVersion": "1.8.0"}))
    pairs = []
    for s in range(n):
        anat = root / f"sub-{s:02d}" / "anat"
        t1, fl = anat / f"sub-{s:02d}_T1w.nii.gz", anat / f"sub-{s:02d}_FLAIR.nii.gz"
        if not (t1.is_file() and fl.is_file()):
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(
                    [sys.executable, "-m", "simulator", "phantom", "--out", tmp, "--seed", str(s)],
                    check=True,
                    capture_output=True,
                )
                anat.mkdir(parents=True, exist_ok=True)
                for c, p in (("t1", t1), ("flair", fl)):
                    sitk.WriteImage(load_volume(Path(tmp) / f"{c}.h5").to_sitk(), str(p))
        pairs.append((t1, fl))
    return pairs


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def serial_process(pairs, out: Path) -> dict:
    t0, c0 = time.perf_counter(), _children_cpu()
    per = []
    for k, (t1, fl) in enumerate(pairs):
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "openrecon_stroke",
                "--log-level",
                "WARNING",
                "process",
                "--t1",
                str(t1),
                "--flair",
                str(fl),
                "--out",
                str(out / f"s{k}"),
            ],
            check=True,
            capture_output=True,
        )
        per.append(time.perf_counter() - t)
    return {
        "wall_s": time.perf_counter() - t0,
        "per_subject_s": statistics.mean(per),
        "cpu_per_subject_s": (_children_cpu() - c0) / len(pairs),
    }


def batch(root: Path, out: Path, workers: int) -> dict:
    res = run_batch(BatchSettings(bids_dir=root, out_dir=out, workers=workers, progress=False))
    if res.failed:
        raise RuntimeError(f"batch failed: {res.failed}")
    loads = [w.get("networks_load_s") or 0.0 for w in res.worker_setup.values()]
    setup_cpu = sum(w.get("process_cpu_s") or 0.0 for w in res.worker_setup.values())
    return {
        "wall_s": res.wall_s,
        "startup_s": res.startup_s,
        "networks_load_s": max(loads) if loads else 0.0,
        "per_subject_s": statistics.mean(r["time_s"] for r in res.done),
        "workers_used": len({r["pid"] for r in res.done}),
        "cpu_per_subject_s": (setup_cpu + sum(r["cpu_s"] for r in res.done)) / len(res.done),
        "worker_startup_cpu_s": setup_cpu / max(1, len(res.worker_setup)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, help="folder for the cohort (kept, reused) and outputs")
    ap.add_argument("--configs", default="serial,1,2", help="comma list of serial, 1, 2 (workers)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_batch_"))
    t = time.perf_counter()
    pairs = make_cohort(work / "bids", args.subjects)
    print(
        f"cohort: {args.subjects} phantom subjects (T1-w + FLAIR) in {work / 'bids'} "
        f"({time.perf_counter() - t:.0f} s to make); {physical_cores()} physical cores",
        flush=True,
    )
    configs = args.configs.split(",")
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for run in range(args.runs):
        for c in configs:
            out = work / f"out-{c}-{run}"
            shutil.rmtree(out, ignore_errors=True)
            r = serial_process(pairs, out) if c == "serial" else batch(work / "bids", out, int(c))
            results[c].append(r)
            print(f"run {run + 1} {c}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)

    def med(c, k):
        return statistics.median(r[k] for r in results[c])

    n = args.subjects
    base = med("serial", "wall_s") if "serial" in results else None
    print(f"\nmedian of {args.runs} run(s), {n} subjects:")
    print(
        "| configuration | wall (s) | subjects/min | vs serial process loop | start-up (s) | network loading "
        "per worker (s) | mean time per subject in the worker (s) | CPU per subject (s, start-up shared) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in configs:
        wall = med(c, "wall_s")
        name = "serial `process` loop (baseline)" if c == "serial" else f"`batch --workers {c}`"
        ratio = f"{base / wall:.2f}x" if base else "-"
        cpu = med(c, "cpu_per_subject_s")
        if c == "serial":
            print(
                f"| {name} | {wall:.1f} | {60 * n / wall:.2f} | 1.00x | (in every subject) | (in every subject) | "
                f"{med(c, 'per_subject_s'):.1f} (whole process) | {cpu:.1f} |"
            )
        else:
            print(
                f"| {name} | {wall:.1f} | {60 * n / wall:.2f} | {ratio} | {med(c, 'startup_s'):.1f} | "
                f"{med(c, 'networks_load_s'):.1f} | {med(c, 'per_subject_s'):.1f} | {cpu:.1f} "
                f"(worker start-up {med(c, 'worker_startup_cpu_s'):.1f}) |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
