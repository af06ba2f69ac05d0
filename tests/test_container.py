"""The OpenRecon image, built, run and deployed through a registry for real (opt-in: ~10 min).

Run with::

    apt-get install buildah podman debootstrap docker-registry   # once (openssl too)
    OPENRECON_CONTAINER_TEST=1 .venv/bin/pytest tests/test_container.py -v -s

Needs root. Without ``OPENRECON_CONTAINER_TEST=1`` or without buildah every test here is
skipped with the reason; without ``docker-registry`` or ``openssl`` only the registry tests are.

1. Builds the package with ``docker/build.sh --debian-base --engine buildah`` (a debootstrap
   Debian bookworm base made once and reused), reads the OpenRecon label back and validates it,
   checks the package files, the image size by part (``docker/image_sizes.py``; at most
   ``MAX_IMAGE_MB``, models and template included) and what must not be in the image (PyTorch,
   the batch extra, nilearn, compilers, package managers).
2. Starts the server inside the image with ``buildah run`` (chroot isolation: the host's network)
   and a server on the host, replays a phantom study's T1-w and then its FLAIR on two
   connections to each (the FLAIR is fused with the cached T1-w), and checks that both return
   the same series, geometry, pixels and messages.
3. Starts a real registry on localhost (Debian's ``docker-registry serve CONFIG``: storage in a
   temporary folder, TLS with a certificate of a throw-away CA, htpasswd credentials), logs in
   with ``buildah login``, pushes with ``docker/build.sh --push-only --push ... --authfile ...
   --cert-dir ...``, checks that a push without credentials or without the CA fails with a
   message saying what to do, pulls the image back by digest into a clean container store, checks
   the digest (also through the registry's HTTP API) and the OpenRecon label, and that the pulled
   image serves a study.

``OPENRECON_CONTAINER_REUSE=1`` reuses an already built image instead of building. Figures
(image size by part, build, push, pull, cold start, replay times) are printed and written to
``dist/container_test.json``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import time
import urllib.request
import warnings
import zipfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from openrecon_stroke import manifest as mf
from openrecon_stroke import templates as tp
from openrecon_stroke.server import MrdServer, ServerSettings
from simulator.__main__ import main as simulator_main
from simulator.replay import replay_file

REPO = Path(__file__).resolve().parents[1]
TAG = mf.image_tag()
REPORT_FILE = REPO / "dist" / "container_test.json"
TOOLS_HINT = "apt-get install buildah podman debootstrap docker-registry openssl"


def _buildah_usable() -> str | None:
    """None if buildah can list images here, else why not."""
    if shutil.which("buildah") is None:
        return f"buildah is not installed ({TOOLS_HINT})"
    r = subprocess.run(["buildah", "images"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"buildah does not work here: {r.stderr.strip()[:200]}"
    return None


def _skip_reason() -> str | None:
    if os.environ.get("OPENRECON_CONTAINER_TEST") != "1":
        return ("container test is opt-in: set OPENRECON_CONTAINER_TEST=1 (builds the image with buildah and "
                f"pushes it to a local registry, ~10 min; tools: {TOOLS_HINT})")
    return _buildah_usable()


_SKIP = _skip_reason()
pytestmark = [
    pytest.mark.container,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(_SKIP is not None, reason=str(_SKIP)),
]

FIGURES: dict = {}


def _record(**kw):
    FIGURES.update(kw)
    REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    REPORT_FILE.write_text(json.dumps(FIGURES, indent=1) + "\n")
    for k, v in kw.items():
        print(f"[container] {k} = {v}")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _inspect(tag: str, store: list[str] = ()) -> dict:
    out = _run(["buildah", *store, "inspect", "--type", "image", tag], check=True)
    return json.loads(out.stdout)


def _image_exists(tag: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """Build the package (or reuse the image); returns the output folder (None when reused)."""
    if os.environ.get("OPENRECON_CONTAINER_REUSE") == "1" and _image_exists(TAG):
        _record(reused_image=True)
        return None
    out = tmp_path_factory.mktemp("package")
    t0 = time.perf_counter()
    r = _run(["nice", "-n", "10", str(REPO / "docker" / "build.sh"), "--debian-base", "--engine", "buildah",
              "--out", str(out)], cwd=REPO)
    total = time.perf_counter() - t0
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    m = re.search(r"image \S+ built in (\d+) s", log)
    _record(build_total_s=round(total, 1), image_build_s=int(m.group(1)) if m else None)
    print("\n".join(ln for ln in log.splitlines() if ln.startswith("[build")))
    return out


@pytest.fixture(scope="module")
def image_config(package) -> dict:
    return _inspect(TAG)["Docker"]["config"]


@pytest.fixture(scope="module")
def schema_validator():
    return jsonschema.Draft7Validator(json.loads((REPO / "manifests" / "schema" / "openrecon-1.1.0.schema.json").read_text()))


def test_label_is_the_valid_manifest(image_config, schema_validator):
    labels = image_config["Labels"]
    text = base64.b64decode(labels[mf.LABEL_KEY]).decode("utf-8")
    doc = json.loads(text)
    assert [e.message for e in schema_validator.iter_errors(doc)] == []
    assert text == mf.manifest_text()  # the image carries exactly the committed manifest
    assert doc["reconstruction"]["port"] == 9002


def test_image_config(image_config):
    assert image_config["Entrypoint"][-1] == "serve" and "openrecon-stroke" in image_config["Entrypoint"][0]
    assert "9002/tcp" in image_config["ExposedPorts"]
    assert image_config.get("Healthcheck", {}).get("Test"), "HEALTHCHECK lost (build with --format docker)"
    env = dict(e.split("=", 1) for e in image_config["Env"])
    assert env["OPENRECON_MODELS_DIR"] == "/opt/openrecon-stroke/models"
    assert env[tp.ENV_VAR] == "/opt/openrecon-stroke/templates"


def test_package_files(package):
    if package is None:
        pytest.skip("image reused: no package built")
    base = mf.package_basename()
    with zipfile.ZipFile(package / f"{base}.zip") as z:
        assert sorted(z.namelist()) == sorted([f"{base}.tar", f"{base}.pdf"])
    pdf = (package / f"{base}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF") and pdf.count(b"/Type /Page ") >= 2
    with tarfile.open(package / f"{base}.tar") as t:
        manifest = json.load(t.extractfile("manifest.json"))
    assert any(TAG in tag for entry in manifest for tag in entry.get("RepoTags") or [])
    sizes = json.loads((package / "image_sizes.json").read_text())  # written by build.sh
    assert set(sizes["parts"]) == {"interpreter", "libraries", "application", "models", "templates"}
    _record(package_zip_mb=round((package / f"{base}.zip").stat().st_size / 1e6, 1),
            image_tar_mb=round((package / f"{base}.tar").stat().st_size / 1e6, 1))


def _size_mb(tag: str) -> float:
    out = _run(["buildah", "images", "--format", "{{.Size}}", tag], check=True).stdout.strip().splitlines()[0]
    num, unit = re.match(r"([\d.]+)\s*([kMG]?B)", out).groups()
    return float(num) * {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]


def _in_image(script: str, tag: str = TAG) -> str:
    """stdout of ``python -c script`` run in a fresh container of ``tag``."""
    ctr = _run(["buildah", "from", "--quiet", tag], check=True).stdout.strip()
    try:
        r = _run(["buildah", "run", "--isolation", "chroot", ctr, "--", "/opt/venv/bin/python", "-c", script])
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout
    finally:
        _run(["buildah", "rm", ctr])


#: uncompressed image size limit (``buildah images``), all shipped models and the template included
MAX_IMAGE_MB = 600
#: must not be in the runtime image (compilers, binutils, package managers)
BUILD_TOOLS = ("gcc", "cc", "c++", "ld", "as", "strip", "objdump", "apt-get", "dpkg", "pip", "pip3")
#: must not be importable in the runtime image (training, batch, simulator extras)
NOT_IN_IMAGE = ("torch", "dask", "distributed", "bids", "nilearn", "nibabel", "pandas", "sklearn", "matplotlib",
                "playwright", "simulator")


def test_image_size_by_part(package):
    size = _size_mb(TAG)
    sizes = json.loads(_in_image((REPO / "docker" / "image_sizes.py").read_text()).strip().splitlines()[-1])
    mb = {k: round(v / 1e6, 1) for k, v in sizes["parts"].items()}
    _record(image_size_mb=round(size, 1), size_by_part_mb=mb,
            libraries_mb={k: round(v / 1e6, 1) for k, v in list(sizes["libraries"].items())[:10]},
            models_mb={k: round(v / 1e6, 1) for k, v in sizes["models"].items()})
    assert size <= MAX_IMAGE_MB, f"image is {size:.0f} MB, more than {MAX_IMAGE_MB} MB (see docker/slim.py)"
    # the parts account for the image (tar headers and directories make the difference)
    assert 0.97 * size <= sizes["total"] / 1e6 <= 1.01 * size, (sizes["total"], size)
    host_models = sum(p.stat().st_size for p in (REPO / "models").rglob("*.onnx"))
    assert sizes["parts"]["models"] >= host_models, "every ONNX model of models/ is counted in the image"
    assert 4e6 < sizes["parts"]["templates"] < 8e6, "the template is its few NIfTI files, not a library"


def test_image_contents(package):
    script = ("import importlib.util as u, pathlib, os, shutil, hashlib; "
              "m = pathlib.Path(os.environ['OPENRECON_MODELS_DIR']); t = pathlib.Path(os.environ['OPENRECON_TEMPLATES_DIR']); "
              "import openrecon_stroke.server, SimpleITK, onnxruntime, highdicom, scipy.ndimage; "
              "from openrecon_stroke.templates import load_template; mask = load_template('mask'); "
              f"print(json.dumps({{'tools': [x for x in {BUILD_TOOLS!r} if shutil.which(x)], "
              f"'importable': [x for x in {NOT_IN_IMAGE!r} if u.find_spec(x) is not None], "
              "'py': sorted(str(p.relative_to(m)) for p in m.rglob('*.py')), "
              "'cards': sorted(str(p.parent.relative_to(m)) for p in m.rglob('card.json')), "
              "'ckpt': sorted(str(p.relative_to(m)) for p in m.rglob('*.ckpt')), "
              "'templates': {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in t.iterdir()}, "
              "'mask_voxels': int(sum(mask.GetPixel(i, j, k) for i in (60, 98, 136) for j in (80, 116, 150) "
              "for k in (60, 90, 120)))}))")
    found = json.loads(_in_image("import json; " + script).strip().splitlines()[-1])
    assert found["importable"] == [], f"not for the scanner image: {found['importable']}"
    assert found["tools"] == [], f"build tools in the runtime image: {found['tools']}"
    assert found["py"] == [] and found["ckpt"] == []
    host_cards = sorted(str(p.parent.relative_to(REPO / "models")) for p in (REPO / "models").rglob("card.json"))
    assert found["cards"] == host_cards, "every models/<name>/card.json of the repository is baked in"
    # the template: exactly the host's files (from nilearn) and the licence notice
    host = {name: tp.sha256(tp._nilearn_data_dir() / name) for name in tp.TEMPLATE_FILES.values()}
    assert {k: v for k, v in found["templates"].items() if k != tp.NOTICE_FILE} == host
    assert tp.NOTICE_FILE in found["templates"]
    assert found["mask_voxels"] >= 20  # central points of the brain are in the derived mask


# --------------------------------------------------------------------------------------------
# the server in the image against the server on the host
# --------------------------------------------------------------------------------------------
def _free_port(preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _wait_port(port: int, proc, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return time.perf_counter()
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} not open after {timeout} s")


class ImageServer:
    """The image's entrypoint run with ``buildah run`` (host network); ``store`` selects another
    container store (``--root``/``--runroot``)."""

    def __init__(self, image: str, entrypoint: list[str], log: Path, store: list[str] = (), port: int = 0):
        self.image, self.store, self.log = image, list(store), log
        self.port = _free_port(port)
        self.ctr = _run(["buildah", *self.store, "from", "--quiet", image], check=True).stdout.strip()
        cmd = ["buildah", *self.store, "run", "--isolation", "chroot", self.ctr, "--", *entrypoint,
               "--port", str(self.port)]
        self._f = open(log, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.cold_start_s = _wait_port(self.port, self.proc, 120) - t0
        except AssertionError:
            self.stop()
            raise AssertionError(log.read_text()[-3000:]) from None
        # the server listens first and loads the networks in the background: time that too
        done = ("networks loaded", "could not load")
        while time.perf_counter() - t0 < 120 and not any(d in log.read_text() for d in done):
            time.sleep(0.1)
        self.warm_s = time.perf_counter() - t0
        self.all_networks_loaded = "networks loaded" in log.read_text()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._f.close()
        _run(["buildah", *self.store, "rm", self.ctr])


@pytest.fixture(scope="module")
def container_server(image_config, tmp_path_factory):
    """The built image serving on the host network, with its study cache (inside the container)."""
    srv = ImageServer(TAG, image_config["Entrypoint"], tmp_path_factory.mktemp("container") / "server.log", port=9002)
    _record(cold_start_s=round(srv.cold_start_s, 2), warm_up_done_s=round(srv.warm_s, 2),
            all_networks_loaded=srv.all_networks_loaded, container_port=srv.port)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def host_server(tmp_path_factory):
    srv = MrdServer(("127.0.0.1", 0), ServerSettings(idle_timeout_s=120.0, cache_dir=tmp_path_factory.mktemp("cache")))
    srv.start_background()
    yield srv.port
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert simulator_main(["phantom", "--out", str(out), "--seed", "3"]) == 0
    return out


def _series_name(images) -> str:
    m = images[0].meta
    return str(m.get("SequenceDescriptionAdditional") or "ORIGINAL")


def _by_name(res) -> dict:
    out = {}
    for ims in res.series().values():
        out[_series_name(ims)] = sorted(ims, key=lambda i: (int(i.slice), int(i.image_index)))
    return out


CONTAINER_MODELS = "/opt/openrecon-stroke/models"


def _normalised(texts, models_root: str) -> list[str]:
    out = []
    for t in texts:
        for line in str(t).replace(models_root, "<models>").splitlines():
            # a model folder absent in the image (nothing of it baked in) vs. present without a card
            line = re.sub(r"(<models>\S*?)/card\.json", r"\1", line)
            out.append(re.sub(r"\d+(\.\d+)?", "#", line.strip()))
    return out


def _assert_same(inside, host, label: str, min_series: int = 2):
    a, b = _by_name(inside), _by_name(host)
    assert sorted(a) == sorted(b), f"{label}: series differ: container {sorted(a)}, host {sorted(b)}"
    assert len(a) >= min_series, (label, sorted(a))
    for name in a:
        assert len(a[name]) == len(b[name]), (label, name)
        for x, y in zip(a[name], b[name]):
            for field in ("matrix_size", "position", "read_dir", "phase_dir", "slice_dir", "field_of_view"):
                assert np.allclose(getattr(x, field), getattr(y, field)), (label, name, field)
            assert x.data.shape == y.data.shape
            if name != "REPORT":  # the report page prints timings and paths: compared as text below
                assert np.array_equal(x.data, y.data), f"{label} {name}: pixel data differ"
    # the TEXT messages (stage status, warnings) agree up to numbers and the models folder: a model
    # found on the host but not in the image (or looked up elsewhere) shows here
    assert _normalised(inside.texts, CONTAINER_MODELS) == _normalised(host.texts, str(REPO / "models")), label


def _replay(path, port, label, **kw):
    t0 = time.perf_counter()
    res = replay_file(path, port=port, timeout_s=900, **kw)
    assert res.closed_cleanly and not res.error, (label, res.error)
    return res, round(time.perf_counter() - t0, 1)


def test_t1_then_flair_on_two_connections_as_on_the_host(container_server, host_server, study):
    """A scanner sends the T1-w and the FLAIR of a study on separate connections: the second is
    fused with the first through the study cache, in the image as on the host."""
    results = {}
    for where, port in (("container", container_server.port), ("host", host_server)):
        for series in ("t1", "flair"):
            res, secs = _replay(study / f"{series}.h5", port, f"{where} {series}")
            results[where, series] = res
            _record(**{f"replay_{series}_{where}_s": secs})
    for series in ("t1", "flair"):
        inside, host = results["container", series], results["host", series]
        try:
            _assert_same(inside, host, series, min_series=4)
        except AssertionError:
            print(container_server.log.read_text()[-3000:])
            raise
    flair = _by_name(results["container", "flair"])
    assert {"LESION", "OVERLAY", "REPORT"} <= set(flair), sorted(flair)
    # the FLAIR connection used the T1-w of the first one (the fusion model ran); the T1-w alone did not
    t1_text, flair_text = (" ".join(map(str, results["container", s].texts)) for s in ("t1", "flair"))
    assert "t1_from_earlier_series" in flair_text and "lesion-voxel-fusion" in flair_text, flair_text[:1500]
    assert "t1_from_earlier_series" not in t1_text and "lesion-voxel-fusion" not in t1_text, t1_text[:1500]


def test_healthcheck_passes_while_serving(container_server, image_config):
    if container_server.port != 9002:
        pytest.skip("port 9002 was taken on this host: the HEALTHCHECK probes 9002")
    test = image_config["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    ctr = _run(["buildah", "from", "--quiet", TAG], check=True).stdout.strip()
    try:
        r = _run(["buildah", "run", "--isolation", "chroot", ctr, "--", *test[1:]], timeout=60)
    finally:
        _run(["buildah", "rm", ctr])
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------------
# deployment through a real registry (TLS with its own CA, credentials)
# --------------------------------------------------------------------------------------------
def _registry_skip() -> str | None:
    for tool in ("docker-registry", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed ({TOOLS_HINT})"
    return None


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            crypt = None
    if crypt is not None and hasattr(crypt, "METHOD_BLOWFISH"):
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
        if h and h.startswith("$2"):
            return h
    if shutil.which("htpasswd"):
        return _run(["htpasswd", "-nbB", "u", password], check=True).stdout.strip().split(":", 1)[1]
    pytest.skip("no bcrypt for the registry's htpasswd file (Python's crypt or apache2-utils' htpasswd)")


def _make_certs(d: Path, host: str) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for ``host`` (IP and localhost) signed by it."""
    d.mkdir(parents=True)
    ca_key, ca_crt, key, csr, crt = (d / n for n in ("ca.key", "ca.crt", "registry.key", "registry.csr", "registry.crt"))
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=openrecon test CA",
          "-keyout", str(ca_key), "-out", str(ca_crt)], check=True)
    _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", str(key),
          "-out", str(csr)], check=True)
    ext = d / "san.ext"
    ext.write_text(f"subjectAltName=IP:{host},DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
          "-days", "2", "-extfile", str(ext), "-out", str(crt)], check=True)
    cert_dir = d / "trust"
    cert_dir.mkdir()
    shutil.copy(ca_crt, cert_dir / "ca.crt")  # what --cert-dir takes: the CA, *.crt
    return crt, key, cert_dir


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real registry on 127.0.0.1 (TLS, htpasswd); yields a dict of how to reach it."""
    why = _registry_skip()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("registry")
    host = "127.0.0.1"
    port = _free_port()
    crt, key, cert_dir = _make_certs(d / "certs", host)
    user, password = "mrsite", hashlib.sha256(os.urandom(16)).hexdigest()[:20]
    (d / "htpasswd").write_text(f"{user}:{_bcrypt(password)}\n")
    (d / "config.yml").write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {d / "storage"}
http:
  addr: {host}:{port}
  tls:
    certificate: {crt}
    key: {key}
auth:
  htpasswd:
    realm: openrecon-test
    path: {d / "htpasswd"}
""")
    log = open(d / "registry.log", "w")
    proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_port(port, proc, 30)
    except AssertionError:
        os.killpg(proc.pid, signal.SIGTERM)
        raise AssertionError((d / "registry.log").read_text()[-2000:]) from None
    reg = dict(address=f"{host}:{port}", cert_dir=cert_dir, user=user, password=password, dir=d,
               authfile=d / "auth.json", repo=f"{host}:{port}/openrecon")
    # the README's way: buildah login with the site's CA, the password on stdin, into an authfile
    r = _run(["buildah", "login", "--authfile", str(reg["authfile"]), "--cert-dir", str(cert_dir), "-u", user,
              "--password-stdin", reg["address"]], input=password)
    assert r.returncode == 0 and reg["authfile"].is_file(), r.stderr
    yield reg
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    log.close()


def _registry_get(reg: dict, path: str, accept: str) -> tuple[dict, bytes]:
    """GET on the registry's HTTP API, TLS verified against the test CA, basic credentials."""
    ctx = ssl.create_default_context(cafile=str(reg["cert_dir"] / "ca.crt"))
    req = urllib.request.Request(f"https://{reg['address']}{path}", headers={
        "Accept": accept,
        "Authorization": "Basic " + base64.b64encode(f"{reg['user']}:{reg['password']}".encode()).decode()})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return dict(r.headers), r.read()


def _build_sh_push(reg: dict, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run([str(REPO / "docker" / "build.sh"), "--engine", "buildah", "--push-only", "--push", reg["repo"],
                 "--out", str(out), *extra], cwd=REPO)


@pytest.fixture(scope="module")
def pushed(package, registry, tmp_path_factory):
    """``docker/build.sh --push-only --push REGISTRY`` with credentials and the CA; the pushed reference."""
    out = tmp_path_factory.mktemp("push")
    t0 = time.perf_counter()
    r = _build_sh_push(registry, out, "--authfile", str(registry["authfile"]), "--cert-dir", str(registry["cert_dir"]))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    ref = (out / "pushed.txt").read_text().strip()
    _record(push_s=round(time.perf_counter() - t0, 1), pushed=ref)
    assert ref.startswith(f"{registry['repo']}/{TAG.split(':')[0]}@sha256:") and ref in r.stdout
    return ref


def test_push_needs_credentials_and_the_ca(package, registry, tmp_path):
    r = _build_sh_push(registry, tmp_path / "a", "--cert-dir", str(registry["cert_dir"]),
                       "--authfile", str(_empty_authfile(tmp_path)))
    assert r.returncode == 1 and "needs credentials" in r.stderr, r.stderr[-2000:]
    r = _build_sh_push(registry, tmp_path / "b", "--authfile", str(registry["authfile"]))
    assert r.returncode == 1 and "certificate" in r.stderr.lower() and "--cert-dir" in r.stderr, r.stderr[-2000:]


def _empty_authfile(d: Path) -> Path:
    p = d / "empty-auth.json"
    p.write_text('{"auths": {}}\n')
    return p


@pytest.fixture(scope="module")
def pulled(pushed, registry, tmp_path_factory):
    """The pushed image pulled by digest into a clean container store; (store options, image id)."""
    d = tmp_path_factory.mktemp("clean-store")
    store = ["--root", str(d / "root"), "--runroot", str(d / "run")]
    assert _run(["buildah", *store, "images", "--quiet"], check=True).stdout.strip() == ""  # clean
    t0 = time.perf_counter()
    r = _run(["buildah", *store, "pull", "--quiet", "--authfile", str(registry["authfile"]),
              "--cert-dir", str(registry["cert_dir"]), f"docker://{pushed}"])
    assert r.returncode == 0, r.stderr[-2000:]
    _record(pull_s=round(time.perf_counter() - t0, 1))
    yield store, r.stdout.strip().splitlines()[-1]
    _run(["buildah", *store, "rm", "--all"])
    _run(["buildah", *store, "rmi", "--all", "--force"])


def test_pulled_image_has_the_pushed_digest_and_label(pushed, pulled, registry, image_config):
    store, image_id = pulled
    digest = pushed.split("@", 1)[1]
    listed = _run(["buildah", *store, "images", "--digests", "--format", "{{.Digest}}"], check=True).stdout.split()
    assert listed == [digest]
    # the registry serves that digest for the tag, and the manifest's bytes hash to it
    repo_path = pushed.split("/", 1)[1].split("@")[0]
    headers, body = _registry_get(registry, f"/v2/{repo_path}/manifests/{TAG.split(':')[1]}",
                                  "application/vnd.docker.distribution.manifest.v2+json")
    assert headers.get("Docker-Content-Digest") == digest
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    labels = _inspect(image_id, store)["Docker"]["config"]["Labels"]
    assert labels[mf.LABEL_KEY] == image_config["Labels"][mf.LABEL_KEY]
    assert base64.b64decode(labels[mf.LABEL_KEY]).decode() == mf.manifest_text()


def test_pulled_image_serves_a_study(pulled, image_config, host_server, study, tmp_path):
    store, image_id = pulled
    srv = ImageServer(image_id, image_config["Entrypoint"], tmp_path / "pulled.log", store=store)
    try:
        inside, secs = _replay(study / "t1.h5", srv.port, "pulled image", config="headmask")
        _record(pulled_cold_start_s=round(srv.cold_start_s, 2), replay_t1_headmask_pulled_s=secs)
    finally:
        srv.stop()
    host, _ = _replay(study / "t1.h5", host_server, "host", config="headmask")
    _assert_same(inside, host, "pulled headmask", min_series=2)
    assert "HEADMASK" in _by_name(inside)
