"""Hostile and random input never raises out of the audit stages: only counted errors."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditwatch.audit.reader import Scanner
from auditwatch.audit.records import AuditParseError, AuditRecord, parse_log_line, parse_netlink
from auditwatch.finding import exec_finding, to_json
from auditwatch.sensors.audit_netlink import AuditNetlinkSource, split_messages

DATA = Path(__file__).parent / "data" / "audit"
REAL_LINES = [ln for p in sorted(DATA.glob("*.log")) if p.stat().st_size < 5000
              for ln in p.read_bytes().splitlines(keepends=True)]
HOSTILE = st.sampled_from([b'"', b"'", b" ", b"=", b"\x1d", b"\n", b"(null)", b"?", b"\xff",
                           b"[", b"]", b"_len", b"a1", b"msg=audit(", b"):", b"0", b"F", b"\x00"])
hostile_bytes = st.lists(st.one_of(HOSTILE, st.binary(max_size=8)), max_size=30).map(b"".join)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_parse_or_counted_error(line: bytes) -> None:
    try:
        rec = parse_log_line(line)
    except AuditParseError:
        return
    assert isinstance(rec, AuditRecord)


@FUZZ
@given(st.integers(min_value=0, max_value=70000), st.binary(max_size=300))
def test_random_netlink_payload(mtype: int, payload: bytes) -> None:
    try:
        parse_netlink(mtype, b"audit(1.000:1): " + payload)
        parse_netlink(mtype, payload)
    except AuditParseError:
        pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(REAL_LINES) - 1), st.integers(0, 400),
                          hostile_bytes), max_size=40))
def test_mutated_real_lines_never_raise(edits: list[tuple[int, int, bytes]]) -> None:
    lines = []
    for idx, pos, junk in edits:
        ln = REAL_LINES[idx]
        lines.append(ln[:pos] + junk + ln[pos:])
    scanner = Scanner(frozenset({1}), all_execs=True)
    for ev in scanner.events(lines):
        json.loads(to_json(exec_finding(ev, "memfd", "host")))
    c = scanner.counters
    assert c["lines"] == c["records"] + c["parse_errors"]


@FUZZ
@given(st.lists(hostile_bytes, min_size=6, max_size=6))
def test_hostile_values_in_exec_records(v: list[bytes]) -> None:
    hdr = b"msg=audit(1796315117.022:7820):"
    lines = [
        b"type=SYSCALL " + hdr + b" arch=c000003e syscall=322 success=yes pid=5 ppid=" + v[0]
        + b" uid=" + v[1] + b" comm=" + v[2] + b" exe=" + v[3] + b" tty=" + v[4],
        b"type=EXECVE " + hdr + b" argc=" + v[5] + b" a0=" + v[2] + b" a1_len=" + v[1]
        + b" a1[0]=" + v[3] + b" a1[1]=" + v[4],
        b"type=PATH " + hdr + b" item=0 name=" + v[3] + b" inode=" + v[0] + b" dev=" + v[5],
        b"type=PATH " + hdr + b" item=1 name=" + v[2] + b" inode=1 dev=00:01",
        b"type=CWD " + hdr + b" cwd=" + v[4],
    ]
    scanner = Scanner(frozenset({1}), all_execs=True)
    events = list(scanner.events(lines))
    for ev in events:
        json.loads(to_json(exec_finding(ev, "memfd", "host")))
    assert scanner.counters["execs_seen"] <= 1


@FUZZ
@given(st.binary(max_size=600))
def test_netlink_datagrams_never_raise(data: bytes) -> None:
    split_messages(data)
    src = AuditNetlinkSource(memfd_devs=frozenset({1}))
    for mtype, payload in [*split_messages(data), (1300, data), (1305, data), (1320, data)]:
        src._on_message(mtype, payload, [], [])
    src.tick(2**62)
    assert src.counters()["parse_errors"] + src.counters()["records"] <= 3 + len(data)
