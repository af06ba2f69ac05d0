"""A REFLECT-style rectified flow on 2D axial slices of template-registered brains (issue 16):
measured against the normative map, not shipped unless it beats it.

REFLECT (MICCAI 2025) registers brains to MNI152 and learns, on 2D axial slices, the straight-line
velocity that carries an image with anomalies to its healthy version. Here:

* **data** (``data``): the cases of ``models/lesion/cases.py`` (every head through the
  pipeline's own HD-BET, N4 and MNI152 registration): per case and contrast the white-matter-
  relative image on the 1.5 mm template grid (:func:`models.normative.build.relative_images`),
  cropped to the template's brain box, float16; the training heads' cases (with their lesions
  masked out of the loss) and the validation heads' healthy cases (the calibration);
* **network**: a 2D residual U-Net (features 16-32-64-128) over [T1-w, FLAIR, T1-w present,
  FLAIR present, t] channels (``--prior``: and the normative model's healthy mean T1-w and FLAIR
  of that slice: the network is told what healthy tissue looks like there), 2 velocity channels
  out;
* **training** (``train``, resumable, ``--device``): a healthy slice gets 1-3 smooth synthetic
  anomalies (darker on T1-w; brighter or darker on FLAIR; or texture moved from elsewhere in
  the slice), x_t = (1 - t) anomalous + t healthy, loss = squared error of the velocity inside
  the brain (lesions of the training cases and voxels outside the brain left out);
* **evaluation** (``evaluate``): K Euler steps give a pseudo-healthy brain; the score is the mean
  |image - pseudo-healthy| over the contrasts present, smoothed 2 mm, calibrated on the
  validation heads' healthy brains (99.9th percentile = 1.0); scored on the reference series'
  own grid exactly like ``models/normative/evaluate.py`` does (same cases, same metrics), with
  the normative map and the mean of the two (an ensemble, calibrated the same way) in the same
  run.

    PY=/path/to/venv-with-torch/bin/python
    $PY models/anomaly/reflect2d.py data --cache CASES --out WORK
    $PY models/anomaly/reflect2d.py train --work WORK --minutes 30 [--device cuda]
    $PY models/anomaly/reflect2d.py evaluate --work WORK --cache TEST_CASES --steps 1 2 4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "models", REPO / "models" / "lesion", REPO / "models" / "normative"):
    sys.path.insert(0, str(p))

log = logging.getLogger("reflect2d")
GRID_MM = 1.5
CONTRASTS = ("t1", "flair")
TRAIN_HEADS = [f"synthseg_{i:02d}" for i in range(1, 13)] + ["mni", "chris_t1", "gd_t1", "flair_real"]
VAL_HEADS = ["synthseg_13", "synthseg_14"]
#: axial slice crop (y, x) of the 1.5 mm template grid holding the template's brain, /8 sizes
CROP = (slice(14, 142), slice(14, 118))


def _norm_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("norm_eval", REPO / "models" / "normative" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------ data
def make_data(cache: Path, out: Path) -> None:
    from build import relative_images
    from cases import list_cases, load_case

    from openrecon_stroke import template

    priors = template.load_template(GRID_MM).arrays()
    out.mkdir(parents=True, exist_ok=True)
    for split, heads, healthy_only in (("train", TRAIN_HEADS, False), ("val", VAL_HEADS, True)):
        imgs, avail, brains, keep = [], [], [], []
        cases = list_cases(cache, heads)
        for i, (head, seed) in enumerate(cases):
            arrays = load_case(cache, head, seed)
            les = arrays["lesion"].astype(np.float32) > 0.1
            if healthy_only and les.any():
                continue
            rel, brain = relative_images(arrays, priors)
            vol = np.zeros((2,) + brain.shape, np.float16)
            for k, c in enumerate(CONTRASTS):
                if c in rel:
                    vol[k] = np.where(brain, rel[c], 0)
            ok = brain & ~ndimage.binary_dilation(les, iterations=3)
            imgs.append(vol[:, :, CROP[0], CROP[1]])
            avail.append([c in rel for c in CONTRASTS])
            brains.append(brain[:, CROP[0], CROP[1]])
            keep.append(ok[:, CROP[0], CROP[1]])
            log.info("%s %d/%d %s_%d", split, i + 1, len(cases), head, seed)
        np.savez(out / f"{split}.npz", images=np.stack(imgs), avail=np.array(avail), brain=np.stack(brains),
                 keep=np.stack(keep))
        log.info("%s: %d cases -> %s", split, len(imgs), out / f"{split}.npz")


# ------------------------------------------------------------------------------------------ network
def make_net(cin: int = 5):
    """The 2D velocity network: :class:`models.nets.Branch` over slices (features 16-32-64-128),
    then 2 velocity channels (T1-w, FLAIR)."""
    from nets import Branch
    from torch import nn

    return nn.Sequential(Branch((16, 32, 64, 128), cin=cin, dims=2), nn.Conv2d(16, 2, 1))


def _inputs(x, avail, t, prior=None):
    """Network input (B, 5 or 7, H, W) from images x (B, 2, H, W), availability (B, 2), t (B,)
    and, for the prior-conditioned variant, the healthy mean images of those slices (B, 2, H, W)."""
    import torch

    b, _, h, w = x.shape
    a = avail[:, :, None, None].expand(b, 2, h, w).to(x.dtype)
    tt = t[:, None, None, None].expand(b, 1, h, w).to(x.dtype)
    parts = [x * a, a, tt] + ([prior * a] if prior is not None else [])
    return torch.cat(parts, 1)


def healthy_means() -> np.ndarray:
    """The shipped normative model's healthy mean images (T1-w, FLAIR), cropped: (2, nz, H, W)."""
    from openrecon_stroke.normative import get_normative

    nm = get_normative()
    return np.stack([nm.intensity(c).mean[:, CROP[0], CROP[1]] for c in CONTRASTS]).astype(np.float32)


# ------------------------------------------------------------------------------------------ training
def _blob(rng, shape, brain):
    ys, xs = np.nonzero(brain)
    i = rng.integers(len(ys))
    r = rng.uniform(3, 14)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 3) * r * 2.5
    d = np.sqrt((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2) + noise
    return np.clip((r - d) / 2.0, 0, 1) * brain


def corrupt(rng, img, avail, brain):
    """1-3 synthetic anomalies in one healthy slice (2, H, W); returns (anomalous, weight map)."""
    out = img.copy()
    w_all = np.zeros(brain.shape, np.float32)
    for _ in range(rng.integers(1, 4)):
        w = _blob(rng, brain.shape, brain) * rng.uniform(0.5, 1.0)
        kind = rng.random()
        for k in range(2):
            if not avail[k]:
                continue
            if kind < 0.6:  # cavity or damaged tissue: darker on T1-w; brighter or darker on FLAIR
                f = rng.uniform(0.15, 0.8) if k == 0 else (rng.uniform(1.2, 2.0) if rng.random() < 0.6
                                                             else rng.uniform(0.15, 0.7))
                target = img[k] * f
            elif kind < 0.85:  # a flat level from the brain's own range
                target = np.full(brain.shape, np.percentile(img[k][brain], rng.uniform(1, 99)), np.float32)
            else:  # texture moved from elsewhere in the slice
                target = np.roll(img[k], (rng.integers(-40, 40), rng.integers(-40, 40)), (0, 1))
            out[k] = (1 - w) * out[k] + w * target
        w_all = np.maximum(w_all, w)
    return out * brain, w_all


def train(work: Path, minutes: float, device: str, threads: int, batch: int, lr: float, prior: bool) -> None:
    import torch

    torch.set_num_threads(threads)
    d = np.load(work / "train.npz")
    images, avail, brain, keep = d["images"], d["avail"], d["brain"], d["keep"]
    n, _, nz = images.shape[:3]
    slices = [(c, z) for c in range(n) for z in range(nz) if brain[c, z].sum() > 400]
    log.info("%d training slices of %d cases", len(slices), n)
    means = healthy_means() if prior else None
    net = make_net(7 if prior else 5).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    ckpt = work / "flow2d.pt"
    state = {"step": 0, "seconds": 0.0}
    if ckpt.exists():
        s = torch.load(ckpt, weights_only=False)
        net.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        state = {"step": s["step"], "seconds": s["seconds"]}
        log.info("resumed at step %d", state["step"])
    rng = np.random.default_rng(state["step"])
    t0 = time.perf_counter() - state["seconds"]
    budget = minutes * 60
    net.train()
    step = state["step"]
    while time.perf_counter() - t0 < budget:
        xs, x0s, ws, ms, avs, ps = [], [], [], [], [], []
        for _ in range(batch):
            c, z = slices[rng.integers(len(slices))]
            img, b, m = images[c, :, z].astype(np.float32), brain[c, z], keep[c, z]
            pr = means[:, z] if means is not None else np.zeros((0,) + b.shape, np.float32)
            if rng.random() < 0.5:  # left-right flip: the template is symmetric
                img, b, m = img[:, :, ::-1].copy(), b[:, ::-1].copy(), m[:, ::-1].copy()
                pr = pr[:, :, ::-1].copy()
            ps.append(pr)
            a = avail[c]
            x0, w = corrupt(rng, img, a, b)
            xs.append(img)
            x0s.append(x0)
            ws.append(w)
            ms.append(m)
            avs.append(a)
        x1 = torch.from_numpy(np.stack(xs)).to(device)
        x0 = torch.from_numpy(np.stack(x0s)).to(device)
        w = torch.from_numpy(np.stack(ws)).to(device)[:, None]
        m = torch.from_numpy(np.stack(ms).astype(np.float32)).to(device)[:, None]
        av = torch.from_numpy(np.stack(avs)).to(device)
        t = torch.rand(batch, device=device)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * x1
        pri = torch.from_numpy(np.stack(ps)).to(device) if means is not None else None
        v = net(_inputs(xt, av, t, pri))
        err = (v - (x1 - x0)) ** 2 * av[:, :, None, None]
        loss = (err * m * (1 + 4 * w)).sum() / (m.sum() * 2 + 1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        frac = min((time.perf_counter() - t0) / budget, 1.0)
        for g in opt.param_groups:
            g["lr"] = lr * (1 - frac) ** 0.9
        opt.step()
        step += 1
        if step % 50 == 0:
            elapsed = time.perf_counter() - t0
            log.info("step %d loss %.5f (%.0f of %.0f s)", step, loss.item(), elapsed, budget)
        if step % 200 == 0:
            torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                        "seconds": time.perf_counter() - t0, "prior": prior}, ckpt)
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                "seconds": time.perf_counter() - t0, "prior": prior}, ckpt)
    log.info("trained %d steps -> %s", step, ckpt)


# ------------------------------------------------------------------------------------------ scoring
class FlowScorer:
    """Pseudo-healthy brain by K Euler steps, slice by slice; score = mean |difference| over the
    contrasts present, smoothed 2 mm inside the brain (raw, before calibration)."""

    def __init__(self, work: Path, device: str = "cpu"):
        import torch

        self.torch = torch
        state = torch.load(work / "flow2d.pt", weights_only=False)
        self.means = healthy_means() if state.get("prior") else None
        self.steps_trained = int(state["step"])
        self.net = make_net(7 if self.means is not None else 5).to(device)
        self.net.load_state_dict(state["model"])
        self.net.eval()
        self.device = device

    def raw(self, rel: dict, brain: np.ndarray, steps: int) -> np.ndarray:
        from openrecon_stroke import voxel_features

        torch = self.torch
        vol = np.zeros((2,) + brain.shape, np.float32)
        av = np.array([c in rel for c in CONTRASTS])
        for k, c in enumerate(CONTRASTS):
            if c in rel:
                vol[k] = np.where(brain, rel[c], 0)
        crop = vol[:, :, CROP[0], CROP[1]]
        bcrop = brain[:, CROP[0], CROP[1]]
        zs = [z for z in range(brain.shape[0]) if bcrop[z].any()]
        diff = np.zeros(brain.shape, np.float32)
        with torch.no_grad():
            for i in range(0, len(zs), 16):
                zz = zs[i : i + 16]
                x = torch.from_numpy(np.ascontiguousarray(crop[:, zz].transpose(1, 0, 2, 3))).to(self.device)
                a = torch.from_numpy(np.repeat(av[None], len(zz), 0)).to(self.device)
                m = torch.from_numpy(bcrop[zz][:, None].astype(np.float32)).to(self.device)
                pr = None
                if self.means is not None:
                    pr = torch.from_numpy(np.ascontiguousarray(self.means[:, zz].transpose(1, 0, 2, 3))).to(self.device)
                y = x.clone()
                for s in range(steps):
                    t = torch.full((len(zz),), s / steps, device=self.device)
                    y = (y + self.net(_inputs(y, a, t, pr)) / steps) * m
                d = ((x - y).abs() * a[:, :, None, None]).sum(1) / max(int(av.sum()), 1)
                diff[zz, CROP[0], CROP[1]] = d.cpu().numpy()
        return voxel_features.smooth_in(diff, brain, 2.0, GRID_MM)


def evaluate(work: Path, cache: Path, steps_list, heads, out_json: Path | None) -> dict:
    from cases import expand, list_cases

    from openrecon_stroke import template
    from openrecon_stroke.normative import get_normative

    ev = _norm_module()
    fs = FlowScorer(work)
    nm = get_normative()
    priors = template.load_template(GRID_MM).arrays()
    val = np.load(work / "val.npz")
    # calibration on the validation heads' healthy brains (eroded 2 mm): 99.9th percentile
    cal: dict = {}
    norm_core: dict = {}  # the normative map's calibrated score there, per contrast combination
    for i in range(val["images"].shape[0]):
        brain = np.zeros(priors["brain"].shape, bool)
        brain[:, CROP[0], CROP[1]] = val["brain"][i]
        rel = {}
        for k, c in enumerate(CONTRASTS):
            if val["avail"][i][k]:
                r = np.zeros(brain.shape, np.float32)
                r[:, CROP[0], CROP[1]] = val["images"][i, k].astype(np.float32)
                rel[c] = r
        core = ndimage.binary_erosion(brain, iterations=1)
        combo = "+".join(rel)
        norm_core.setdefault(combo, []).append(nm.score(rel, brain)[core])
        for k in steps_list:
            cal.setdefault(("flow", k, combo), []).append(fs.raw(rel, brain, k)[core])
        log.info("calibration case %d/%d", i + 1, val["images"].shape[0])
    thr = {key: float(np.percentile(np.concatenate(v), 99.9)) for key, v in cal.items()}
    # the ensemble: mean of the two calibrated maps, calibrated again on the same brains
    ens = {}
    for _, k, combo in thr:
        a = np.concatenate(cal[("flow", k, combo)]) / thr[("flow", k, combo)]
        ens[(k, combo)] = float(np.percentile(0.5 * (a + np.concatenate(norm_core[combo])), 99.9))
    log.info("calibration: %s", thr)

    def flow_method(k):
        def f(rel, brain):
            combo = "+".join(c for c in CONTRASTS if c in rel)
            return fs.raw(rel, brain, k) / thr[("flow", k, combo)]
        return f

    def ens_method(k):
        def f(rel, brain):
            combo = "+".join(c for c in CONTRASTS if c in rel)
            a = fs.raw(rel, brain, k) / thr[("flow", k, combo)]
            return 0.5 * (a + nm.score(rel, brain)) / ens[(k, combo)]
        return f

    methods = {"normative map (shipped)": lambda rel, brain: nm.score(rel, brain)}
    for k in steps_list:
        methods[f"2D flow, {k} Euler steps"] = flow_method(k)
        methods[f"ensemble (mean), flow {k} steps"] = ens_method(k)
    t0 = time.perf_counter()
    res = ev.score_cases(methods, cache, list_cases(cache, expand(heads)))
    res["_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1))
    if out_json:
        out_json.write_text(json.dumps(res, indent=1) + "\n")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("data")
    a.add_argument("--cache", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("train")
    b.add_argument("--work", type=Path, required=True)
    b.add_argument("--minutes", type=float, default=30)
    b.add_argument("--device", default="cpu")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--lr", type=float, default=2e-3)
    b.add_argument("--prior", action="store_true",
                   help="also give the network the healthy mean images of each slice (normative model)")
    c = sub.add_parser("evaluate")
    c.add_argument("--work", type=Path, required=True)
    c.add_argument("--cache", type=Path, required=True)
    c.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    c.add_argument("--heads", nargs="+", default=["synthseg_15-20"])
    c.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.cmd == "data":
        make_data(args.cache, args.out)
    elif args.cmd == "train":
        train(args.work, args.minutes, args.device, args.threads, args.batch, args.lr, args.prior)
    else:
        evaluate(args.work, args.cache, args.steps, args.heads, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
