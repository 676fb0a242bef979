"""Parsing audit.log lines and netlink payloads into AuditRecords, and decoding values."""

from __future__ import annotations

import pytest

from auditwatch.audit import records as r
from auditwatch.audit.records import AuditParseError, parse_log_line, parse_netlink
from tests.conftest import kernel_unavailable

SYSCALL_RAW = (
    b'type=SYSCALL msg=audit(1796314988.398:3411): arch=c000003e syscall=322 success=yes exit=0 '
    b'a0=3 items=2 ppid=6963 pid=7004 auid=4294967295 uid=0 tty=(none) ses=4294967295 '
    b'comm="memfd:auditwatc" exe=2F6D656D66643A617564697477617463682D73656C6674657374202864656C'
    b'6574656429 key="auditwatch_exec"\n'
)
ENRICHED = (
    b'type=PATH msg=audit(1796314983.470:2921): item=0 name="/usr/bin/tail" inode=260935 '
    b'dev=fe:00 mode=0100755 nametype=NORMAL\x1dOUID="root" OGID="root"\n'
)


def test_raw_syscall_line() -> None:
    rec = parse_log_line(SYSCALL_RAW)
    assert rec.type == "SYSCALL"
    assert rec.serial == 3411
    assert rec.timestamp_ns == 1796314988_398_000_000
    assert rec.key == (1796314988_398_000_000, 3411)
    assert r.untrusted(rec.raw("exe")) == "/memfd:auditwatch-selftest (deleted)"
    assert r.untrusted(rec.raw("comm")) == "memfd:auditwatc"
    assert r.audit_id(rec.raw("auid")) is None
    assert r.audit_id(rec.raw("uid")) == 0
    assert r.untrusted(rec.raw("tty")) is None
    assert r.number(rec.raw("syscall")) == 322
    assert rec.raw("missing") is None


def test_enriched_line_drops_interpreted_part() -> None:
    rec = parse_log_line(ENRICHED)
    assert rec.type == "PATH"
    assert rec.raw("OUID") is None
    assert rec.raw("nametype") == b"NORMAL"
    assert r.untrusted(rec.raw("name")) == "/usr/bin/tail"


def test_node_prefix_and_unknown_type() -> None:
    rec = parse_log_line(b"node=host1 type=UNKNOWN[1334] msg=audit(1.5:7): prog-id=3 op=LOAD")
    assert rec.type == "UNKNOWN[1334]"
    assert rec.timestamp_ns == 1_500_000_000
    assert rec.serial == 7
    assert r.number(rec.raw("prog-id")) == 3


def test_user_message_with_nested_quotes() -> None:
    rec = parse_log_line(
        b"type=USER_LOGIN msg=audit(1700000000.001:9): pid=1 uid=0 auid=1000 ses=2 "
        b"msg='op=login acct=\"root\" exe=\"/usr/sbin/sshd\" res=success'")
    assert rec.type == "USER_LOGIN"
    assert r.text(rec.raw("msg")) == 'op=login acct="root" exe="/usr/sbin/sshd" res=success'


def test_netlink_payload() -> None:
    rec = parse_netlink(1309, b'audit(1796315117.022:7820): argc=2 a0="/bin/sh" a1=2F6120620A\x00')
    assert rec.type == "EXECVE"
    assert rec.serial == 7820
    assert r.untrusted(rec.raw("a1")) == "/a b\n"
    assert parse_netlink(1320, b"audit(1796315117.022:7820): ").fields == ()
    assert parse_netlink(9999, b"audit(1.000:1): x=1").type == "UNKNOWN[9999]"


@pytest.mark.parametrize("line", [
    b"", b"garbage", b"type=SYSCALL msg=audit(abc:1): x=1", b"type=SYSCALL msg=audit(1.2): x",
    b"type= msg=audit(1.2:3): x=1", b"\xff\xfe type=SYSCALL",
])
def test_malformed_lines_raise_parse_error(line: bytes) -> None:
    with pytest.raises(AuditParseError):
        parse_log_line(line)


def test_malformed_netlink_raises_parse_error() -> None:
    with pytest.raises(AuditParseError):
        parse_netlink(1300, b"not audit")


@pytest.mark.parametrize(("raw", "expected"), [
    (b'"plain"', "plain"),
    (b'""', ""),
    (b"/tmp/a b (deleted)".hex().upper().encode(), "/tmp/a b (deleted)"),
    (b"6E6F6E2D75746638FF", "non-utf8\\xff"),
    (b"(null)", None),
    (b"(none)", None),
    (b"?", None),
    (None, None),
    (b"not-hex", "not-hex"),
    (b"ABC", "ABC"),                       # odd length: not hex, kept
])
def test_untrusted(raw: bytes | None, expected: str | None) -> None:
    assert r.untrusted(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (b"12", 12), (b"4294967295", None), (b"?", None), (b"x", None), (None, None),
])
def test_audit_id(raw: bytes | None, expected: int | None) -> None:
    assert r.audit_id(raw) == expected


def test_type_names_cover_what_we_need() -> None:
    wanted = {1300: "SYSCALL", 1302: "PATH", 1305: "CONFIG_CHANGE", 1307: "CWD", 1309: "EXECVE",
              1320: "EOE", 1327: "PROCTITLE", 1200: "DAEMON_START"}
    for num, name in wanted.items():
        assert r.type_name(num) == name
        assert r.TYPE_NUMBERS[name] == num


def test_records_are_frozen() -> None:
    rec = parse_log_line(SYSCALL_RAW)
    with pytest.raises(AttributeError):
        rec.serial = 1  # type: ignore[misc]


AUPARSE_SCRIPT = r"""
import json, sys, auparse
out = {}
for path in sys.argv[1:]:
    au = auparse.AuParser(auparse.AUSOURCE_FILE, path)
    au.set_escape_mode(auparse.AUPARSE_ESC_RAW)
    while au.parse_next_event():
        au.first_record()
        ev = {}
        while True:
            if au.get_type_name() in ("SYSCALL", "EXECVE"):
                au.first_field()
                while True:
                    name = au.get_field_name()
                    try:
                        ev.setdefault(au.get_type_name() + ":" + name, au.interpret_field())
                    except UnicodeDecodeError:
                        pass
                    if not au.next_field():
                        break
            if not au.next_record():
                break
        out.setdefault(path, []).append(ev)
print(json.dumps(out))
"""


def test_decoding_agrees_with_auparse_oracle() -> None:
    """Debian's auparse (python3-audit, system python only) decodes exe and argv like we do."""
    import json
    import os
    import subprocess
    from pathlib import Path

    from auditwatch.audit.reader import Scanner

    if not os.path.exists("/usr/bin/python3") or subprocess.run(
            ["/usr/bin/python3", "-c", "import auparse"], capture_output=True).returncode != 0:
        kernel_unavailable("python3-audit (auparse) not installed")
    logs = sorted(str(p) for p in (Path(__file__).parent / "data" / "audit").glob("*.log"))
    res = subprocess.run(["/usr/bin/python3", "-c", AUPARSE_SCRIPT, *logs],
                         capture_output=True, text=True, timeout=60, check=True)
    oracle = json.loads(res.stdout)
    compared = 0
    for log in logs:
        with open(log, "rb") as f:
            [ours] = list(Scanner(frozenset({1}), all_execs=True).events(f))
        # A fixture may also hold the parent's memfd_create (the loader case): pick the exec.
        [theirs] = [e for e in oracle[log] if e.get("SYSCALL:pid") == str(ours.pid)]
        if "SYSCALL:exe" in theirs:   # auparse's binding fails on non-UTF-8 values
            assert theirs["SYSCALL:exe"] == ours.exe
        for i, arg in enumerate(ours.argv):
            if f"EXECVE:a{i}" in theirs:
                assert theirs[f"EXECVE:a{i}"] == arg, (log, i)
                compared += 1
    assert compared >= 2 * len(logs)


def test_rules_single_source_of_truth() -> None:
    from pathlib import Path

    from auditwatch.rules import RULE_KEYS, rules_text

    text = rules_text()
    assert (Path(__file__).parent.parent / "rules" / "auditwatch.rules").read_text() == text
    for key in RULE_KEYS:
        assert f"key={key}" in text
    for arch in ("b64", "b32"):
        assert f"-a always,exit -F arch={arch} -S execve,execveat -F key=auditwatch_exec" in text
