"""A bounded on-disk cache of preprocessed series, so that a series arriving on a later
connection (the normal case on a scanner: one protocol, one run) can be fused with an earlier
series of the same study.

Entries are keyed by study identity (frame of reference UID, else study instance UID, with the
patient id) and contrast. Each entry is a folder holding SimpleITK images (``.mha``, LPS,
exact geometry) and ``meta.json``; it is written to a temporary folder and renamed, so a
reader never sees half an entry. Entries expire after ``ttl_s``; beyond ``max_entries`` the
oldest go first. An unreadable entry is deleted and reported, never fatal.

A series' entries are written while its connection still runs, but the scanner need not wait for
the disk: :meth:`StudyCache.put_later` writes on the cache's own writer thread, and :meth:`get`
of an entry still being written waits for it (the next series of a study arrives minutes later
on a scanner; a write that fails is reported and the entry is simply absent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

log = logging.getLogger(__name__)


def study_key(info: dict) -> str | None:
    """Cache key of a series' study, or None when the series carries no study identity."""
    ident = info.get("frame_of_reference_uid") or info.get("study_uid")
    if not ident:
        return None
    raw = f"{info.get('patient_id', '')}|{ident}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class StudyCache:
    def __init__(self, root: str | Path, ttl_s: float = 2 * 3600, max_entries: int = 16):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None
        self._pending: dict[Path, Future] = {}

    def _dir(self, key: str, contrast: str) -> Path:
        if not key.isalnum() or not contrast.isalnum():
            raise ValueError("cache keys are alphanumeric")
        return self.root / f"{key}_{contrast}"

    def put(self, key: str, contrast: str, images: dict[str, sitk.Image], meta: dict) -> Path:
        """Store named images and JSON-able meta for (study, contrast), replacing any older entry."""
        final = self._dir(key, contrast)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp_", dir=self.root))
        try:
            for name, img in images.items():
                if not name.isidentifier():
                    raise ValueError(f"bad image name {name!r}")
                # uncompressed: zlib cost ~1 s of the scanner's wait on a 1 mm T1-w (~60 MB a
                # series uncompressed; at most max_entries of them)
                sitk.WriteImage(img, str(tmp / f"{name}.mha"), useCompression=False)
            (tmp / "meta.json").write_text(json.dumps({"created": time.time(), "images": sorted(images), "meta": meta}))
            with self._lock:
                if final.exists():
                    shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
                self._evict_locked()
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def put_later(self, key: str, contrast: str, images: dict[str, sitk.Image], meta: dict) -> None:
        """:meth:`put` on the cache's writer thread; returns at once. The images must not be
        changed afterwards (SimpleITK filters make new images; nothing here writes into one).
        A :meth:`get` of the same entry waits for the write; a failed write is logged."""
        d = self._dir(key, contrast)  # a bad key fails here, in the caller
        with self._lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, "study-cache")
            fut = self._writer.submit(self._write, key, contrast, images, meta)
            self._pending[d] = fut

        def done(f: Future) -> None:
            with self._lock:
                if self._pending.get(d) is f:
                    del self._pending[d]

        fut.add_done_callback(done)

    def _write(self, key: str, contrast: str, images: dict[str, sitk.Image], meta: dict) -> None:
        try:
            self.put(key, contrast, images, meta)
        except Exception as e:  # the entry is absent; a later series is analysed without it
            log.warning("study cache entry %s_%s could not be written (%s)", key, contrast, e)

    def wait(self, timeout_s: float = 60.0) -> None:
        """Wait for every write :meth:`put_later` has started (for tests)."""
        with self._lock:
            pending = list(self._pending.values())
        for f in pending:
            f.result(timeout=timeout_s)

    def get(self, key: str, contrast: str, wait_s: float = 60.0) -> tuple[dict[str, sitk.Image], dict] | None:
        """The stored images and meta, or None (absent, expired, or unreadable). An entry that
        :meth:`put_later` is still writing is waited for, at most ``wait_s`` seconds."""
        d = self._dir(key, contrast)
        with self._lock:
            fut = self._pending.get(d)
        if fut is not None:
            try:
                fut.result(timeout=wait_s)
            except TimeoutError:
                log.warning("study cache entry %s is still being written after %.0f s; not used", d.name, wait_s)
                return None
        with self._lock:
            if not d.exists():
                return None
            try:
                info = json.loads((d / "meta.json").read_text())
                if time.time() - float(info["created"]) > self.ttl_s:
                    shutil.rmtree(d, ignore_errors=True)
                    return None
                images = {n: sitk.ReadImage(str(d / f"{n}.mha")) for n in info["images"]}
                return images, info["meta"]
            except Exception as e:  # corrupt entry: drop it, carry on without
                log.warning("study cache entry %s is unreadable (%s); it was deleted", d.name, e)
                shutil.rmtree(d, ignore_errors=True)
                return None

    def _evict_locked(self):
        now = time.time()
        entries = []
        for d in self.root.iterdir():
            if d.name.startswith(".tmp_") or not d.is_dir():
                continue
            try:
                created = float(json.loads((d / "meta.json").read_text())["created"])
            except Exception:
                created = 0.0  # unreadable: evict first
            if now - created > self.ttl_s:
                shutil.rmtree(d, ignore_errors=True)
            else:
                entries.append((created, d))
        entries.sort()
        for _, d in entries[: max(0, len(entries) - self.max_entries)]:
            shutil.rmtree(d, ignore_errors=True)
