"""One assemble_study() for the server (MRD images) and for process (files): contrasts, identity,
and what is left out with a message."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke.assembly import assemble_study
from openrecon_stroke.inputs import InputError
from openrecon_stroke.mrdfile import MrdStream, make_header_xml, parse_header, write
from openrecon_stroke.params import coerce

from conftest import marker_series


def told():
    messages: list[tuple[str, str]] = []
    return messages, lambda level, text: messages.append((level, text))


def test_mrd_series_by_contrast_with_identity_and_messages():
    header = parse_header(make_header_xml(protocol_name="t2_tirm_tra_dark-fluid", patient_id="P7", ti_ms=2500))
    a, _ = marker_series("axial", series_index=1)
    b, _ = marker_series("coronal", series_index=2)
    broken = marker_series("axial", series_index=3)[0][:3] + marker_series("coronal", series_index=3)[0][3:]
    messages, tell = told()
    study = assemble_study(coerce({}), images=a + b + broken, header=header, tell=tell)
    assert list(study.inputs) == ["flair"] and study.inputs["flair"].info["patient_id"] == "P7"
    assert study.inputs["flair"].description == "t2_tirm_tra_dark-fluid"
    levels = [lv for lv, _ in messages]
    assert levels == ["INFO", "WARNING", "ERROR"], messages
    assert "second flair series" in messages[1][1] and "series 3 skipped" in messages[2][1]
    assert "inversion time 2500 ms" in messages[0][1]


def test_unknown_contrast_is_treated_as_t1_with_a_warning():
    images, _ = marker_series("oblique")
    study = assemble_study(coerce({}), images=images, header=None, warnings=["first"])
    assert list(study.inputs) == ["t1"]
    assert study.warnings[0] == "first" and "contrast not recognised" in study.warnings[1]
    study = assemble_study(coerce({"contrast": "flair"}), images=images)
    assert list(study.inputs) == ["flair"] and not study.warnings


def test_files_by_contrast(tmp_path):
    images, _ = marker_series("sagittal")
    write(tmp_path / "f.h5", MrdStream(header_xml=make_header_xml(protocol_name="flair"), images=images))
    img = sitk.GetImageFromArray(np.ones((9, 10, 11), np.float32))
    sitk.WriteImage(img, str(tmp_path / "t1.nii.gz"))
    study = assemble_study(coerce({}), files={"t1": tmp_path / "t1.nii.gz", "flair": tmp_path / "f.h5"})
    assert study.inputs["t1"].grid.shape == (9, 10, 11) and study.inputs["flair"].grid.shape == (12, 36, 40)
    assert study.inputs["flair"].info["protocol_name"] == "flair"
    assert list(assemble_study(coerce({}), files={"t1": None, "flair": tmp_path / "f.h5"}).inputs) == ["flair"]
    with pytest.raises(InputError, match="does not exist"):
        assemble_study(coerce({}), files={"t1": tmp_path / "nope.nii"})
