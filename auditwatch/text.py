"""Turning untrusted kernel bytes into safe text, in one place.

memfd names, argv and paths are chosen by whoever runs the exec: they may hold newlines, quotes,
escape sequences or bytes that are not UTF-8. We keep every byte recoverable (invalid UTF-8
becomes a visible ``\\xNN``) and leave escaping for each output format to do.
"""

from __future__ import annotations


def decode_untrusted(raw: bytes) -> str:
    """Decode kernel bytes; invalid UTF-8 becomes ``\\xNN`` so nothing is lost or crashes."""
    return raw.decode("utf-8", errors="backslashreplace")
