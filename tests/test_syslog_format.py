"""RFC 5424 formatting (pure): grammar, hostile names, size limit.

Messages are checked with ``rfc5424_reader``, an independent strict reader of the RFC 5424 ABNF
written for these tests (and for the rsyslog test).
"""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rfc5424_reader import parse_rfc5424, split_octet_frames

from auditwatch import trc105
from auditwatch.config import FACILITIES
from auditwatch.events import AuditContext, ExecEvent
from auditwatch.finding import Finding, HealthInfo, exec_finding
from auditwatch.outputs.rfc5424 import ALERT, CRIT, WARNING, safe_text
from auditwatch.outputs.syslog import format_rfc5424, octet_frame
from auditwatch.text import decode_untrusted


def make_finding(name: str = "payload", argv: tuple[str, ...] = ("payload", "-x"),
                 **kw: object) -> Finding:
    ev = ExecEvent(
        sensor="bpf", timestamp_ns=1_733_246_400_123_456_789, pid=4242, tgid=4242, ppid=1,
        uid=1000, euid=1000, comm=name[:15], exe=f"/memfd:{name} (deleted)",
        exec_path="/dev/fd/3", argv=argv, nlink=0, memfd_name=name, parent_exe="/usr/bin/python3",
        audit=AuditContext(serial=7, auid=1000), **kw)  # type: ignore[arg-type]
    return exec_finding(ev, "memfd", "host-1", sensors=("bpf", "audit"))


def fmt(f: Finding, max_bytes: int = 2048, facility: str = "authpriv") -> bytes:
    return format_rfc5424(f, FACILITIES[facility], "auditwatch", "host-1", 999, max_bytes)


# --- grammar ----------------------------------------------------------------------------------

def test_exec_finding_fields() -> None:
    raw = fmt(make_finding())
    rec = parse_rfc5424(raw)
    assert rec.pri == FACILITIES["authpriv"] * 8 + ALERT == 81
    assert rec.timestamp == "2024-12-03T17:20:00.123456Z"
    assert (rec.hostname, rec.app, rec.procid, rec.msgid) == ("host-1", "auditwatch", "999",
                                                             "TRC-105")
    assert rec.sd == [("trc105@32473", {
        "technique": "memfd", "pid": "4242", "ppid": "1", "uid": "1000", "auid": "1000",
        "comm": "payload", "pathname": "memfd:payload", "cmdpath": "/dev/fd/3",
        "parent_exe": "/usr/bin/python3", "sensors": "bpf,audit"})]
    assert rec.msg is not None and rec.msg.startswith("\ufeffTRC-105 fileless execution (memfd)")
    assert rec.msg.endswith('argv=["payload", "-x"]')


def test_facility_and_health_severity() -> None:
    gap = Finding(metadata={}, hostname="h", health=HealthInfo(
        "audit_records_lost", "12 records lost", sensor="audit", count=12, timestamp_ns=1))
    tamper = Finding(metadata={}, hostname="h", health=HealthInfo(
        "audit_rules_removed", "rules gone", sensor="audit"))
    r1 = parse_rfc5424(fmt(gap, facility="local4"))
    assert r1.pri == 20 * 8 + WARNING
    assert r1.msgid == "audit_records_lost"
    assert r1.sd == [("auditwatchHealth@32473",
                      {"kind": "audit_records_lost", "sensor": "audit", "count": "12"})]
    assert r1.timestamp == "1970-01-01T00:00:00.000000Z"
    r2 = parse_rfc5424(fmt(tamper))
    assert r2.pri == 10 * 8 + CRIT
    assert r2.timestamp == "-"


def test_header_tokens_sanitised() -> None:
    raw = format_rfc5424(make_finding(), 1, "aw app", "bad host\nname", "12 3", 2048)
    rec = parse_rfc5424(raw)
    assert (rec.hostname, rec.app, rec.procid) == ("bad_host_name", "aw_app", "12_3")


# --- hostile names ----------------------------------------------------------------------------

HOSTILE = [
    "evil\n<13>1 2024-01-01T00:00:00Z forged app - - - fake record",
    "evil\r\n<13>1 - - - - - - second",
    'x"] [forged@1 a="b"] y',
    "back\\slash\\",
    "trailing backslash \\",
    'quote" and bracket]',
    "\x1b[31mred\x1b[0m\x1b]0;title\x07",
    decode_untrusted(b"bad\xff\xfeutf8\xc3"),
    "nul\x00byte",
    "line\u2028sep\u2029par\x85nel",
    "rtl\u202eexe.gpj",
    "bom\ufeffinside",
    "\\\\\\\"\\]",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_stay_in_one_record(name: str) -> None:
    f = make_finding(name=name, argv=(name, name + "\n--flag", "]\"\\"))
    raw = fmt(f)
    for bad in (b"\n", b"\r", b"\x00", b"\x1b", b"\x07", b"\x85",
                "\u2028".encode(), "\u202e".encode()):
        assert bad not in raw, bad
    assert raw.count("\ufeff".encode()) == 1          # only the MSG's BOM
    rec = parse_rfc5424(raw)
    assert len(rec.sd) == 1
    sd_id, params = rec.sd[0]
    assert sd_id == "trc105@32473"
    assert list(params) == ["technique", "pid", "ppid", "uid", "auid", "comm", "pathname",
                            "cmdpath", "parent_exe", "sensors"]
    # what the receiver reads back is the hostile name made visible, nothing lost or added
    assert params["pathname"] == safe_text(trc105.pathname(f.event))  # type: ignore[arg-type]
    assert params["sensors"] == "bpf,audit"
    # several such records on one TCP stream frame back into exactly as many records
    frames = split_octet_frames(octet_frame(raw) * 3)
    assert frames == [raw] * 3
    # and a line-oriented receiver sees one line
    assert len(raw.splitlines()) == 1


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=300), argv=st.lists(st.text(max_size=200), max_size=20),
       max_bytes=st.sampled_from([480, 600, 1024, 2048]))
def test_any_text_gives_one_valid_record(name: str, argv: list[str], max_bytes: int) -> None:
    raw = fmt(make_finding(name=name, argv=tuple(argv)), max_bytes=max_bytes)
    assert len(raw) <= max_bytes
    rec = parse_rfc5424(raw)
    assert len(rec.sd) == 1 and rec.sd[0][1]["technique"] == "memfd"
    assert b"\n" not in raw and b"\r" not in raw


# --- size ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_bytes", [480, 1024, 2048, 8192])
def test_long_argv_cut_with_hash_of_the_whole(max_bytes: int) -> None:
    argv = ("payload", *(f"arg{i}-" + "A" * 50 + '"]\\' for i in range(3000)))
    raw = fmt(make_finding(argv=argv), max_bytes=max_bytes)
    assert len(raw) <= max_bytes
    rec = parse_rfc5424(raw)
    digest = hashlib.sha256("\0".join(argv).encode()).hexdigest()
    params = rec.sd[0][1]
    assert params["argv_sha256"] == digest
    assert params["pathname"] == "memfd:payload"
    assert rec.msg is not None and rec.msg.endswith(f"…[truncated; argv sha256={digest}]")
    if max_bytes >= 1024:
        assert 'argv=["payload", "arg0-AAAA' in rec.msg
    assert len(raw) > max_bytes - 64          # the room is used, not wasted


def test_short_argv_not_cut() -> None:
    raw = fmt(make_finding(argv=("a",) * 10))
    assert b"argv_sha256" not in raw and b"truncated" not in raw


def test_long_names_and_paths_cut_without_breaking_escapes() -> None:
    for tail in ("\\", '"', "]", "\n", "é", "\\\\"):
        for n in range(240, 262):
            name = "m" * n + tail * 40
            raw = fmt(make_finding(name=name, cgroup="/c" + tail * 400), max_bytes=480)
            assert len(raw) <= 480
            params = parse_rfc5424(raw).sd[0][1]
            assert params["pathname"].startswith("memfd:mmm")
            assert params["cgroup"].startswith("/c")
            assert re.fullmatch("[0-9a-f]{64}", params["argv_sha256"])


def test_sensor_truncated_argv_flagged() -> None:
    raw = fmt(make_finding(argv_truncated=True))
    assert parse_rfc5424(raw).sd[0][1]["argv_truncated"] == "sensor"


def test_parser_rejects_broken_sd() -> None:
    """The test parser itself is strict (so the tests above mean something)."""
    good = b'<81>1 - h a 1 M [x@1 a="b\\]"] msg'
    assert parse_rfc5424(good).sd == [("x@1", {"a": "b]"})]
    for bad in (b'<81>1 - h a 1 M [x@1 a="b]"] msg', b'<81>1 - h a 1 M [x@1 a="b\\"] msg',
                b"<81>1 - h a 1 M [x@1 a=b] msg", b"<81>1 - h a 1 M msg",
                b"<81>1 - h a 1 M - \xff", b"<81>1 - h  1 M -"):
        with pytest.raises(ValueError):
            parse_rfc5424(bad)
