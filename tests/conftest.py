"""Shared test plumbing.

Kernel tests (marker ``kernel``) need the real BPF and audit subsystems. Outside CI a missing
capability skips them; with ``CI=true`` it fails them, because a skipped kernel test hides breakage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rsyslog_server import RSYSLOGD, Rsyslog

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def kernel_unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"kernel capability missing in CI: {reason}")
    pytest.skip(reason)


def _auditd_running() -> bool:
    """The kernel's registered audit daemon is alive (a process name could be a zombie)."""
    status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
    pids = [line.split()[1] for line in status.splitlines() if line.startswith("pid ")]
    if not pids or pids[0] == "0":
        return False
    try:
        with open(f"/proc/{pids[0]}/status") as f:
            return not any(line.startswith("State:") and "Z" in line for line in f)
    except OSError:
        return False


@pytest.fixture
def audit_ready() -> None:
    """auditd runs and audit is enabled (the rules themselves are the tests' business)."""
    if os.geteuid() != 0:
        kernel_unavailable("needs root")
    if shutil.which("auditctl") is None:
        kernel_unavailable("auditctl not installed")
    if not _auditd_running():
        kernel_unavailable("auditd is not running")
    status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
    if "enabled 0" in status:
        kernel_unavailable("audit is disabled (auditctl -e 1)")


@pytest.fixture
def bpf_ready() -> None:
    if os.geteuid() != 0:
        kernel_unavailable("needs root")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        kernel_unavailable("no kernel BTF")


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    """A private rsyslogd on loopback (tests/rsyslog_server.py). Skips without rsyslogd, except
    in CI where it fails."""
    if not os.path.exists(RSYSLOGD):
        if IN_CI:
            pytest.fail("rsyslogd is not installed in CI (apt-get install rsyslog)")
        pytest.skip("rsyslogd not installed")
    server = Rsyslog(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()
