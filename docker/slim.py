#!/usr/bin/env python3
"""Make the OpenRecon runtime image small: run in the builder stage of docker/Dockerfile.

``slim.py venv VENV``
    Trims an installed virtual environment to what ``openrecon_stroke`` needs at run time:
    drops the parts of packages it never imports (see the lists below), test suites, type stubs,
    C headers; compacts highdicom's DICOM-standard tables; strips the symbol tables of every
    shared library (``strip --strip-unneeded``, binutils stay in the builder); removes bundled
    libraries (``*.libs/``) that nothing links any more and links duplicates; drops the
    project's ``simulator`` package; precompiles the bytecode and, for third-party packages, keeps
    the bytecode only (``openrecon_stroke`` keeps its sources).

``slim.py rootfs DEST --venv VENV``
    Copies into DEST the smallest root file system that runs the venv: the Python interpreter
    and its standard library as bytecode (without test/idle/tk/ensurepip/ssl/...), the shared
    libraries that the interpreter, its extension modules and the venv's libraries load (ldd
    closure), /bin/sh,
    the time zone data, /etc basics and an ld.so cache. No package manager, compiler or binutils.
    The final image stage is ``FROM scratch`` + this DEST + the venv.

``slim.py check VENV [--root DEST]``
    Every module that ``openrecon_stroke`` imports (anywhere in its sources, also inside
    functions) must import in the trimmed venv, if its distribution is installed at all (optional
    extras such as the training dependencies are not); no distribution of
    ``FORBIDDEN_DISTRIBUTIONS`` (PyTorch, the batch extra's Dask and pybids, nilearn, ...) may be
    installed. With ``--root`` the check runs chrooted in DEST, on the trimmed standard library
    and the copied shared libraries. Run by the Dockerfile after trimming, so that a new
    ``from scipy import signal`` or ``import ssl`` fails the build, not the scanner.

Python 3.9+, standard library only.
"""

from __future__ import annotations

import argparse
import ast
import compileall
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# --------------------------------------------------------------------------------------------
# what the runtime does not need
# --------------------------------------------------------------------------------------------
#: distributions pulled in by dependencies that no run-time code path imports:
#: pyjpegls (JPEG-LS codec: an optional pydicom pixel plugin; we write uncompressed DICOM),
#: protobuf and flatbuffers (onnxruntime's model tools, quantisation and transformer helpers).
DROP_DISTRIBUTIONS = ("pyjpegls", "protobuf", "flatbuffers")

#: scipy sub-packages kept (the code uses scipy.ndimage, which imports scipy.special and _lib);
#: the other sub-packages (linalg, sparse, stats, optimize, signal, io, ...) are removed.
SCIPY_KEEP = {"_lib", "ndimage", "special"}

#: paths relative to site-packages removed when present
DROP_PATHS = (
    "onnxruntime/transformers", "onnxruntime/quantization", "onnxruntime/tools",
    "onnxruntime/datasets",
    "PIL/_avif.*.so", "PIL/_imagingtk.*.so",           # AVIF codec (5 MB with libavif), Tk
    "PIL/_webp.*.so", "PIL/_imagingcms.*.so",           # WebP codec, colour management (1.3 MB of libraries)
    "numpy/_core/include", "numpy/_core/lib", "numpy/random/_examples",
    "numpy/f2py/src", "numpy/distutils", "numpy/_core/_simd.*.so",  # build tools, SIMD tests (scipy imports f2py)
    "numpy/_pyinstaller", "scipy/_lib/cobyqa", "scipy/_lib/pyprima",
    "pydicom/data/test_files",                          # test data (hash lists stay)
    "SimpleITK/docs",
)
#: folder names removed anywhere in site-packages
DROP_DIR_NAMES = {"tests", "__pycache__"}
#: file patterns removed anywhere in site-packages
DROP_FILE_RE = re.compile(r".*\.(pyi|pxd|pyx|h|hpp|c|cpp|a|la|cmake)$")
#: JSON data files rewritten without indentation (json.loads gives the same objects)
COMPACT_JSON = ("highdicom/_standard/*.json",)
#: top-level packages that keep their Python sources next to the bytecode (tracebacks with code)
KEEP_SOURCES = {"openrecon_stroke"}
#: top-level packages of the project wheel that the server never imports (the simulator needs
#: nilearn/nibabel, which are not in the image)
DROP_TOP_LEVEL = ("simulator",)
#: distributions that must not be in the scanner image: PyTorch (training extra), the batch
#: extra (Dask, pybids), nilearn/nibabel (the template ships as files), browser tooling, and
#: what those pull in. ``check`` fails the build when one is installed.
FORBIDDEN_DISTRIBUTIONS = ("torch", "nvidia-*", "triton", "dask", "distributed", "pybids", "bids",
                           "nilearn", "nibabel", "pandas", "scikit-learn", "matplotlib", "playwright",
                           "selenium", "pyppeteer", "jupyter*", "ipython")

#: parts of the standard library not needed at run time
STDLIB_DROP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "distutils", "site-packages", "dist-packages", "__phello__", "turtle.py"}
STDLIB_DROP_RE = re.compile(r"^config-\d")
#: ... at any depth: test suites, and bytecode for python -O / -OO
STDLIB_DROP_ANY = {"test", "tests", "idle_test"}
STDLIB_DROP_FILE_RE = re.compile(r".*\.opt-\d\.pyc$")
#: extension modules not needed (Tk, curses, readline, dbm, NIS, crypt, audio, CPython's tests; TLS and
#: OpenSSL hashes: the server makes no TLS connection and hashlib falls back to its built-in SHA-2,
#: SHA-3, BLAKE2 and MD5): without them their system libraries (tcl/tk, X11, ncurses, Berkeley DB,
#: tirpc, OpenSSL 5.4 MB, ...) stay out. (sqlite3 stays: highdicom indexes frames with it.)
DYNLOAD_DROP_RE = re.compile(r"^(_tkinter|_curses|_curses_panel|readline|_dbm|_gdbm|nis|_crypt|ossaudiodev|spwd|"
                             r"_ssl|_hashlib|"
                             r"_test\w*|_xxtestfuzz|_ctypes_test|xxlimited\w*|xxsubtype)\.")


def log(msg: str) -> None:
    print(f"[slim] {msg}", flush=True)


def du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def is_elf(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _digest(p: Path) -> str:
    import hashlib
    h = hashlib.blake2b()  # built into CPython (no OpenSSL needed)
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def needed(p: Path) -> set[str]:
    """DT_NEEDED entries of an ELF file (readelf, from binutils: builder stage only)."""
    out = subprocess.run(["readelf", "-d", str(p)], capture_output=True, text=True).stdout
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))


# --------------------------------------------------------------------------------------------
# venv
# --------------------------------------------------------------------------------------------
def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"no single site-packages under {venv}: {found}")
    return found[0]


def uninstall(sp: Path, info: Path) -> None:
    """Remove an installed distribution: the files its RECORD lists, then empty folders."""
    import csv
    dirs = set()
    with open(info / "RECORD", newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if not row:
                continue
            p = (sp / row[0]).resolve()
            if sp.resolve() not in p.parents:
                continue  # a console script in bin/ or the like: left alone
            if p.is_file() or p.is_symlink():
                p.unlink()
            dirs.add(p.parent)
    for d in sorted(dirs, key=lambda d: -len(d.parts)):
        for sub in [d, *d.parents]:
            if sub == sp.resolve() or not sub.is_dir():
                break
            pyc = sub / "__pycache__"
            if pyc.is_dir() and not any(x.suffix == ".py" for x in sub.iterdir()):
                shutil.rmtree(pyc)
            if any(sub.iterdir()):
                break
            sub.rmdir()
    if info.exists():
        shutil.rmtree(info)


def slim_venv(venv: Path) -> None:
    sp = site_packages(venv)
    start = du(venv)
    log(f"venv {venv}: {mb(start)}")

    # 1. distributions nothing imports at run time: their files as listed in RECORD
    for name in DROP_DISTRIBUTIONS:
        for info in sp.glob(f"{name}-*.dist-info"):
            uninstall(sp, info)
            log(f"dropped distribution {info.name}")

    # 2. parts of packages
    for sub in sorted((sp / "scipy").iterdir()) if (sp / "scipy").is_dir() else []:
        if sub.is_dir() and sub.name not in SCIPY_KEEP and not sub.name.startswith("__"):
            shutil.rmtree(sub)
    for pattern in DROP_PATHS:
        for p in sp.glob(pattern):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    ort = sp / "onnxruntime" / "capi"
    if ort.is_dir():
        # the C-API library is for C/C++ users: the Python module links the runtime in itself
        pyd = list(ort.glob("onnxruntime_pybind11_state*.so"))
        linked = set().union(*(needed(m) for m in pyd)) if pyd else {"libonnxruntime.so"}
        if not any(n.startswith("libonnxruntime.so") for n in linked):
            for lib in ort.glob("libonnxruntime.so*"):
                lib.unlink()
    for root, dirs, files in os.walk(sp, topdown=True):
        for d in list(dirs):
            if d in DROP_DIR_NAMES:
                shutil.rmtree(os.path.join(root, d))
                dirs.remove(d)
        for f in files:
            if DROP_FILE_RE.match(f):
                os.unlink(os.path.join(root, f))
    for name in DROP_TOP_LEVEL:
        if (sp / name).is_dir():
            shutil.rmtree(sp / name)
            log(f"dropped package {name}/ (not used by the server)")
    for name in ("pip", "setuptools", "wheel", "pkg_resources", "_distutils_hack", "distutils-precedence.pth"):
        for p in sp.glob(name):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for p in sp.glob(f"{name}-*.dist-info"):
            shutil.rmtree(p)
    for p in venv.glob("bin/pip*"):
        p.unlink()

    # 3. compact JSON tables
    for pattern in COMPACT_JSON:
        for p in sp.glob(pattern):
            text = p.read_text(encoding="utf-8")
            compact = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
            assert json.loads(compact) == json.loads(text)
            p.write_text(compact, encoding="utf-8")

    # 4. strip shared libraries. strip can break libraries that auditwheel's patchelf rewrote
    #    ("ELF load command address/offset not page-aligned"): each stripped file is loaded in a
    #    fresh process and put back as it was if that fails.
    elfs = [Path(r) / f for r, _d, fs in os.walk(sp) for f in fs
            if (".so" in f) and not os.path.islink(os.path.join(r, f)) and is_elf(Path(r) / f)]
    before = sum(p.stat().st_size for p in elfs)
    backups = {}
    for p in elfs:
        tmp = p.with_name(p.name + ".stripped")
        subprocess.run(["strip", "--strip-unneeded", "-o", str(tmp), str(p)], check=True)
        if tmp.stat().st_size < p.stat().st_size:
            backup = p.with_name(p.name + ".orig")
            os.replace(p, backup)
            os.replace(tmp, p)
            shutil.copymode(backup, p)
            backups[p] = backup
        else:
            tmp.unlink()
    reverted = []
    for p, backup in backups.items():
        r = subprocess.run([sys.executable, "-I", "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", str(p)],
                           cwd="/", capture_output=True, text=True)
        if r.returncode != 0:  # e.g. "ELF load command address/offset not page-aligned"
            os.replace(backup, p)
            reverted.append(p.name)
        else:
            backup.unlink()
    log(f"stripped {len(backups) - len(reverted)} shared libraries ({len(reverted)} left as they were: "
        f"{', '.join(reverted) or '-'}): {mb(before)} -> {mb(sum(p.stat().st_size for p in elfs))}")

    # 5. bundled libraries (auditwheel's <pkg>.libs/) that no remaining ELF file links
    while True:
        elfs = [p for p in elfs if p.exists()]
        used = set().union(*(needed(p) for p in elfs))
        unused = [p for p in elfs if p.parent.name.endswith(".libs") and p.name not in used]
        if not unused:
            break
        for p in unused:
            log(f"unused bundled library: {p.relative_to(sp)}")
            p.unlink()

    # 5b. bundled libraries shipped twice with the same bytes (numpy.libs and scipy.libs both carry
    #     the same libgfortran and libquadmath): the later copies become relative symlinks
    seen: dict[tuple[int, str], Path] = {}
    saved = 0
    for p in sorted(q for q in sp.glob("*.libs/*") if q.is_file() and not q.is_symlink()):
        key = (p.stat().st_size, _digest(p))
        if key in seen:
            p.unlink()
            p.symlink_to(os.path.relpath(seen[key], p.parent))
            saved += key[0]
            log(f"duplicate bundled library: {p.relative_to(sp)} -> {seen[key].relative_to(sp)}")
        else:
            seen[key] = p
    if saved:
        log(f"duplicates linked: {mb(saved)} saved")

    # 6. bytecode, compiled here at the final path. Third-party packages keep the bytecode only,
    #    in the legacy layout (module.pyc where module.py was: imports without the source);
    #    KEEP_SOURCES keep their sources (tracebacks show the code) with __pycache__.
    sourceless = 0
    for top in sorted(sp.iterdir()):
        if top.name.endswith((".dist-info", ".libs")) or (top.is_file() and top.suffix != ".py"):
            continue
        legacy = top.name not in KEEP_SOURCES
        # sources kept: bytecode checked against a hash of the source, not its mtime (which a
        # COPY between stages need not keep), so that it is never stale nor recompiled
        kw = dict(quiet=1, legacy=legacy,
                  invalidation_mode=None if legacy else py_compile.PycInvalidationMode.CHECKED_HASH)
        if top.is_dir():
            ok = compileall.compile_dir(str(top), **kw)
        else:
            ok = compileall.compile_file(str(top), **kw)
        if not ok:
            raise SystemExit(f"compileall failed for {top}")
        if legacy:
            for src in [top] if top.is_file() else list(top.rglob("*.py")):
                if src.with_suffix(".pyc").is_file():
                    sourceless += src.stat().st_size
                    src.unlink()
    log(f"bytecode only for third-party packages: {mb(sourceless)} of sources dropped")
    log(f"venv {venv}: {mb(start)} -> {mb(du(venv))}")


# --------------------------------------------------------------------------------------------
# rootfs
# --------------------------------------------------------------------------------------------
class Tree:
    """Copies paths of this root into DEST, keeping symlinks (and the symlinks on the way)."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.done: set[str] = set()

    def _link(self, p: str) -> str:
        """Recreate symlink p in dest; return the absolute path it points to."""
        target = os.readlink(p)
        d = self.dest / p.lstrip("/")
        d.parent.mkdir(parents=True, exist_ok=True)
        if not d.is_symlink():
            if d.exists():
                shutil.rmtree(d) if d.is_dir() else d.unlink()
            os.symlink(target, d)
        return os.path.normpath(os.path.join(os.path.dirname(p), target))

    def add(self, p: str) -> None:
        """Copy p (file, symlink chain or directory tree) with every symlinked parent on the way."""
        p = os.path.normpath(p)
        if p in self.done:
            return
        self.done.add(p)
        # symlinked parents (/lib -> usr/lib, ...): recreate, continue under the target
        parts = p.strip("/").split("/")
        cur = ""
        for i, part in enumerate(parts[:-1]):
            cur += "/" + part
            if os.path.islink(cur):
                tgt = self._link(cur)
                self.add(tgt)  # the directory the link points to (as a directory entry only)
                return self.add(os.path.join(tgt, *parts[i + 1:]))
        if os.path.islink(p):
            self.add(self._link(p))
            return
        d = self.dest / p.lstrip("/")
        if os.path.isdir(p):
            d.mkdir(parents=True, exist_ok=True)
            shutil.copystat(p, d)
            return
        if os.path.isfile(p):
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, d)

    def add_tree(self, root: str, skip=lambda rel: False) -> None:
        for r, dirs, files in os.walk(root):
            rel_r = os.path.relpath(r, root)
            for dname in list(dirs):
                rel = os.path.normpath(os.path.join(rel_r, dname))
                full = os.path.join(r, dname)
                if skip(rel):
                    dirs.remove(dname)
                elif os.path.islink(full):
                    self.add(full)
                    dirs.remove(dname)
            self.add(r)
            for f in files:
                rel = os.path.normpath(os.path.join(rel_r, f))
                if not skip(rel):
                    self.add(os.path.join(r, f))


LDD_RE = re.compile(r"^\s*(?:(\S+) => )?(\S+) \(0x[0-9a-f]+\)$")


def ldd(paths: list[str]) -> tuple[set[str], list[str]]:
    libs, missing = set(), []
    for p in paths:
        r = subprocess.run(["ldd", p], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            if "not found" in line:
                missing.append(f"{p}: {line.strip()}")
                continue
            m = LDD_RE.match(line)
            if m and m.group(2).startswith("/"):
                libs.add(m.group(2))
    return libs, missing


def make_rootfs(dest: Path, venv: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    t = Tree(dest)
    # usr-merged top-level links first, so that /lib/... lands in /usr/lib/...
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        if os.path.islink(f"/{name}"):
            t.add(f"/{name}")
    # the interpreter: the venv's python and whatever its links lead to
    home = None
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        if line.split("=")[0].strip() == "home":
            home = line.split("=", 1)[1].strip()
    exe = os.path.realpath(venv / "bin" / "python")
    t.add(exe)
    if home:
        for name in ("python3", f"python3.{sys.version_info.minor}", "python"):
            if os.path.lexists(os.path.join(home, name)):
                t.add(os.path.join(home, name))
    # the standard library of that interpreter (this script runs with it), as bytecode only: each
    # module compiled into DEST in the legacy layout (module.pyc where module.py was, imported
    # without its source, the file name in tracebacks still the real path), the sources left out
    stdlib = sysconfig.get_paths()["stdlib"]

    def skip_std(rel: str) -> bool:
        parts = rel.split("/")
        return (parts[0] in STDLIB_DROP or bool(STDLIB_DROP_RE.match(parts[0]))
                or any(x in STDLIB_DROP_ANY for x in parts) or parts[-1] == "__pycache__"
                or bool(STDLIB_DROP_FILE_RE.match(parts[-1]))
                or (len(parts) == 2 and parts[0] == "lib-dynload" and bool(DYNLOAD_DROP_RE.match(parts[1]))))
    t.add_tree(stdlib, skip_std)
    for key in ("platstdlib",):
        other = sysconfig.get_paths()[key]
        if other != stdlib:
            t.add_tree(other, skip_std)
    dest_std = dest / stdlib.lstrip("/")
    if not compileall.compile_dir(str(dest_std), ddir=stdlib, legacy=True, quiet=2):
        raise SystemExit(f"compileall failed for the standard library in {dest_std}")
    sources = [p for p in dest_std.rglob("*.py") if p.with_suffix(".pyc").is_file()]
    log(f"standard library as bytecode only: {mb(sum(p.stat().st_size for p in sources))} of sources dropped")
    for p in sources:
        p.unlink()
    # libpython only when something links it (python:3.11-slim's interpreter does; Debian's
    # /usr/bin/python3.11 is static): the ldd closure below adds it then
    # /bin/sh (dash on Debian) for shell-form commands and debugging
    t.add("/bin/sh")
    # shared libraries: closure over every ELF file of the new root and of the venv
    elfs = [str(p) for p in dest.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p)]
    elfs = ["/" + str(Path(p).relative_to(dest)) for p in elfs]
    elfs += [str(p) for p in venv.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p)]
    libs, missing = ldd(elfs)
    if missing:
        raise SystemExit("libraries not found:\n  " + "\n  ".join(missing))
    for lib in sorted(libs):
        if not lib.startswith(str(venv)):
            t.add(lib)
    # libraries loaded by name at run time, not listed as NEEDED (glibc's unwinder, C.UTF-8)
    for extra in ("/usr/lib/x86_64-linux-gnu/libgcc_s.so.1", "/usr/lib/locale/C.utf8"):
        if os.path.exists(extra):
            (t.add_tree if os.path.isdir(extra) and not os.path.islink(extra) else t.add)(extra)
    # time zones (TZ=Europe/Berlin and the like), users, name service, os-release
    if os.path.isdir("/usr/share/zoneinfo"):
        t.add_tree("/usr/share/zoneinfo", lambda rel: rel.split("/")[0] in {"right", "posix"})
    for p in ("/etc/passwd", "/etc/group", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/os-release",
              "/usr/lib/os-release", "/etc/localtime", "/etc/debian_version"):
        if os.path.isdir(p) and not os.path.islink(p):
            t.add_tree(p)
        elif os.path.lexists(p):
            t.add(p)
    (dest / "etc").mkdir(exist_ok=True)
    (dest / "etc" / "nsswitch.conf").write_text("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")
    for d, mode in (("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700), ("opt", 0o755), ("dev", 0o755),
                    ("proc", 0o555), ("sys", 0o555), ("run", 0o755), ("etc", 0o755)):
        (dest / d).mkdir(parents=True, exist_ok=True)
        os.chmod(dest / d, mode)
    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if ldconfig:
        subprocess.run([ldconfig, "-r", str(dest)], check=True)
    log(f"rootfs {dest}: {mb(du(dest))} ({len(libs)} shared libraries)")


# --------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------
def imported_modules(src: Path) -> set[str]:
    mods = set()
    for f in src.rglob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module)
                # "from scipy import ndimage": scipy.ndimage may be a sub-package
                mods.update(f"{node.module}.{a.name}" for a in node.names if a.name != "*")
    return mods


CHECK_SCRIPT = r"""
import fnmatch, importlib, importlib.metadata, importlib.util, json, pkgutil, re, sys
mods = json.loads(sys.argv[1])
forbidden = json.loads(sys.argv[2])
installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in importlib.metadata.distributions()}
extra = sorted(n for n in installed if any(fnmatch.fnmatch(n, f) for f in forbidden))
if extra:
    print(f"[slim] not for the scanner image (training/batch/simulator extras): {', '.join(extra)}", file=sys.stderr)
    sys.exit(1)
import openrecon_stroke
pkgs = [m.name for m in pkgutil.walk_packages(openrecon_stroke.__path__, "openrecon_stroke.")
        if not m.name.endswith("__main__")]
bad = []
for name in pkgs:
    try:
        importlib.import_module(name)
    except Exception as e:
        bad.append(f"{name}: {type(e).__name__}: {e}")
for name in mods:
    top = name.split(".")[0]
    if top == "openrecon_stroke" or importlib.util.find_spec(top) is None:
        continue  # not installed: an optional extra (training, simulator)
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        # "from pkg import attr": attr is no module; fine if pkg has it
        parent, _, attr = name.rpartition(".")
        try:
            if parent and hasattr(importlib.import_module(parent), attr):
                continue
        except Exception:
            pass
        bad.append(f"{name}: {e}")
    except Exception as e:
        bad.append(f"{name}: {type(e).__name__}: {e}")
print(f"[slim] check: {len(pkgs)} openrecon_stroke modules, {len(mods)} imported names")
if bad:
    print("[slim] import failures in the trimmed venv:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
"""


def check(venv: Path, root: Path | None = None) -> None:
    """Import everything ``openrecon_stroke`` imports with the venv's python; with ``root``, inside
    that root file system (chroot; the venv is hard-linked in for the check and removed after), so
    that the trimmed standard library and the shared libraries copied there are what is tested."""
    sp = site_packages(venv)
    src = sp / "openrecon_stroke"
    mods = sorted(m for m in imported_modules(src) if not m.startswith("."))
    cmd = [str(venv / "bin" / "python"), "-I", "-c", CHECK_SCRIPT, json.dumps(mods), json.dumps(FORBIDDEN_DISTRIBUTIONS)]
    if root is None:
        if subprocess.run(cmd, cwd="/").returncode != 0:
            raise SystemExit("[slim] check failed (see above)")
        return
    inside = root / str(venv).lstrip("/")
    if inside.exists():
        raise SystemExit(f"{inside} exists already")
    made = [d for d in [inside.parent, *inside.parent.parents] if not d.exists()]  # deepest first
    inside.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(venv), str(inside)], check=True)
    try:
        if subprocess.run(["chroot", str(root), *cmd]).returncode != 0:
            raise SystemExit(f"[slim] check failed inside {root} (see above)")
    finally:
        shutil.rmtree(inside)
        for d in made:  # the folders made for it
            d.rmdir()
    log(f"check passed inside {root}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("venv")
    a.add_argument("venv", type=Path)
    a = sub.add_parser("rootfs")
    a.add_argument("dest", type=Path)
    a.add_argument("--venv", type=Path, required=True)
    a = sub.add_parser("check")
    a.add_argument("venv", type=Path)
    a.add_argument("--root", type=Path, help="run the check chrooted in this root file system (see rootfs)")
    args = ap.parse_args(argv)
    if args.cmd == "venv":
        slim_venv(args.venv)
    elif args.cmd == "rootfs":
        make_rootfs(args.dest, args.venv)
    else:
        check(args.venv, args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
