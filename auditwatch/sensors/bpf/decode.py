"""Ring-buffer record -> ``ExecEvent``. Pure: bytes in, event out, no I/O, no clock.

Every string the kernel hands over (names, paths, argv, comm) was chosen by whoever ran the exec
and goes through ``auditwatch.text.decode_untrusted`` only. A record that is too short or whose
lengths do not fit raises ``DecodeError``; the sensor counts those and carries on.

``exe`` is written the way the kernel prints the path of an image (``/proc/PID/exe``):
``/memfd:NAME (deleted)`` for a memfd, ``PATH (deleted)`` for an unlinked file, ``PATH`` otherwise.
A path the walk could not finish (deeper than the kernel walk goes) starts with ``.../``.
``parent_exe`` is the parent's image read by the kernel at exec time
(``real_parent->mm->exe_file``), written the same way; None when the kernel could not read it (a
kernel thread, a parent past ``exit_mm``): the daemon then falls back to ``/proc/PPID/exe``.
"""

from __future__ import annotations

import ctypes

from auditwatch.events import ExecEvent, FdTarget
from auditwatch.sensors.bpf import abi
from auditwatch.text import decode_untrusted

MEMFD_PREFIX = b"memfd:"
DELETED = " (deleted)"
TRUNCATED_PATH_PREFIX = ".../"


class DecodeError(ValueError):
    """A record that cannot be a ``struct aw_exec_event``."""


def _cstr(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def _names(rec: abi.ExecRecord, offset: int, length: int, depth: int) -> list[bytes]:
    """The dentry names the kernel walked into the buffer at ``offset``, leaf first."""
    raw = ctypes.string_at(ctypes.addressof(rec) + offset, length)
    names = raw.split(b"\0")
    return [n for n in names[:depth] if n]


def _argv(rec: abi.ExecRecord) -> tuple[str, ...]:
    raw = ctypes.string_at(ctypes.addressof(rec) + abi.ExecRecord.argv.offset, rec.argv_len)
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    if not raw:
        return ()
    return tuple(decode_untrusted(a) for a in raw.split(b"\0"))


def _kernel_path(names: list[bytes], flags: int, nlink: int) -> str:
    """A walked path as the kernel prints an image's (``/proc/PID/exe``)."""
    path = "/" + "/".join(decode_untrusted(n) for n in reversed(names))
    if flags & abi.F_PATH_TRUNC:
        path = TRUNCATED_PATH_PREFIX + path[1:]
    if nlink == 0:
        path += DELETED
    return path


def _parent_exe(rec: abi.ExecRecord) -> str | None:
    if not rec.parent_flags & abi.PF_KNOWN:
        return None
    names = _names(rec, abi.ExecRecord.parent_path.offset, rec.parent_path_len, rec.parent_depth)
    if not names:
        return None
    return _kernel_path(names, rec.parent_flags, rec.parent_nlink)


def _check(raw: bytes) -> abi.ExecRecord:
    if len(raw) < abi.HEADER_SIZE:
        raise DecodeError(f"record of {len(raw)} bytes, header needs {abi.HEADER_SIZE}")
    if len(raw) > abi.RECORD_SIZE:
        raise DecodeError(f"record of {len(raw)} bytes, larger than {abi.RECORD_SIZE}")
    rec = abi.ExecRecord.from_buffer_copy(raw.ljust(abi.RECORD_SIZE, b"\0"))
    if rec.argv_len > abi.ARGV_BUF or abi.HEADER_SIZE + rec.argv_len > len(raw):
        raise DecodeError(f"argv_len {rec.argv_len} overruns a {len(raw)}-byte record")
    if rec.path_len > abi.PATH_BUF:
        raise DecodeError(f"path_len {rec.path_len} > {abi.PATH_BUF}")
    if rec.parent_path_len > abi.PATH_BUF:
        raise DecodeError(f"parent_path_len {rec.parent_path_len} > {abi.PATH_BUF}")
    if rec.reasons == 0:
        raise DecodeError("record without a reason")
    return rec


def decode(raw: bytes, boot_to_wall_ns: int) -> ExecEvent:
    """One ring-buffer record -> ``ExecEvent`` (``sensor="bpf"``).

    ``boot_to_wall_ns``: wall clock minus CLOCK_BOOTTIME, in ns (the kernel stamps records with
    ``bpf_ktime_get_boot_ns``); ``monotonic_ns`` keeps the raw stamp for correlation.
    """
    rec = _check(raw)
    names = _names(rec, abi.ExecRecord.path.offset, rec.path_len, rec.depth)
    leaf = names[0] if names else b""
    memfd_name = None
    # A real memfd's dentry is its own root (not reachable from any mount); a linked file that
    # merely is called "memfd:x" is not a memfd.
    if (rec.reasons & abi.R_MEMFD and rec.flags & abi.F_PATH_DETACHED
            and leaf.startswith(MEMFD_PREFIX)):
        memfd_name = decode_untrusted(leaf[len(MEMFD_PREFIX):])
    exec_path = decode_untrusted(_cstr(rec.filename))
    argv = _argv(rec)
    fd_target = None
    if rec.reasons & abi.R_SCRIPT:
        fd_target = FdTarget(path=exec_path, inode=rec.script_ino, dev=rec.script_dev,
                             nlink=rec.script_nlink)
    elif rec.reasons & abi.R_LOADER:
        # ld.so [OPTIONS] PROGRAM: the kernel names PROGRAM's argv index.
        if not 0 < rec.script_argi < len(argv):
            raise DecodeError(f"loader record: argv index {rec.script_argi} of {len(argv)}")
        fd_target = FdTarget(path=argv[rec.script_argi], inode=rec.script_ino,
                             dev=rec.script_dev, nlink=rec.script_nlink)
    return ExecEvent(
        sensor="bpf",
        timestamp_ns=rec.boot_ns + boot_to_wall_ns,
        pid=rec.pid,
        tgid=rec.tgid,
        ppid=rec.ppid,
        uid=rec.uid,
        euid=rec.euid,
        comm=decode_untrusted(_cstr(rec.comm)),
        exe=_kernel_path(names, rec.flags, rec.nlink),
        exec_path=exec_path,
        argv=argv,
        argv_truncated=bool(rec.flags & abi.F_ARGV_TRUNC),
        inode=rec.ino,
        dev=rec.dev,
        nlink=rec.nlink,
        memfd_name=memfd_name,
        sb_magic=rec.sb_magic,
        fd_target=fd_target,
        ns_pid=rec.ns_pid,
        ns_ppid=rec.ns_ppid,
        mnt_ns=rec.mnt_ns or None,
        pid_ns=rec.pid_ns or None,
        cgroup=str(rec.cgroup_id) if rec.cgroup_id else None,
        parent_exe=_parent_exe(rec),
        monotonic_ns=rec.boot_ns,
    )


def script_name(raw: bytes) -> str:
    """The dentry name of a script (or loader) event's fd target (``memfd:NAME``), for
    diagnostics."""
    return decode_untrusted(_cstr(_check(raw).script_name))
