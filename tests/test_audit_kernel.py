"""The audit sensor on the real kernel: real fileless and benign execs, netlink and audit.log.

Needs root, auditd running, audit enabled (fixture ``audit_ready``); loads the auditwatch rules
if they are missing. Tamper tests remove one of our rules / disable audit for milliseconds and
always restore them.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditwatch import scenarios, trc105
from auditwatch.audit.reader import Scanner, open_audit_logs
from auditwatch.events import ExecEvent
from auditwatch.finding import HealthInfo, exec_finding, to_json
from auditwatch.hostinfo import memfd_devices
from auditwatch.rules import install_rules, rules_loaded, rules_text
from auditwatch.sensors.audit_netlink import AuditNetlinkSource
from tests.conftest import kernel_unavailable

pytestmark = pytest.mark.kernel

WAIT_S = 5.0
AUDIT_LOG = "/var/log/audit/audit.log"
MEMFD_RULE = ["always,exit", "-F", "arch=b32", "-S", "memfd_create", "-F", "success=1",
              "-F", "key=auditwatch_memfd"]
DEVS = memfd_devices()


@pytest.fixture
def rules(audit_ready: None, tmp_path: Path) -> None:
    if not rules_loaded():
        install_rules(str(tmp_path))
    assert rules_loaded()


@pytest.fixture
def source(rules: None) -> Iterator[AuditNetlinkSource]:
    src = AuditNetlinkSource(all_execs=True)
    src.load()
    yield src
    src.close()
    src.close()  # twice is safe


def wait_for(src: AuditNetlinkSource, pids: set[int], health: list[HealthInfo] | None = None,
             timeout: float = WAIT_S) -> dict[int, ExecEvent]:
    """Poll the source (bounded) until an exec of every pid arrived."""
    found: dict[int, ExecEvent] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pids <= found.keys():
        select.select([src], [], [], 0.1)
        for ev in src.read() + src.tick(time.time_ns()):
            if ev.pid in pids:
                assert ev.pid not in found, f"two exec events for pid {ev.pid}"
                found[ev.pid] = ev
        if health is not None:
            health.extend(src.take_health())
    return found


@pytest.mark.parametrize("name", list(scenarios.ALL))
def test_scenario_seen_live(source: AuditNetlinkSource, name: str) -> None:
    tag = scenarios.token()
    result = scenarios.ALL[name](tag)
    assert result.exit_status == 0
    ev = wait_for(source, {result.pid}).get(result.pid)
    assert ev is not None, f"{name}: no audit exec for pid {result.pid}"
    assert ev.argv == result.argv
    assert tag in ev.argv or name == "loader_list"  # ld.so --list takes no extra argument
    assert trc105.detect(ev, DEVS) == result.expected
    assert ev.audit is not None and ev.audit.key == "auditwatch_exec"
    assert ev.audit.syscall in ("execve", "execveat")
    assert not ev.argv_truncated


def test_fast_path_source_finds_positives_only(rules: None) -> None:
    src = AuditNetlinkSource()
    src.load()
    try:
        pos = [f(scenarios.token()) for f in scenarios.POSITIVE.values()]
        neg = [f(scenarios.token()) for f in scenarios.NEGATIVE.values()]
        found = wait_for(src, {r.pid for r in pos})
        assert {r.pid for r in pos} <= found.keys()
        late = wait_for(src, {r.pid for r in neg}, timeout=0.5)
        assert all(trc105.detect(e, DEVS) is None for e in late.values())
        for r in pos:
            assert trc105.detect(found[r.pid], DEVS) == r.expected
        c = src.counters()
        assert c["execs_seen"] >= len(pos) + len(neg)
        assert c["skipped_not_fileless"] >= 2          # ordinary_exec, tmp_script...
        assert c["parse_errors"] == 0
    finally:
        src.close()


@pytest.mark.parametrize("memfd_name", [
    "new\nline", 'quo"te', "brack]et [x]", b"non-utf8-\xff\xfe", "spaces and = signs",
])
def test_hostile_names_and_long_argument(source: AuditNetlinkSource,
                                         memfd_name: str | bytes) -> None:
    tag = scenarios.token()
    long_arg = "L" * 100_000
    extra = ["a\nb", 'q"t', "]", long_arg, "\x1dafter"]
    result = scenarios.memfd_execveat(tag, memfd_name=memfd_name, extra_args=extra)
    ev = wait_for(source, {result.pid}).get(result.pid)
    assert ev is not None
    assert ev.argv == result.argv
    assert not ev.argv_truncated
    name = memfd_name if isinstance(memfd_name, str) else memfd_name.decode(
        "utf-8", "backslashreplace")
    assert ev.memfd_name == name
    assert trc105.detect(ev, DEVS) == "memfd"
    doc = json.loads(to_json(exec_finding(ev, "memfd", "host")))
    args = {a["name"]: a["value"] for a in doc["Event"]["args"]}
    assert args["argv"] == list(result.argv)
    assert args["pathname"] == "memfd:" + name


def _audit_log_size() -> int:
    return os.path.getsize(AUDIT_LOG)


def test_audit_log_scan_matches_live(source: AuditNetlinkSource) -> None:
    offset = _audit_log_size()
    results = [f(scenarios.token()) for f in scenarios.ALL.values()]
    live = wait_for(source, {r.pid for r in results})
    assert live.keys() == {r.pid for r in results}
    deadline = time.monotonic() + WAIT_S
    offline: dict[int, ExecEvent] = {}
    while time.monotonic() < deadline and offline.keys() != live.keys():
        time.sleep(0.2)
        if _audit_log_size() >= offset:
            with open(AUDIT_LOG, "rb") as f:
                f.seek(offset)
                lines = f.readlines()
        else:  # rotated meanwhile: scan everything
            lines = list(open_audit_logs([os.path.dirname(AUDIT_LOG)]))
        scanner = Scanner(DEVS, all_execs=True)
        offline = {e.pid: e for e in scanner.events(lines) if e.pid in live}
    assert offline.keys() == live.keys()
    for r in results:
        a, b = live[r.pid], offline[r.pid]
        assert b.argv == a.argv == r.argv
        assert trc105.detect(b, DEVS) == trc105.detect(a, DEVS) == r.expected
        assert (b.exe, b.exec_path, b.inode, b.dev, b.fd_target) == (
            a.exe, a.exec_path, a.inode, a.dev, a.fd_target)
        assert b.audit is not None and a.audit is not None and b.audit.serial == a.audit.serial


def _auditctl(*args: str) -> None:
    subprocess.run(["auditctl", *args], check=True, capture_output=True, timeout=10)


def test_tamper_rule_removed_and_audit_disabled(source: AuditNetlinkSource) -> None:
    health: list[HealthInfo] = []
    try:
        _auditctl("-d", *MEMFD_RULE)
    finally:
        _auditctl("-a", *MEMFD_RULE)
    try:
        _auditctl("-e", "0")
    finally:
        _auditctl("-e", "1")
    assert rules_loaded()
    marker = scenarios.ordinary_exec(scenarios.token())   # arrives after the config changes
    wait_for(source, {marker.pid}, health=health)
    kinds = {h.kind for h in health}
    assert "audit_rules_removed" in kinds, health
    assert "audit_disabled" in kinds, health
    removed = next(h for h in health if h.kind == "audit_rules_removed")
    assert "auditwatch_memfd" in removed.message


def test_overflow_is_counted_and_survived(rules: None) -> None:
    src = AuditNetlinkSource(all_execs=True, rcvbuf=4096)
    src.load()
    try:
        subprocess.run(["sh", "-c", "for i in $(seq 300); do /bin/true; done"], check=True,
                       timeout=60)
        health: list[HealthInfo] = []
        for _ in range(20):
            src.read()
            health.extend(src.take_health())
        assert src.counters()["enobufs"] >= 1
        assert any(h.kind == "audit_records_lost" for h in health)
        # Still working afterwards: records keep arriving (the tiny buffer may drop again, so
        # do not insist on one particular event).
        before = src.counters()["records"]
        deadline = time.monotonic() + WAIT_S
        while src.counters()["records"] == before and time.monotonic() < deadline:
            scenarios.ordinary_exec(scenarios.token())
            select.select([src], [], [], 0.1)
            src.read()
        assert src.counters()["records"] > before
    finally:
        src.close()


def test_without_cap_audit_read_is_unavailable(rules: None) -> None:
    if shutil.which("setpriv") is None:
        kernel_unavailable("setpriv (util-linux) not installed")
    code = ("from auditwatch.sensors.audit_netlink import AuditNetlinkSource\n"
            "from auditwatch.errors import SensorUnavailable\n"
            "try:\n    AuditNetlinkSource().load()\nexcept SensorUnavailable as e:\n"
            "    print('UNAVAILABLE', e)\n")
    out = subprocess.run(["setpriv", "--bounding-set=-audit_read", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30,
                         cwd=str(Path(__file__).parent.parent))
    assert "UNAVAILABLE audit: needs CAP_AUDIT_READ" in out.stdout, out.stderr


def test_install_rules_into_other_dir(rules: None, tmp_path: Path) -> None:
    written = install_rules(str(tmp_path / "rules.d"))
    assert Path(written).read_text() == rules_text()
    assert rules_loaded()
