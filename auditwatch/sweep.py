"""Start-up sweep: fileless processes that were already running when auditwatch started.

Walks ``/proc/*/exe`` once. ``readlink`` of the magic link names the image the way the kernel
prints it, across mount namespaces; ``stat`` follows it to the image itself (inode, dev, nlink),
even when the file has been deleted. A process is reported when its image is:

- a memfd: ``/memfd:NAME (deleted)``;
- under ``/dev/shm/`` or ``/run/shm/`` (deleted or not);
- deleted (`` (deleted)``) with no link left (nlink 0, or nlink unknown) **and** nothing exists
  at that path any more in the process's own root (``/proc/PID/root/PATH``). When a regular file
  now exists there, the binary was most likely replaced after the exec (package upgrade): it is
  not reported, only counted (``replaced``). A program deleted after its exec without a
  replacement is reported as ``unlinked``: from a running process one cannot tell "deleted
  before exec" from "ran, then deleted itself", and the latter is an evasion habit too.

Known limit: an attacker who deletes the image and drops any file at the same path hides from the
sweep (not from the exec-time sensors). Shebang scripts and ``ld.so /proc/self/fd/N`` programs run
from memory are not found here (the process image is the interpreter or the loader).

Every returned event has ``sensor="sweep"``, ``sweep=True`` and ``exec_path=""`` (the name given
to exec is gone); ``trc105.detect`` classifies it. Processes vanishing mid-read are skipped;
permission errors are counted (``SweepStats``); kernel threads and our own pid are skipped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from dataclasses import dataclass

from auditwatch import trc105
from auditwatch.events import ExecEvent, dev_from_stat
from auditwatch.procfs import boot_to_wall_ns, parse_stat
from auditwatch.text import decode_untrusted

PF_KTHREAD = 0x00200000
_GONE = (FileNotFoundError, ProcessLookupError)


@dataclass(slots=True)
class SweepStats:
    processes: int = 0          # /proc/PID directories looked at
    fileless: int = 0           # reported
    replaced: int = 0           # deleted image with a file at its path again: not reported
    kernel_threads: int = 0
    vanished: int = 0
    permission_denied: int = 0


class _Vanished(Exception):
    pass


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _readlink(path: str) -> str | None:
    try:
        return decode_untrusted(os.readlink(path.encode()))
    except _GONE:
        return None


def _ns_inode(path: str) -> int | None:
    """``mnt:[4026531841]`` -> 4026531841."""
    link = _readlink(path)
    if link is None or not link.endswith("]") or ":[" not in link:
        return None
    try:
        return int(link[link.index(":[") + 2 : -1])
    except ValueError:
        return None


def _status_fields(raw: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.split()
    return out


def boot_time_ns(proc_root: str = "/proc") -> int:
    """Wall-clock time of boot. Real /proc: from the clocks (ns precision); else ``btime``."""
    if proc_root == "/proc":
        return boot_to_wall_ns()
    for line in _read(os.path.join(proc_root, "stat")).splitlines():
        if line.startswith(b"btime "):
            return int(line.split()[1]) * 1_000_000_000
    raise ValueError(f"no btime in {proc_root}/stat")


def classify(exe: str, nlink: int | None, replacement_exists: bool) -> str | None:
    """Why an image is reported (``memfd``, ``shm``, ``unlinked``), ``replaced``, or None."""
    if trc105.memfd_name_of(exe) is not None:
        return "memfd"
    deleted = exe.endswith(trc105.DELETED_SUFFIX)
    path = exe[: -len(trc105.DELETED_SUFFIX)] if deleted else exe
    if path.startswith(trc105.SHM_PREFIXES):
        return "shm"
    if not deleted or (nlink is not None and nlink > 0):
        return None
    return "replaced" if replacement_exists else "unlinked"


def _replacement_exists(proc_root: str, pid: int, exe: str) -> bool:
    path = exe[: -len(trc105.DELETED_SUFFIX)]
    try:  # the path as the process sees it: its own root and mount namespace
        st = os.stat(f"{proc_root}/{pid}/root{path}")
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode)


def _event(proc_root: str, pid: int, exe: str, boot_ns: int, ticks: int) -> ExecEvent:
    base = f"{proc_root}/{pid}"
    try:
        proc = parse_stat(_read(f"{base}/stat"))
        comm, ppid, start = proc.comm, proc.ppid, proc.start_ticks
        status = _status_fields(_read(f"{base}/status"))
        cmdline = _read(f"{base}/cmdline")
    except _GONE as e:
        raise _Vanished from e
    try:
        st: os.stat_result | None = os.stat(f"{base}/exe")
    except _GONE:
        st = None
    uids = status.get("Uid", [])
    nspid = status.get("NSpid", [])
    ns_pid = int(nspid[-1]) if len(nspid) > 1 else None
    try:
        cgroup_raw = _read(f"{base}/cgroup").decode("utf-8", "replace")
        cgroup = next((ln[3:] for ln in cgroup_raw.splitlines() if ln.startswith("0::")), None)
    except OSError:
        cgroup = None
    return ExecEvent(
        sensor="sweep",
        timestamp_ns=boot_ns + start * 1_000_000_000 // ticks,
        pid=pid,
        tgid=pid,
        ppid=ppid,
        uid=int(uids[0]) if uids else None,
        euid=int(uids[1]) if len(uids) > 1 else None,
        comm=comm,
        exe=exe,
        exec_path="",
        argv=tuple(decode_untrusted(a) for a in cmdline.split(b"\0")[:-1]) if cmdline else (),
        inode=st.st_ino if st is not None else None,
        dev=dev_from_stat(st.st_dev) if st is not None else None,
        nlink=st.st_nlink if st is not None else None,
        memfd_name=trc105.memfd_name_of(exe),
        ns_pid=ns_pid,
        mnt_ns=_ns_inode(f"{base}/ns/mnt"),
        pid_ns=_ns_inode(f"{base}/ns/pid"),
        cgroup=cgroup,
        parent_exe=_readlink(f"{proc_root}/{ppid}/exe") if ppid > 0 else None,
        sweep=True,
    )


def sweep(proc_root: str = "/proc", *, stats: SweepStats | None = None,
          exclude_pids: Collection[int] | None = None,
          boot_ns: int | None = None) -> list[ExecEvent]:
    """Fileless processes running now, one ``ExecEvent`` each, ordered by pid."""
    stats = stats if stats is not None else SweepStats()
    skip = {os.getpid()} if exclude_pids is None else set(exclude_pids)
    boot = boot_time_ns(proc_root) if boot_ns is None else boot_ns
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    out: list[ExecEvent] = []
    for pid in sorted(int(n) for n in names if n.isdigit()):
        if pid in skip:
            continue
        stats.processes += 1
        try:
            event = _sweep_one(proc_root, pid, boot, ticks, stats)
        except _Vanished:
            stats.vanished += 1
            continue
        except PermissionError:
            stats.permission_denied += 1
            continue
        if event is not None:
            stats.fileless += 1
            out.append(event)
    return out


def _sweep_one(proc_root: str, pid: int, boot: int, ticks: int,
               stats: SweepStats) -> ExecEvent | None:
    base = f"{proc_root}/{pid}"
    try:
        flags = parse_stat(_read(f"{base}/stat")).flags
    except _GONE as e:
        raise _Vanished from e
    if flags & PF_KTHREAD:
        stats.kernel_threads += 1
        return None
    exe = _readlink(f"{base}/exe")
    if exe is None:  # zombie, or exited since
        return None
    try:
        nlink: int | None = os.stat(f"{base}/exe").st_nlink
    except _GONE:
        nlink = None
    kind = classify(exe, nlink, False)
    if kind == "unlinked" and _replacement_exists(proc_root, pid, exe):
        kind = "replaced"
    if kind == "replaced":
        stats.replaced += 1
        return None
    if kind is None:
        return None
    return _event(proc_root, pid, exe, boot, ticks)
