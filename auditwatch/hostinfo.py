"""Facts about this host learned once at start-up (I/O, so it lives at the edge)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import stat
from typing import Final

from auditwatch.cgroups import CgroupResolver
from auditwatch.events import ExecEvent, dev_from_stat
from auditwatch.procfs import boot_to_wall_ns, read_stat
from auditwatch.text import decode_untrusted

# Hashing runs in the event loop: an image larger than this is not hashed (None: a sha256-pinned
# allow-list entry then does not match, the finding is reported).
MAX_HASH_BYTES: Final = 256 * 1024 * 1024
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def hostname() -> str:
    return socket.gethostname()


def memfd_devices() -> frozenset[int]:
    """Kernel dev_t(s) that memfds live on (``00:01`` on Linux 6.18 here): make one and look.
    Empty if memfd_create is unavailable."""
    try:
        fd = os.memfd_create("auditwatch-probe", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        return frozenset()
    try:
        return frozenset({dev_from_stat(os.fstat(fd).st_dev)})
    finally:
        os.close(fd)


def sha256_of_running_image(event: ExecEvent) -> str | None:
    """sha256 of the image a live process runs, read through /proc/PID/exe (works for memfds
    and deleted files). None when the process is gone or unreadable."""
    h = hashlib.sha256()
    try:
        with open(f"/proc/{event.tgid}/exe", "rb") as f:
            # The pid may have exec'd something else since: only hash the image we detected.
            st = os.fstat(f.fileno())
            if event.inode is not None and st.st_ino != event.inode:
                return None
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_HASH_BYTES:
                return None
            budget = MAX_HASH_BYTES
            for chunk in iter(lambda: f.read(1 << 20), b""):
                budget -= len(chunk)
                if budget < 0:   # grew since the fstat
                    return None
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _boot_ns_of(event: ExecEvent) -> int:
    """The exec's time on CLOCK_BOOTTIME (what /proc/PID/stat's start time counts)."""
    if event.monotonic_ns is not None:
        return event.monotonic_ns
    return event.timestamp_ns - boot_to_wall_ns()


def _start_boot_ns(pid: int) -> int | None:
    try:
        return read_stat(pid).start_ticks * 1_000_000_000 // _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def parent_exe_of(event: ExecEvent) -> str | None:
    """The parent's executable as the kernel resolves it (``/proc/PPID/exe``), read when the
    event arrives. None when the parent is gone, or when PPID now belongs to a process started
    after the exec (the pid was reused). Known limit: a parent that exec'd another image between
    the child's exec and this read shows its new image."""
    ppid = event.ppid
    if ppid is None or ppid <= 0:
        return None
    try:
        link = os.readlink(f"/proc/{ppid}/exe".encode())
    except OSError:
        return None
    started = _start_boot_ns(ppid)
    slack = 2 * 1_000_000_000 // _CLK_TCK    # start time has clock-tick resolution
    if started is None or started > _boot_ns_of(event) + slack:
        return None
    return decode_untrusted(link)


class LiveFacts:
    """Completes a live exec event with what only this running host can tell, at arrival: the
    parent's exe (``/proc/PPID/exe``) and the cgroup path (BPF gives a cgroup v2 id; audit none).
    Fields a sensor already filled are kept, never overwritten: BPF reads the parent's image in
    the kernel at exec time (``/proc/PPID/exe`` read now may show an image the parent exec'd
    since), the start-up sweep fills both. /proc only fills what no sensor knew."""

    def __init__(self, cgroups: CgroupResolver | None = None) -> None:
        self.cgroups = cgroups if cgroups is not None else CgroupResolver()

    def enrich(self, event: ExecEvent) -> ExecEvent:
        parent_exe = event.parent_exe
        if parent_exe is None:
            parent_exe = parent_exe_of(event)
        cgroup = event.cgroup
        if cgroup is None or cgroup.isdigit():   # unresolved: the BPF id stays as it was
            cgroup = self.cgroups.path(int(cgroup) if cgroup else None, event.tgid) or cgroup
        if (parent_exe, cgroup) == (event.parent_exe, event.cgroup):
            return event
        return dataclasses.replace(event, parent_exe=parent_exe, cgroup=cgroup)
