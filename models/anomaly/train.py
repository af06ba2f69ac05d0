"""Train the rectified-flow (flow-matching) anomaly model on healthy synthetic brains, resumably,
and export it to ONNX.

    .venv/bin/python models/anomaly/train.py --out models/anomaly --steps 2500

Data: healthy heads (no lesions) from the SynthSeg label maps 01-12 with domain-randomised
T1-w and FLAIR contrasts (:mod:`simulator.training`, 2 cases per map, cached), on the runner's
network grid (RAS, 2 mm, brain box) and z-scored inside the brain. Maps 13-14 are kept for
calibrating the anomaly threshold (``calibrate.py``); maps 15-20 for the evaluation.

Training follows the REFLECT recipe (flow from abnormal to healthy): each sample is a healthy
patch ``x1``; a synthetic anomaly (a random smooth blob filled with foreign texture from
elsewhere in the brain, a random intensity, or noise, blended with a random weight) gives the
corrupted ``x0``; ``x_t = (1 - t) x0 + t x1`` and the network learns the straight-line velocity
``x1 - x0`` (mean squared error inside the brain). A quarter of the samples have no anomaly
(velocity 0), so a healthy brain maps to itself. One network serves both contrasts (a contrast
channel). Checkpoint every ``--save-every`` steps; rerunning resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from nets import VelocityUNet, load_checkpoint, train_loop  # noqa: E402

TRAIN_MAPS = tuple(range(1, 13))
CALIBRATION_MAPS = (13, 14)
TEST_MAPS = tuple(range(15, 21))
SPACING_MM = 2.0


def healthy_cases(data: Path, maps, cache: Path, per_map: int = 2):
    from simulator.training import cached_case

    out = []
    for i in maps:
        for k in range(per_map):
            out.append(cached_case(cache, str(data / "synthseg_label_maps" / f"training_seg_{i:02d}.nii.gz"),
                                   seed=i * 100 + 50 + k, spacing_mm=(SPACING_MM,) * 3, n_lesions=0))
    return out


def random_blob(shape, rng) -> np.ndarray:
    """Soft mask (0..1) of an irregular blob, radius 2-12 voxels, somewhere in ``shape``."""
    r = rng.uniform(2, 12, 3)
    c = [rng.uniform(0.2, 0.8) * n for n in shape]
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    q = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    noise /= noise.std() + 1e-6
    m = (q + 0.35 * noise) <= 1.0
    return ndimage.gaussian_filter(m.astype(np.float32), rng.uniform(0.3, 1.2))


def corrupt(x1: np.ndarray, brain: np.ndarray, source: np.ndarray, rng) -> np.ndarray:
    """``x0``: ``x1`` with 1-3 synthetic anomalies inside the brain."""
    x0 = x1.copy()
    for _ in range(int(rng.integers(1, 4))):
        m = random_blob(x1.shape, rng) * brain
        if m.max() < 0.5:
            continue
        kind = rng.integers(3)
        if kind == 0:  # foreign texture: the same brain shifted (another region's tissue)
            shift = rng.integers(-20, 21, 3)
            fill = np.roll(source, tuple(int(s) for s in shift), axis=(0, 1, 2))
        elif kind == 1:  # a flat, unusual intensity with a little texture
            fill = rng.uniform(-3.0, 3.5) + 0.2 * rng.standard_normal(x1.shape)
        else:  # structured noise
            fill = ndimage.gaussian_filter(rng.standard_normal(x1.shape), rng.uniform(0.5, 2)) * rng.uniform(1, 4)
        w = rng.uniform(0.4, 1.0)
        x0 = x0 * (1 - w * m) + fill.astype(np.float32) * (w * m)
    return x0.astype(np.float32)


def sample(cases, patch, rng):
    case = cases[rng.integers(len(cases))]
    c = int(rng.integers(2))
    x, brain = case["x"][c], case["brain"].astype(np.float32)
    shp = np.array(x.shape)
    b = np.argwhere(case["brain"])
    centre = b[rng.integers(len(b))]
    lo = np.clip(centre - patch // 2, 0, np.maximum(shp - patch, 0))
    sl = tuple(slice(int(a), int(a) + patch) for a in lo)
    x1, bm = x[sl], brain[sl]
    pad = [(0, max(0, patch - s)) for s in x1.shape]
    x1, bm = np.pad(x1, pad), np.pad(bm, pad)
    for ax in range(3):
        if rng.random() < 0.5:
            x1, bm = np.flip(x1, ax), np.flip(bm, ax)
    x1, bm = np.ascontiguousarray(x1), np.ascontiguousarray(bm)
    x0 = corrupt(x1, bm, x1, rng) if rng.random() < 0.75 else x1.copy()
    return x0, x1, bm, c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--cache", default="/tmp/anomaly-healthy-2")
    ap.add_argument("--out", default="models/anomaly")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=100)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"healthy training cases from maps {TRAIN_MAPS[0]}-{TRAIN_MAPS[-1]} (cache {args.cache})")
    cases = healthy_cases(Path(args.data), TRAIN_MAPS, Path(args.cache))
    net = VelocityUNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    ckpt = out / "flow.ckpt"
    step, seed = load_checkpoint(net, opt, ckpt)["step"], 2024
    rng = np.random.default_rng(seed + step)

    def batch_loss():
        xs, vs, ms = [], [], []
        for _ in range(args.batch):
            x0, x1, bm, c = sample(cases, args.patch, rng)
            t = float(rng.uniform(0, 1))
            xt = (1 - t) * x0 + t * x1
            xs.append(np.stack([xt, np.full_like(xt, t), np.full_like(xt, float(c))]))
            vs.append((x1 - x0)[None])
            ms.append(bm[None])
        x = torch.from_numpy(np.stack(xs).astype(np.float32))
        v = torch.from_numpy(np.stack(vs).astype(np.float32))
        m = torch.from_numpy(np.stack(ms).astype(np.float32))
        return (((net(x) - v) ** 2) * m).sum() / m.sum().clamp_min(1.0)

    t0 = time.time()
    step = train_loop(net, opt, batch_loss, steps=args.steps, lr=args.lr, ckpt=ckpt, start_step=step,
                      save_every=args.save_every)
    net.eval()
    torch.onnx.export(net, torch.zeros(1, 3, 48, 48, 48), str(out / "flow.onnx"), input_names=["x_t"],
                      output_names=["velocity"], opset_version=17, dynamo=False,
                      dynamic_axes={"x_t": {2: "z", 3: "y", 4: "x"}, "velocity": {2: "z", 3: "y", 4: "x"}})
    (out / "flow.json").write_text(json.dumps({"steps": step, "patch": args.patch, "batch": args.batch,
                                               "train_maps": list(TRAIN_MAPS), "spacing_mm": SPACING_MM,
                                               "seconds_this_run": round(time.time() - t0, 1)}, indent=1))
    print(f"exported {out / 'flow.onnx'}")


if __name__ == "__main__":
    main()
