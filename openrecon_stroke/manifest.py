"""The OpenRecon 1.1.0 manifest, derived from the one typed parameter definition
(:data:`openrecon_stroke.params.PARAMETERS`) and the package version.

The manifest is what the scanner reads to show the app and its UI: it travels inside the
container image as the label :data:`LABEL_KEY` (base64 of the JSON text). The committed copy
``manifests/openrecon-stroke.json`` is regenerated with::

    openrecon-stroke manifest --out manifests/openrecon-stroke.json

and checked (exit status 1 when it differs from what the code generates) with::

    openrecon-stroke manifest --check

The output is deterministic: no dates or host details are read at generation time.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from . import APP_NAME, __version__
from .params import PARAMETERS, Parameter

#: Schema version of the manifest (and suffix of the label key).
MANIFEST_VERSION = "1.1.0"
#: Image label under which OpenRecon looks for the manifest (value: base64 of the JSON text).
LABEL_KEY = f"com.siemens-healthineers.magneticresonance.openrecon.metadata:{MANIFEST_VERSION}"

#: Shown on the scanner; also the ``<vendor>`` and ``<name>`` of the package and image names.
VENDOR = "OpenSource"
NAME = "Stroke"
#: Release date of this version (manufacture_date); update together with ``__version__``.
RELEASE_DATE = "2026-11-25"

#: Resources the scanner-side host must offer (CPU inference, bounded footprint).
MIN_REQUIRED_MEMORY_MB = 8192
MIN_CPU_CORES = 2
PORT = 9002
MAX_PARAMETERS = 14

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The committed manifest (exists in a source checkout, not in an installed wheel).
DEFAULT_MANIFEST_PATH = REPO_ROOT / "manifests" / "openrecon-stroke.json"
REGENERATE_COMMAND = "openrecon-stroke manifest --out manifests/openrecon-stroke.json"

_ID_RE = re.compile(r"^[A-Za-z0-9]+$")
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)

RESEARCH_NOTICE = (
    "RESEARCH USE ONLY. Not a medical device: not cleared or approved by any regulatory "
    "authority. The returned series must not be used for diagnosis or treatment decisions."
)


def _en(text: str) -> dict:
    return {"en": text}


def package_basename(version: str = __version__) -> str:
    """``OpenRecon_<vendor>_<name>_V<version>``: base name of the saved image and the PDF."""
    return f"OpenRecon_{VENDOR}_{NAME}_V{version}"


def image_tag(version: str = __version__) -> str:
    """``openrecon_<vendor>_<name>:v<version>`` in lower case."""
    return f"openrecon_{VENDOR}_{NAME}:v{version}".lower()


def parameter_entry(p: Parameter) -> dict:
    """One manifest ``parameters`` item for ``p`` (key order fixed for stable output)."""
    item: dict = {"id": p.id, "label": _en(p.label), "type": p.kind}
    if p.kind == "boolean":
        item["default"] = bool(p.default)
    elif p.kind == "string":
        if p.default is not None:
            item["default"] = str(p.default)
    elif p.kind == "choice":
        item["values"] = [{"id": cid, "name": _en(cname)} for cid, cname in p.choices]
        item["default"] = p.default
    else:  # int, double
        cast = int if p.kind == "int" else float
        item["minimum"], item["maximum"] = (cast(v) for v in p.bounds)
        item["default"] = cast(p.default)
        if p.unit:
            item["unit"] = _en(p.unit)
    item["information"] = _en(p.information)
    return item


def build_manifest(parameters: tuple[Parameter, ...] = PARAMETERS, version: str = __version__) -> dict:
    """The manifest as a dict. Raises ValueError on what OpenRecon would reject (too many
    parameters, bad or duplicate ids, non-semver version, units longer than 3 characters)."""
    if not _SEMVER_RE.match(version):
        raise ValueError(f"version {version!r} is not semantic versioning (MAJOR.MINOR.PATCH)")
    if len(parameters) > MAX_PARAMETERS:
        raise ValueError(f"OpenRecon shows at most {MAX_PARAMETERS} parameters, got {len(parameters)}")
    seen = set()
    for p in parameters:
        if not _ID_RE.match(p.id):
            raise ValueError(f"parameter id {p.id!r}: OpenRecon ids are letters and digits only")
        if p.id in seen:
            raise ValueError(f"parameter id {p.id!r} appears twice")
        seen.add(p.id)
        if p.unit and not 1 <= len(p.unit) <= 3:
            raise ValueError(f"parameter {p.id}: unit {p.unit!r} is longer than 3 characters")
    return {
        "general": {
            "name": _en(NAME),
            "version": version,
            "vendor": VENDOR,
            "information": _en(
                f"{APP_NAME}: inline stroke MRI analysis. Takes T1-weighted and/or FLAIR image "
                "series, extracts the brain (HD-BET), and returns derived series (brain mask, "
                "lesion mask, anomaly map, colour overlay, report page) next to the originals. "
                "CPU only. " + RESEARCH_NOTICE
            ),
            "id": NAME,
            "regulatory_information": {
                "device_trade_name": f"{NAME} ({APP_NAME})",
                "production_identifier": version,
                "manufacturer_address": "Not applicable: open-source research software (Apache-2.0), no manufacturer",
                "made_in": "Not applicable (open-source research software)",
                "manufacture_date": RELEASE_DATE,
                "material_number": f"{APP_NAME}-{version}",
                "gtin": "Not applicable",
                "udi": "Not applicable",
                "safety_advices": RESEARCH_NOTICE,
                "special_operating_instructions": (
                    "Send 3D or multi-slice T1-weighted and/or FLAIR magnitude images of the head. "
                    "Runs on the CPU of the reconstruction computer; see the user guide PDF shipped "
                    "with this package for parameters and outputs."
                ),
                "additional_relevant_information": (
                    "Brain extraction uses HD-BET (Isensee et al., Hum Brain Mapp 2019, Apache-2.0) "
                    "exported to ONNX. Derived series are research results only."
                ),
            },
        },
        "reconstruction": {
            "transfer_protocol": {"protocol": "ISMRMRD", "version": "1.4.1"},
            "port": PORT,
            "emitter": "image",
            "injector": "image",
            "can_process_adjustment_data": False,
            "can_use_gpu": False,
            "min_count_required_gpus": 0,
            "min_required_gpu_memory": 0,
            "min_required_memory": MIN_REQUIRED_MEMORY_MB,
            "min_count_required_cpu_cores": MIN_CPU_CORES,
            "content_qualification_type": "RESEARCH",
        },
        "parameters": [parameter_entry(p) for p in parameters],
    }


def manifest_text(manifest: dict | None = None) -> str:
    """Stable JSON text (2-space indent, key order as built, trailing newline)."""
    return json.dumps(build_manifest() if manifest is None else manifest, indent=2, ensure_ascii=False) + "\n"


def label_value(text: str | None = None) -> str:
    """Base64 of the manifest JSON text: the value of the image label :data:`LABEL_KEY`."""
    return base64.b64encode((manifest_text() if text is None else text).encode("utf-8")).decode("ascii")


def write_manifest(path: str | Path = DEFAULT_MANIFEST_PATH) -> Path:
    """Write the generated manifest to ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest_text(), encoding="utf-8")
    return path


def check_manifest(path: str | Path = DEFAULT_MANIFEST_PATH) -> str | None:
    """None when ``path`` holds exactly the generated manifest, else a sentence saying what to run."""
    path = Path(path)
    if not path.is_file():
        return f"no manifest at {path}; create it with: {REGENERATE_COMMAND}"
    if path.read_text(encoding="utf-8") != manifest_text():
        return (
            f"{path} differs from the manifest generated from openrecon_stroke/params.py and the "
            f"version; regenerate it with: {REGENERATE_COMMAND}"
        )
    return None


def add_arguments(p) -> None:
    p.add_argument("--out", metavar="FILE", help="write the manifest to FILE (default: print it)")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the committed manifest (or --out FILE) differs from the generated one",
    )
    p.add_argument("--base64", action="store_true", help="print the image label value (base64 of the JSON)")


def run(args) -> int:
    import sys

    if args.check:
        problem = check_manifest(args.out or DEFAULT_MANIFEST_PATH)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        print(f"{args.out or DEFAULT_MANIFEST_PATH} is up to date")
        return 0
    if args.out:
        print(write_manifest(args.out))
        return 0
    sys.stdout.write(label_value() + "\n" if args.base64 else manifest_text())
    return 0
