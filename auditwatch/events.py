"""Sensor-neutral exec events: what every sensor turns its raw records into.

Every stage after a sensor sees only these frozen, slotted dataclasses. A field a sensor cannot
observe is ``None`` (unknown), never a made-up default, so that correlation can tell "0" from
"not seen" when it merges two views of one exec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

Sensor = Literal["bpf", "audit", "sweep"]
SENSORS: tuple[Sensor, ...] = ("bpf", "audit")

Technique = Literal["memfd", "unlinked", "shm", "memfd-script", "loader"]
TECHNIQUES: tuple[Technique, ...] = ("memfd", "unlinked", "shm", "memfd-script", "loader")

# Kernel-internal dev_t (MKDEV): what BPF reads from super_block.s_dev and what Tracee reports.
_MINORBITS = 20


def mkdev(major: int, minor: int) -> int:
    return (major << _MINORBITS) | minor


def dev_from_audit(text: str) -> int | None:
    """Audit writes devices as hex ``major:minor`` (``fe:00``)."""
    major, sep, minor = text.partition(":")
    if not sep:
        return None
    try:
        return mkdev(int(major, 16), int(minor, 16))
    except ValueError:
        return None


def dev_from_stat(st_dev: int) -> int:
    """``os.stat().st_dev`` (glibc encoding) to the kernel's encoding."""
    return mkdev(os.major(st_dev), os.minor(st_dev))


def dev_to_audit(dev: int) -> str:
    return f"{dev >> _MINORBITS:02x}:{dev & ((1 << _MINORBITS) - 1):02x}"


@dataclass(frozen=True, slots=True)
class AuditContext:
    """What only the audit subsystem knows about an exec."""

    serial: int
    auid: int | None = None
    ses: int | None = None
    tty: str = ""
    syscall: str = ""          # "execve" / "execveat"
    cwd: str = ""
    key: str = ""
    success: bool = True


@dataclass(frozen=True, slots=True)
class FdTarget:
    """A file handed over by an fd path: the script of a shebang exec (the process image is the
    interpreter) or the program the dynamic loader was told to run (``ld.so /proc/self/fd/3``)."""

    path: str                  # the fd path used: "/dev/fd/3", "/proc/self/fd/4"
    inode: int | None = None
    dev: int | None = None     # kernel dev_t
    nlink: int | None = None   # None: the sensor cannot see it (audit)


@dataclass(frozen=True, slots=True)
class ExecEvent:
    """One successful exec, as one sensor saw it.

    ``exe`` is the image the kernel runs, named the way the kernel prints it
    (``/memfd:NAME (deleted)``, ``/tmp/x (deleted)``, ``/usr/bin/true``); ``exec_path`` is the
    name given to exec (bprm->filename: ``/dev/fd/3``, ``/proc/self/fd/3``, ``""`` for an
    AT_EMPTY_PATH execveat as audit records it).
    """

    sensor: Sensor
    timestamp_ns: int          # wall clock (epoch ns) of the exec
    pid: int                   # host pid of the thread that exec'd (== tgid after exec)
    tgid: int
    ppid: int | None
    uid: int | None
    euid: int | None
    comm: str
    exe: str
    exec_path: str
    argv: tuple[str, ...] = ()
    argv_truncated: bool = False
    inode: int | None = None
    dev: int | None = None     # kernel dev_t of the executed image
    nlink: int | None = None   # of the executed image at exec time; None when unknown
    memfd_name: str | None = None   # NAME of memfd:NAME, when the image is a memfd
    sb_magic: int | None = None
    fd_target: FdTarget | None = None
    audit: AuditContext | None = None
    ns_pid: int | None = None  # pid inside its own PID namespace (BPF)
    ns_ppid: int | None = None
    mnt_ns: int | None = None
    pid_ns: int | None = None
    cgroup: str | None = None
    parent_exe: str | None = None    # resolved by the kernel / from /proc, never from comm
    monotonic_ns: int | None = None  # CLOCK_BOOTTIME/MONOTONIC stamp from BPF, for correlation
    sweep: bool = False              # found by the start-up sweep, not at exec time
