"""End to end on the real kernel: ``auditwatch run`` against real fileless execs.

Each sensor alone (issue A: audit, issue B: BPF) and both together (issue C: one finding that
lists both sensors). The same actions, read back from auditd's audit.log, give the same findings
through ``auditwatch scan`` (issue A).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditwatch import scenarios
from tests.daemon_process import Daemon, args_of, assert_scenarios_reported, for_pid, with_token

pytestmark = pytest.mark.kernel

SENSOR_SETS = [("audit",), ("bpf",), ("bpf", "audit")]
AUDIT_LOG = "/var/log/audit/audit.log"


@pytest.fixture
def kernel_ready(audit_ready: None, bpf_ready: None) -> None:
    """Both sensors' prerequisites (audit needs its rules: installed by .ci/run / setup.sh)."""


@pytest.fixture(params=SENSOR_SETS, ids=["+".join(s) for s in SENSOR_SETS])
def daemon(request: pytest.FixtureRequest, tmp_path: Path, kernel_ready: None):  # type: ignore[no-untyped-def]
    subprocess.run([sys.executable, "-m", "auditwatch", "rules", "--install"], check=True,
                   capture_output=True)
    d = Daemon(tmp_path, request.param, "--no-sweep")
    d.sensors = request.param  # type: ignore[attr-defined]
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def _run_scenarios(names: list[str]) -> list[scenarios.ScenarioResult]:
    results = scenarios.run_all(names)
    for r in results:
        assert r.exit_status == 0, f"{r.name} did not exec: status {r.exit_status}"
    return results


def test_each_technique_reported_once_and_no_lookalike(daemon: Daemon) -> None:
    results = _run_scenarios(list(scenarios.ALL))
    assert_scenarios_reported(daemon, results, set(daemon.sensors))  # type: ignore[attr-defined]


HOSTILE_NAMES: list[str | bytes] = ['new\nline', 'quote"s\'', "brack]et[", b"bad\xff\xfeutf8",
                                    "\x1b[31mred", "back\\slash"]


def test_hostile_names_and_huge_argv_give_valid_json(daemon: Daemon) -> None:
    tag = scenarios.token()
    hostile_arg = 'a\nb"c]d\\e\x1b[0m'
    huge = "A" * 100_000
    results = [scenarios.memfd_execveat(tag, memfd_name=name, extra_args=(hostile_arg,))
               for name in HOSTILE_NAMES]
    results.append(scenarios.memfd_execveat(tag, extra_args=(huge,)))
    found = daemon.wait_for(lambda fs: len(with_token(fs, tag)) >= len(results))
    mine = with_token(found, tag)
    assert sorted(f["Event"]["hostProcessId"] for f in mine) == sorted(r.pid for r in results)
    raw = daemon.out.read_text(encoding="utf-8")
    for line in raw.splitlines():
        json.loads(line)  # every line is one whole JSON document
    by_pid = {f["Event"]["hostProcessId"]: f for f in mine}
    for r in results[:-1]:
        argv = args_of(by_pid[r.pid])["argv"]
        assert argv[:3] == ["true", tag, hostile_arg]
    big = args_of(by_pid[results[-1].pid])["argv"]
    if "audit" in daemon.sensors:  # type: ignore[attr-defined]
        assert big[-1] == huge  # audit carries the whole argument
    else:
        assert by_pid[results[-1].pid]["Event"]["auditwatch"].get("argv_truncated") is True
        assert big[-1] and huge.startswith(big[-1])


def test_burst_of_benign_execs_reports_exactly_the_fileless(daemon: Daemon) -> None:
    tag = scenarios.token()
    fileless = []
    benign_pids = []
    for i in range(1000):
        benign_pids.append(subprocess.Popen(["/bin/true", tag]).pid)
        if i % 100 == 50:
            fileless.append(scenarios.memfd_execveat(tag))
    found = daemon.wait_for(lambda fs: len(with_token(fs, tag)) >= len(fileless), timeout=15)
    time.sleep(1.0)
    mine = with_token(daemon.findings(), tag)
    assert sorted(f["Event"]["hostProcessId"] for f in mine) == sorted(r.pid for r in fileless)
    assert not {f["Event"]["hostProcessId"] for f in mine} & set(benign_pids)
    del found
    os.waitpid(-1, os.WNOHANG)


@pytest.mark.parametrize("sensors", [("audit",)], ids=["audit"])
def test_scan_of_auditd_log_matches_live(sensors: tuple[str, ...], tmp_path: Path,
                                         kernel_ready: None) -> None:
    subprocess.run([sys.executable, "-m", "auditwatch", "rules", "--install"], check=True,
                   capture_output=True)
    d = Daemon(tmp_path, sensors, "--no-sweep")
    try:
        d.wait_ready()
        results = _run_scenarios(list(scenarios.ALL))
        positives = [r for r in results if r.expected]
        live = d.wait_for(lambda fs: all(for_pid(fs, r.pid, r.argv[-1]) for r in positives))
    finally:
        d.stop()

    def key(f: dict) -> tuple:
        return (f["Event"]["hostProcessId"], f["Event"]["auditwatch"]["technique"],
                tuple(args_of(f)["argv"]))

    tokens = [r.argv[-1] for r in results]
    live_keys = sorted(key(f) for t in tokens for f in with_token(live, t))
    assert len(live_keys) == len(positives)
    deadline = time.monotonic() + 10
    while True:  # auditd writes its log asynchronously
        out = subprocess.run([sys.executable, "-m", "auditwatch", "scan", AUDIT_LOG],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        scanned = [json.loads(line) for line in out.stdout.splitlines()]
        scan_keys = sorted(key(f) for t in tokens for f in with_token(scanned, t))
        if scan_keys == live_keys or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert scan_keys == live_keys
