"""Loose values from headers (DICOM attributes, MRD XML): numbers that may be missing or not
numbers, text with padding."""

from __future__ import annotations

import math


def float_or_none(v) -> float | None:
    """A finite number, or None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def first_float(v) -> float | None:
    """A number, or the first of a multi-valued attribute."""
    if v is None:
        return None
    if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)):
        v = list(v)
        return float_or_none(v[0]) if v else None
    return float_or_none(v)


def text(v) -> str:
    """A DICOM/MRD value as clean text ("" for None; padding and trailing NULs removed)."""
    if v is None:
        return ""
    return str(v).strip().rstrip("\x00")
