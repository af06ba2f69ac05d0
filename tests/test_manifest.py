"""The OpenRecon manifest: derived from the parameter definitions, valid against the 1.1.0
schema, committed copy in sync with the code, and the schema itself strict enough to reject
what the scanner would reject."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from openrecon_stroke import __version__
from openrecon_stroke import manifest as mf
from openrecon_stroke.cli import main as cli_main
from openrecon_stroke.params import BY_ID, PARAMETERS, Parameter

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "manifests" / "schema" / "openrecon-1.1.0.schema.json"
COMMITTED = REPO / "manifests" / "openrecon-stroke.json"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture
def manifest():
    return mf.build_manifest()


def errors(validator, doc) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


def test_generated_manifest_is_valid(validator, manifest):
    assert errors(validator, manifest) == []
    assert manifest["reconstruction"]["transfer_protocol"] == {"protocol": "ISMRMRD", "version": "1.4.1"}
    assert manifest["reconstruction"]["port"] == 9002
    assert manifest["reconstruction"]["content_qualification_type"] == "RESEARCH"
    assert manifest["reconstruction"]["can_use_gpu"] is False
    assert "research use only" in manifest["general"]["regulatory_information"]["safety_advices"].lower()


def test_committed_manifest_matches_code():
    problem = mf.check_manifest(COMMITTED)
    assert problem is None, problem
    assert COMMITTED.read_text() == mf.manifest_text()


def test_check_names_the_regenerate_command(tmp_path, capsys):
    stale = tmp_path / "m.json"
    stale.write_text(mf.manifest_text().replace('"sendoriginal"', '"sendoriginalx"'))
    problem = mf.check_manifest(stale)
    assert problem and "openrecon-stroke manifest --out manifests/openrecon-stroke.json" in problem
    assert cli_main(["manifest", "--check", "--out", str(stale)]) == 1
    assert "openrecon-stroke manifest --out manifests/openrecon-stroke.json" in capsys.readouterr().err
    assert cli_main(["manifest", "--check"]) == 0


def test_cli_writes_and_prints(tmp_path, capsys):
    out = tmp_path / "sub" / "m.json"
    assert cli_main(["manifest", "--out", str(out)]) == 0
    assert out.read_text() == mf.manifest_text()
    capsys.readouterr()
    assert cli_main(["manifest"]) == 0
    assert json.loads(capsys.readouterr().out) == mf.build_manifest()
    assert cli_main(["manifest", "--base64"]) == 0
    assert base64.b64decode(capsys.readouterr().out.strip()).decode() == mf.manifest_text()


def fresh_process(code: str, hash_seed: str) -> bytes:
    """stdout of ``code`` in a new interpreter with its own string-hash seed (set and dict-of-set
    orders, the usual source of run-to-run differences, change with it)."""
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, check=True,
                          timeout=120).stdout


def test_output_is_deterministic():
    code = "import sys; from openrecon_stroke import manifest; sys.stdout.write(manifest.manifest_text())"
    runs = {fresh_process(code, seed) for seed in ("1", "2")}
    assert runs == {mf.manifest_text().encode()}
    assert mf.manifest_text().endswith("}\n")


def test_version_and_names():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == __version__
    m = mf.build_manifest()
    assert m["general"]["version"] == __version__
    assert m["general"]["regulatory_information"]["production_identifier"] == __version__
    assert mf.image_tag() == mf.image_tag().lower() and mf.image_tag().endswith(f":v{__version__}")
    assert mf.image_tag().startswith("openrecon_")
    assert mf.package_basename() == f"OpenRecon_{mf.VENDOR}_{mf.NAME}_V{__version__}"


def test_parameters_follow_the_definition_in_order(manifest):
    assert [p["id"] for p in manifest["parameters"]] == [p.id for p in PARAMETERS]
    for item, p in zip(manifest["parameters"], PARAMETERS):
        assert item["type"] == p.kind
        assert item["label"] == {"en": p.label}
        if p.kind == "choice":
            assert [v["id"] for v in item["values"]] == [c for c, _ in p.choices]
        if p.kind in ("int", "double"):
            assert (item["minimum"], item["maximum"]) == (p.minimum, p.maximum)
        if p.unit:
            assert item["unit"] == {"en": p.unit}
    assert manifest["parameters"][0]["id"] == "config"


def test_defaults_coerce_back(manifest):
    for item in manifest["parameters"]:
        p = BY_ID[item["id"]]
        if "default" not in item:
            continue
        d = item["default"]
        assert p.coerce(d) == p.default
        # the scanner may send the value back as text
        text = str(d).lower() if isinstance(d, bool) else str(d)
        assert p.coerce(text) == p.default
        if p.kind == "int":
            assert type(p.coerce(d)) is int


# --------------------------------------------------------------------------------------------
# the schema rejects what OpenRecon rejects
# --------------------------------------------------------------------------------------------
def _underscore_id(m):
    m["parameters"][1]["id"] = "send_original"


def _fifteen_parameters(m):
    extra = copy.deepcopy(m["parameters"][1])
    while len(m["parameters"]) < 15:
        extra = copy.deepcopy(extra)
        extra["id"] = f"extra{len(m['parameters'])}"
        m["parameters"].append(extra)


def _missing_regulatory(m):
    del m["general"]["regulatory_information"]["udi"]


def _extra_top(m):
    m["comment"] = "x"


def _extra_general(m):
    m["general"]["homepage"] = "x"


def _extra_reconstruction(m):
    m["reconstruction"]["threads"] = 4


def _extra_parameter(m):
    m["parameters"][1]["hidden"] = True


def _long_unit(m):
    next(p for p in m["parameters"] if p["type"] == "double")["unit"] = {"en": "mm^3"}


def _wrong_protocol_version(m):
    m["reconstruction"]["transfer_protocol"]["version"] = "1.4.0"


def _bad_version(m):
    m["general"]["version"] = "0.1"


def _bad_emitter(m):
    m["reconstruction"]["emitter"] = "dicom"


def _int_default_not_integer(m):
    next(p for p in m["parameters"] if p["type"] == "int")["default"] = 2.5


def _choice_without_values(m):
    del m["parameters"][0]["values"]


def _missing_parameters(m):
    del m["parameters"]


@pytest.mark.parametrize("spoil", [
    _underscore_id, _fifteen_parameters, _missing_regulatory, _extra_top, _extra_general,
    _extra_reconstruction, _extra_parameter, _long_unit, _wrong_protocol_version, _bad_version,
    _bad_emitter, _int_default_not_integer, _choice_without_values, _missing_parameters,
])
def test_schema_rejects_bad_manifests(validator, manifest, spoil):
    assert errors(validator, manifest) == []
    spoil(manifest)
    assert errors(validator, manifest), f"{spoil.__name__} was accepted"


def test_builder_refuses_what_the_scanner_refuses():
    many = tuple(Parameter(f"p{i}", f"P {i}", "boolean", False, "x") for i in range(15))
    with pytest.raises(ValueError, match="at most 14"):
        mf.build_manifest(many)
    with pytest.raises(ValueError, match="twice"):
        mf.build_manifest((PARAMETERS[1], PARAMETERS[1]))
    with pytest.raises(ValueError, match="semantic"):
        mf.build_manifest(version="1.0")
    with pytest.raises(ValueError, match="3 characters"):
        mf.build_manifest((Parameter("size", "Size", "double", 1.0, "x", minimum=0, maximum=2, unit="mm^3"),))


def test_user_guide_pdf(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_guide", REPO / "docker" / "user_guide.py")
    ug = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ug)
    pdf = ug.write_user_guide(tmp_path / "guide.pdf").read_bytes()
    # deterministic: the same bytes from fresh interpreters with other hash seeds
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('ug', 'docker/user_guide.py'); "
            "ug = importlib.util.module_from_spec(spec); spec.loader.exec_module(ug); "
            f"sys.stdout.buffer.write(ug.write_user_guide({str(tmp_path / 'again.pdf')!r}).read_bytes())")
    assert fresh_process(code, "3") == pdf
    assert pdf.startswith(b"%PDF-1.4") and pdf.endswith(b"%%EOF\n")
    # the cross-reference table points at every object
    xref = int(pdf[pdf.rindex(b"startxref") + 9:].split()[0])
    assert pdf[xref:xref + 4] == b"xref"
    count = int(pdf[xref:].split()[2])
    offsets = [int(line.split()[0]) for line in pdf[xref:].splitlines()[3:3 + count - 1]]
    for n, off in enumerate(offsets, 1):
        assert pdf[off:].startswith(b"%d 0 obj" % n)
    assert pdf.count(b"/Type /Page ") >= 2
    for p in PARAMETERS:  # the parameter table comes from the definitions
        assert b"(" + p.id.encode() + b" \\(" in pdf  # its description heading: "id (label)"
