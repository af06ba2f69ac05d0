"""The error every input reader raises."""

from __future__ import annotations


class InputError(ValueError):
    """The input cannot be read as one image volume (the message says why)."""
