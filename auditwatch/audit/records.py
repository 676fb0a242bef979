"""Audit records: one parsed line of audit.log or one netlink message, and its value decoding.

Pure: bytes in, ``AuditRecord`` out (or ``AuditParseError``, which callers count). Field values
stay raw bytes as the kernel wrote them; decoding is lazy and per field kind, so the exec fast
path only pays for the few fields it looks at.

Value forms the kernel writes (``audit_log_untrustedstring``, ``audit_log_n_hex``):
- ``"text"``: a string without spaces, quotes, control characters or bytes >= 0x7f;
- ``2F746D70``: the same string hex-encoded when it has any of those (no quotes);
- ``(null)``: a NULL pointer; ``(none)``: no tty; ``?``: unknown.
auditd's ENRICHED format appends ``\\x1d`` and interpreted ``NAME=value`` pairs; we drop them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from auditwatch.text import decode_untrusted

# Record types we name (linux/audit.h). Others are "UNKNOWN[n]", as auditd writes them.
TYPE_NAMES: Final[dict[int, str]] = {
    1100: "USER", 1112: "USER_LOGIN", 1130: "SERVICE_START", 1131: "SERVICE_STOP",
    1200: "DAEMON_START", 1201: "DAEMON_END", 1202: "DAEMON_ABORT", 1203: "DAEMON_CONFIG",
    1204: "DAEMON_RECONFIG", 1205: "DAEMON_ROTATE", 1206: "DAEMON_RESUME",
    1207: "DAEMON_ACCEPT", 1208: "DAEMON_CLOSE", 1209: "DAEMON_ERR",
    1300: "SYSCALL", 1302: "PATH", 1303: "IPC", 1304: "SOCKETCALL", 1305: "CONFIG_CHANGE",
    1306: "SOCKADDR", 1307: "CWD", 1309: "EXECVE", 1318: "FD_PAIR", 1320: "EOE",
    1321: "BPRM_FCAPS", 1322: "CAPSET", 1323: "MMAP", 1327: "PROCTITLE",
    1331: "NETFILTER_CFG", 1334: "BPF", 1335: "EVENT_LISTENER", 1336: "URINGOP",
    1400: "AVC", 1700: "ANOM_PROMISCUOUS", 1701: "ANOM_ABEND",
}
TYPE_NUMBERS: Final[dict[str, int]] = {name: num for num, name in TYPE_NAMES.items()}

UNSET_ID: Final = 4294967295  # (u32)-1: auid/ses/uid not set

_HEADER = re.compile(
    rb"^(?:node=(?P<node>\S+) )?type=(?P<type>[A-Za-z0-9_\[\]]+) "
    rb"msg=audit\((?P<sec>\d{1,12})\.(?P<frac>\d{1,9}):(?P<serial>\d{1,20})\):"
)
_NL_HEADER = re.compile(rb"^audit\((?P<sec>\d{1,12})\.(?P<frac>\d{1,9}):(?P<serial>\d{1,20})\):")
# key=value; a value is "double quoted", 'single quoted' (user messages) or a bare token.
_FIELD = re.compile(rb"([^\s=]+)=(\"[^\"]*\"|'[^']*'|[^\s]*)")
_HEX = re.compile(rb"^(?:[0-9A-Fa-f]{2})+$")
_ENRICHED_SEP: Final = b"\x1d"
_SPECIAL: Final = (b"(null)", b"(none)", b"?")


class AuditParseError(ValueError):
    """A line or message that is not an audit record; callers count it, never crash."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    type: str                               # "SYSCALL", "PATH", "UNKNOWN[1334]"
    timestamp_ns: int                       # audit(SEC.MSEC) as epoch ns
    serial: int
    fields: tuple[tuple[str, bytes], ...]   # raw values, in order, as written

    @property
    def key(self) -> tuple[int, int]:
        """What identifies the event this record belongs to."""
        return (self.timestamp_ns, self.serial)

    def raw(self, name: str) -> bytes | None:
        for k, v in self.fields:
            if k == name:
                return v
        return None

    def as_dict(self) -> dict[str, bytes]:
        """All fields; the first wins if a name repeats."""
        out: dict[str, bytes] = {}
        for k, v in self.fields:
            out.setdefault(k, v)
        return out


def type_name(nlmsg_type: int) -> str:
    return TYPE_NAMES.get(nlmsg_type, f"UNKNOWN[{nlmsg_type}]")


def _timestamp_ns(sec: bytes, frac: bytes) -> int:
    return int(sec) * 1_000_000_000 + int(frac) * 10 ** (9 - len(frac))


def parse_fields(body: bytes) -> tuple[tuple[str, bytes], ...]:
    """``k=v k2="v 2"`` -> pairs. Drops what follows ENRICHED's ``\\x1d``."""
    body = body.split(_ENRICHED_SEP, 1)[0]
    return tuple((k.decode("ascii", "backslashreplace"), v) for k, v in _FIELD.findall(body))


def parse_log_line(line: bytes) -> AuditRecord:
    """One line of audit.log (RAW or ENRICHED, optional ``node=`` prefix)."""
    line = line.rstrip(b"\r\n")
    m = _HEADER.match(line)
    if m is None:
        raise AuditParseError(f"not an audit record: {line[:80]!r}")
    return AuditRecord(
        type=m["type"].decode("ascii"),
        timestamp_ns=_timestamp_ns(m["sec"], m["frac"]),
        serial=int(m["serial"]),
        fields=parse_fields(line[m.end():]),
    )


def parse_netlink(nlmsg_type: int, payload: bytes) -> AuditRecord:
    """One NETLINK_AUDIT message: ``audit(SEC.MSEC:SERIAL): body``, type from the header."""
    payload = payload.rstrip(b"\x00\n")
    m = _NL_HEADER.match(payload)
    if m is None:
        raise AuditParseError(f"bad netlink audit payload (type {nlmsg_type}): {payload[:80]!r}")
    return AuditRecord(
        type=type_name(nlmsg_type),
        timestamp_ns=_timestamp_ns(m["sec"], m["frac"]),
        serial=int(m["serial"]),
        fields=parse_fields(payload[m.end():]),
    )


# --- value decoding ---------------------------------------------------------------------------

def is_hex(raw: bytes) -> bool:
    return bool(_HEX.match(raw))


def untrusted_bytes(raw: bytes | None) -> bytes | None:
    """An untrusted string field (exe, comm, name, cwd, aN, key...) to its bytes.

    ``None`` for absent, ``(null)``, ``(none)`` and ``?``. An unquoted value is hex (the kernel
    quotes every string it does not encode); one that is not valid hex is kept as is.
    """
    if raw is None or raw in _SPECIAL:
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[:1] in (b'"', b"'"):
        return raw[1:-1]
    if is_hex(raw):
        return bytes.fromhex(raw.decode("ascii"))
    return raw


def untrusted(raw: bytes | None) -> str | None:
    value = untrusted_bytes(raw)
    return None if value is None else decode_untrusted(value)


def number(raw: bytes | None, base: int = 10) -> int | None:
    """A numeric field; ``None`` when absent, special or not a number."""
    if raw is None or raw in _SPECIAL:
        return None
    try:
        return int(raw, base)
    except ValueError:
        return None


def audit_id(raw: bytes | None) -> int | None:
    """uid/auid/ses: 4294967295 (unset) -> ``None``."""
    value = number(raw)
    return None if value == UNSET_ID else value


def text(raw: bytes | None) -> str | None:
    """A trusted token (``success=yes``, ``op=remove_rule``), unquoted if quoted."""
    if raw is None:
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[:1] in (b'"', b"'"):
        raw = raw[1:-1]
    return decode_untrusted(raw)
