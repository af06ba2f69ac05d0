"""``openrecon-stroke serve`` (the MRD server), ``gadget`` (the same for a Gadgetron chain),
``process`` (offline run on files), ``batch`` (a BIDS cohort on Dask,
:mod:`openrecon_stroke.batch`), ``predict`` (one model alone) and ``import-nnunet`` (a team's
nnU-Net v2 model, :mod:`openrecon_stroke.nnunet_import`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import APP_NAME, __version__
from .runtime import flush_denormals


def _serve(args) -> int:
    from .protocol import Limits
    from .server import MrdServer, ServerSettings

    settings = ServerSettings(
        limits=Limits(max_image=int(args.max_image_mb * 2**20)),
        idle_timeout_s=args.timeout,
        max_parallel=args.max_parallel,
        save_dir=Path(args.save_data) if args.save_data else None,
        cache_dir=None if args.no_cache else Path(args.cache_dir),
        dicom_dir=Path(args.dicom_dir) if args.dicom_dir else None,
    )
    if settings.save_dir:
        settings.save_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "gadget":
        from .gadgetron_gadget import listen

        server = listen(args.host, args.port, settings)
        what = "Gadgetron external gadget (passive: <connect port=...>)"
    else:
        server = MrdServer((args.host, args.port), settings)
        what = "MRD server"
    logging.getLogger(APP_NAME).info("%s %s %s listening on %s:%d", APP_NAME, __version__, what, args.host, server.port)
    print(f"{APP_NAME} {__version__} {what} listening on {args.host}:{server.port}", flush=True)
    server.warm_up()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _process(args) -> int:
    from .offline import process
    from .params import parse_cli_params

    if not args.t1 and not args.flair:
        print("error: give at least one of --t1 PATH and --flair PATH", file=sys.stderr)
        return 2
    report = process(
        t1=args.t1, flair=args.flair, out_dir=Path(args.out), raw_params=parse_cli_params(args.param), dicom=args.dicom
    )
    print(json.dumps({k: report[k] for k in ("findings", "timings_s", "warnings")}, indent=1))
    print(f"outputs in {args.out}")
    return 0


def _predict(args) -> int:
    from .predict import predict_files

    predict_files(args.model, args.input, args.out, mirroring=not args.no_mirroring)
    return 0


def _import_nnunet(args) -> int:
    from .nnunet_import import import_nnunet

    yes_no = {"yes": True, "no": False, None: None}
    import_nnunet(
        args.results,
        args.out,
        folds=args.folds,
        checkpoint=args.checkpoint,
        contrasts=args.contrasts,
        orientation=args.orientation,
        skull_stripped=yes_no[args.skull_stripped],
        name=args.name,
        version=args.version,
        lesion_label=args.lesion_label,
        fp16=args.fp16_weights,
        configuration=args.configuration,
        trust=args.trust_checkpoint,
    )
    return 0


def _add_model_commands(sub) -> None:
    r = sub.add_parser("predict", help="run one model card's model alone on image files (like nnUNetv2_predict)")
    r.add_argument("--model", required=True, help="model folder (card.json + ONNX files)")
    r.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="CH",
        help="one image per model input, in the card's order: NIfTI, DICOM folder or ISMRMRD file",
    )
    r.add_argument("--out", required=True, help="output folder (<case>_prob.nii.gz, <case>_label.nii.gz)")
    r.add_argument("--no-mirroring", action="store_true", help="no mirroring test-time augmentation (faster)")
    n = sub.add_parser(
        "import-nnunet",
        help="turn an nnU-Net v2 trained-model folder into ONNX + a model card (needs the optional nnunet extra)",
    )
    n.add_argument("results", help="nnU-Net result folder: .../DatasetXXX_Name/Trainer__Plans__3d_fullres")
    n.add_argument("--out", required=True, help="model folder to write (card.json, foldK.onnx)")
    n.add_argument("--folds", nargs="+", help="folds to export (default: every fold_K with the checkpoint)")
    n.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold folder")
    n.add_argument("--configuration", help="nnU-Net configuration (default: from the folder name, e.g. 3d_fullres)")
    n.add_argument(
        "--contrasts",
        nargs="+",
        choices=["t1", "flair"],
        help="contrast of each channel (default: from dataset.json channel_names)",
    )
    n.add_argument(
        "--orientation",
        help="voxel axes the training images had (e.g. RAS for MNI-registered NIfTI; default: as nnU-Net's "
        "image reader leaves them)",
    )
    n.add_argument(
        "--skull-stripped",
        choices=["yes", "no"],
        help="trained on brain-extracted images (default: guessed from use_mask_for_norm)",
    )
    n.add_argument("--lesion-label", help="which label is the lesion (needed with several foreground labels)")
    n.add_argument("--name", help="model name for reports (default: the dataset name)")
    n.add_argument("--version", help="model version for reports (default: checkpoint name and date)")
    n.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="let PyTorch unpickle anything in the checkpoints (only for files you trust; by default they are "
        "read as data)",
    )
    n.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store weights in half precision (half the files; arithmetic stays float32)",
    )


def _server_arguments(s: argparse.ArgumentParser, port: int) -> None:
    from .server import DEFAULT_CACHE_DIR

    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=port, help=f"TCP port (default {port}; 0 picks a free one)")
    s.add_argument("--save-data", metavar="DIR", help="save every incoming stream as an ISMRMRD file in DIR")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds of silence before a connection is dropped")
    s.add_argument("--max-parallel", type=int, default=2, help="studies processed at the same time")
    s.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE_DIR),
        help="where a preprocessed series waits (2 h) for the other contrast of its study",
    )
    s.add_argument("--no-cache", action="store_true", help="do not fuse series sent on separate connections")
    s.add_argument("--max-image-mb", type=float, default=2048, help="largest single image accepted (MiB)")
    s.add_argument(
        "--dicom-dir", metavar="DIR", help="also write what is sent back as DICOM in DIR (one folder per study)"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=APP_NAME, description="Inline stroke MRI analysis for OpenRecon (MRD server).")
    p.add_argument("--version", action="version", version=f"{APP_NAME} {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="run the MRD server (what the scanner talks to)")
    _server_arguments(s, port=9002)
    g = sub.add_parser(
        "gadget",
        help="run the pipeline for a Gadgetron chain (passive mode: the <external> node's <connect port=...>)",
        description='Listens for Gadgetron\'s external node (<connect port="P"/>); for active mode '
        '(<execute name="openrecon_stroke.gadgetron_gadget" target="gadget" type="python"/>) '
        "install the [gadgetron] extra instead. See docs/gadgetron/.",
    )
    _server_arguments(g, port=18000)
    q = sub.add_parser("process", help="run the same pipeline offline on files")
    q.add_argument("--t1", help="T1-weighted input: NIfTI, DICOM folder or ISMRMRD file")
    q.add_argument("--flair", help="FLAIR input: NIfTI, DICOM folder or ISMRMRD file")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument(
        "--dicom",
        action="store_true",
        help="also write every output as DICOM (SEG, secondary capture, MR) under OUT/dicom/<series>/",
    )
    from . import batch, manifest

    batch.add_arguments(
        sub.add_parser(
            "batch",
            help="run a BIDS cohort (BIDS App: BIDS_DIR OUTPUT_DIR participant) on Dask",
            description="Process every subject/session of a BIDS dataset into BIDS derivatives, on this "
            "machine's cores, an existing Dask cluster or SLURM. Resumable: finished subjects are "
            "skipped. Exit status 1 when a subject failed (see OUTPUT_DIR/failures.tsv).",
        )
    )

    manifest.add_arguments(sub.add_parser("manifest", help="print, write (--out) or --check the OpenRecon manifest"))
    _add_model_commands(sub)
    args = p.parse_args(argv)
    # before any thread starts, so that every thread (ONNX Runtime's, ITK's, the server's) inherits it
    flush_denormals()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        args = p.parse_args(["serve"] + (argv or sys.argv[1:]))
    try:
        if args.command in ("serve", "gadget"):
            return _serve(args)
        if args.command == "manifest":
            return manifest.run(args)
        if args.command == "batch":
            return batch.run(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "import-nnunet":
            return _import_nnunet(args)
        return _process(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
