"""Train one fold of a lesion model (T1-w, FLAIR or T1-w+FLAIR late fusion) on synthetic cases,
resumably, and export it to ONNX with its model card.

    .venv/bin/python models/lesion/train.py --inputs t1,flair --fold 0 --folds 3 \
        --data ../shared/data --out models/lesion/fusion --steps 1500

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
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TRAIN_MAPS = tuple(range(1, 15))
TEST_MAPS = tuple(range(15, 21))


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nets import LateFusionUNet, load_checkpoint, train_loop  # noqa: E402  (models/nets.py)


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def sample_patch(case, patch, rng, lesion_fraction=0.33, bet_fraction=0.0):
    x, y = case["x"], case["y"]
    if "x_bet" in case and rng.random() < bet_fraction:  # as the pipeline sees it: HD-BET's mask
        x = case["x_bet"]
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
def load_cases(args, maps, chan):
    from tqdm import tqdm

    from simulator.training import cached_case, in_mask, in_pipeline_mask

    cases = []
    sp = (args.spacing,) * 3
    need = ("raw", "brain_bet") if args.bet_fraction > 0 else ()
    if args.mask == "intracranial":
        need = tuple(sorted(set(need) | {"raw", "icv"}))
    for m in tqdm(maps, desc="cases"):
        map_id = int(m.name.split("_")[-1].split(".")[0])
        for k in range(args.cases_per_map):
            c = cached_case(Path(args.cache), str(m), seed=map_id * 100 + k, spacing_mm=sp, require=need)
            if args.mask == "intracranial":  # brain + extra-cerebral CSF, as a brain extraction keeps it
                case = {"x": in_mask(c, c["icv"], chan), "y": c["y"], "brain": c["icv"]}
            else:
                case = {"x": c["x"][chan], "y": c["y"], "brain": c["brain"]}
            if args.bet_fraction > 0:  # the same head z-scored inside, and cut to, HD-BET's mask
                case["x_bet"] = in_pipeline_mask(c, chan)
            cases.append(case)
    return cases


def init_from_single(net: "LateFusionUNet", folders: list[str], fold: int):
    """Late fusion starts from the single-contrast models of the same fold: branch i takes the
    trained branch of ``folders[i]`` (its checkpoint ``fold<k>.ckpt``)."""
    for i, folder in enumerate(folders):
        state = torch.load(Path(folder) / f"fold{fold}.ckpt", weights_only=False)["model"]
        branch = {k[len("branches.0."):]: v for k, v in state.items() if k.startswith("branches.0.")}
        net.branches[i].load_state_dict(branch)
        print(f"branch {i} initialised from {folder}/fold{fold}.ckpt")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", default="t1,flair", help="t1, flair or t1,flair (channel order)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--spacing", type=float, default=1.5, help="network voxel size, mm (isotropic)")
    ap.add_argument("--cache", default=None, help="case cache (default /tmp/lesion-cases-<spacing>)")
    ap.add_argument("--cases-per-map", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lesion-fraction", type=float, default=0.33,
                    help="share of patches centred on a lesion (the rest anywhere in the brain)")
    ap.add_argument("--mask", choices=("exact", "intracranial"), default="exact",
                    help="brain mask the training images are z-scored in and cut to: the simulator's exact "
                         "brain, or the brain plus the extra-cerebral CSF (what HD-BET keeps on the scanner)")
    ap.add_argument("--bet-fraction", type=float, default=0.0,
                    help="share of patches cut with the brain mask the pipeline computes (HD-BET on the "
                         "whole head) instead of the exact one, so that extra CSF and dura at the mask's edge "
                         "are seen in training")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init-from", default="",
                    help="late fusion: comma-separated single-contrast model folders (one per input) whose "
                         "fold checkpoints initialise the branches")
    ap.add_argument("--max-maps", type=int, default=0, help="use only this many training maps (smoke runs)")
    args = ap.parse_args(argv)
    if args.cache is None:
        args.cache = f"/tmp/lesion-cases-{args.spacing:g}"

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.fold)
    inputs = [c.strip() for c in args.inputs.split(",")]
    chan = [("t1", "flair").index(c) for c in inputs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    maps = [Path(args.data) / "synthseg_label_maps" / f"training_seg_{i:02d}.nii.gz" for i in TRAIN_MAPS]
    val_maps = [m for i, m in enumerate(maps) if i % args.folds == args.fold]
    train_maps = [m for m in maps if m not in val_maps]
    if args.max_maps:
        train_maps = train_maps[:args.max_maps]
    rng = np.random.default_rng(1000 + args.fold)
    print(f"fold {args.fold}/{args.folds} {inputs}: {len(train_maps)} training maps, validation maps "
          f"{[m.name for m in val_maps]}; cases cached in {args.cache}")
    cases = load_cases(args, train_maps, chan)

    net = LateFusionUNet(len(inputs))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    ckpt = out / f"fold{args.fold}.ckpt"
    state = load_checkpoint(net, opt, ckpt)
    step = state["step"]
    if step:
        rng = np.random.default_rng(state["rng_seed"] + step)
    elif args.init_from:
        init_from_single(net, args.init_from.split(","), args.fold)

    def batch_loss():
        batch = [sample_patch(cases[rng.integers(len(cases))], (args.patch,) * 3, rng, args.lesion_fraction,
                              args.bet_fraction) for _ in range(args.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
        return loss_fn(net(x), y)

    if step >= args.steps and (out / f"fold{args.fold}.onnx").exists():
        print(f"fold {args.fold} already trained to step {step} (>= --steps {args.steps}); nothing to do")
        return
    t0 = time.time()
    step = train_loop(net, opt, batch_loss, steps=args.steps, lr=args.lr, ckpt=ckpt, start_step=step,
                      save_every=args.save_every, extra_state={"rng_seed": 1000 + args.fold})
    export(net, out / f"fold{args.fold}.onnx", len(inputs))
    meta = {"inputs": inputs, "fold": args.fold, "folds": args.folds, "steps": step, "spacing_mm": args.spacing,
            "train_maps": [m.name for m in train_maps], "val_maps": [m.name for m in val_maps],
            "seconds_this_run": round(time.time() - t0, 1), "patch": args.patch, "batch": args.batch,
            "lesion_fraction": args.lesion_fraction, "bet_fraction": args.bet_fraction, "mask": args.mask,
            "cases_per_map": args.cases_per_map,
            "init_from": args.init_from}
    prev = out / f"fold{args.fold}.json"
    if prev.exists() and state["step"]:  # resumed: keep what the earlier runs of this fold did
        old = json.loads(prev.read_text())
        meta["previous_runs"] = old.pop("previous_runs", []) + [
            {k: old.get(k) for k in ("steps", "lesion_fraction", "bet_fraction", "mask", "cases_per_map", "patch",
                                       "batch", "seconds_this_run")}]
    prev.write_text(json.dumps(meta, indent=1))
    print(f"exported {out / f'fold{args.fold}.onnx'}")


def export(net, path: Path, n_inputs: int):
    net.eval()
    torch.onnx.export(net, torch.zeros(1, n_inputs, 64, 64, 64), str(path), input_names=["image"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {2: "z", 3: "y", 4: "x"}, "logits": {2: "z", 3: "y", 4: "x"}})


if __name__ == "__main__":
    main()
