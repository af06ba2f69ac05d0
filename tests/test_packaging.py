"""The packaging steps that need no container engine, run as CI runs them.

``docker/build.sh --wheelhouse-only`` on a clean copy of the checkout (what ``git clone`` gives:
tracked and not-ignored files, no ``.venv``, ``dist/``, ``build/`` or ``*.egg-info``), with the
project's own interpreter as the README's set-up makes it (a fresh Python 3.11 venv has
setuptools 65.5 without ``bdist_wheel``: a build that relied on it failed on a fresh clone). The
wheelhouse must hold the project wheel and one linux/amd64 CPython 3.11 wheel for every runtime
dependency, and nothing of the training or batch extras. Needs the package index (PyPI), as CI
has; pip's cache makes it quick after the set-up (about 10 s). The full image build is the
opt-in tests/test_container.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from openrecon_stroke import __version__

REPO = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", ".venv", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                 "demo_out", "out", "*.onnx", "*.onnx.data")


def clean_checkout(dest: Path) -> Path:
    """Copy what a fresh clone of this working tree holds (git's view; a plain copy without
    the ignored folders when this is no git checkout), less the ONNX models (100 MB that the
    wheelhouse step does not read)."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                       capture_output=True)
    if r.returncode != 0:
        shutil.copytree(REPO, dest, ignore=IGNORED, symlinks=True)
        return dest
    for rel in filter(None, r.stdout.decode().split("\0")):
        src = REPO / rel
        if src.suffix in (".onnx", ".data"):
            continue
        if src.is_file() or src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
    return dest


def run_wheelhouse(tree: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(tree / "docker" / "build.sh"), "--wheelhouse-only", "--out", str(out)],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=600)


def requirement_names(wheel: Path) -> tuple[set[str], set[str]]:
    """(runtime requirement names, extra-only requirement names) from the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    runtime, extra = set(), set()
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            name = normalise(re.match(r"[A-Za-z0-9_.\-]+", spec).group(0))
            (extra if "extra ==" in spec else runtime).add(name)
    return runtime, extra


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(filename: str) -> str:
    return normalise(filename.split("-")[0])


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    return clean_checkout(tmp_path_factory.mktemp("clone") / "openrecon-stroke")


def test_wheelhouse_on_a_clean_checkout(fresh_clone, tmp_path):
    assert not (fresh_clone / ".venv").exists() and not list(fresh_clone.glob("*.egg-info"))
    r = run_wheelhouse(fresh_clone, tmp_path / "dist")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    wheels = sorted(p.name for p in (tmp_path / "dist" / "wheelhouse").glob("*.whl"))
    project = tmp_path / "dist" / "wheelhouse" / f"openrecon_stroke-{__version__}-py3-none-any.whl"
    assert project.name in wheels, wheels

    with zipfile.ZipFile(project) as z:
        names = z.namelist()
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for module in ("server.py", "templates.py", "pipeline.py", "runtime.py"):
        assert f"openrecon_stroke/{module}" in names
    assert "openrecon-stroke = openrecon_stroke.cli:main" in entry
    assert not [n for n in names if n.endswith((".onnx", ".nii.gz", ".h5"))], "models/data do not go in the wheel"

    runtime, extra = requirement_names(project)
    extra.discard("openrecon-stroke")  # dev = openrecon-stroke[simulator] + test tools
    got = {wheel_name(w) for w in wheels}
    assert runtime <= got, f"runtime dependencies without a wheel: {sorted(runtime - got)}"
    # the extras (training, batch, simulator) stay out, and so does what only they pull in
    assert not (extra - runtime) & got, f"extra-only packages in the wheelhouse: {sorted((extra - runtime) & got)}"
    forbidden = {"torch", "dask", "distributed", "pybids", "nilearn", "nibabel", "pandas", "scikit-learn",
                 "matplotlib", "gadgetron", "pyfftw", "multimethod", "playwright", "selenium"}
    assert not forbidden & got, sorted(forbidden & got)
    for w in wheels:  # binary wheels for CPython 3.11 on linux/amd64 only
        tags = w[:-4].split("-")[-3:]
        assert tags[0] in ("py3", "py2.py3", "cp311", "cp310", "cp39", "cp38") and tags[1] in ("none", "abi3", "cp311"), w
        assert tags[2] == "any" or ("x86_64" in tags[2] and ("manylinux" in tags[2] or tags[2] == "linux_x86_64")), w


def test_wheelhouse_refuses_a_batch_dependency_at_run_time(fresh_clone, tmp_path):
    """A batch-only package that slips into [project] dependencies stops the build, by name."""
    tree = tmp_path / "tree"
    shutil.copytree(fresh_clone, tree)
    py = tree / "pyproject.toml"
    text = py.read_text()
    assert '"highdicom' in text
    py.write_text(text.replace('dependencies = [\n', 'dependencies = [\n    "nibabel>=5",\n', 1))
    r = run_wheelhouse(tree, tmp_path / "dist")
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    assert "must not be in the scanner image" in r.stderr and "nibabel" in r.stderr


def test_build_sh_checks_its_options():
    for args, msg in ((["--push-only"], "--push-only needs --push"), (["--tls-verify", "maybe"], "true or false"),
                      (["--cert-dir", "/nonexistent"], "holds no *.crt"), (["--nope"], "unknown option")):
        r = subprocess.run(["bash", str(REPO / "docker" / "build.sh"), *args], capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)


def test_image_sizes_classifies_paths():
    spec = importlib.util.spec_from_file_location("image_sizes", REPO / "docker" / "image_sizes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sp = "/opt/venv/lib/python3.11/site-packages"
    assert mod.classify("/opt/openrecon-stroke/models/hdbet/a.onnx") == ("models", "hdbet")
    assert mod.classify("/opt/openrecon-stroke/models/README.md") == ("models", "(top level)")
    assert mod.classify("/opt/openrecon-stroke/templates/t1.nii.gz") == ("templates", "")
    assert mod.classify(f"{sp}/numpy.libs/libopenblas.so") == ("libraries", "numpy")
    assert mod.classify(f"{sp}/PIL/_imaging.so") == ("libraries", "pillow")
    assert mod.classify(f"{sp}/SimpleITK-2.5.7.dist-info/RECORD") == ("libraries", "simpleitk")
    assert mod.classify(f"{sp}/openrecon_stroke/server.py") == ("application", "openrecon_stroke")
    assert mod.classify("/usr/lib/python3.11/os.pyc") == ("interpreter", "")
    assert mod.classify("/usr/bin/python3.11") == ("interpreter", "")
