"""A strict reader of RFC 5424 (§6 ABNF) and RFC 6587 octet-counted streams, for tests only.

Written independently of ``auditwatch.outputs.rfc5424`` so that the tests check the grammar, not
the formatter against itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PRINTUSASCII = r"[\x21-\x7e]"
_HEADER = re.compile(
    rf"<(?P<pri>\d{{1,3}})>(?P<version>[1-9]\d{{0,2}}) "
    rf"(?P<timestamp>-|\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{{1,6}})?(?:Z|[+-]\d\d:\d\d)) "
    rf"(?P<hostname>{_PRINTUSASCII}{{1,255}}) (?P<app>{_PRINTUSASCII}{{1,48}}) "
    rf"(?P<procid>{_PRINTUSASCII}{{1,128}}) (?P<msgid>{_PRINTUSASCII}{{1,32}}) ")
_SD_NAME = re.compile(r'[\x21-\x7e]{1,32}')


@dataclass
class Syslog5424:
    pri: int
    timestamp: str
    hostname: str
    app: str
    procid: str
    msgid: str
    sd: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    msg: str | None = None


def _sd_name(text: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(text) and text[j] not in '= ]"' and 0x21 <= ord(text[j]) <= 0x7e:
        j += 1
    name = text[i:j]
    if not _SD_NAME.fullmatch(name):
        raise ValueError(f"bad SD-NAME at {i}: {text[i:i + 40]!r}")
    return name, j


def parse_rfc5424(raw: bytes) -> Syslog5424:
    """Strict RFC 5424 reader; raises ValueError on anything off-grammar."""
    text = raw.decode("utf-8")          # strict: the whole message must be valid UTF-8
    m = _HEADER.match(text)
    if not m:
        raise ValueError(f"bad header: {text[:120]!r}")
    pri = int(m["pri"])
    if pri > 191:
        raise ValueError("PRI out of range")
    rec = Syslog5424(pri, m["timestamp"], m["hostname"], m["app"], m["procid"], m["msgid"])
    i = m.end()
    if text.startswith("-", i):
        i += 1
    else:
        if not text.startswith("[", i):
            raise ValueError("no STRUCTURED-DATA")
        while text.startswith("[", i):
            sd_id, i = _sd_name(text, i + 1)
            params: dict[str, str] = {}
            while text.startswith(" ", i):
                name, i = _sd_name(text, i + 1)
                if not text.startswith('="', i):
                    raise ValueError(f"bad SD-PARAM {name}")
                i += 2
                value: list[str] = []
                while True:
                    if i >= len(text):
                        raise ValueError("unterminated PARAM-VALUE")
                    c = text[i]
                    if c == "\\" and i + 1 < len(text) and text[i + 1] in '"\\]':
                        value.append(text[i + 1])
                        i += 2
                    elif c == '"':
                        i += 1
                        break
                    elif c == "]":
                        raise ValueError("unescaped ] in PARAM-VALUE")
                    else:
                        value.append(c)
                        i += 1
                if name in params:
                    raise ValueError(f"SD-PARAM {name} twice")
                params[name] = "".join(value)
            if not text.startswith("]", i):
                raise ValueError(f"SD-ELEMENT not closed at {i}: {text[i:i + 40]!r}")
            i += 1
            rec.sd.append((sd_id, params))
    if i < len(text):
        if text[i] != " ":
            raise ValueError(f"garbage after SD: {text[i:i + 40]!r}")
        rec.msg = text[i + 1:]
    return rec


def split_octet_frames(stream: bytes) -> list[bytes]:
    frames = []
    while stream:
        length, sep, rest = stream.partition(b" ")
        if not sep or not length.isdigit():
            raise ValueError(f"bad frame header {stream[:20]!r}")
        n = int(length)
        if len(rest) < n:
            raise ValueError("short frame")
        frames.append(rest[:n])
        stream = rest[n:]
    return frames


