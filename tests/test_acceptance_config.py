"""Issue 5 (configuration, unspoofable allow-lists, syslog) end to end: the real ``auditwatch run``
daemon, real fileless execs, real config files, a real rsyslogd.

- A memfd named like runc's is reported with the default allow-list when a Python parent runs it.
- An entry matching on every field (memfd name, exe, parent exe, uid, technique, argv, cgroup,
  sha256) suppresses, is counted in ``auditwatch status`` and logged with the entry's name; a
  one-byte-different image, or the same one outside the cgroup, is still reported.
- SIGHUP: a broken config is reported with file:line and the old one stays in force; a valid one
  takes over; the JSONL file is reopened (logrotate).
- Refusal of configs a non-root user could edit, and of broken/mistyped/unknown keys (exit 2,
  file:line, no traceback), through the real CLI.
- Syslog: the daemon's finding for a hostile memfd name reaches rsyslog as exactly one RFC 5424
  record per transport, and the JSONL file.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rfc5424_reader import parse_rfc5424

from auditwatch import scenarios
from auditwatch.cgroups import cgroup2_mount
from auditwatch.outputs.rfc5424 import safe_text
from tests.conftest import kernel_unavailable
from tests.daemon_process import Daemon, args_of, started, with_token

PYTHON_EXE = os.path.realpath(sys.executable)   # what /proc/<our pid>/exe shows
SLEEP = "/bin/sleep"
NOBODY = 65534
_rules_installed = False


# --- fixtures and helpers ---------------------------------------------------------------------

@pytest.fixture
def kernel_ready(audit_ready: None, bpf_ready: None) -> None:
    global _rules_installed
    if not _rules_installed:
        subprocess.run([sys.executable, "-m", "auditwatch", "rules", "--install"], check=True,
                       capture_output=True)
        _rules_installed = True


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A root-owned 0700 directory for config files (check_config_permissions accepts it)."""
    d = tmp_path / "etc"
    d.mkdir()
    os.chmod(d, 0o700)
    return d


def write_config(path: Path, text: str) -> Path:
    """Replace ``path`` atomically (a reload never reads half a file), root-owned 0600."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def yaml_str(s: str) -> str:
    return json.dumps(s)   # a JSON string is a valid YAML double-quoted scalar


def wait_until(pred: Callable[[], Any], timeout: float, what: str, daemon: Daemon | None = None
               ) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = "\n" + "".join(daemon.stderr[-40:]) if daemon is not None else ""
            raise AssertionError(f"timed out waiting for {what}{extra}")
        time.sleep(0.05)


def stderr_lines(daemon: Daemon, *needles: str) -> list[str]:
    return [ln for ln in list(daemon.stderr) if all(n in ln for n in needles)]


def suppressed_lines(daemon: Daemon, entry: str, pid: int) -> list[str]:
    return stderr_lines(daemon, f"suppressed by allow-list entry {entry!r}", f"pid={pid} ")


def hup(daemon: Daemon, mark: str, already: int) -> None:
    """SIGHUP and wait until the daemon logged ``mark`` once more than before."""
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(stderr_lines(daemon, mark)) > already, 10, f"{mark!r} after SIGHUP",
               daemon)


def status_suppressed(daemon: Daemon) -> int | None:
    """The pipeline's suppression counter as ``auditwatch status`` prints it."""
    out = subprocess.run([sys.executable, "-m", "auditwatch", "status"], capture_output=True,
                         text=True, env={**os.environ, "AUDITWATCH_STATUS": str(daemon.status)},
                         timeout=20)
    m = re.search(r"pipeline: .*\bsuppressed=(\d+)", out.stdout)
    return int(m.group(1)) if m else None


class Sleeper:
    """A memfd copy of an image (``/bin/sleep``) exec'd by a child of this Python process and
    kept running (so that /proc/PID/exe still holds the image when the daemon hashes it).
    The child may first move itself into a cgroup (writes its pid to ``cgroup.procs``)."""

    def __init__(self, image: bytes, memfd_name: str, argv: list[str],
                 cgroup_procs: str | None = None) -> None:
        self.argv = argv
        fd = os.memfd_create(memfd_name, 0)
        os.write(fd, image)
        libc = ctypes.CDLL(None, use_errno=True)
        args = (ctypes.c_char_p * (len(argv) + 1))(*[a.encode() for a in argv], None)
        env = (ctypes.c_char_p * 1)(None)
        procs = cgroup_procs.encode() if cgroup_procs else None
        pid = os.fork()
        if pid == 0:   # child: raw syscalls only (the parent has threads)
            try:
                if procs is not None:
                    c = os.open(procs, os.O_WRONLY)
                    os.write(c, str(os.getpid()).encode())
                    os.close(c)
                libc.syscall(scenarios.SYS_EXECVEAT, fd, b"", args, env,
                             scenarios.AT_EMPTY_PATH)
            finally:
                os._exit(127)
        os.close(fd)
        self.pid = pid

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.fixture
def fresh_cgroup() -> Iterator[tuple[str, str]]:
    """A fresh cgroup v2 directory: (path as the daemon reports it, its cgroup.procs file)."""
    root = cgroup2_mount()
    if root is None:
        kernel_unavailable("no cgroup2 hierarchy mounted")
    rel = f"/aw-test-{uuid.uuid4().hex[:8]}"
    os.mkdir(root + rel)
    try:
        yield rel, f"{root}{rel}/cgroup.procs"
    finally:
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(root + rel)
                break
            except OSError:   # EBUSY until its last process is reaped
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def start_daemon(tmp_path: Path, *extra: str) -> Daemon:
    return started(tmp_path, ("bpf", "audit"), "--no-sweep", *extra)


# --- 1. runc's memfd name from a Python parent is still reported ---------------------------------

@pytest.mark.kernel
def test_runc_named_memfd_from_python_is_reported_with_default_allowlist(
        tmp_path: Path, kernel_ready: None) -> None:
    d = start_daemon(tmp_path)
    try:
        tag = scenarios.token()
        r = scenarios.memfd_execveat(tag, memfd_name="runc_cloned:/proc/self/exe")
        assert r.exit_status == 0
        found = d.wait_for(lambda fs: any(set(f["Event"]["auditwatch"]["sensors"])
                                          == {"bpf", "audit"} for f in with_token(fs, tag)))
        time.sleep(0.5)   # a duplicate would show now
        mine = with_token(d.findings(), tag)
        assert len(mine) == 1, (mine, found)
        f = mine[0]
        assert f["Event"]["hostProcessId"] == r.pid
        assert f["Event"]["auditwatch"]["technique"] == "memfd"
        assert args_of(f)["pathname"] == "memfd:runc_cloned:/proc/self/exe"
        # the parent the default runc entry is pinned to, as the kernel resolved it
        assert f["Event"]["auditwatch"]["parent_exe"] == PYTHON_EXE
    finally:
        d.stop()


# --- 2 + 3. an entry matching on every field; sha256 pinning ------------------------------------

@pytest.mark.kernel
def test_entry_matching_every_field_suppresses_counts_and_pins_the_image(
        tmp_path: Path, etc: Path, kernel_ready: None, fresh_cgroup: tuple[str, str]) -> None:
    cgroup, cgroup_procs = fresh_cgroup
    tag = scenarios.token()
    memfd_name = f"aw-sleeper-{tag}"
    image = Path(SLEEP).read_bytes()
    digest = hashlib.sha256(image).hexdigest()
    argv = [f"sleep-{tag}", "3"]
    entry = "every-field"
    config = write_config(etc / "config.yaml", f"""\
log_level: DEBUG
log_suppressed: true
allowlist:
  - name: {entry}
    comment: every field the allow-list supports
    exe: {yaml_str("memfd:aw-sleeper-*")}
    memfd_name: {yaml_str("aw-sleeper-" + tag)}
    parent_exe: {yaml_str(PYTHON_EXE)}
    uid: 0
    technique: memfd
    argv: {yaml_str(f"^sleep-{tag} 3$")}
    cgroup: {yaml_str(cgroup)}
    sha256: {yaml_str(digest)}
""")
    ok = subprocess.run([sys.executable, "-m", "auditwatch", "config", "check", str(config)],
                        capture_output=True, text=True, timeout=20)
    assert ok.returncode == 0, ok.stderr

    d = start_daemon(tmp_path, "--config", str(config))
    sleepers: list[Sleeper] = []
    try:
        assert status_suppressed(d) == 0 or wait_until(lambda: status_suppressed(d) == 0, 5,
                                                       "status file", d)
        exact = Sleeper(image, memfd_name, argv, cgroup_procs)
        sleepers.append(exact)
        # One byte appended: still a valid ELF that runs, but another sha256.
        changed = Sleeper(image + b"\0", memfd_name, argv, cgroup_procs)
        sleepers.append(changed)
        # The exact image, every field but the cgroup matching.
        elsewhere = Sleeper(image, memfd_name, argv)
        sleepers.append(elsewhere)

        def reported(s: Sleeper) -> list[dict[str, Any]]:
            return [f for f in with_token(d.findings(), tag)
                    if f["Event"]["hostProcessId"] == s.pid]

        wait_until(lambda: suppressed_lines(d, entry, exact.pid), 10,
                   "the exact image's suppression in the debug log", d)
        wait_until(lambda: reported(changed) and reported(elsewhere), 10,
                   "the changed image and the one outside the cgroup to be reported", d)
        for s in sleepers:
            assert s.alive(), "the sleeper exited before the daemon could hash it"
        # the status file is rewritten every 2 s
        wait_until(lambda: status_suppressed(d) == 1, 6, "suppressed=1 in auditwatch status", d)
        time.sleep(0.5)
        assert reported(exact) == []
        assert len(suppressed_lines(d, entry, exact.pid)) == 1
        for s in (changed, elsewhere):
            (f,) = reported(s)
            assert f["Event"]["auditwatch"]["technique"] == "memfd"
            assert f["Event"]["auditwatch"]["parent_exe"] == PYTHON_EXE
            assert args_of(f)["pathname"] == f"memfd:{memfd_name}"
            assert suppressed_lines(d, entry, s.pid) == []
        # the cgroup is the path, resolved from BPF's cgroup id
        assert reported(changed)[0]["Event"]["auditwatch"]["cgroup"] == cgroup
        assert reported(elsewhere)[0]["Event"]["auditwatch"]["cgroup"] != cgroup
        assert status_suppressed(d) == 1
        status = subprocess.run([sys.executable, "-m", "auditwatch", "status"],
                                capture_output=True, text=True,
                                env={**os.environ, "AUDITWATCH_STATUS": str(d.status)}).stdout
        assert f"allowlist: {entry}=1" in status   # counted per entry
    finally:
        for s in sleepers:
            s.stop()
        d.stop()


# --- 4. SIGHUP: broken config keeps the old one; valid config takes over; JSONL reopened --------

def _token_entry(name: str, tag: str) -> str:
    return f"""\
  - name: {name}
    parent_exe: {yaml_str(PYTHON_EXE)}
    technique: memfd
    argv: {yaml_str(f"^true {tag}$")}
"""


@pytest.mark.kernel
def test_sighup_reload_and_reopen(tmp_path: Path, etc: Path, kernel_ready: None) -> None:
    old_tag, new_tag = scenarios.token(), scenarios.token()
    head = "log_level: DEBUG\nlog_suppressed: true\nallowlist:\n"
    config = write_config(etc / "config.yaml", head + _token_entry("old", old_tag))
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        def exec_(tag: str) -> int:
            r = scenarios.memfd_execveat(tag)
            assert r.exit_status == 0
            return r.pid

        pid = exec_(old_tag)
        wait_until(lambda: suppressed_lines(d, "old", pid), 10, "'old' suppressing", d)

        # A broken file: reported with file:line, the old allow-list stays in force.
        write_config(config, head + _token_entry("old", old_tag) + "  - name: [unclosed\n")
        hup(d, "config reload failed", 0)
        (err,) = stderr_lines(d, "config reload failed")
        assert f"{config}:8: " in err, err  # where "[" opened
        pid = exec_(old_tag)
        wait_until(lambda: suppressed_lines(d, "old", pid), 10, "'old' still suppressing", d)

        # logrotate moves the file away, then a valid new config and SIGHUP.
        rotated = d.out.with_name(d.out.name + ".1")
        os.rename(d.out, rotated)
        write_config(config, head + _token_entry("new", new_tag))
        hup(d, "configuration reloaded", 0)
        assert stderr_lines(d, f"jsonl:{d.out}: reopened")
        pid = exec_(new_tag)
        wait_until(lambda: suppressed_lines(d, "new", pid), 10, "'new' suppressing", d)
        old_pid = exec_(old_tag)                 # no longer allow-listed
        found = wait_until(lambda: [f for f in with_token(d.findings(), old_tag)
                                    if f["Event"]["hostProcessId"] == old_pid], 10,
                           "the formerly allow-listed exec in the new file", d)
        assert len(found) == 1
        assert os.stat(d.out).st_mode & 0o777 == 0o600
        rotated_lines = rotated.read_text(encoding="utf-8").splitlines()
        assert not [ln for ln in rotated_lines if str(old_pid) in ln and old_tag in ln]
        assert not with_token(d.findings(), new_tag)
    finally:
        d.stop()


# --- 5. a config a non-root user could edit is refused --------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auditwatch", *args], capture_output=True,
                          text=True, timeout=30)


def _refused(config: Path, expect: str) -> None:
    for args in (("run", "--config", str(config), "--sensors", "audit", "--duration", "1",
                  "--no-sweep"),
                 ("config", "check", str(config))):
        out = _cli(*args)
        assert out.returncode == 2, (args, out.returncode, out.stderr)
        assert "Traceback" not in out.stderr
        msg = out.stderr.strip()
        assert msg.startswith(f"auditwatch: {config}:"), msg
        assert expect in msg and "blind the sensor" in msg, msg
        assert len(msg.splitlines()) == 1, msg


@pytest.mark.parametrize("case", ["file o+w", "file g+w", "file owned by nobody",
                                  "dir o+w", "dir owned by nobody"])
def test_config_writable_by_non_root_is_refused(etc: Path, case: str) -> None:
    if os.geteuid() != 0:
        kernel_unavailable("chown needs root")
    config = write_config(etc / "config.yaml", "log_level: INFO\n")
    assert _cli("config", "check", str(config)).returncode == 0
    target, change = case.split(" ", 1)
    path = config if target == "file" else etc
    if change == "owned by nobody":
        os.chown(path, NOBODY, -1)
        expect = f"owned by uid {NOBODY}"
    else:
        os.chmod(path, os.stat(path).st_mode | (0o002 if change == "o+w" else 0o020))
        expect = "writable by"
    _refused(config, expect)


# --- 6. broken YAML, wrong type, unknown key: exit 2 with file:line ---------------------------

BAD_CONFIGS = {
    "broken yaml": ("log_level: INFO\nsensors: [bpf, audit\nlog_suppressed: true\n", 3,
                    "invalid YAML"),
    "wrong type": ("log_level: INFO\ncorrelation:\n  window_ms: soon\n", 3,
                   "correlation.window_ms: expected an integer"),
    "unknown key": ("allowlist:\n  - name: x\n    parent_exe: /usr/bin/x\n    colour: red\n", 4,
                    "allowlist[0].colour: unknown key 'colour'"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_exits_2_naming_file_and_line(etc: Path, case: str) -> None:
    text, line, expect = BAD_CONFIGS[case]
    config = write_config(etc / "config.yaml", text)
    for args in (("run", "--config", str(config), "--sensors", "audit", "--duration", "1",
                  "--no-sweep"),
                 ("config", "check", str(config))):
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "Traceback" not in out.stderr
        assert out.stderr.startswith(f"auditwatch: {config}:{line}: "), out.stderr
        assert expect in out.stderr, out.stderr


# --- 7. syslog end to end through the daemon ---------------------------------------------------

HOSTILE_NAME = 'evil\n<13>1 2024-01-01T00:00:00Z forged app - - - x] "q\\ \x1b[31mred'
HOSTILE_ARG = 'a]b"c\\d\ne<14>1 - forged - - - -'


@pytest.mark.kernel
def test_hostile_finding_reaches_rsyslog_once_and_jsonl(
        tmp_path: Path, rsyslog: Any, kernel_ready: None) -> None:
    d = start_daemon(tmp_path,
                     "--output", f"syslog+tcp://127.0.0.1:{rsyslog.tcp_port}",
                     "--output", f"syslog+udp://127.0.0.1:{rsyslog.udp_port}")
    try:
        tag = scenarios.token()
        r = scenarios.memfd_execveat(tag, memfd_name=HOSTILE_NAME, extra_args=(HOSTILE_ARG,))
        assert r.exit_status == 0

        def mine(recs: list[Any]) -> list[Any]:
            return [x for x in recs if tag.encode() in x.raw]

        rsyslog.wait_for(lambda rs: {x.input for x in mine(rs)} >= {"imtcp", "imudp"}, 15)
        jsonl = d.wait_for(lambda fs: with_token(fs, tag))
        time.sleep(0.5)   # a forged or duplicated record would have arrived by now
        recs = rsyslog.records()
        assert sorted(x.input for x in mine(recs)) == ["imtcp", "imudp"], \
            [x.raw for x in mine(recs)]
        for rec in recs:               # everything the daemon sent is valid RFC 5424
            parsed = parse_rfc5424(rec.raw)
            assert parsed.app == "auditwatch" and parsed.hostname != "forged", rec.raw
        for rec in mine(recs):
            parsed = parse_rfc5424(rec.raw)
            assert rec.msgid == "TRC-105"
            (sd_id, params), = parsed.sd
            assert sd_id == "trc105@32473"
            assert int(params["pid"]) == r.pid
            assert params["technique"] == "memfd"
            # control characters made visible, nothing else changed
            assert params["pathname"] == safe_text(f"memfd:{HOSTILE_NAME}")
        (f,) = with_token(jsonl, tag)
        assert f["Event"]["hostProcessId"] == r.pid
        assert args_of(f)["pathname"] == f"memfd:{HOSTILE_NAME}"
        assert args_of(f)["argv"] == ["true", tag, HOSTILE_ARG]
    finally:
        d.stop()


OUTAGE_S = 30.0     # the acceptance: the receiver is gone for 30 s
DETECTION_S = 1.5   # a finding must be on the JSON output this soon, receiver or not


@pytest.mark.kernel
@pytest.mark.slow
def test_syslog_receiver_outage_never_delays_json_and_delivery_resumes(
        tmp_path: Path, etc: Path, rsyslog: Any, kernel_ready: None) -> None:
    """Real daemon, real execs, real rsyslog killed for 30 s: every finding reaches the JSON
    output promptly, the syslog loss is counted (an ``output_dropped`` health finding), and
    delivery resumes by itself when the receiver is back."""
    jsonl = tmp_path / "findings.jsonl"
    config = write_config(etc / "config.yaml", f"""\
outputs:
  - type: jsonl
    path: {yaml_str(str(jsonl))}
  - type: syslog
    address: tcp://127.0.0.1:{rsyslog.tcp_port}
    queue_size: 10
""")
    d = started(tmp_path, ("bpf", "audit"), "--no-sweep", "--config", str(config),
                config_jsonl=jsonl)

    def exec_and_time() -> tuple[str, float]:
        tag = scenarios.token()
        start = time.monotonic()
        assert scenarios.memfd_execveat(tag).exit_status == 0
        wait_until(lambda: with_token(d.findings(), tag), DETECTION_S, f"finding {tag}", d)
        return tag, time.monotonic() - start

    def at_rsyslog(tag: str) -> bool:
        return any(tag.encode() in r.raw for r in rsyslog.records())

    try:
        first, _ = exec_and_time()
        wait_until(lambda: at_rsyslog(first), 10, "delivery before the outage", d)

        rsyslog.kill()
        latencies = []
        outage_end = time.monotonic() + OUTAGE_S
        while time.monotonic() < outage_end:
            latencies.append(exec_and_time()[1])
        assert len(latencies) > 20   # more findings than the syslog queue holds
        assert max(latencies) < DETECTION_S

        dropped = wait_until(
            lambda: [f for f in d.findings() if f["Event"]["eventName"] == "output_dropped"],
            10, "an output_dropped health finding", d)
        assert sum(f["Event"]["auditwatch"]["count"] for f in dropped) > 0

        rsyslog.start()
        deadline = time.monotonic() + 30     # reconnect backoff is capped at a few seconds
        after = ""
        while time.monotonic() < deadline:
            after, _ = exec_and_time()
            time.sleep(1.0)
            if at_rsyslog(after):
                break
        assert at_rsyslog(after), "syslog delivery did not resume"
    finally:
        d.stop()
