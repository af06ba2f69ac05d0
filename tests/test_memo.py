"""Work done once per study (openrecon_stroke.memo): content digests and the bounded memo."""

import numpy as np
import pytest
import SimpleITK as sitk

from openrecon_stroke import memo
from openrecon_stroke.memo import ContentMemo, digest


def test_digest_follows_values_dtype_shape_and_grid():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert digest(a) == digest(a.copy()) == digest(np.asfortranarray(a))  # contents, not memory layout
    b = a.copy()
    b[1, 2, 3] += 1e-3
    assert digest(b) != digest(a)
    assert digest(a.astype(np.float64)) != digest(a)
    assert digest(a.reshape(4, 3, 2)) != digest(a)
    img = sitk.GetImageFromArray(a)
    moved = sitk.Image(img)
    moved.SetOrigin((0.0, 0.0, 0.5))
    assert digest(img) == digest(sitk.GetImageFromArray(a)) and digest(moved) != digest(img)
    tx = sitk.AffineTransform(3)
    tx2 = sitk.AffineTransform(3)
    tx2.SetTranslation((0.0, 1.0, 0.0))
    assert digest(tx) != digest(tx2)
    assert digest({"wm": 1.0, "gm": 0.7}) == digest({"gm": 0.7, "wm": 1.0}) != digest({"gm": 0.7, "wm": 1.01})
    assert digest("t1", None) != digest("t1", 0)
    with pytest.raises(TypeError):
        digest(object())


def test_memo_keeps_by_bytes_least_recently_used_out_first(monkeypatch):
    monkeypatch.delenv(memo.MEMO_ENV, raising=False)
    m: ContentMemo[np.ndarray] = ContentMemo("test", max_bytes=3000)
    for k in "abc":
        m.put(k, np.zeros(1000, np.uint8))
    assert m.get("a") is not None  # a is now the most recently used
    m.put("d", np.zeros(1000, np.uint8))  # over 3000 bytes: b goes
    assert m.get("b") is None and m.get("c") is not None and m.get("d") is not None
    assert m.held_bytes() == 3000
    m.put("big", np.zeros(4000, np.uint8))  # larger than the memo: not kept, nothing pushed out
    assert m.get("big") is None and m.held_bytes() == 3000
    made = []
    value, reused = m.get_or_make("e", lambda: made.append(1) or np.ones(10))
    again, reused2 = m.get_or_make("e", lambda: made.append(1) or np.ones(10))
    assert (reused, reused2) == (False, True) and again is value and made == [1]


def test_memo_off_keeps_nothing(monkeypatch):
    monkeypatch.setenv(memo.MEMO_ENV, "0")
    m: ContentMemo[np.ndarray] = ContentMemo("test", max_bytes=1 << 20)
    m.put("a", np.zeros(10))
    assert m.get("a") is None


def test_bytes_counted_through_dataclasses_dicts_and_shared_arrays():
    from dataclasses import dataclass

    @dataclass
    class Inner:
        a: np.ndarray
        note: str

    @dataclass
    class Outer:
        inner: Inner
        parts: dict
        same: np.ndarray

    x = np.zeros(100, np.float32)
    value = Outer(Inner(x, "n"), {"b": np.zeros(10, np.uint8), "c": [np.zeros(5, np.float64)]}, x)
    assert memo.nbytes(value) == 400 + 10 + 40  # x once, though held twice
