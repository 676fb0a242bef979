"""RFC 5424 formatting of findings (pure: no socket, no clock).

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID k="v" ...] BOM summary argv=[...]

Hostile input: memfd names, argv, comm and paths are chosen by whoever runs the exec. Every control
character (C0, DEL, C1 - so ESC of ANSI sequences, CR and LF too), Unicode line/paragraph
separators, bidi overrides, BOMs and lone surrogates become visible ``\\xNN`` / ``\\uNNNN`` text in
every field, so one finding is always one line and one record. SD-PARAM values then get the
escaping RFC 5424 §6.3.3 requires (``"``, ``\\`` and ``]``), and a value cut to its size cap never
ends in half an escape. Invalid UTF-8 has already become ``\\xNN`` text (``text.decode_untrusted``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Final

from auditwatch import trc105
from auditwatch.finding import Finding, summary

SD_ID_EXEC: Final = "trc105@32473"            # 32473: the documentation PEN (RFC 5612)
SD_ID_HEALTH: Final = "auditwatchHealth@32473"
BOM: Final = "\ufeff"
NIL: Final = "-"

# Syslog severities (RFC 5424 §6.2.1).
EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)
# Tracee's Properties.Severity (0 info .. 3 high, 4 critical) to a syslog severity.
TRACEE_SEVERITY: Final = {0: INFO, 1: NOTICE, 2: WARNING, 3: ALERT, 4: ALERT}
# Health findings that mean someone is blinding the sensor, as opposed to it losing records.
TAMPER_KINDS: Final = frozenset({"audit_rules_removed", "audit_disabled", "bpf_detached",
                                 "sensor_tampered", "config_tampered"})

SD_VALUE_CAPS: Final = (256, 128, 64, 32, 16)   # bytes per SD value, tried in turn
MIN_MSG_ROOM: Final = 96                        # bytes kept for MSG before SD values shrink

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069\ufeff\ud800-\udfff]")
_UNCAPPED: Final = frozenset({"argv_sha256"})
_SD_SPECIAL = re.compile(r'["\\\]]')
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def safe_text(s: str) -> str:
    """Make every line-breaking, terminal-controlling or direction-changing character visible."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                       else f"\\u{ord(m[0]):04x}", s)


def sd_escape(s: str) -> str:
    """RFC 5424 §6.3.3: escape ``"``, ``\\`` and ``]`` in a PARAM-VALUE."""
    return _SD_SPECIAL.sub(lambda m: "\\" + m[0], s)


def _cut(s: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes of ``s``, never a split character."""
    raw = s.encode("utf-8")
    if len(raw) <= limit:
        return s
    return raw[:max(limit, 0)].decode("utf-8", errors="ignore")


def sd_value(value: object, cap: int) -> str:
    """An escaped PARAM-VALUE of at most ``cap`` bytes (cut ones end with an ellipsis)."""
    text = sd_escape(safe_text(str(value)))
    if len(text.encode("utf-8")) <= cap:
        return text
    text = _cut(text, cap - 3)
    trailing = len(text) - len(text.rstrip("\\"))
    if trailing % 2:            # never leave half of a ``\\`` / ``\"`` / ``\]`` escape
        text = text[:-1]
    return text + "…"


def header_token(value: str, limit: int) -> str:
    """HOSTNAME / APP-NAME / PROCID / MSGID: 1*N PRINTUSASCII, or the NILVALUE."""
    token = _NOT_PRINTUSASCII.sub("_", value)[:limit]
    return token or NIL


def rfc3339(timestamp_ns: int) -> str:
    if timestamp_ns <= 0:
        return NIL
    seconds, rest = divmod(timestamp_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def argv_sha256(argv: tuple[str, ...]) -> str:
    """sha256 of the argv as text (as in the JSON output), arguments joined by NUL bytes."""
    return hashlib.sha256("\0".join(argv).encode("utf-8", errors="surrogatepass")).hexdigest()


def severity_of(finding: Finding) -> int:
    if finding.health is not None:
        kind = finding.health.kind
        return CRIT if kind in TAMPER_KINDS or "tamper" in kind else WARNING
    sev = finding.metadata.get("Properties", {}).get("Severity", 3)
    return TRACEE_SEVERITY.get(sev, ALERT) if isinstance(sev, int) else ALERT


def _sd_params(finding: Finding) -> tuple[str, list[tuple[str, object]]]:
    if finding.event is None:
        h = finding.health
        assert h is not None
        params: list[tuple[str, object]] = [("kind", h.kind)]
        if h.sensor is not None:
            params.append(("sensor", h.sensor))
        if h.count is not None:
            params.append(("count", h.count))
        return SD_ID_HEALTH, params
    e = finding.event
    params = [("technique", finding.technique), ("pid", e.tgid), ("ppid", e.ppid),
              ("uid", e.uid)]
    if e.audit is not None and e.audit.auid is not None:
        params.append(("auid", e.audit.auid))
    params += [("comm", e.comm), ("pathname", trc105.pathname(e)), ("cmdpath", e.exec_path)]
    for key in ("parent_exe", "cgroup"):
        value = getattr(e, key)
        if value is not None:
            params.append((key, value))
    params.append(("sensors", ",".join(finding.sensors)))
    if finding.missing_sensors:
        params.append(("missing_sensors", ",".join(finding.missing_sensors)))
    if e.sweep:
        params.append(("sweep", "true"))
    if e.argv_truncated:
        params.append(("argv_truncated", "sensor"))
    return SD_ID_EXEC, [(k, NIL if v is None else v) for k, v in params]


def _sd(sd_id: str, params: list[tuple[str, object]], cap: int) -> str:
    return "[" + sd_id + "".join(
        f' {k}="{sd_value(v, cap if k not in _UNCAPPED else 64)}"' for k, v in params) + "]"


def format_rfc5424(finding: Finding, facility: int, app_name: str, hostname: str,
                   procid: int | str | None, max_bytes: int) -> bytes:
    """One RFC 5424 message of at most ``max_bytes`` bytes (``max_bytes`` >= 480).

    ``facility`` is the numeric facility (``config.FACILITIES``). When the argv does not fit, it is
    cut and the sha256 of the whole argv (``argv_sha256``) is added to the SD and to the MSG.
    """
    pri = facility * 8 + severity_of(finding)
    msgid = "TRC-105" if finding.health is None else finding.health.kind
    host = header_token(hostname or finding.hostname, 255)
    head = (f"<{pri}>1 {rfc3339(finding.timestamp_ns)} "
            f"{host if len(host) < max_bytes // 4 else NIL} {header_token(app_name, 48)} "
            f"{header_token(str(procid) if procid is not None else '', 128)} "
            f"{header_token(msgid, 32)}")
    sd_id, params = _sd_params(finding)
    text = summary(finding)
    if finding.event is not None:
        argv = finding.event.argv
        text += " argv=" + json.dumps(list(argv), ensure_ascii=False)
    text = safe_text(text)
    body = BOM + text

    def assemble(sd: str, msg: str) -> bytes:
        return f"{head} {sd} {msg}".encode("utf-8", errors="backslashreplace")

    out = assemble(_sd(sd_id, params, SD_VALUE_CAPS[0]), body)
    if len(out) <= max_bytes:
        return out
    if finding.event is not None:
        digest = argv_sha256(finding.event.argv)
        params = [*params, ("argv_sha256", digest)]
        suffix = f" …[truncated; argv sha256={digest}]"
    else:
        suffix = " …[truncated]"
    sd = NIL
    for cap in SD_VALUE_CAPS:
        candidate = _sd(sd_id, params, cap)
        if len(assemble(candidate, "")) + MIN_MSG_ROOM <= max_bytes:
            sd = candidate
            break
    room = max_bytes - len(assemble(sd, "")) - len(BOM.encode()) - len(suffix.encode())
    if room < 0:
        return assemble(sd, "")[:max_bytes]  # pathological: header and SD alone fill it
    return assemble(sd, BOM + _cut(text, room) + suffix)
