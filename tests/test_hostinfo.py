"""The live facts auditwatch adds to an exec event at arrival: parent exe, cgroup path, sha256."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import pytest

from auditwatch import hostinfo
from auditwatch.cgroups import CgroupResolver, cgroup_of_pid
from auditwatch.events import ExecEvent


def event(**kw: object) -> ExecEvent:
    base: dict[str, object] = dict(
        sensor="bpf", timestamp_ns=time.time_ns(), pid=os.getpid(), tgid=os.getpid(),
        ppid=os.getppid(), uid=0, euid=0, comm="x", exe="/x", exec_path="/x",
        monotonic_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME))
    base.update(kw)
    return ExecEvent(**base)  # type: ignore[arg-type]


def test_parent_exe_is_the_kernels_link() -> None:
    assert hostinfo.parent_exe_of(event()) == os.readlink(f"/proc/{os.getppid()}/exe")


def test_parent_exe_refuses_a_parent_started_after_the_exec() -> None:
    """The pid was reused: a process started after the exec is not its parent."""
    assert hostinfo.parent_exe_of(event(monotonic_ns=0)) is None
    assert hostinfo.parent_exe_of(event(ppid=None)) is None
    assert hostinfo.parent_exe_of(event(ppid=2**22 + 12345)) is None   # no such process


def test_cgroup_of_live_pid_and_resolution_by_id(tmp_path: Path) -> None:
    own = cgroup_of_pid(os.getpid())
    with open("/proc/self/cgroup") as f:
        line = next((ln for ln in f.read().splitlines() if ln.startswith("0::")), None)
    assert own == (line[3:] if line else None)
    # a fake cgroup2 tree: ids are the directories' inode numbers
    (tmp_path / "system.slice" / "docker-abc.scope").mkdir(parents=True)
    r = CgroupResolver(str(tmp_path), rescan_s=0)
    ino = os.stat(tmp_path / "system.slice" / "docker-abc.scope").st_ino
    assert r.path(ino, None) == "/system.slice/docker-abc.scope"
    assert r.path(os.stat(tmp_path).st_ino, None) == "/"
    assert r.path(ino, None) == "/system.slice/docker-abc.scope" and r.walks == 1   # cached
    assert r.path(1 << 60, None) is None
    assert CgroupResolver(None).path(None, None) is None


def test_live_facts_fill_only_what_is_missing(tmp_path: Path) -> None:
    facts = hostinfo.LiveFacts(CgroupResolver(str(tmp_path), rescan_s=0))
    swept = event(parent_exe="/usr/bin/containerd-shim", cgroup="/system.slice/x.service")
    assert facts.enrich(swept) is swept
    filled = facts.enrich(event(cgroup=str(os.stat(tmp_path).st_ino)))
    assert filled.cgroup == "/" and filled.parent_exe == hostinfo.parent_exe_of(event())
    unresolved = facts.enrich(event(cgroup=str(1 << 60)))
    assert unresolved.cgroup == str(1 << 60)   # kept as the id: no path glob matches it


def test_sha256_of_running_image_and_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    ino = os.stat("/proc/self/exe").st_ino
    with open(os.path.realpath(sys.executable), "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    assert hostinfo.sha256_of_running_image(event(inode=ino)) == expected
    assert hostinfo.sha256_of_running_image(event(inode=ino + 1)) is None   # exec'd since
    monkeypatch.setattr(hostinfo, "MAX_HASH_BYTES", 1024)
    assert hostinfo.sha256_of_running_image(event(inode=ino)) is None       # too big to hash


def test_live_facts_keep_the_parent_exe_the_kernel_read(tmp_path: Path) -> None:
    """BPF reads the parent's image at exec time; /proc/PPID/exe, read later, may show an image
    the parent exec'd since. The kernel's value is kept; /proc only fills a gap."""
    facts = hostinfo.LiveFacts(CgroupResolver(str(tmp_path), rescan_s=0))
    assert hostinfo.parent_exe_of(event()) != "/usr/bin/runc"
    kept = facts.enrich(event(parent_exe="/usr/bin/runc", cgroup="/"))
    assert kept.parent_exe == "/usr/bin/runc"
    filled = facts.enrich(event(sensor="audit", parent_exe=None, cgroup="/"))
    assert filled.parent_exe == hostinfo.parent_exe_of(event())
