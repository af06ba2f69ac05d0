"""Cut a lesion voxel classifier into a two-step cascade and calibrate it (issue 20: the
400-tree model over every brain voxel was about half of the lesion stage).

Step 1 is the model's own first ``--trees`` trees (cut from its ONNX tree ensemble, no
retraining); it runs on every brain voxel. Step 2 is the whole model, run only on the voxels
where step 1 gives a lesion probability of at least ``min_probability``; the others keep step
1's (small) probability. ``min_probability`` is calibrated on the model's **training** heads:
``--margin`` x the lowest step-1 probability of any voxel that the whole model puts at
``--safe`` or more, so on those heads no such voxel is skipped. Then the held-out heads
(``--check``) are scored both ways: skipped voxels above ``--safe``, and the final masks.

    .venv/bin/python models/lesion/cascade.py models/lesion/t1 --cache CASES \\
        --heads chris_t1 gd_t1 flair_real mni synthseg_01-12 --check synthseg_13-14 \\
        [--trees 80] [--safe 0.05] [--margin 0.5] [--write]

With ``--write`` the cut file (``first<trees>.onnx``) and the card's ``cascade`` entry are
written into the model folder. Needs ``onnx`` (the ``train`` extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import expand, model_view  # noqa: E402
from evaluate_voxel import case_list, load_case  # noqa: E402

from openrecon_stroke.lesion import postprocess  # noqa: E402
from openrecon_stroke.lesion_voxel import VoxelLesionModel  # noqa: E402
from openrecon_stroke.model_card import VoxelClassifierCard, file_sha256  # noqa: E402
from openrecon_stroke.runtime import ort_session  # noqa: E402

log = logging.getLogger("cascade")


def first_trees(model_file: Path, trees: int) -> bytes:
    """The ONNX model with only the trees whose id is below ``trees`` (same inputs, outputs and
    post-transform): an exact prefix of the boosted sum."""
    import onnx
    from onnx import helper

    m = onnx.load(str(model_file))
    nodes = [n for n in m.graph.node if n.op_type == "TreeEnsembleClassifier"]
    if len(nodes) != 1:
        raise SystemExit(f"{model_file}: expected one TreeEnsembleClassifier, found {len(nodes)}")
    node = nodes[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "base_values" in attrs and any(attrs["base_values"]):
        log.info("the ensemble has base values %s: kept", attrs["base_values"])
    n_trees = max(attrs["nodes_treeids"]) + 1
    if not 0 < trees < n_trees:
        raise SystemExit(f"--trees must be between 1 and {n_trees - 1} (the model has {n_trees})")
    keep = {p: np.asarray(attrs[f"{p}_treeids"]) < trees for p in ("nodes", "class")}
    new = []
    for a in node.attribute:
        v = attrs[a.name]
        prefix = a.name.split("_", 1)[0]
        if prefix in keep and isinstance(v, list):
            v = [e for e, k in zip(v, keep[prefix]) if k]
        new.append(helper.make_attribute(a.name, v))
    del node.attribute[:]
    node.attribute.extend(new)
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _cases(cache: Path, heads: list[str], per_head: int):
    for head in heads:
        yield from case_list(cache, [head])[:per_head]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="a voxel-classifier model folder (card.json + model.onnx)")
    ap.add_argument("--cache", type=Path, help="cases of models/lesion/cases.py")
    ap.add_argument("--heads", nargs="+", default=[], help="the model's training heads (calibration)")
    ap.add_argument("--check", nargs="+", default=[], help="held-out heads: how the cascade changes them")
    ap.add_argument("--check-cache", type=Path, help="cases of the held-out heads (default --cache)")
    ap.add_argument("--per-head", type=int, default=3, help="cases per head")
    ap.add_argument("--trees", type=int, default=80)
    ap.add_argument("--safe", type=float, default=0.05)
    ap.add_argument("--margin", type=float, default=0.5)
    ap.add_argument("--skip-fraction", type=float, default=0.0,
                    help="calibrate on this quantile of the step-1 probabilities of the voxels at --safe "
                         "or more (pooled over the calibration cases) instead of their minimum")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--write-from", type=Path, help="write the cascade of an earlier calibration (its --json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.write_from:
        write(args.model, json.loads(args.write_from.read_text()))
        return 0

    card = VoxelClassifierCard.load(args.model)
    if len(card.files) != 1:
        raise SystemExit("a cascade needs a card with one model file")
    model = VoxelLesionModel(card)
    first_bytes = first_trees(card.files[0], args.trees)
    first = ort_session(first_bytes)

    def both(arrays):
        v = model_view(arrays, card.inputs)
        if v is None:
            return None
        x = model.features(v["images"], v["brain"])
        t0 = time.perf_counter()
        pf = model.classify(x, cascade=False)
        t_full = time.perf_counter() - t0
        t0 = time.perf_counter()
        p1 = model._classify([first], x)
        t_first = time.perf_counter() - t0
        return x, pf, p1, t_full, t_first

    # calibration on the training heads
    lows, rows, pooled = [], [], []
    for h, seed in _cases(args.cache, expand(args.heads), args.per_head):
        arrays, _ = load_case(args.cache, h, seed)
        got = both(arrays)
        if got is None:
            continue
        _, pf, p1, tf, t1 = got
        hi = pf >= args.safe
        low = float(p1[hi].min()) if hi.any() else None
        if low is not None:
            lows.append(low)
            pooled.append(p1[hi])
        rows.append({"head": h, "seed": seed, "voxels": int(pf.size), "above_safe": int(hi.sum()), "lowest_first": low,
                     "seconds_full": round(tf, 3), "seconds_first": round(t1, 3)})
        log.info("calibration %s_%d: %d voxels >= %.2f, lowest step-1 probability %s", h, seed, hi.sum(), args.safe,
                 f"{low:.5f}" if low is not None else "-")
    if not lows:
        raise SystemExit("no calibration voxel reached --safe: nothing to calibrate on")
    pooled_p1 = np.concatenate(pooled)
    base = float(np.quantile(pooled_p1, args.skip_fraction)) if args.skip_fraction > 0 else min(lows)
    cut = args.margin * base
    log.info("min_probability = %.3g x %.5f = %.6f (%d calibration cases, %d voxels >= %.2f, %.3g %% of them below it)",
             args.margin, base, cut, len(lows), pooled_p1.size, args.safe, 100 * float((pooled_p1 < cut).mean()))

    # the held-out heads, both ways
    checks = []
    ccache = args.check_cache or args.cache
    for h, seed in _cases(ccache, expand(args.check), args.per_head if args.check else 0):
        arrays, side = load_case(ccache, h, seed)
        got = both(arrays)
        if got is None:
            continue
        x, pf, p1, tf, t1 = got
        cand = p1 >= cut
        pc = p1.copy()
        pc[cand] = pf[cand]
        v = model_view(arrays, card.inputs)
        changed = _mask_voxels_changed(model, v, side, arrays, pf, pc)
        checks.append({"head": h, "seed": seed, "candidates": round(float(cand.mean()), 4),
                       "skipped_above_safe": int(((pf >= args.safe) & ~cand).sum()),
                       "max_skipped_probability": round(float(pf[~cand].max()) if (~cand).any() else 0.0, 4),
                       "mask_voxels_changed": changed, "seconds_full": round(tf, 3),
                       "seconds_cascade": round(t1 + tf * float(cand.mean()), 3)})
        log.info("check %s", json.dumps(checks[-1]))
    summary = {
        "trees": args.trees, "safe_probability": args.safe, "margin": args.margin, "min_probability": cut,
        "skip_fraction": args.skip_fraction, "calibration_voxels": int(pooled_p1.size),
        "calibration_voxels_skipped": int((pooled_p1 < cut).sum()),
        "calibration_cases": len(lows), "calibration_heads": expand(args.heads),
        "lowest_first_probability": min(lows), "checks": checks, "calibration": rows,
    }
    if checks:
        summary["check_summary"] = {
            "cases": len(checks),
            "candidates_mean": round(float(np.mean([c["candidates"] for c in checks])), 4),
            "skipped_above_safe": int(sum(c["skipped_above_safe"] for c in checks)),
            "mask_voxels_changed": int(sum(c["mask_voxels_changed"] for c in checks)),
        }
        log.info("held-out: %s", summary["check_summary"])
    summary["command"] = "models/lesion/cascade.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.write:
        write(args.model, summary, first_bytes)
    return 0


def write(folder: Path, summary: dict, first_bytes: bytes | None = None) -> None:
    """The cut file ``first<trees>.onnx`` and the ``cascade`` entry of ``folder/card.json``, from
    a calibration summary (this script's ``--json``)."""
    card = VoxelClassifierCard.load(folder)
    trees = int(summary["trees"])
    dst = folder / f"first{trees}.onnx"
    dst.write_bytes(first_bytes if first_bytes is not None else first_trees(card.files[0], trees))
    cfile = folder / "card.json"
    d = json.loads(cfile.read_text())
    cut = float(summary["min_probability"])
    d["cascade"] = {
        "file": dst.name,
        "sha256": file_sha256(dst),
        "trees": trees,
        "min_probability": float(f"{cut:.6g}"),
        "safe_probability": summary["safe_probability"],
        "calibration": {
            "heads": summary["calibration_heads"],
            "cases": summary["calibration_cases"],
            "voxels_at_safe": summary["calibration_voxels"],
            "of_them_skipped": summary["calibration_voxels_skipped"],
            "quantile": summary["skip_fraction"],
            "margin": summary["margin"],
        },
        "held_out": summary.get("check_summary"),
        "command": summary.get("command", ""),
    }
    cfile.write_text(json.dumps(d, indent=1) + "\n")  # as ship.py writes cards
    log.info("wrote %s and the cascade entry of %s", dst, cfile)


def _mask_voxels_changed(model, v, side, arrays, pf, pc) -> int:
    """Voxels whose final mask (on the series' own grid, as the lesion stage makes it) differs
    between the whole model and the cascade."""
    import SimpleITK as sitk

    masks = []
    grid = side["native_grids"][v["target"]]
    vox = float(np.prod(grid.GetSpacing()))
    brain_n = arrays[v["native_brain"]] > 0
    for p in (pf, pc):
        out = np.zeros(v["brain"].shape, np.float32)
        out[v["brain"]] = p
        if model.card.smoothing_mm > 0:
            from openrecon_stroke.voxel_features import smooth_in

            out = smooth_in(out, v["brain"], model.card.smoothing_mm, model.card.spacing_mm)
        img = sitk.GetImageFromArray(out)
        img.CopyInformation(model.grid())
        pn = np.where(brain_n, model.on_grid(img, grid, side["to_template"][v["transform"]]), 0.0)
        masks.append(postprocess(pn, vox, model.card.threshold, model.card.min_lesion_mm3, model.card.seed_probability))
    return int((masks[0] != masks[1]).sum())


if __name__ == "__main__":
    raise SystemExit(main())
