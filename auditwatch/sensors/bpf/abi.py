"""The wire format of the exec sensor's ring buffer: a ctypes mirror of ``struct aw_exec_event``.

Must match exec.bpf.c (field order, sizes, constants). ``tests/test_bpf_abi.py`` compares this
mirror with the BTF of the compiled object, field by field, so a change on one side alone fails.
Pure: no I/O.

A record is the struct cut after ``argv_len`` bytes of ``argv`` (the kernel sends only what it
read), so a valid record is between ``HEADER_SIZE`` and ``ctypes.sizeof(ExecRecord)`` bytes.
"""

from __future__ import annotations

import ctypes
from typing import Final

COMM_LEN: Final = 16
NAME_BUF: Final = 256
FILENAME_BUF: Final = 256
PATH_LOGICAL: Final = 512
PATH_BUF: Final = PATH_LOGICAL + NAME_BUF
ARGV_BUF: Final = 4096

# reasons: why the kernel sent the record
R_NLINK0: Final = 1
R_MEMFD: Final = 2
R_SHM: Final = 4
R_SCRIPT: Final = 8
R_LOADER: Final = 16   # ld.so runs a program named by an fd path (argv[script_argi])

# flags
F_ARGV_TRUNC: Final = 1
F_PATH_TRUNC: Final = 2
F_PATH_DETACHED: Final = 4
F_SCRIPT_MEMFD: Final = 8

# parent_flags: F_PATH_TRUNC / F_PATH_DETACHED of the parent's walk, and
PF_KNOWN: Final = 1    # the parent's exe_file was read at exec time: parent_* fields are valid

# per-CPU counters (array map "counters"), by index
COUNTERS: Final = ("execs_seen", "events_emitted", "rb_drops", "scripts_stashed")

# map and program names in the object
EVENTS_MAP: Final = "events"
COUNTERS_MAP: Final = "counters"


class ExecRecord(ctypes.Structure):
    """``struct aw_exec_event`` -- must match exec.bpf.c."""

    _fields_ = [
        ("boot_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("ino", ctypes.c_uint64),
        ("sb_magic", ctypes.c_uint64),
        ("script_ino", ctypes.c_uint64),
        ("script_sb_magic", ctypes.c_uint64),
        ("parent_ino", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("old_pid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("euid", ctypes.c_uint32),
        ("ns_pid", ctypes.c_uint32),
        ("ns_ppid", ctypes.c_uint32),
        ("pid_ns", ctypes.c_uint32),
        ("mnt_ns", ctypes.c_uint32),
        ("dev", ctypes.c_uint32),
        ("nlink", ctypes.c_uint32),
        ("script_dev", ctypes.c_uint32),
        ("script_nlink", ctypes.c_uint32),
        ("script_fd", ctypes.c_int32),
        ("reasons", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad0", ctypes.c_uint32),
        ("parent_dev", ctypes.c_uint32),
        ("parent_nlink", ctypes.c_uint32),
        ("parent_flags", ctypes.c_uint32),
        ("path_len", ctypes.c_uint16),
        ("depth", ctypes.c_uint16),
        ("argv_len", ctypes.c_uint16),
        ("script_argi", ctypes.c_uint16),
        ("parent_path_len", ctypes.c_uint16),
        ("parent_depth", ctypes.c_uint16),
        ("comm", ctypes.c_char * COMM_LEN),
        ("filename", ctypes.c_char * FILENAME_BUF),
        ("script_name", ctypes.c_char * NAME_BUF),
        ("path", ctypes.c_char * PATH_BUF),
        ("parent_path", ctypes.c_char * PATH_BUF),
        ("argv", ctypes.c_char * ARGV_BUF),
    ]


STRUCT_NAME: Final = "aw_exec_event"
RECORD_SIZE: Final = ctypes.sizeof(ExecRecord)
HEADER_SIZE: Final = ExecRecord.argv.offset


def layout() -> dict[str, tuple[int, int]]:
    """``{field: (offset, size)}`` of the mirror, for the BTF comparison."""
    names = [f[0] for f in ExecRecord._fields_]
    return {n: (getattr(ExecRecord, n).offset, getattr(ExecRecord, n).size) for n in names}


def record_bytes(rec: ExecRecord, argv_len: int | None = None) -> bytes:
    """Serialise a record the way the kernel sends it (cut after ``argv_len`` argv bytes)."""
    n = rec.argv_len if argv_len is None else argv_len
    return bytes(rec)[: HEADER_SIZE + n]
