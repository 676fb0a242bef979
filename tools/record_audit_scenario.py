#!/usr/bin/env python3
"""Record audit.log fixtures of real (fileless and benign) execs for the golden tests.

Needs root, auditd running with the auditwatch rules loaded (``auditwatch rules --install``).
For each scenario it performs the exec (``auditwatch.scenarios``), waits until auditd has written
the event, copies the audit.log lines of the events of that child pid to
``tests/data/audit/<name>.log`` and writes ``<name>.expected.json`` (what the scanner finds now;
review it before committing).

    python3 tools/record_audit_scenario.py                  # every scenario + extra cases
    python3 tools/record_audit_scenario.py memfd_execveat   # just one
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditwatch import scenarios
from auditwatch.hostinfo import memfd_devices
from auditwatch.scenarios import ScenarioResult

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "data" / "audit"
AUDIT_LOG = "/var/log/audit/audit.log"
WAIT_S = 10.0

HOSTILE_NAME = b'evil\nname "quoted" ]\xff\xfe'
LONG_ARG = "x" * 20000 + " with space"


def hostile_name(tag: str) -> ScenarioResult:
    r = scenarios.memfd_execveat(tag, memfd_name=HOSTILE_NAME, extra_args=['q"uo te', "]\n"])
    return ScenarioResult("hostile_name", r.pid, r.argv, r.expected, r.exit_status)


def long_argv(tag: str) -> ScenarioResult:
    r = scenarios.memfd_execveat(tag, extra_args=[LONG_ARG, "after"])
    return ScenarioResult("long_argv", r.pid, r.argv, r.expected, r.exit_status)


EXTRA: dict[str, Callable[[str], ScenarioResult]] = {
    "hostile_name": hostile_name,
    "long_argv": long_argv,
}
ALL: dict[str, Callable[[str], ScenarioResult]] = {**scenarios.ALL, **EXTRA}

_SERIAL = re.compile(rb"msg=audit\(\d+\.\d+:(\d+)\):")


def _read_new(log: str, offset: int) -> bytes:
    """What was appended since ``offset`` (also across one rotation)."""
    data = b""
    size = os.path.getsize(log)
    if size < offset and os.path.exists(log + ".1"):
        with open(log + ".1", "rb") as f:
            f.seek(offset)
            data = f.read()
        offset = 0
    with open(log, "rb") as f:
        f.seek(offset)
        return data + f.read()


def record(name: str, log: str = AUDIT_LOG) -> tuple[ScenarioResult, list[bytes]]:
    offset = os.path.getsize(log)
    result = ALL[name](scenarios.token())
    pid_re = re.compile(rb"^type=SYSCALL .* pid=%d " % result.pid)
    # The loader case's evidence is our own memfd_create (the child inherits the fd): keep it.
    memfd_re = re.compile(rb"^type=SYSCALL .* syscall=319 .* pid=%d " % os.getpid())
    deadline = time.monotonic() + WAIT_S
    lines: list[bytes] = []
    while time.monotonic() < deadline:
        lines = _read_new(log, offset).splitlines(keepends=True)
        serials = {m[1] for ln in lines if pid_re.match(ln) and (m := _SERIAL.search(ln))}
        done = {m[1] for ln in lines if ln.startswith(b"type=PROCTITLE")
                and (m := _SERIAL.search(ln)) and m[1] in serials}
        if serials and done == serials:
            time.sleep(0.2)  # the event's last interleaved records
            lines = _read_new(log, offset).splitlines(keepends=True)
            serials |= {m[1] for ln in lines if memfd_re.match(ln) and (m := _SERIAL.search(ln))}
            return result, [ln for ln in lines if (m := _SERIAL.search(ln)) and m[1] in serials]
        time.sleep(0.1)
    raise SystemExit(f"{name}: no audit events for pid {result.pid} in {log} after {WAIT_S}s "
                     "(rules loaded? auditd running?)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(ALL)}")
    ap.add_argument("--out", default=str(OUT_DIR))
    ap.add_argument("--log", default=AUDIT_LOG)
    args = ap.parse_args()
    names = args.names or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The golden test owns the expected-file format: write the logs, then let it rewrite.
    meta = {}
    for name in names:
        result, lines = record(name, args.log)
        (out / f"{name}.log").write_bytes(b"".join(lines))
        meta[name] = result
        print(f"{name}: pid {result.pid}, {len(lines)} lines, expect {result.expected}")
    from tests.test_audit_golden import write_expected  # the one place that knows the format

    for name, result in meta.items():
        write_expected(out / f"{name}.log", result.name if name in scenarios.ALL else name,
                       result.pid, result.expected, sorted(memfd_devices()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
