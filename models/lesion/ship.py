"""Copy built template-space models into the repository, with the operating point chosen on the
validation heads and the held-out figures written into each card.

``train_all.sh`` builds into a work folder: ``normative/``, ``models/{t1,flair,fusion}/`` and the
evaluations ``eval_val.json`` (validation heads), ``eval_test.json`` (test heads),
``eval_loo.json`` (each real head left out), ``eval_normative.json`` (anomaly map, ventricles).
This script

* picks each lesion card's ``threshold`` and ``seed_probability`` on the **validation** heads
  only: among the operating points whose healthy false-positive volume is at most
  ``--max-healthy-fp`` mL on every healthy validation case (the target: 0.5 mL per healthy head), the one with the highest Dice + lesion F1; when none is,
  the one with the least healthy false-positive volume;
* records that choice and the test / leave-one-out figures **at that point** in the card
  (``evaluation``), and sets ``status`` to ``validated`` only when every target of issue 15
  is met on the test and leave-one-out heads (otherwise ``experimental`` with the misses in
  ``status_note``);
* copies the models into ``models/lesion/<input>`` (replacing what was there), the healthy-head
  statistics they were trained with (``WORK/normative``) into ``models/lesion/normative``, and
  re-points each lesion card to it (``../normative``); with ``WORK/normative_anomaly`` (built
  ``--with-lesion-cases``, see ``models/normative/MODEL_CARD.md``) that goes to ``models/normative``,
  the anomaly map's model.

    .venv/bin/python models/lesion/ship.py WORK [--inputs t1] [--dry-run]

``--edges '{...}'`` puts that lesion-edge rule on the shipped cards (the evaluations must have
been run with it). ``--inputs`` ships only those cards (the others stay as they are); without ``WORK/normative`` the
shipped healthy-head statistics stay, and the new cards must have been trained with them.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: issue 15's targets (held-out synthetic studies; real heads left out; healthy heads)
TARGETS = {
    "synthetic_dice": 0.60,
    "synthetic_f1": 0.70,
    "synthetic_asd_mm": 5.0,
    "real_dice": {"fusion": 0.70, "t1": 0.60, "flair": 0.60},
    "real_f1": 0.75,
    "healthy_fp_ml": 0.5,
}


def choose(by_point: dict, max_fp: float) -> str:
    """The operating point ("<threshold> seed <seed>") chosen on validation figures."""
    ok = {k: v for k, v in by_point.items() if v.get("healthy_fp_ml_max", 0.0) <= max_fp}
    if ok:
        return max(ok, key=lambda k: ok[k]["dice"] + ok[k]["lesion_f1"])
    return min(by_point, key=lambda k: (by_point[k]["healthy_fp_ml_max"], -by_point[k]["dice"]))


def parse_point(key: str) -> tuple[float, float]:
    thr, _, seed = key.split()
    return float(thr), float(seed)


def misses(inp: str, test: dict | None, loo: dict | None) -> list[str]:
    """The issue-15 targets this model misses at its operating point."""
    out = []
    if test is None:
        out.append("no held-out synthetic evaluation")
    else:
        if test["dice"] < TARGETS["synthetic_dice"]:
            out.append(f"synthetic Dice {test['dice']:.2f} < {TARGETS['synthetic_dice']}")
        if test["lesion_f1"] < TARGETS["synthetic_f1"]:
            out.append(f"synthetic lesion F1 {test['lesion_f1']:.2f} < {TARGETS['synthetic_f1']}")
        if test["asd_mm"] > TARGETS["synthetic_asd_mm"]:
            out.append(f"synthetic ASD {test['asd_mm']:.1f} mm > {TARGETS['synthetic_asd_mm']}")
        if test.get("healthy_fp_ml_max", 0.0) > TARGETS["healthy_fp_ml"]:
            out.append(f"healthy heads up to {test['healthy_fp_ml_max']:.2f} mL > {TARGETS['healthy_fp_ml']}")
    if loo is None:
        if inp != "fusion":  # no real head has both contrasts
            out.append("no leave-one-out real-head evaluation")
    else:
        if loo["dice"] < TARGETS["real_dice"][inp]:
            out.append(f"real-head Dice {loo['dice']:.2f} < {TARGETS['real_dice'][inp]}")
        if loo["lesion_f1"] < TARGETS["real_f1"]:
            out.append(f"real-head lesion F1 {loo['lesion_f1']:.2f} < {TARGETS['real_f1']}")
        if loo.get("healthy_fp_ml_max", 0.0) > TARGETS["healthy_fp_ml"]:
            out.append(f"healthy real heads up to {loo['healthy_fp_ml_max']:.2f} mL > {TARGETS['healthy_fp_ml']}")
    for name, fig in (("synthetic", test), ("real", loo)):
        for bucket, b in (fig or {}).get("buckets", {}).items():
            if not bucket.startswith("small") and b.get("n_true") and b["recall"] < 1.0:
                out.append(f"{name} heads: {bucket} lesions recall {b['recall']:.2f} (a lesion of 1 mL or more missed)")
    return out


def portable(command: str, work: Path) -> str:
    """A training command without this machine's paths: the build folder as BUILD, the cases as CASES."""
    return re.sub(r"--cache \S+", "--cache CASES", command.replace(str(work), "BUILD"))


def card_files(card: dict) -> list[str]:
    """Every file a voxel card names: its models, the cascade's first trees, the candidate filter."""
    names = [entry["file"] for entry in card["files"]]
    names += [card[k]["file"] for k in ("cascade", "candidate_filter") if card.get(k)]
    return names


def point_figures(evaluation: dict | None, inp: str, key: str) -> dict | None:
    if not evaluation or inp not in evaluation:
        return None
    return evaluation[inp]["by_threshold"].get(key)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--max-healthy-fp", type=float, default=TARGETS["healthy_fp_ml"])
    ap.add_argument("--inputs", nargs="+", default=["t1", "flair", "fusion"], choices=["t1", "flair", "fusion"],
                    help="the cards to ship (default all three)")
    ap.add_argument("--edges", default="",
                    help="the lesion-edge rule the shipped cards carry (JSON, model_card.EdgeRefinement; chosen on "
                         "the validation heads, the evaluations must have been run with it: evaluate_voxel --edges)")
    ap.add_argument("--dry-run", action="store_true", help="print the choices, copy nothing")
    args = ap.parse_args(argv)

    def read(name):
        p = args.work / name
        return json.loads(p.read_text()) if p.is_file() else None

    val, test, loo = read("eval_val.json"), read("eval_test.json"), read("eval_loo.json")
    if val is None:
        sys.exit(f"{args.work}/eval_val.json is missing: run the validation evaluation first (train_all.sh step 4)")
    cards = {}
    for inp in args.inputs:
        card = json.loads((args.work / "models" / inp / "card.json").read_text())
        key = choose(val[inp]["by_threshold"], args.max_healthy_fp)
        thr, seed = parse_point(key)
        t, lo = point_figures(test, inp, key), point_figures(loo, inp, key)
        missed = misses(inp, t, lo)
        card["training"]["command"] = portable(card["training"]["command"], args.work)
        card["threshold"] = thr
        card["seed_probability"] = seed
        card["normative"] = "../normative"
        if args.edges:
            card["edge_refinement"] = json.loads(args.edges)
        card["status"] = "experimental" if missed else "validated"
        card["status_note"] = ("misses: " + "; ".join(missed)) if missed else "every issue-15 target met"
        card["evaluation"] = {
            "operating_point": {"threshold": thr, "seed_probability": seed,
                                "rule": f"best Dice + lesion F1 on the validation heads with every healthy case's FP <= "
                                        f"{args.max_healthy_fp} mL (else the least largest FP)"},
            "validation": val[inp]["by_threshold"][key],
            "test_synthetic": t,
            "leave_one_out_real": lo,
        }
        cards[inp] = card
        print(f"{inp}: threshold {thr} seed {seed} -> {card['status']} ({card['status_note']})")
    if args.dry_run:
        return 0
    copies = []
    if (args.work / "normative").is_dir():
        copies.append((args.work / "normative", REPO / "models" / "lesion" / "normative"))
    else:
        print(f"no {args.work}/normative: the shipped models/lesion/normative stays")
    if (args.work / "normative_anomaly").is_dir():
        copies.append((args.work / "normative_anomaly", REPO / "models" / "normative"))
    for src, dst in copies:
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.suffix == ".npz":
                shutil.copy2(f, dst / f.name)
        norm = json.loads((src / "card.json").read_text())
        norm["training"]["command"] = portable(norm["training"]["command"], args.work)
        (dst / "card.json").write_text(json.dumps(norm, indent=1) + "\n")
    for inp, card in cards.items():
        dst = REPO / "models" / "lesion" / inp
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for name in card_files(card):
            shutil.copy2(args.work / "models" / inp / name, dst / name)
        (dst / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    shipped = [str(d.relative_to(REPO)) for _, d in copies] + [f"models/lesion/{i}" for i in cards]
    print("copied into " + ", ".join(shipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
