"""Grouped audit events -> ExecEvent, table-driven on lines recorded on Linux 6.18 (and edits
of them for cases that are hard to provoke)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from auditwatch import trc105
from auditwatch.audit.execs import ExecExtractor, decode_argv, is_candidate
from auditwatch.audit.grouper import Grouper
from auditwatch.audit.reader import Scanner
from auditwatch.audit.records import parse_log_line
from auditwatch.events import ExecEvent, FdTarget, mkdev

DATA = Path(__file__).parent / "data" / "audit"
MEMFD_DEVS = frozenset({mkdev(0, 1)})
ROOT_DEV = mkdev(0xFE, 0)
HDR = "msg=audit(1796315117.022:7820):"


def syscall(arch: str = "c000003e", nr: int = 322, success: str = "yes", pid: int = 8937,
            comm: str = '"dash"', exe: str = '"/usr/bin/dash"', extra: str = "") -> str:
    return (f"type=SYSCALL {HDR} arch={arch} syscall={nr} success={success} exit=0 a0=3 items=3 "
            f"ppid=8896 pid={pid} auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 "
            f"sgid=0 fsgid=0 tty=(none) ses=4294967295 comm={comm} exe={exe} "
            f'key="auditwatch_exec"{extra}')


def path(item: int, name: str, inode: int, dev: str) -> str:
    return (f"type=PATH {HDR} item={item} name={name} inode={inode} dev={dev} mode=0100755 "
            "ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0")


def hexs(s: str | bytes) -> str:
    return (s.encode() if isinstance(s, str) else s).hex().upper()


CWD = f'type=CWD {HDR} cwd="/work/main"'
LD = path(2, '"/lib64/ld-linux-x86-64.so.2"', 338944, "fe:00")
MEMFD_EXE = hexs("/memfd:auditwatch-selftest (deleted)")

# AT_EMPTY_PATH execveat of a memfd holding "#!/bin/sh -e" (recorded from netlink, serial 7820).
SCRIPT_AT_EMPTY = [
    syscall(),
    f'type=EXECVE {HDR} argc=4 a0="/bin/sh" a1="-e" a2="/dev/fd/3" a3="aw-probe-atempty"',
    CWD,
    path(0, '""', 1034, "00:01"),
    path(1, '"/bin/sh"', 260180, "fe:00"),
    LD,
]


@dataclass
class Case:
    id: str
    lines: list[str]
    expect: dict[str, Any] | None           # ExecEvent attributes, or None: no event
    technique: str | None = None
    skipped: str | None = None              # counter expected to be 1
    all_execs: bool = False
    audit: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("memfd-script-at-empty-path", SCRIPT_AT_EMPTY,
         {"exe": "/usr/bin/dash", "exec_path": "", "comm": "dash", "pid": 8937, "tgid": 8937,
          "ppid": 8896, "uid": 0, "euid": 0,
          "argv": ("/bin/sh", "-e", "/dev/fd/3", "aw-probe-atempty"), "inode": 260180,
          "dev": ROOT_DEV, "fd_target": FdTarget("/dev/fd/3", 1034, mkdev(0, 1)),
          "memfd_name": None, "argv_truncated": False, "timestamp_ns": 1796315117022000000},
         technique="memfd-script",
         audit={"serial": 7820, "syscall": "execveat", "cwd": "/work/main", "auid": None,
                "ses": None, "tty": "", "key": "auditwatch_exec", "success": True}),
    Case("memfd-execveat-hex-exe",
         [syscall(comm='"memfd:auditwatc"', exe=MEMFD_EXE),
          f'type=EXECVE {HDR} argc=2 a0="true" a1="tok"', CWD,
          path(0, '""', 1031, "00:01"), path(1, '"/lib64/ld-linux-x86-64.so.2"', 338944, "fe:00")],
         {"exe": "/memfd:auditwatch-selftest (deleted)", "exec_path": "", "inode": 1031,
          "dev": mkdev(0, 1), "memfd_name": "auditwatch-selftest", "fd_target": None,
          "argv": ("true", "tok")},
         technique="memfd"),
    Case("memfd-argv0-spoofs-loader",   # argv[0] == item 1 name must not hide the memfd
         [syscall(exe=MEMFD_EXE), f'type=EXECVE {HDR} argc=1 a0="/lib64/ld-linux-x86-64.so.2"',
          path(0, '""', 1031, "00:01"), path(1, '"/lib64/ld-linux-x86-64.so.2"', 338944, "fe:00")],
         {"inode": 1031, "fd_target": None}, technique="memfd"),
    Case("i386-execve", [syscall(arch="40000003", nr=11, exe=MEMFD_EXE),
                         f'type=EXECVE {HDR} argc=1 a0="x"', path(0, '"/dev/fd/3"', 5, "00:01")],
         {"exec_path": "/dev/fd/3", "argv": ("x",)}, technique="memfd",
         audit={"syscall": "execve"}),
    Case("failed-exec", [syscall(success="no", exe=MEMFD_EXE)], None, skipped="skipped_failed"),
    Case("not-an-exec", [syscall(nr=2)], None, skipped="skipped_not_exec"),
    Case("no-syscall-record", [CWD], None, skipped="skipped_no_syscall"),
    Case("ordinary-exec-fast-path-drops",
         [syscall(nr=59, exe='"/usr/bin/true"'), path(0, '"/usr/bin/true"', 9, "fe:00"), LD],
         None, skipped="skipped_not_fileless"),
    Case("ordinary-exec-all-execs",
         [syscall(nr=59, exe='"/usr/bin/true"'), f'type=EXECVE {HDR} argc=1 a0="true"',
          path(0, '"/usr/bin/true"', 9, "fe:00"), LD],
         {"exec_path": "/usr/bin/true", "inode": 9, "dev": ROOT_DEV}, all_execs=True),
    Case("unlinked-hex-exe",
         [syscall(exe=hexs("/tmp/aw x/payload (deleted)")), f'type=EXECVE {HDR} argc=1 a0="p"',
          path(0, '""', 77, "fe:00")],
         {"exe": "/tmp/aw x/payload (deleted)", "inode": 77}, technique="unlinked"),
    Case("dev-shm", [syscall(nr=59, exe='"/dev/shm/x"'), path(0, '"/dev/shm/x"', 3, "00:1b")],
         {"exec_path": "/dev/shm/x", "argv": (), "argv_truncated": True}, technique="shm"),
    Case("loader-with-fd-path",
         [syscall(nr=59, exe='"/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"'),
          f'type=EXECVE {HDR} argc=2 a0="/lib64/ld-linux-x86-64.so.2" a1="/proc/self/fd/3"',
          path(0, '"/lib64/ld-linux-x86-64.so.2"', 338944, "fe:00")],
         {"fd_target": FdTarget("/proc/self/fd/3")}, technique=None),
    Case("script-not-via-fd",
         [syscall(nr=59), f'type=EXECVE {HDR} argc=2 a0="/bin/sh" a1="/dev/shm/run.sh"',
          path(0, '"/dev/shm/run.sh"', 12, "00:1b"), path(1, '"/bin/sh"', 260180, "fe:00"), LD],
         {"fd_target": None, "inode": 260180}, technique=None),
    Case("tty-auid-ses-multikey",
         [syscall(exe=MEMFD_EXE).replace("tty=(none)", "tty=pts0").replace(
             "auid=4294967295", "auid=1000").replace("ses=4294967295", "ses=3").replace(
             'key="auditwatch_exec"', "key=" + hexs(b"auditwatch_exec\x01other")),
          path(0, '""', 1, "00:01")],
         {"comm": "dash"}, technique="memfd",
         audit={"tty": "pts0", "auid": 1000, "ses": 3, "key": "auditwatch_exec\x01other"}),
]


def extract(lines: list[str], all_execs: bool = False) -> tuple[ExecEvent | None, ExecExtractor]:
    g = Grouper()
    for ln in lines:
        assert g.feed(parse_log_line(ln.encode())) == []
    [event] = g.flush_all()
    ex = ExecExtractor(MEMFD_DEVS, all_execs=all_execs)
    return ex.extract(event), ex


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_exec_table(case: Case) -> None:
    ev, ex = extract(case.lines, case.all_execs)
    if case.expect is None:
        assert ev is None
        assert case.skipped is not None and ex.counters[case.skipped] == 1
        return
    assert ev is not None
    assert ev.sensor == "audit"
    for name, value in case.expect.items():
        assert getattr(ev, name) == value, name
    assert trc105.detect(ev, MEMFD_DEVS) == case.technique
    assert ev.audit is not None
    for name, value in case.audit.items():
        assert getattr(ev.audit, name) == value, name
    assert ex.counters["exec_events"] == 1


# --- argv -------------------------------------------------------------------------------------

def _execve(*bodies: str) -> list:
    return [parse_log_line(f"type=EXECVE {HDR} {b}".encode()) for b in bodies]


def test_split_hex_argument_across_records() -> None:
    long = "y" * 9000 + " z"
    h = hexs(long)
    recs = _execve(f'argc=3 a0="true" a1_len={len(h)} a1[0]={h[:7000]}',
                   f"a1[1]={h[7000:14000]}", f'a1[2]={h[14000:]} a2="after"')
    assert decode_argv(recs) == (("true", long, "after"), False)


def test_split_quoted_argument_and_missing_chunk() -> None:
    recs = _execve('argc=2 a0="t" a1_len=6 a1[0]="abc"', 'a1[1]="def"')
    assert decode_argv(recs) == (("t", "abcdef"), False)
    recs = _execve('argc=2 a0="t" a1_len=9 a1[0]="abc"', 'a1[2]="ghi"')  # chunk 1 lost
    assert decode_argv(recs)[1] is True


def test_argc_larger_than_present_is_truncated_and_cheap() -> None:
    args, truncated = decode_argv(_execve('argc=4000000000 a0="x"'))
    assert args == ("x",) and truncated


def test_hostile_argument_bytes() -> None:
    a0, a1 = hexs(b"a\nb"), hexs(b"\xff]")
    args, truncated = decode_argv(_execve(f"argc=2 a0={a0} a1={a1}"))
    assert args == ("a\nb", "\\xff]") and not truncated


def test_candidate_check_is_superset_of_detector() -> None:
    assert is_candidate("/memfd:x (deleted)", [], ())
    assert is_candidate("/usr/bin/true", [], ()) is False


def test_recorded_fixtures_round_trip_through_scanner() -> None:
    """Every recorded fixture gives exactly one exec of its scenario's pid."""
    for log in sorted(DATA.glob("*.log")):
        scanner = Scanner(MEMFD_DEVS, all_execs=True)
        events = list(scanner.events(log.read_bytes().splitlines(keepends=True)))
        assert len(events) == 1, log.name
        assert scanner.counters["execs_seen"] == 1


# --- the loader: ld.so told to run a program by fd -------------------------------------------

LOADER = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def _events(*groups: list[str]) -> list:
    g = Grouper()
    out = []
    for serial, lines in enumerate(groups, start=1):
        for ln in lines:
            g.feed(parse_log_line(ln.replace(":7820)", f":{serial})").encode()))
    out.extend(g.flush_all())
    return out


def _loader_exec(pid: int, ppid: int, argv: str) -> list[str]:
    return [syscall(nr=59, pid=pid, exe=f'"{LOADER}"').replace("ppid=8896", f"ppid={ppid}"),
            f"type=EXECVE {HDR} {argv}", path(0, f'"{LOADER}"', 338944, "fe:00")]


def _memfd_create(pid: int, fd: int) -> list[str]:
    return [syscall(nr=319, pid=pid).replace("exit=0", f"exit={fd}")]


@pytest.mark.parametrize(
    ("groups", "technique"),
    [
        # parent created memfd fd 3, forked; the child runs ld.so /proc/self/fd/3
        ([_memfd_create(100, 3), _loader_exec(101, 100, 'argc=2 a0="ld.so" a1="/proc/self/fd/3"')],
         "loader"),
        # the same task created it and exec'd ld.so without forking
        ([_memfd_create(100, 4), _loader_exec(100, 1, 'argc=2 a0="ld.so" a1="/dev/fd/4"')],
         "loader"),
        # fd 3 of an unrelated process was a memfd: not ours
        ([_memfd_create(555, 3), _loader_exec(101, 100, 'argc=2 a0="ld.so" a1="/proc/self/fd/3"')],
         None),
        # another fd number
        ([_memfd_create(100, 5), _loader_exec(101, 100, 'argc=2 a0="ld.so" a1="/proc/self/fd/3"')],
         None),
        # ld.so --list of a disk binary
        ([_loader_exec(101, 100, 'argc=3 a0="ld.so" a1="--list" a2="/bin/true"')], None),
    ],
    ids=["forked-child", "same-task", "other-process", "other-fd", "list-disk-binary"],
)
def test_loader_fed_a_memfd(groups: list[list[str]], technique: str | None) -> None:
    ex = ExecExtractor(MEMFD_DEVS)
    execs = [e for e in (ex.extract(ev) for ev in _events(*groups)) if e is not None]
    assert len(execs) == 1
    assert trc105.detect(execs[0], MEMFD_DEVS) == technique
