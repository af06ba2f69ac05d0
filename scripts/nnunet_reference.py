"""nnU-Net v2 itself, as the reference our importer and runner are checked against.

Needs the optional extras (CPU PyTorch, then ``nnunetv2``); the plugin never imports this file.
Run as a separate process, because nnU-Net reads its folder variables (``nnUNet_raw``,
``nnUNet_preprocessed``, ``nnUNet_results``) once, when it is imported:

    python scripts/nnunet_reference.py build ROOT [--cases 4] [--head] [--predict JOBS.json]
        writes tiny datasets under ROOT/nnUNet_raw, plans them with nnU-Net's own fingerprint
        extractor and planners, initialises each fold's network with nnU-Net's own trainer and
        saves it with the trainer's ``save_checkpoint``; prints one JSON line per result folder
        ({"name", "results", "folds", "channels"}); then runs the prediction jobs, if given, in
        the same process (one import of PyTorch and nnU-Net instead of two).
    python scripts/nnunet_reference.py predict JOBS.json
        runs ``nnUNetPredictor`` (CPU, step 0.5, Gaussian) on each job
        {"results", "folds", "inputs": [files], "out": "PREFIX", "mirroring": bool,
        "checkpoint": "checkpoint_final.pth"}, the steps of its ``predict_from_files_sequential``
        called one by one, and writes PREFIX.nii.gz (label map), PREFIX.npz (class
        probabilities, array order) and PREFIX.json (seconds per step).

Datasets made by ``build`` (synthetic, seeded):

* ``Dataset901_TinyTwoChannel``: T1-w + FLAIR, 1 mm, zero outside an ellipsoid "head" (so
  nnU-Net crops to non-zero and normalises inside the mask), planned with
  ``nnUNetPlannerResEncM`` (ResidualEncoderUNet), folds 0 and 1;
* ``Dataset902_TinyAnisotropic``: FLAIR only, 0.8 x 0.8 mm in-plane with 3 mm slices along the
  image x axis (so nnU-Net transposes the axes and resamples the slice axis separately), noise
  everywhere (no mask for normalisation), the default ``ExperimentPlanner`` (PlainConvUNet),
  fold 0;
* with ``--head``: ``Dataset903_Head1mm``: one channel, MNI152-sized 1 mm heads (for the
  benchmark), ``nnUNetPlannerResEncM``, fold 0.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

DATASETS = {
    901: dict(name="Dataset901_TinyTwoChannel", channels={"0": "T1", "1": "FLAIR"}, planner="nnUNetPlannerResEncM",
              plans="nnUNetResEncUNetMPlans", folds=(0, 1), shape=(26, 30, 24), spacing=(1.0, 1.0, 1.0), zero_bg=True),
    902: dict(name="Dataset902_TinyAnisotropic", channels={"0": "FLAIR"}, planner="ExperimentPlanner",
              plans="nnUNetPlans", folds=(0,), shape=(32, 30, 8), spacing=(3.0, 0.8, 0.8), zero_bg=False),
    903: dict(name="Dataset903_Head1mm", channels={"0": "T1"}, planner="nnUNetPlannerResEncM",
              plans="nnUNetResEncUNetMPlans", folds=(0,), shape=(189, 233, 197), spacing=(1.0, 1.0, 1.0),
              zero_bg=True),
}


def synthetic_case(rng: np.random.Generator, shape_zyx, n_channels: int, zero_bg: bool):
    """Smooth random images inside an ellipsoid, a brighter blob as label 1."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    head = (z / 0.85) ** 2 + (y / 0.9) ** 2 + (x / 0.8) ** 2 < 1
    c = rng.uniform(-0.35, 0.35, 3)
    r = rng.uniform(0.15, 0.3)
    blob = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r ** 2
    chans = []
    for k in range(n_channels):
        tex = ndimage.gaussian_filter(rng.normal(size=shape_zyx), 1.5)
        img = 300 + 200 * k + 400 * tex / (tex.std() + 1e-6) + (250 - 120 * k) * blob
        if zero_bg:
            img = np.where(head, img, 0.0)
        else:
            img = img + 100 * rng.normal(size=shape_zyx)
        chans.append(img.astype(np.float32))
    return chans, (blob & head).astype(np.uint8)


def _write(arr, spacing_xyz, path: Path):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    img.SetOrigin((12.0, -30.0, 7.5))
    sitk.WriteImage(img, str(path))


def make_raw(root: Path, did: int, n_cases: int) -> None:
    spec = DATASETS[did]
    raw = root / "nnUNet_raw" / spec["name"]
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(did)
    for i in range(n_cases):
        shape = tuple(int(n + rng.integers(-2, 3)) for n in spec["shape"]) if did != 903 else spec["shape"]
        if did == 903:
            chans, lab = _mni_head(rng)
        else:
            chans, lab = synthetic_case(rng, shape, len(spec["channels"]), spec["zero_bg"])
        for k, ch in enumerate(chans):
            _write(ch, spec["spacing"], raw / "imagesTr" / f"case{i:03d}_{k:04d}.nii.gz")
        _write(lab, spec["spacing"], raw / "labelsTr" / f"case{i:03d}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": spec["channels"], "labels": {"background": 0, "lesion": 1},
        "numTraining": n_cases, "file_ending": ".nii.gz"}, indent=1))


def _mni_head(rng):
    """The MNI ICBM152 2009a T1 head (1 mm, shipped in nilearn) with a darker blob as lesion, as
    (z, y, x) arrays."""
    from openrecon_stroke.templates import template_path

    img = sitk.ReadImage(str(template_path("t1")))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    zz, yy, xx = np.indices(arr.shape)
    c = np.array(arr.shape) * rng.uniform(0.35, 0.65, 3)
    blob = (((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < 12 ** 2) & (arr > 0)
    return [np.where(blob, arr * 0.6, arr)], blob.astype(np.uint8)


def _fork_workers() -> None:
    """nnU-Net's worker pools ask for "spawn", which re-imports PyTorch and nnU-Net in every
    worker (tens of seconds on two busy cores); "fork" runs the same code without that."""
    import multiprocessing

    get = multiprocessing.get_context
    multiprocessing.get_context = lambda method=None: get("fork")


def results_folder(root: Path, did: int) -> Path:
    """Where ``build`` puts dataset ``did``'s trained model (nnU-Net's result layout)."""
    spec = DATASETS[did]
    return root / "nnUNet_results" / spec["name"] / f"nnUNetTrainer__{spec['plans']}__3d_fullres"


def build(root: Path, n_cases: int, head: bool) -> list[dict]:
    """Raw data -> fingerprint -> plans -> trainer-initialised checkpoints, nnU-Net's own code."""
    _fork_workers()
    import torch
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset, plan_experiments,
                                                                      preprocess)

    class Extractor(DatasetFingerprintExtractor):
        """nnU-Net's extractor, sampling 10^5 foreground voxels for the intensity statistics
        instead of 10^8 (they only matter to CT normalisation; the full count costs tens of
        seconds of sampling and sorting on tiny data)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = 1e5
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    ids = [901, 902] + ([903] if head else [])
    out = []
    for did in ids:
        spec = DATASETS[did]
        t0 = time.perf_counter()
        make_raw(root, did, n_cases if did != 903 else 2)
        extract_fingerprint_dataset(did, Extractor, num_processes=1, check_dataset_integrity=True, verbose=False,
                                    show_progress_bar=False)
        plan_experiments([did], experiment_planner_class_name=spec["planner"])
        # the trainer reads the preprocessed training cases when it initialises
        preprocess([did], spec["plans"], configurations=("3d_fullres",), num_processes=(1,), verbose=False,
                   show_progress_bar=False)
        pre = root / "nnUNet_preprocessed" / spec["name"]
        dataset_json = json.loads((pre / "dataset.json").read_text())
        base = None
        for fold in spec["folds"]:
            plans = json.loads((pre / f"{spec['plans']}.json").read_text())
            plans["continue_training"] = False
            torch.manual_seed(100 * did + fold)
            trainer = nnUNetTrainer(plans=plans, configuration="3d_fullres", fold=fold, dataset_json=dataset_json,
                                    device=torch.device("cpu"))
            trainer.initialize()
            # what on_train_start does before training: the mirroring axes the checkpoint records
            trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
            base = Path(trainer.output_folder_base)
        # the files on_train_start copies beside the folds
        plans = json.loads((pre / f"{spec['plans']}.json").read_text())
        (base / "plans.json").write_text(json.dumps(plans, indent=1))
        shutil.copy(pre / "dataset.json", base / "dataset.json")
        shutil.copy(pre / "dataset_fingerprint.json", base / "dataset_fingerprint.json")
        print(f"{spec['name']}: built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out.append({"name": spec["name"], "results": str(base), "folds": list(spec["folds"]),
                    "channels": spec["channels"]})
    return out


def predict(jobs: list[dict]) -> None:
    """nnUNetPredictor on each job, the steps of its ``predict_from_files_sequential`` timed one by
    one (read + preprocess, network, resample back + write); model loading is not timed."""
    import torch
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(max(1, int(os.environ.get("NNUNET_REF_THREADS", os.cpu_count() or 1))))
    for job in jobs:
        pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=bool(job["mirroring"]),
                               perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                               verbose_preprocessing=False, allow_tqdm=False)
        pred.initialize_from_trained_model_folder(job["results"], use_folds=tuple(job["folds"]),
                                                  checkpoint_name=job.get("checkpoint", "checkpoint_final.pth"))
        pre = pred.configuration_manager.preprocessor_class(verbose=False)
        t0 = time.perf_counter()
        data, _, props = pre.run_case(list(job["inputs"]), None, pred.plans_manager, pred.configuration_manager,
                                      pred.dataset_json)
        t1 = time.perf_counter()
        logits = pred.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
        t2 = time.perf_counter()
        export_prediction_from_logits(logits, props, pred.configuration_manager, pred.plans_manager,
                                      pred.dataset_json, job["out"], save_probabilities=True)
        t3 = time.perf_counter()
        Path(job["out"] + ".json").write_text(json.dumps(
            {"preprocess": t1 - t0, "network": t2 - t1, "export": t3 - t2, "total": t3 - t0}))


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "build":
        root = Path(argv[1]).resolve()
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[k] = str(root / k)  # before nnU-Net is imported: it reads them once
        n = int(argv[argv.index("--cases") + 1]) if "--cases" in argv else 4
        for r in build(root, n, "--head" in argv):
            print(json.dumps(r), flush=True)
        if "--predict" in argv:
            predict(json.loads(Path(argv[argv.index("--predict") + 1]).read_text()))
        return 0
    if cmd == "predict":
        predict(json.loads(Path(argv[1]).read_text()))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
