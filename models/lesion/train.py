"""Train one fold of a lesion model (T1-w, FLAIR or T1-w+FLAIR late fusion) on synthetic cases,
resumably, and export it to ONNX with its model card.

    .venv/bin/python models/lesion/train.py --inputs t1,flair --fold 0 --folds 3 \
        --data ../shared/data --out models/lesion/fusion --steps 4000

Cases: heads from the SynthSeg label maps (maps 1-14 for training/validation split into
``--folds`` folds by map; maps 15-20 are held out for testing), each with random stroke lesions
and randomised contrasts (:mod:`simulator.training`), cached as .npz under ``--cache``.
Network: a 3D residual-encoder U-Net per input contrast; late fusion concatenates the last
decoder features of the two branches and a 1x1x1 convolution gives the 2-class logits.
Checkpoint every ``--save-every`` steps (model, optimiser, step); rerunning resumes.
Needs the optional ``train`` extra (PyTorch); never imported by the server.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TRAIN_MAPS = tuple(range(1, 15))
TEST_MAPS = tuple(range(15, 21))


# ------------------------------------------------------------------------------------------
# network
# ------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.c1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = nn.InstanceNorm3d(cout, affine=True)
        self.c2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = nn.InstanceNorm3d(cout, affine=True)
        self.skip = None if (cin == cout and stride == 1) else nn.Sequential(
            nn.Conv3d(cin, cout, 1, stride, bias=False), nn.InstanceNorm3d(cout, affine=True))

    def forward(self, x):
        y = F.leaky_relu(self.n1(self.c1(x)), 0.01)
        y = self.n2(self.c2(y))
        return F.leaky_relu(y + (x if self.skip is None else self.skip(x)), 0.01)


class Branch(nn.Module):
    """Residual-encoder U-Net trunk for one input channel; returns full-resolution features."""

    def __init__(self, feats=(12, 24, 48, 96)):
        super().__init__()
        self.stem = ResBlock(1, feats[0])
        self.down = nn.ModuleList(ResBlock(a, b, 2) for a, b in zip(feats[:-1], feats[1:]))
        self.up = nn.ModuleList(nn.ConvTranspose3d(b, a, 2, 2) for a, b in zip(feats[:-1], feats[1:]))
        self.dec = nn.ModuleList(ResBlock(2 * a, a) for a in feats[:-1])

    def forward(self, x):
        skips = [self.stem(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        y = skips.pop()
        for up, dec in zip(reversed(self.up), reversed(self.dec)):
            y = dec(torch.cat([up(y), skips.pop()], 1))
        return y


class LateFusionUNet(nn.Module):
    """One branch per input channel; features concatenated at the last layer -> 2 logits."""

    def __init__(self, n_inputs: int, feats=(12, 24, 48, 96)):
        super().__init__()
        self.branches = nn.ModuleList(Branch(feats) for _ in range(n_inputs))
        self.head = nn.Conv3d(feats[0] * n_inputs, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([b(x[:, i:i + 1]) for i, b in enumerate(self.branches)], 1))


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def sample_patch(case, patch, rng, lesion_fraction=0.6):
    x, y = case["x"], case["y"]
    shp = np.array(y.shape)
    if (y > 0).any() and rng.random() < lesion_fraction:
        c = np.argwhere(y > 0)[rng.integers((y > 0).sum())]
    else:
        b = np.argwhere(case["brain"])
        c = b[rng.integers(len(b))]
    lo = np.clip(c - np.array(patch) // 2 + rng.integers(-16, 17, 3), 0, np.maximum(shp - patch, 0))
    sl = tuple(slice(int(a), int(a) + p) for a, p in zip(lo, patch))
    xp, yp = x[(slice(None),) + sl], y[sl]
    pad = [(0, max(0, p - s)) for p, s in zip(patch, yp.shape)]
    xp = np.pad(xp, [(0, 0)] + pad)
    yp = np.pad(yp, pad)
    for ax in range(3):  # mirroring augmentation
        if rng.random() < 0.5:
            xp, yp = np.flip(xp, ax + 1), np.flip(yp, ax)
    return np.ascontiguousarray(xp), np.ascontiguousarray(yp)


def loss_fn(logits, target):
    ce = F.cross_entropy(logits, target)
    p = torch.softmax(logits, 1)[:, 1]
    t = (target == 1).float()
    inter = (p * t).sum()
    dice = (2 * inter + 1) / (p.sum() + t.sum() + 1)
    return ce + (1 - dice)


# ------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", default="t1,flair", help="t1, flair or t1,flair (channel order)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--cache", default="/tmp/openrecon-lesion-cases")
    ap.add_argument("--cases-per-map", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--patch", type=int, default=80)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-maps", type=int, default=0, help="use only this many training maps (smoke runs)")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from simulator.training import cached_case

    torch.set_num_threads(args.threads)
    inputs = [c.strip() for c in args.inputs.split(",")]
    chan = [("t1", "flair").index(c) for c in inputs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    maps = [Path(args.data) / "synthseg_label_maps" / f"training_seg_{i:02d}.nii.gz" for i in TRAIN_MAPS]
    val_maps = [m for i, m in enumerate(maps) if i % args.folds == args.fold]
    train_maps = [m for m in maps if m not in val_maps]
    rng = np.random.default_rng(1000 + args.fold)
    print(f"fold {args.fold}/{args.folds}: {len(train_maps)} training maps, validation maps "
          f"{[m.name for m in val_maps]}; preparing cases (cached in {args.cache}) ...")
    cases = []
    if args.max_maps:
        train_maps = train_maps[:args.max_maps]
    for m in tqdm(train_maps, desc="cases"):
        map_id = int(m.name.split("_")[-1].split(".")[0])
        for k in range(args.cases_per_map):
            c = cached_case(Path(args.cache), str(m), seed=map_id * 100 + k)
            cases.append({"x": c["x"][chan], "y": c["y"], "brain": c["brain"]})

    net = LateFusionUNet(len(inputs))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    ckpt = out / f"fold{args.fold}.ckpt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng = np.random.default_rng(state["rng_seed"] + step)
        print(f"resumed from step {step}")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - min(s, args.steps) / args.steps) ** 0.9, last_epoch=step - 1) \
        if step else torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - min(s, args.steps) / args.steps) ** 0.9)
    net.train()
    bar = tqdm(total=args.steps, initial=step, desc="training")
    t0 = time.time()
    while step < args.steps:
        batch = [sample_patch(cases[rng.integers(len(cases))], (args.patch,) * 3, rng) for _ in range(args.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.save_every == 0 or step == args.steps:
            torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                        "rng_seed": 1000 + args.fold}, ckpt)
    bar.close()
    export(net, out / f"fold{args.fold}.onnx", len(inputs))
    meta = {"inputs": inputs, "fold": args.fold, "folds": args.folds, "steps": step,
            "train_maps": [m.name for m in train_maps], "val_maps": [m.name for m in val_maps],
            "seconds": time.time() - t0, "patch": args.patch}
    (out / f"fold{args.fold}.json").write_text(json.dumps(meta, indent=1))
    print(f"exported {out / f'fold{args.fold}.onnx'}")


def export(net, path: Path, n_inputs: int):
    net.eval()
    torch.onnx.export(net, torch.zeros(1, n_inputs, 64, 64, 64), str(path), input_names=["image"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {2: "z", 3: "y", 4: "x"}, "logits": {2: "z", 3: "y", 4: "x"}})


if __name__ == "__main__":
    main()
