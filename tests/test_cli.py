"""The command line as users meet it: exit codes, clear one-line errors, scan, TTY lines."""

from __future__ import annotations

import gzip
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditwatch import scenarios
from auditwatch.cli import main
from tests.conftest import kernel_unavailable

DATA = Path(__file__).parent / "data" / "audit"
POSITIVE_LOGS = {"memfd_execveat": "memfd", "memfd_script": "memfd-script",
                 "o_tmpfile": "unlinked", "dev_shm_binary": "shm", "loader_memfd": "loader"}


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auditwatch", *args], capture_output=True,
                          text=True, input=None if stdin is None else stdin.decode("latin-1"))


def techniques(stdout: str) -> list[str]:
    return [json.loads(line)["Event"]["auditwatch"]["technique"] for line in stdout.splitlines()]


@pytest.mark.parametrize(("scenario", "technique"), sorted(POSITIVE_LOGS.items()))
def test_scan_recorded_log(scenario: str, technique: str) -> None:
    out = cli("scan", str(DATA / f"{scenario}.log"))
    assert out.returncode == 0, out.stderr
    assert techniques(out.stdout) == [technique]


@pytest.mark.parametrize("scenario", ["ordinary_exec", "linked_fd_exec", "tmp_script",
                                      "memfd_create_only", "linked_proc_fd_exec"])
def test_scan_recorded_lookalike_reports_nothing(scenario: str) -> None:
    out = cli("scan", str(DATA / f"{scenario}.log"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""


def test_scan_stdin_and_rotated_gzip_files_in_order(tmp_path: Path) -> None:
    # audit.log.2 (oldest, gzip) then audit.log.1 then audit.log: findings come out in that order.
    logs = tmp_path / "logs"
    logs.mkdir()
    with gzip.open(logs / "audit.log.2.gz", "wb") as f:
        f.write((DATA / "memfd_execveat.log").read_bytes())
    shutil.copy(DATA / "dev_shm_binary.log", logs / "audit.log.1")
    shutil.copy(DATA / "o_tmpfile.log", logs / "audit.log")
    out = cli("scan", str(logs / "audit.log"), str(logs / "audit.log.1"),
              str(logs / "audit.log.2.gz"))
    assert out.returncode == 0, out.stderr
    assert techniques(out.stdout) == ["memfd", "shm", "unlinked"]
    piped = cli("scan", "-", stdin=(DATA / "memfd_script.log").read_bytes())
    assert piped.returncode == 0, piped.stderr
    assert techniques(piped.stdout) == ["memfd-script"]


def test_scan_garbage_is_counted_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"\x00\xff garbage\ntype=SYSCALL msg=audit(nonsense\n"
                    + (DATA / "memfd_execveat.log").read_bytes() + b"type=PATH item=\n")
    out = cli("scan", str(log))
    assert out.returncode == 0, out.stderr
    assert techniques(out.stdout) == ["memfd"]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [(["scan", "/nonexistent/audit.log"], 1, "/nonexistent/audit.log"),
     (["run", "--sensors", "kprobe"], 2, "sensors"),
     (["bogus"], 2, "invalid choice"),
     (["run", "--output", "carrier-pigeon:x"], 2, "carrier-pigeon"),
     (["config", "check", "/nonexistent.yaml"], 2, "/nonexistent.yaml")],
)
def test_errors_are_one_clear_line(args: list[str], code: int, message: str) -> None:
    out = cli(*args)
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_rules_prints_the_exec_and_memfd_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules"]) == 0
    text = capsys.readouterr().out
    for needle in ("-S execve,execveat", "arch=b32", "memfd_create", "success=1"):
        assert needle in text


@pytest.mark.kernel
def test_human_line_on_stderr_when_it_is_a_tty(audit_ready: None, bpf_ready: None,
                                              tmp_path: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditwatch", "run", "--no-sweep", "--duration", "20",
         "--output", f"jsonl:{tmp_path / 'f.jsonl'}"],
        stderr=slave, stdout=subprocess.DEVNULL,
        env={**os.environ, "AUDITWATCH_STATUS": str(tmp_path / "status.json")})
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        tag = None
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
            if tag is None and b"auditwatch running" in seen:
                tag = scenarios.memfd_execveat(scenarios.token()).argv[-1]
            if tag is not None and b"TRC-105 fileless execution (memfd)" in seen:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        os.close(master)
    assert b"TRC-105 fileless execution (memfd)" in seen, seen.decode(errors="replace")


DROP_BPF_CAPS = ["setpriv", "--bounding-set=-bpf,-perfmon,-sys_admin",
                 "--inh-caps=-bpf,-perfmon,-sys_admin"]


@pytest.mark.kernel
def test_missing_bpf_privilege_is_one_line_and_audit_carries_on(audit_ready: None,
                                                                tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        kernel_unavailable("setpriv (util-linux) not installed")
    env = {**os.environ, "AUDITWATCH_STATUS": str(tmp_path / "status.json")}
    run = [sys.executable, "-m", "auditwatch", "run", "--no-sweep", "--duration", "1",
           "--output", f"jsonl:{tmp_path / 'f.jsonl'}"]
    asked = subprocess.run([*DROP_BPF_CAPS, *run, "--sensors", "bpf"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert asked.returncode == 1
    assert asked.stderr.count("\n") == 1, asked.stderr
    assert "CAP_BPF" in asked.stderr and "Traceback" not in asked.stderr
    default = subprocess.run([*DROP_BPF_CAPS, *run], capture_output=True, text=True, env=env,
                             timeout=60)
    assert default.returncode == 0, default.stderr
    assert "bpf sensor unavailable" in default.stderr and "CAP_BPF" in default.stderr
    assert "sensors=audit" in default.stderr


@pytest.mark.kernel
def test_default_run_prints_findings_as_json_lines_on_stdout(audit_ready: None, bpf_ready: None,
                                                            tmp_path: Path) -> None:
    """No config file, no --output: JSON lines on stdout, the daemon's own logs on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditwatch", "run", "--no-sweep", "--duration", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "AUDITWATCH_STATUS": str(tmp_path / "status.json")})
    assert proc.stderr is not None
    for line in proc.stderr:
        if "auditwatch running" in line:
            break
    tag = scenarios.memfd_execveat(scenarios.token()).argv[-1]
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    mine = [json.loads(line) for line in out.splitlines() if tag in line]
    assert [f["Event"]["auditwatch"]["technique"] for f in mine] == ["memfd"]
    assert all(line.startswith("{") for line in out.splitlines())
