"""Build the late-fusion folds without training: branch i of fold k is the single-contrast model
of fold k, and the fusion head averages the two single-contrast heads' logits, i.e.
``logits = 0.5 (W_t1 f_t1 + b_t1) + 0.5 (W_flair f_flair + b_flair)``: late fusion at the last
layer with fixed, equal weights.

    .venv/bin/python models/lesion/average_fusion.py [--out models/lesion/fusion]

Used for the shipped fusion folds: a fusion head trained for 150 steps on top of the branches
over-segmented (see MODEL_CARD.md); averaging needs no training and cannot overfit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from nets import LateFusionUNet  # noqa: E402
from train import export  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--t1", default=str(HERE / "t1"))
    ap.add_argument("--flair", default=str(HERE / "flair"))
    ap.add_argument("--out", default=str(HERE / "fusion"))
    ap.add_argument("--folds", type=int, default=3)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(a.folds):
        net = LateFusionUNet(2)
        heads_w, heads_b = [], []
        for i, folder in enumerate((a.t1, a.flair)):
            st = torch.load(Path(folder) / f"fold{k}.ckpt", weights_only=False)["model"]
            net.branches[i].load_state_dict({n[len("branches.0."):]: v for n, v in st.items()
                                             if n.startswith("branches.0.")})
            heads_w.append(st["head.weight"])
            heads_b.append(st["head.bias"])
        with torch.no_grad():
            net.head.weight.copy_(0.5 * torch.cat(heads_w, 1))
            net.head.bias.copy_(0.5 * (heads_b[0] + heads_b[1]))
        export(net, out / f"fold{k}.onnx", 2)
        meta = {"inputs": ["t1", "flair"], "fold": k, "folds": a.folds, "steps": 0, "spacing_mm": 1.5,
                "fusion": "logit average of the single-contrast folds (no fusion training)",
                "init_from": f"{a.t1},{a.flair}",
                "val_maps": json.loads((Path(a.t1) / f"fold{k}.json").read_text())["val_maps"]}
        (out / f"fold{k}.json").write_text(json.dumps(meta, indent=1))
        print(f"wrote {out / f'fold{k}.onnx'}")


if __name__ == "__main__":
    main()
