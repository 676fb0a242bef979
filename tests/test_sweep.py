"""Start-up sweep: a fake /proc tree for the rules, then real fileless sleepers on this kernel."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditwatch import sweep as sweep_mod
from auditwatch import trc105
from auditwatch.events import ExecEvent, dev_from_stat
from auditwatch.scenarios import ScenarioUnavailable, Sleepers, token, wait_exe
from auditwatch.sweep import PF_KTHREAD, SweepStats, classify, sweep
from tests.conftest import kernel_unavailable

BTIME = 1_700_000_000
TICKS = os.sysconf("SC_CLK_TCK")


# --- fake /proc: the rules -------------------------------------------------------------------

def _stat_line(pid: int, comm: bytes, ppid: int, flags: int = 0x400100,
               start: int = 12_345) -> bytes:
    rest = [ppid, pid, pid, 0, -1, flags] + [0] * 12 + [start, 1000, 200]
    return b"%d (%s) S " % (pid, comm) + " ".join(map(str, rest)).encode() + b"\n"


def _fake_proc(root: Path, pid: int, exe: bytes | None, *, comm: bytes = b"x", ppid: int = 1,
               flags: int = 0x400100, cmdline: bytes = b"x\0", ns_root: Path | None = None,
               files: bool = True) -> None:
    d = root / str(pid)
    d.mkdir()
    if not files:
        return
    (d / "stat").write_bytes(_stat_line(pid, comm, ppid, flags))
    (d / "status").write_bytes(b"Name:\tx\nUid:\t1000\t1001\t1000\t1000\nNSpid:\t%d\t7\n" % pid)
    (d / "cmdline").write_bytes(cmdline)
    (d / "cgroup").write_bytes(b"0::/system.slice/evil.service\n")
    (d / "ns").mkdir()
    os.symlink("mnt:[4026531841]", d / "ns" / "mnt")
    os.symlink("pid:[4026531836]", d / "ns" / "pid")
    if exe is not None:
        os.symlink(exe, os.fsencode(d / "exe"))
    if ns_root is not None:
        os.symlink(ns_root, d / "root")


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text(f"cpu  1 2 3\nbtime {BTIME}\nprocesses 9\n")
    fs = tmp_path / "rootfs"
    (fs / "usr/bin").mkdir(parents=True)
    (fs / "usr/bin/upgraded").write_bytes(b"\x7fELF new")
    _fake_proc(proc, 1, b"/usr/lib/systemd/systemd", comm=b"systemd", ppid=0, ns_root=fs)
    _fake_proc(proc, 2, None, comm=b"kthreadd", ppid=0, flags=PF_KTHREAD | 0x40)
    _fake_proc(proc, 10, b"/memfd:evil (deleted)", comm=b"3", cmdline=b"evil\0-x\0\xff\0",
               ns_root=fs)
    _fake_proc(proc, 11, b"/usr/bin/upgraded (deleted)", ns_root=fs)
    _fake_proc(proc, 12, b"/tmp/dropper (deleted)", ns_root=fs)
    _fake_proc(proc, 13, b"/dev/shm/payload", ns_root=fs)
    _fake_proc(proc, 14, b"/usr/bin/bash", ns_root=fs)
    _fake_proc(proc, 15, None, files=False)                 # exited while we walked
    _fake_proc(proc, 16, None)                              # zombie: no exe
    _fake_proc(proc, 17, b"/memfd:a\nb\xff (deleted)", comm=b"a) (b", ns_root=fs)
    _fake_proc(proc, 18, b"/memfd:self (deleted)", ns_root=fs)
    _fake_proc(proc, 19, b"/run/shm/x (deleted)", ns_root=fs)
    (proc / "self").mkdir()
    return proc


def test_fake_tree(fake_proc: Path) -> None:
    stats = SweepStats()
    events = sweep(str(fake_proc), stats=stats, exclude_pids={18})
    by_pid = {e.pid: e for e in events}
    assert sorted(by_pid) == [10, 12, 13, 17, 19]
    assert {p: trc105.detect(e) for p, e in by_pid.items()} == {
        10: "memfd", 12: "unlinked", 13: "shm", 17: "memfd", 19: "unlinked"}
    assert stats == SweepStats(processes=11, fileless=5, replaced=1, kernel_threads=1,
                               vanished=1, permission_denied=0)
    e = by_pid[10]
    assert e.sensor == "sweep" and e.sweep and e.tgid == e.pid == 10 and e.ppid == 1
    assert (e.uid, e.euid, e.comm, e.exec_path) == (1000, 1001, "3", "")
    assert e.argv == ("evil", "-x", "\\xff")
    assert e.memfd_name == "evil" and trc105.pathname(e) == "memfd:evil"
    assert (e.mnt_ns, e.pid_ns, e.ns_pid) == (4026531841, 4026531836, 7)
    assert e.cgroup == "/system.slice/evil.service"
    assert e.parent_exe == "/usr/lib/systemd/systemd"
    assert e.timestamp_ns == BTIME * 10**9 + 12_345 * 10**9 // TICKS
    assert e.inode is None and e.nlink is None       # the fake link points nowhere
    odd = by_pid[17]
    assert odd.comm == "a) (b" and odd.memfd_name == "a\nb\\xff"


def test_permission_errors_are_counted(fake_proc: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.readlink

    def readlink(path: bytes | str) -> bytes | str:
        if os.fsdecode(path).endswith("/10/exe"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(sweep_mod.os, "readlink", readlink)
    stats = SweepStats()
    events = sweep(str(fake_proc), stats=stats)
    assert 10 not in {e.pid for e in events} and stats.permission_denied == 1


@pytest.mark.parametrize("exe,nlink,replacement,expected", [
    ("/memfd:x (deleted)", 0, False, "memfd"),
    ("/memfd:x (deleted)", None, True, "memfd"),
    ("/dev/shm/x", 1, False, "shm"),
    ("/dev/shm/x (deleted)", 0, True, "shm"),
    ("/run/shm/x", 1, False, "shm"),
    ("/tmp/x (deleted)", 0, False, "unlinked"),
    ("/tmp/x (deleted)", None, False, "unlinked"),
    ("/usr/bin/x (deleted)", 0, True, "replaced"),
    ("/usr/bin/x (deleted)", 1, False, None),   # another hard link still names the file
    ("/usr/bin/x", 1, False, None),
])
def test_classify(exe: str, nlink: int | None, replacement: bool, expected: str | None) -> None:
    assert classify(exe, nlink, replacement) == expected


# --- real processes --------------------------------------------------------------------------

@pytest.fixture
def sleepers() -> Iterator[Sleepers]:
    if os.geteuid() != 0:
        kernel_unavailable("needs root: /proc/PID/exe of other users and namespaces")
    s = Sleepers()
    try:
        yield s
    finally:
        s.close()


def _by_pid(events: list[ExecEvent]) -> dict[int, ExecEvent]:
    return {e.pid: e for e in events}


@pytest.mark.kernel
def test_sweep_finds_running_memfd_processes(sleepers: Sleepers) -> None:
    name, ns_name = token(), token()
    started = time.time_ns()
    pid, st = sleepers.memfd(name)
    try:
        ns_pid = sleepers.memfd_in_new_namespaces(ns_name)
    except ScenarioUnavailable as e:
        kernel_unavailable(str(e))
    stats = SweepStats()
    found = _by_pid(sweep(stats=stats))

    e = found[pid]
    assert trc105.detect(e) == "memfd" and trc105.pathname(e) == f"memfd:{name}"
    assert e.sensor == "sweep" and e.sweep and e.tgid == pid and e.ppid == os.getpid()
    assert e.exe == f"/memfd:{name} (deleted)" and e.memfd_name == name
    assert e.argv == ("sleep", "30") and e.uid == 0 and e.euid == 0
    assert (e.inode, e.dev, e.nlink) == (st.st_ino, dev_from_stat(st.st_dev), 0)
    assert e.mnt_ns == os.stat("/proc/self/ns/mnt").st_ino
    assert e.parent_exe == os.readlink("/proc/self/exe")
    assert abs(e.timestamp_ns - started) < 2 * 10**9

    n = found[ns_pid]
    assert trc105.detect(n) == "memfd" and n.memfd_name == ns_name
    assert n.ns_pid == 1 and n.argv == ("sleep", "30") and n.nlink == 0
    assert n.mnt_ns is not None and n.mnt_ns != e.mnt_ns
    assert n.pid_ns is not None and n.pid_ns != os.stat("/proc/self/ns/pid").st_ino
    assert os.getpid() not in found
    assert stats.fileless >= 2 and stats.kernel_threads > 0


@pytest.mark.kernel
def test_sweep_skips_replaced_binaries_and_reports_unlinked_ones(sleepers: Sleepers,
                                                                 tmp_path: Path) -> None:
    upgraded = tmp_path / f"upgraded-{token()}"
    replaced_pid = sleepers.from_disk(upgraded)
    fresh = tmp_path / "new-copy"
    fresh.write_bytes(upgraded.read_bytes())
    fresh.chmod(0o755)
    os.replace(fresh, upgraded)                 # what dpkg does on upgrade
    dropped = tmp_path / f"dropper-{token()}"
    unlinked_pid = sleepers.from_disk(dropped)
    dropped.unlink()                            # ran, then deleted itself: no replacement
    shm = Path("/dev/shm") / f"aw-{token()}"
    try:
        shm_pid = sleepers.from_disk(shm)
    finally:
        shm.unlink()                            # /dev/shm/NAME (deleted): still reported
    wait_exe(replaced_pid, lambda exe: exe.endswith(" (deleted)"))

    stats = SweepStats()
    found = _by_pid(sweep(stats=stats))

    assert replaced_pid not in found
    assert stats.replaced >= 1
    u = found[unlinked_pid]
    assert trc105.detect(u) == "unlinked" and u.nlink == 0
    assert u.exe == f"{dropped} (deleted)" and trc105.pathname(u) == str(dropped)
    s = found[shm_pid]
    assert trc105.detect(s) == "unlinked" and s.exe == f"{shm} (deleted)"
