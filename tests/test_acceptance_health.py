"""End to end on the real kernel, issue C (health, tamper, sweep, status) and issue B at the
daemon level (BPF sensor alone, no audit rules at all).

Tests whose name contains ``tamper`` change the host's audit state (``auditctl -D``, ``-e 0``,
or run with no rules loaded): they restore it in ``finally``, and must not run beside other
kernel tests. Run them under ``flock /tmp/auditwatch-tamper.lock``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditwatch import daemon as daemon_mod
from auditwatch import hostinfo, rules, scenarios
from auditwatch.config import load_config
from auditwatch.engine import Engine
from auditwatch.finding import Finding, to_dict
from auditwatch.health import HEALTH_EVENT_NAME, HealthMonitor
from auditwatch.pipeline import Pipeline
from auditwatch.sensors.bpf.sensor import ALL_PROGRAMS, BpfExecSource
from tests.conftest import kernel_unavailable
from tests.daemon_process import (
    Daemon,
    args_of,
    assert_scenarios_reported,
    for_pid,
    started,
    with_token,
)

pytestmark = pytest.mark.kernel

BOTH = ("bpf", "audit")
HEALTH_WITHIN_S = 5.0   # "a health finding within a few seconds"
PROMPT_S = 2.0          # a single-sensor finding must not wait for a multi-second hold


# --- plumbing --------------------------------------------------------------------------------

@pytest.fixture
def kernel_ready(audit_ready: None, bpf_ready: None) -> None:
    """Both sensors' prerequisites."""


def _install_rules() -> None:
    """Ours loaded, or loaded now. Reloading (augenrules: -D, then add) when they already are
    would blind every other audit user on this host for a moment: don't."""
    if rules.rules_loaded():
        return
    subprocess.run([sys.executable, "-m", "auditwatch", "rules", "--install"], check=True,
                   capture_output=True)


def _auditctl(*args: str) -> None:
    subprocess.run(["auditctl", *args], check=True, capture_output=True)


def _restore_audit() -> None:
    """``auditctl -e 1`` and our rules back, checked with ``auditctl -l``."""
    subprocess.run(["auditctl", "-e", "1"], capture_output=True)
    _install_rules()
    listed = subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout
    assert all(f"key={k}" in listed for k in rules.RULE_KEYS), listed


@pytest.fixture
def restore_audit(kernel_ready: None) -> Iterator[None]:
    _install_rules()
    try:
        yield
    finally:
        _restore_audit()


def health(findings: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["SigMetadata"]["EventName"] == HEALTH_EVENT_NAME
            and f["Event"]["eventName"] == kind]


def _assert_health_shape(f: dict[str, Any], kind: str, sensor: str) -> None:
    assert set(f) == {"SigMetadata", "Event", "Data"}
    assert f["SigMetadata"]["ID"] == "AW-HEALTH" and f["SigMetadata"]["EventName"] == \
        HEALTH_EVENT_NAME
    ev = f["Event"]
    assert ev["eventName"] == kind and ev["auditwatch"]["health"] == kind
    assert ev["auditwatch"]["sensor"] == sensor
    assert {a["name"] for a in ev["args"]} == {"message", "sensor", "count"}


def _memfd_exec_found(d: Daemon, timeout: float = 8.0) -> tuple[dict[str, Any], float]:
    """One memfd exec; its one finding and how long after the exec it was in the output."""
    r = scenarios.memfd_execveat(scenarios.token())
    assert r.exit_status == 0
    done = time.monotonic()
    d.wait_for(lambda fs: for_pid(fs, r.pid, r.argv[-1]), timeout=timeout)
    latency = time.monotonic() - done
    time.sleep(0.5)  # a second (duplicate) finding of the same exec would be here by now
    mine = for_pid(d.findings(), r.pid, r.argv[-1])
    assert len(mine) == 1, f"memfd exec {r.pid}: {mine}\n" + "".join(d.stderr[-20:])
    assert mine[0]["Event"]["auditwatch"]["technique"] == "memfd"
    return mine[0], latency


def _wait_status(d: Daemon, predicate: Any, timeout: float = 8.0) -> dict[str, Any]:
    import json
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            state = json.loads(d.status.read_text())
        except (OSError, ValueError):
            state = {}
        if state and predicate(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"status never matched: {state}")


# --- 1. audit tampering while both sensors run --------------------------------------------

def test_tamper_rules_removed_gives_health_finding_and_bpf_keeps_detecting(
        tmp_path: Path, restore_audit: None) -> None:
    d = started(tmp_path, BOTH, "--no-sweep")
    try:
        before, _ = _memfd_exec_found(d)
        assert before["Event"]["auditwatch"]["sensors"] == ["bpf", "audit"]

        _auditctl("-D")
        t0 = time.monotonic()
        found = d.wait_for(lambda fs: health(fs, "audit_rules_removed"),
                           timeout=HEALTH_WITHIN_S + 2)
        took = time.monotonic() - t0
        removed = health(found, "audit_rules_removed")
        assert removed, "no audit_rules_removed finding:\n" + "".join(d.stderr[-20:])
        assert took < HEALTH_WITHIN_S, f"health finding after {took:.1f}s"
        assert len(removed) == 1, removed       # one report per episode
        _assert_health_shape(removed[0], "audit_rules_removed", "audit")

        after, latency = _memfd_exec_found(d)
        block = after["Event"]["auditwatch"]
        assert block["sensors"] == ["bpf"], block
        assert latency < PROMPT_S, f"BPF-only finding took {latency:.2f}s"
        # audit is known blind: the correlator no longer waits for it, so it is not "missing".
        assert "missing_sensors" not in block, block

        state = _wait_status(d, lambda s: s["sensors"]["audit"]["state"] == "blind")
        assert state["sensors"]["bpf"]["state"] == "live"
        assert {"kind": "audit_rules_removed", "sensor": "audit"} in state["health"]

        # Rules back: audit delivers again before the daemon's periodic check says so. Still
        # one finding per exec (no BPF finding plus a pass-through audit one).
        subprocess.run([sys.executable, "-m", "auditwatch", "rules", "--install"], check=True,
                       capture_output=True)
        _memfd_exec_found(d)
        d.wait_for(lambda fs: health(fs, "audit_rules_removed_recovered"), timeout=10)
        assert health(d.findings(), "audit_rules_removed_recovered")
        restored, _ = _memfd_exec_found(d)
        assert restored["Event"]["auditwatch"]["sensors"] == ["bpf", "audit"]
        assert len(health(d.findings(), "audit_rules_removed")) == 1
    finally:
        d.stop()
        _restore_audit()


def test_tamper_audit_disabled_gives_health_finding_and_bpf_keeps_detecting(
        tmp_path: Path, restore_audit: None) -> None:
    d = started(tmp_path, BOTH, "--no-sweep")
    try:
        _auditctl("-e", "0")
        t0 = time.monotonic()
        found = d.wait_for(lambda fs: health(fs, "audit_disabled"), timeout=HEALTH_WITHIN_S + 2)
        took = time.monotonic() - t0
        disabled = health(found, "audit_disabled")
        assert disabled, "no audit_disabled finding:\n" + "".join(d.stderr[-20:])
        assert took < HEALTH_WITHIN_S, f"health finding after {took:.1f}s"
        _assert_health_shape(disabled[0], "audit_disabled", "audit")

        after, latency = _memfd_exec_found(d)
        assert after["Event"]["auditwatch"]["sensors"] == ["bpf"]
        assert latency < PROMPT_S, f"BPF-only finding took {latency:.2f}s"

        _auditctl("-e", "1")   # recovery is noticed by the periodic check, and audit is back
        d.wait_for(lambda fs: health(fs, "audit_disabled_recovered"), timeout=10)
        back, _ = _memfd_exec_found(d)
        assert back["Event"]["auditwatch"]["sensors"] == ["bpf", "audit"]
    finally:
        d.stop()
        _restore_audit()


# --- 2. BPF detach ------------------------------------------------------------------------

def _daemon_links(pid: int) -> dict[int, int]:
    """{link id: prog id} of the BPF links the process ``pid`` holds (from its fdinfo)."""
    links: dict[int, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
        if "link_id" in fields:
            links[int(fields["link_id"])] = int(fields.get("prog_id", "0"))
    return links


def _prog_names(ids: set[int]) -> set[str]:
    import json
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    return {p["name"] for p in json.loads(out.stdout or "[]") if p.get("id") in ids}


def test_bpf_detach_from_outside(tmp_path: Path, kernel_ready: None) -> None:
    """``bpftool link detach``: either the kernel refuses it for our tracing links (the tamper
    vector is closed: detection must go on through BPF), or it succeeds and we must say so."""
    if subprocess.run(["which", "bpftool"], capture_output=True).returncode != 0:
        kernel_unavailable("bpftool not installed")
    _install_rules()
    d = started(tmp_path, BOTH, "--no-sweep")
    try:
        links = _daemon_links(d.proc.pid)
        assert links, "the daemon holds no BPF link"
        names = _prog_names(set(links.values()))
        assert names and names <= {p[:15] for p in ALL_PROGRAMS}, names  # 15: BPF_OBJ_NAME_LEN
        results = [subprocess.run(["bpftool", "link", "detach", "id", str(link)],
                                  capture_output=True, text=True) for link in links]
        refused = [r for r in results if r.returncode != 0]
        if refused:
            assert all("not supported" in r.stderr.lower() for r in refused), \
                [r.stderr for r in refused]
            assert len(refused) == len(results)
            time.sleep(1.5)  # a health check passes
            found, latency = _memfd_exec_found(d)
            assert found["Event"]["auditwatch"]["sensors"] == ["bpf", "audit"]
            assert not health(d.findings(), "bpf_detached")
            assert latency < PROMPT_S
        else:
            found_all = d.wait_for(lambda fs: health(fs, "bpf_detached"), timeout=HEALTH_WITHIN_S)
            assert health(found_all, "bpf_detached"), "detached, yet no health finding"
            found, latency = _memfd_exec_found(d)
            assert found["Event"]["auditwatch"]["sensors"] == ["audit"]
            assert latency < PROMPT_S
    finally:
        d.stop()


def test_bpf_detached_in_process_gives_health_finding_and_audit_keeps_detecting(
        kernel_ready: None) -> None:
    """The detach health path, with the daemon's own assembly, on a kernel where nothing
    outside can detach us: the BPF source destroys its own links."""
    _install_rules()
    config = load_config(None)
    host = hostinfo.hostname()
    found: list[Finding] = []
    engine = Engine(daemon_mod._sources(config, list(BOTH)), Pipeline(hostname=host),
                    found.append)
    try:
        live = daemon_mod.start_sensors(engine, frozenset(BOTH))   # as daemon.run() does
        engine.pipeline = daemon_mod.make_pipeline(config, live, host, live_host=True)
        monitor = HealthMonitor()
        engine.health = daemon_mod._health_monitor(engine, host, monitor)

        def pump_until(pred: Any, timeout: float) -> list[dict[str, Any]]:
            deadline = time.monotonic() + timeout
            while True:
                engine.pump(0.05)
                dicts = [to_dict(f) for f in found]
                if pred(dicts) or time.monotonic() > deadline:
                    return dicts

        def exec_and_find() -> tuple[dict[str, Any], float]:
            r = scenarios.memfd_execveat(scenarios.token())
            t = time.monotonic()
            dicts = pump_until(lambda fs: for_pid(fs, r.pid, r.argv[-1]), 8.0)
            mine = for_pid(dicts, r.pid, r.argv[-1])
            assert len(mine) == 1, mine
            return mine[0], time.monotonic() - t

        first, _ = exec_and_find()
        assert first["Event"]["auditwatch"]["sensors"] == ["bpf", "audit"]

        bpf = next(s for s in engine.active if isinstance(s, BpfExecSource))
        assert bpf.attached()
        bpf.destroy_links()
        t0 = time.monotonic()
        dicts = pump_until(lambda fs: health(fs, "bpf_detached"), HEALTH_WITHIN_S + 1)
        assert health(dicts, "bpf_detached"), [f["Event"]["eventName"] for f in dicts]
        assert time.monotonic() - t0 < HEALTH_WITHIN_S
        _assert_health_shape(health(dicts, "bpf_detached")[0], "bpf_detached", "bpf")
        assert "bpf" in monitor.blinded()

        after, latency = exec_and_find()
        assert after["Event"]["auditwatch"]["sensors"] == ["audit"]
        assert latency < PROMPT_S, f"audit-only finding took {latency:.2f}s"
    finally:
        engine.close()


# --- 3. start-up sweep --------------------------------------------------------------------

def test_sweep_reports_fileless_processes_started_before_the_daemon(
        tmp_path: Path, kernel_ready: None) -> None:
    _install_rules()
    sleepers = scenarios.Sleepers(seconds=60)
    d: Daemon | None = None
    try:
        name, ns_name = scenarios.token(), scenarios.token()
        pid, _ = sleepers.memfd(name)
        try:
            ns_pid = sleepers.memfd_in_new_namespaces(ns_name)
        except scenarios.ScenarioUnavailable as e:
            kernel_unavailable(str(e))
        d = started(tmp_path, BOTH)        # sweep on

        def swept(fs: list[dict[str, Any]], memfd: str) -> list[dict[str, Any]]:
            return [f for f in fs if f["Event"]["auditwatch"].get("memfd_name") == memfd]

        d.wait_for(lambda fs: swept(fs, name) and swept(fs, ns_name))
        time.sleep(1.0)
        fs = d.findings()
        for memfd, host_pid, ns_visible_pid in ((name, pid, pid), (ns_name, ns_pid, 1)):
            mine = swept(fs, memfd)
            assert len(mine) == 1, (memfd, mine)
            ev = mine[0]["Event"]
            assert ev["auditwatch"]["sweep"] is True
            assert ev["auditwatch"]["technique"] == "memfd"
            assert ev["hostProcessId"] == host_pid and ev["processId"] == ns_visible_pid
            assert args_of(mine[0])["pathname"] == f"memfd:{memfd}"
            assert args_of(mine[0])["argv"] == ["sleep", "60"]
    finally:
        if d is not None:
            d.stop()
        sleepers.close()


# --- 4. auditwatch status ------------------------------------------------------------------

def _status(d: Daemon) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUDITWATCH_STATUS": str(d.status)}
    return subprocess.run([sys.executable, "-m", "auditwatch", "status"], capture_output=True,
                          text=True, env=env, timeout=30)


def test_status_shows_sensors_and_counters(tmp_path: Path, kernel_ready: None) -> None:
    _install_rules()
    d = started(tmp_path, BOTH, "--no-sweep")
    try:
        _memfd_exec_found(d)
        _wait_status(d, lambda s: s["stages"]["pipeline"]["findings"] >= 1)
        out = _status(d)
        assert out.returncode == 0, out.stdout + out.stderr
        text = out.stdout
        assert text.startswith(f"auditwatch: running pid={d.proc.pid}")
        lines = {ln.strip().split(":")[0]: ln for ln in text.splitlines()}
        bpf, audit = lines["sensor bpf"], lines["sensor audit"]
        assert "sensor bpf: live" in bpf and "sensor audit: live" in audit
        for counter in ("execs_seen=", "rb_drops=", "queue_drops="):
            assert counter in bpf, bpf
        for counter in ("execs_seen=", "lost=", "enobufs="):
            assert counter in audit, audit
        assert "findings=" in lines["pipeline"]
        assert "written=" in lines["outputs"], lines["outputs"]   # a file output never drops
        assert "health" in lines
    finally:
        d.stop()
    out = _status(d)
    assert out.returncode == 1
    assert "not running" in out.stdout.lower()


# --- 5. issue B at daemon level: BPF alone, no audit rules at all ---------------------------

NS_EXEC = (
    "import sys\n"
    "from auditwatch import scenarios\n"
    "r = scenarios.memfd_execveat(sys.argv[1], memfd_name='aw-ns')\n"
    "print(r.pid, r.exit_status, flush=True)\n"
    "sys.stdin.read()\n"   # stay alive so the test can find our host pid
)


def test_tamper_bpf_alone_without_audit_rules(tmp_path: Path, restore_audit: None) -> None:
    _auditctl("-D")
    listed = subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout
    assert "auditwatch" not in listed
    d = started(tmp_path, ("bpf",), "--no-sweep")
    try:
        results = scenarios.run_all([*scenarios.POSITIVE, *scenarios.NEGATIVE])
        for r in results:
            assert r.exit_status == 0, f"{r.name} did not exec: status {r.exit_status}"
        assert_scenarios_reported(d, results, {"bpf"})

        tag = scenarios.token()
        p = subprocess.Popen(["unshare", "-fpm", "--mount-proc", sys.executable, "-c", NS_EXEC,
                              tag], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdin is not None
            ns_pid, status = map(int, p.stdout.readline().split())
            assert status == 0
            kids = scenarios.children_of(p.pid)
            assert len(kids) == 1, kids        # the python that is pid 1 in the namespace
            found = d.wait_for(lambda fs: with_token(fs, tag))
            mine = with_token(found, tag)
            assert len(mine) == 1, mine
            ev = mine[0]["Event"]
            assert ev["processId"] == ns_pid and ns_pid < 10
            assert ev["hostProcessId"] not in (1, 2) and ev["hostProcessId"] != ns_pid
            assert ev["parentProcessId"] == 1 and ev["hostParentProcessId"] == kids[0]
            block = ev["auditwatch"]
            assert block["technique"] == "memfd" and block["sensors"] == ["bpf"]
            assert block["pid_ns"] != os.stat("/proc/self/ns/pid").st_ino
            assert block["mnt_ns"] != os.stat("/proc/self/ns/mnt").st_ino
        finally:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(timeout=10)
    finally:
        d.stop()
        _restore_audit()


# --- 6. both sensors, a tight burst --------------------------------------------------------

def test_burst_of_memfd_execs_one_finding_each_with_both_sensors(tmp_path: Path,
                                                                  kernel_ready: None) -> None:
    _install_rules()
    d = started(tmp_path, BOTH, "--no-sweep")
    try:
        tag = scenarios.token()
        results = [scenarios.memfd_execveat(tag) for _ in range(200)]
        assert all(r.exit_status == 0 for r in results)
        d.wait_for(lambda fs: len(with_token(fs, tag)) >= len(results), timeout=20)
        time.sleep(1.0)  # a late duplicate would show now
        mine = with_token(d.findings(), tag)
        pids = [f["Event"]["hostProcessId"] for f in mine]
        assert len(pids) == len(set(pids)), "duplicate findings"
        assert sorted(pids) == sorted(r.pid for r in results)
        partial = [f["Event"]["auditwatch"] for f in mine
                   if f["Event"]["auditwatch"]["sensors"] != ["bpf", "audit"]]
        assert partial == [], partial[:3]
        assert not health(d.findings(), "sensor_disagreement")
    finally:
        d.stop()
