"""External validators the suite checks our output against, and how a test asks for them.

A test that needs a validator is marked with its ``needs_*`` marker, so that it is skipped as a
whole with the reason (``.ci/run`` lists every skip) while the checks that do not need it live
in other tests and always run. ``scripts/test_deps.sh`` installs them where it can.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy not installed (Debian dicom3tools; scripts/test_deps.sh installs it as root)")


def dciodvfy_errors(files) -> list[str]:
    """The 'Error' lines dciodvfy prints for each file (warnings are not failures)."""
    assert DCIODVFY is not None, "mark the test with needs_dciodvfy"
    errors = []
    for f in files:
        out = subprocess.run([DCIODVFY, str(f)], capture_output=True, text=True, timeout=120)
        errors += [f"{Path(f).parent.name}/{Path(f).name}: {ln}" for ln in (out.stdout + out.stderr).splitlines()
                   if ln.startswith("Error")]
    return errors


def first_middle_last(files) -> list[Path]:
    """The first, middle and last file of a series (all slices are built the same way)."""
    files = sorted(files)
    return sorted({files[0], files[len(files) // 2], files[-1]})
