"""Benchmark: an imported nnU-Net v2 model on ONNX Runtime (``openrecon-stroke predict``) against
nnU-Net's own ``nnUNetPredictor`` on PyTorch CPU, on a 1 mm head, in the same run.

The model is a real nnU-Net ResEnc M plan (``nnUNetPlannerResEncM`` on two MNI152 1 mm heads:
patch 128^3, 6 stages, ResidualEncoderUNet) with the weights nnU-Net's trainer initialises
(speed does not depend on the weight values), built by ``scripts/nnunet_reference.py build
--head`` and imported with ``import-nnunet`` (fp32, and with ``--fp16`` also half-precision
weight storage). The input is the 197 x 233 x 189 MNI152 head with a lesion. Both sides load
their networks before the clock starts, use the machine's physical cores as threads, and time
read + preprocess, network (sliding window), resample back + write; each side runs ``--runs``
times, alternating (nnU-Net in a subprocess per run, ours in this process), and the median is
reported, with the ratio. The outputs are compared too (max |probability difference|).

Needs the nnunet extra and nnunetv2 (``bash scripts/install_nnunet_extra.sh``). Slow on two
cores: about 8 windows of 128^3 per run and side.

    .venv/bin/python benchmarks/bench_nnunet.py [--runs 3] [--mirroring] [--fp16] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import nnunet_reference as reference  # noqa: E402

HEAD = 903


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mirroring", action="store_true", help="with mirroring (8x the network work on both sides)")
    ap.add_argument("--fp16", action="store_true", help="also time the fp16-weight import")
    ap.add_argument("--work", help="working folder (kept; default: a temporary one)")
    args = ap.parse_args(argv)

    import SimpleITK as sitk

    from openrecon_stroke.runtime import physical_cores
    from openrecon_stroke.lesion import LesionSegmenter
    from openrecon_stroke.model_card import ModelCard
    from openrecon_stroke.nnunet_import import import_nnunet
    from openrecon_stroke.predict import predict_files

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_nnunet_"))
    work.mkdir(parents=True, exist_ok=True)
    threads = physical_cores()
    env = dict(os.environ, NNUNET_REF_THREADS=str(threads), nnUNet_def_n_proc="1")
    results = reference.results_folder(work, HEAD)
    if not (results / "fold_0" / "checkpoint_final.pth").is_file():
        print(f"building the nnU-Net ResEnc M head model in {work} ...", flush=True)
        subprocess.run([sys.executable, str(REPO / "scripts" / "nnunet_reference.py"), "build", str(work), "--head"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    variants = {"fp32": work / "model_fp32"}
    if args.fp16:
        variants["fp16 weights"] = work / "model_fp16"
    for v, folder in variants.items():
        if not (folder / "card.json").is_file():
            import_nnunet(results, folder, fp16=v != "fp32", say=lambda s: print("  " + s, flush=True))
    head = reference.results_folder(work, HEAD).parents[2] / "nnUNet_raw" / reference.DATASETS[HEAD]["name"]
    image = head / "imagesTr" / "case001_0000.nii.gz"
    print(f"input {image.name}: {sitk.ReadImage(str(image)).GetSize()} voxels at 1 mm; {threads} threads; "
          f"mirroring {'on' if args.mirroring else 'off'}; {args.runs} runs", flush=True)

    job = {"results": str(results), "folds": [0], "inputs": [str(image)], "out": str(work / "nnunet_out"),
           "mirroring": args.mirroring}
    segs = {v: LesionSegmenter(ModelCard.load(f)) for v, f in variants.items()}
    for s in segs.values():
        s.sessions  # load before timing
    ours = {v: [] for v in variants}
    theirs = []  # one process per run: it loads its network untimed, then times its steps
    (work / "job.json").write_text(json.dumps([job]))
    for _ in range(args.runs):  # the two sides alternate, so that both see the same machine load
        for v, seg in segs.items():
            t: dict = {}
            predict_files(variants[v], [str(image)], work / f"ours_{v.split()[0]}", mirroring=args.mirroring,
                          say=lambda s: None, segmenter=seg, timings=t)
            ours[v].append(t)
            print(f"  ours {v}: {sum(t.values()):.1f} s", flush=True)
        subprocess.run([sys.executable, str(REPO / "scripts" / "nnunet_reference.py"), "predict",
                        str(work / "job.json")], check=True, env=env, stdout=subprocess.DEVNULL)
        theirs.append(json.loads(Path(job["out"] + ".json").read_text()))
        print(f"  nnUNetPredictor: {theirs[-1]['total']:.1f} s", flush=True)

    ref_p = np.load(job["out"] + ".npz")["probabilities"][1]

    def med(rows, key):
        return statistics.median(r.get(key, 0.0) for r in rows)

    print(f"\n{'step':<34}{'nnUNetPredictor (PyTorch)':>27}" + "".join(f"{'ours ' + v:>22}" for v in variants))
    steps = [("read + preprocess", ("preprocess",), ("read", "preprocess")), ("network", ("network",), ("network",)),
             ("resample back + write", ("export",), ("restore", "write"))]
    for name, tk, ok in steps:
        row = f"{name:<34}{sum(med(theirs, k) for k in tk):>27.1f}"
        row += "".join(f"{sum(med(ours[v], k) for k in ok):>22.1f}" for v in variants)
        print(row)
    total_theirs = statistics.median(r["total"] for r in theirs)
    row = f"{'total (median of %d runs), s' % args.runs:<34}{total_theirs:>27.1f}"
    for v in variants:
        total = statistics.median(sum(r.values()) for r in ours[v])
        row += f"{total:>14.1f} ({total_theirs / total:.2f}x)"
    print(row)
    for v in variants:
        p = sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"ours_{v.split()[0]}" / "case001_prob.nii.gz")))
        d = np.abs(p - ref_p)
        size = sum(f.stat().st_size for f in variants[v].glob("*.onnx")) / 2**20
        print(f"ours {v}: max |p - nnU-Net p| {d.max():.2e}, mean {d.mean():.2e}; ONNX {size:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
