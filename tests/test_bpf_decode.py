"""The BPF record decoder, without a kernel: hand-made records built with the abi mirror."""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field

import pytest

from auditwatch import trc105
from auditwatch.events import FdTarget, mkdev
from auditwatch.sensors.bpf import abi
from auditwatch.sensors.bpf.decode import DecodeError, decode

BOOT_TO_WALL = 1_700_000_000_000_000_000
TMPFS = 0x01021994
EXT4 = 0xEF53
MEMFD_DEV = mkdev(0, 1)
DISK_DEV = mkdev(254, 0)


@dataclass
class Rec:
    """What the kernel would put in a record, in friendly form (names leaf first)."""

    names: list[bytes]
    filename: bytes
    argv: list[bytes]
    reasons: int
    nlink: int = 0
    flags: int = 0
    dev: int = MEMFD_DEV
    sb_magic: int = TMPFS
    comm: bytes = b"true"
    script: dict[str, int] = field(default_factory=dict)
    script_name: bytes = b""
    script_argi: int = 0
    argv_len: int | None = None
    # the parent's image: names leaf first, parent_flags (PF_KNOWN added), nlink; None: unknown
    parent: tuple[list[bytes], int, int] | None = None

    def build(self) -> abi.ExecRecord:
        r = abi.ExecRecord()
        r.boot_ns, r.cgroup_id, r.ino = 5_000, 4242, 77
        r.tgid = r.pid = r.old_pid = 1234
        r.ppid, r.uid, r.euid = 1000, 0, 0
        r.ns_pid, r.ns_ppid, r.pid_ns, r.mnt_ns = 1234, 1000, 4026531836, 4026531841
        r.dev, r.nlink, r.sb_magic = self.dev, self.nlink, self.sb_magic
        r.reasons, r.flags = self.reasons, self.flags
        r.comm = self.comm
        r.filename = self.filename
        path = b"".join(n + b"\0" for n in self.names)
        ctypes.memmove(ctypes.addressof(r) + abi.ExecRecord.path.offset, path, len(path))
        r.path_len, r.depth = len(path), len(self.names)
        argv = b"".join(a + b"\0" for a in self.argv)
        if self.argv_len is not None:
            argv = argv[: self.argv_len]
        ctypes.memmove(ctypes.addressof(r) + abi.ExecRecord.argv.offset, argv, len(argv))
        r.argv_len = len(argv)
        if self.script:
            r.script_ino = self.script["ino"]
            r.script_dev = self.script["dev"]
            r.script_nlink = self.script["nlink"]
            r.script_fd = self.script["fd"]
            r.script_name = self.script_name
        r.script_argi = self.script_argi
        if self.parent is not None:
            pnames, pflags, pnlink = self.parent
            ppath = b"".join(n + b"\0" for n in pnames)
            ctypes.memmove(ctypes.addressof(r) + abi.ExecRecord.parent_path.offset, ppath,
                           len(ppath))
            r.parent_path_len, r.parent_depth = len(ppath), len(pnames)
            r.parent_flags, r.parent_nlink = abi.PF_KNOWN | pflags, pnlink
            r.parent_ino, r.parent_dev = 4711, DISK_DEV
        return r

    def raw(self) -> bytes:
        return abi.record_bytes(self.build())


LOADER = b"/lib64/ld-linux-x86-64.so.2"
LOADER_NAMES = [b"ld-linux-x86-64.so.2", b"x86_64-linux-gnu", b"lib", b"usr"]

MEMFD = Rec([b"memfd:payload"], b"/dev/fd/3", [b"true", b"aw-1"],
            abi.R_NLINK0 | abi.R_MEMFD, flags=abi.F_PATH_DETACHED)

# (name, record, expected attributes, expected technique)
CASES = [
    ("memfd execveat", MEMFD,
     {"exe": "/memfd:payload (deleted)", "memfd_name": "payload", "exec_path": "/dev/fd/3",
      "argv": ("true", "aw-1"), "nlink": 0, "dev": MEMFD_DEV, "sb_magic": TMPFS},
     "memfd"),
    ("memfd with empty name",
     Rec([b"memfd:"], b"/proc/self/fd/3", [b"x"], abi.R_NLINK0 | abi.R_MEMFD,
         flags=abi.F_PATH_DETACHED),
     {"exe": "/memfd: (deleted)", "memfd_name": ""}, "memfd"),
    ("unlinked file",
     Rec([b"payload", b"aw-unlinked-x", b"tmp"], b"/dev/fd/4", [b"payload", b"aw-2"],
         abi.R_NLINK0, dev=DISK_DEV, sb_magic=EXT4),
     {"exe": "/tmp/aw-unlinked-x/payload (deleted)", "memfd_name": None, "nlink": 0},
     "unlinked"),
    ("O_TMPFILE",
     Rec([b"#2147114", b"tmp"], b"/proc/self/fd/16", [b"tmpfile"], abi.R_NLINK0,
         dev=DISK_DEV, sb_magic=EXT4),
     {"exe": "/tmp/#2147114 (deleted)"}, "unlinked"),
    ("dev shm binary",
     Rec([b"aw-3", b"shm", b"dev"], b"/dev/shm/aw-3", [b"/dev/shm/aw-3", b"aw-3"], abi.R_SHM,
         nlink=1, dev=mkdev(0, 27)),
     {"exe": "/dev/shm/aw-3", "nlink": 1, "memfd_name": None, "fd_target": None}, "shm"),
    ("run shm binary",
     Rec([b"x", b"shm", b"run"], b"/run/shm/x", [b"x"], abi.R_SHM, nlink=1),
     {"exe": "/run/shm/x"}, "shm"),
    ("memfd script",
     Rec([b"dash", b"bin", b"usr"], b"/dev/fd/15", [b"/bin/sh", b"/dev/fd/15", b"aw-4"],
         abi.R_SCRIPT, nlink=1, dev=DISK_DEV, sb_magic=EXT4, flags=abi.F_SCRIPT_MEMFD,
         script={"ino": 1068, "dev": MEMFD_DEV, "nlink": 0, "fd": 15},
         script_name=b"memfd:auditwatch-script"),
     {"exe": "/usr/bin/dash", "memfd_name": None,
      "fd_target": FdTarget(path="/dev/fd/15", inode=1068, dev=MEMFD_DEV, nlink=0),
      "argv": ("/bin/sh", "/dev/fd/15", "aw-4")},
     "memfd-script"),
    ("loader runs a memfd",
     Rec(LOADER_NAMES, LOADER, [LOADER, b"/proc/self/fd/3", b"aw-5"], abi.R_LOADER, nlink=1,
         dev=DISK_DEV, sb_magic=EXT4, flags=abi.F_SCRIPT_MEMFD,
         script={"ino": 2051, "dev": MEMFD_DEV, "nlink": 0, "fd": 3},
         script_name=b"memfd:auditwatch-loader", script_argi=1),
     {"exe": "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "memfd_name": None, "nlink": 1,
      "exec_path": "/lib64/ld-linux-x86-64.so.2",
      "fd_target": FdTarget(path="/proc/self/fd/3", inode=2051, dev=MEMFD_DEV, nlink=0),
      "argv": ("/lib64/ld-linux-x86-64.so.2", "/proc/self/fd/3", "aw-5")},
     "loader"),
    ("loader after options runs an unlinked file",
     Rec(LOADER_NAMES, LOADER,
         [LOADER, b"--library-path", b"/opt/lib", b"--list", b"/dev/fd/7", b"aw-6"],
         abi.R_LOADER, nlink=1, dev=DISK_DEV, sb_magic=EXT4,
         script={"ino": 99, "dev": DISK_DEV, "nlink": 0, "fd": 7}, script_name=b"payload",
         script_argi=4),
     {"fd_target": FdTarget(path="/dev/fd/7", inode=99, dev=DISK_DEV, nlink=0)},
     "loader"),
    ("musl loader",
     Rec([b"ld-musl-x86_64.so.1", b"lib"], b"/lib/ld-musl-x86_64.so.1",
         [b"ld", b"/proc/42/fd/3"], abi.R_LOADER, nlink=1, dev=DISK_DEV,
         script={"ino": 5, "dev": MEMFD_DEV, "nlink": 0, "fd": 3}, script_argi=1),
     {"exe": "/lib/ld-musl-x86_64.so.1", "fd_target": FdTarget(
         path="/proc/42/fd/3", inode=5, dev=MEMFD_DEV, nlink=0)},
     "loader"),
    ("truncated argv",
     Rec([b"memfd:big"], b"/dev/fd/3", [b"true", b"A" * 5000], abi.R_NLINK0 | abi.R_MEMFD,
         flags=abi.F_PATH_DETACHED | abi.F_ARGV_TRUNC, argv_len=abi.ARGV_BUF),
     {"argv_truncated": True}, "memfd"),
    ("truncated path walk",
     Rec([b"payload", b"d"], b"/dev/fd/3", [b"p"], abi.R_NLINK0, dev=DISK_DEV,
         flags=abi.F_PATH_TRUNC),
     {"exe": ".../d/payload (deleted)"}, "unlinked"),
    ("linked file named memfd:x is not a memfd",
     Rec([b"memfd:x", b"tmp"], b"/tmp/memfd:x", [b"x"], abi.R_MEMFD, nlink=1, dev=DISK_DEV),
     {"exe": "/tmp/memfd:x", "memfd_name": None}, None),
    ("hostile memfd name: newline, quotes, non-UTF-8",
     Rec([b'memfd:a\nb"c\'\xff\xfe'], b"/dev/fd/3", [b"t\nx", b"\x80\x81", b"\"'"],
         abi.R_NLINK0 | abi.R_MEMFD, flags=abi.F_PATH_DETACHED, comm=b"\x1b[31m\xff"),
     {"memfd_name": "a\nb\"c'\\xff\\xfe", "exe": "/memfd:a\nb\"c'\\xff\\xfe (deleted)",
      "argv": ("t\nx", "\\x80\\x81", "\"'"), "comm": "\x1b[31m\\xff"},
     "memfd"),
    ("parent exe on disk",
     Rec([b"memfd:p"], b"/dev/fd/3", [b"x"], abi.R_NLINK0 | abi.R_MEMFD, flags=abi.F_PATH_DETACHED,
         parent=([b"runc", b"bin", b"usr"], 0, 1)),
     {"parent_exe": "/usr/bin/runc", "exe": "/memfd:p (deleted)"}, "memfd"),
    ("parent is a memfd",
     Rec([b"memfd:p"], b"/dev/fd/3", [b"x"], abi.R_NLINK0 | abi.R_MEMFD, flags=abi.F_PATH_DETACHED,
         parent=([b"memfd:runc"], abi.F_PATH_DETACHED, 0)),
     {"parent_exe": "/memfd:runc (deleted)"}, "memfd"),
    ("parent image unlinked",
     Rec([b"memfd:p"], b"/dev/fd/3", [b"x"], abi.R_NLINK0 | abi.R_MEMFD, flags=abi.F_PATH_DETACHED,
         parent=([b"runc", b"tmp"], 0, 0)),
     {"parent_exe": "/tmp/runc (deleted)"}, "memfd"),
    ("parent path walk truncated",
     Rec([b"memfd:p"], b"/dev/fd/3", [b"x"], abi.R_NLINK0 | abi.R_MEMFD, flags=abi.F_PATH_DETACHED,
         parent=([b"runc", b"bin", b"usr"], abi.F_PATH_TRUNC, 1)),
     {"parent_exe": ".../usr/bin/runc", "exe": "/memfd:p (deleted)"}, "memfd"),
    ("image walk truncated, parent's not",
     Rec([b"payload", b"d"], b"/dev/fd/3", [b"p"], abi.R_NLINK0, dev=DISK_DEV,
         flags=abi.F_PATH_TRUNC, parent=([b"runc", b"bin", b"usr"], 0, 1)),
     {"exe": ".../d/payload (deleted)", "parent_exe": "/usr/bin/runc"}, "unlinked"),
    ("parent unknown to the kernel (no mm)", MEMFD, {"parent_exe": None}, "memfd"),
    ("empty argv",
     Rec([b"memfd:e"], b"/dev/fd/3", [], abi.R_NLINK0 | abi.R_MEMFD, flags=abi.F_PATH_DETACHED),
     {"argv": ()}, "memfd"),
]


@pytest.mark.parametrize(("name", "rec", "expected", "technique"), CASES,
                         ids=[c[0] for c in CASES])
def test_decode(name: str, rec: Rec, expected: dict[str, object], technique: str | None) -> None:
    event = decode(rec.raw(), BOOT_TO_WALL)
    for attr, value in expected.items():
        assert getattr(event, attr) == value, attr
    assert trc105.detect(event) == technique


def test_common_fields() -> None:
    e = decode(MEMFD.raw(), BOOT_TO_WALL)
    assert e.sensor == "bpf"
    assert e.timestamp_ns == BOOT_TO_WALL + 5_000
    assert e.monotonic_ns == 5_000
    assert (e.pid, e.tgid, e.ppid, e.uid, e.euid) == (1234, 1234, 1000, 0, 0)
    assert (e.ns_pid, e.ns_ppid, e.pid_ns, e.mnt_ns) == (1234, 1000, 4026531836, 4026531841)
    assert e.inode == 77
    assert e.cgroup == "4242"
    assert e.comm == "true"


def test_truncated_argv_keeps_partial_last_arg() -> None:
    rec = next(c[1] for c in CASES if c[0] == "truncated argv")
    event = decode(rec.raw(), 0)
    assert event.argv[0] == "true"
    assert event.argv[1] == "A" * (abi.ARGV_BUF - len(b"true\0"))


def test_record_may_carry_full_struct() -> None:
    assert decode(bytes(MEMFD.build()), 0).argv == ("true", "aw-1")


def _broken(mutate: str) -> bytes:
    r = MEMFD.build()
    if mutate == "argv_len":
        r.argv_len = 100
        return bytes(r)[: abi.HEADER_SIZE + 10]
    if mutate == "argv_len_huge":
        r.argv_len = abi.ARGV_BUF + 1
        return bytes(r)
    if mutate == "path_len":
        r.path_len = abi.PATH_BUF + 1
        return abi.record_bytes(r)
    if mutate.startswith("loader_argi_"):
        r.reasons = abi.R_LOADER
        r.script_argi = int(mutate.rsplit("_", 1)[1])   # argv is ("true", "aw-1")
        return abi.record_bytes(r)
    if mutate == "parent_path_len":
        r.parent_flags = abi.PF_KNOWN
        r.parent_path_len = abi.PATH_BUF + 1
        return abi.record_bytes(r)
    if mutate == "no_reason":
        r.reasons = 0
        return abi.record_bytes(r)
    raise AssertionError(mutate)


@pytest.mark.parametrize("raw", [
    b"", b"\0" * 8, MEMFD.raw()[: abi.HEADER_SIZE - 1], MEMFD.raw() + b"\0" * abi.RECORD_SIZE,
    _broken("argv_len"), _broken("argv_len_huge"), _broken("path_len"), _broken("no_reason"),
    _broken("loader_argi_0"), _broken("loader_argi_2"), _broken("parent_path_len"),
], ids=["empty", "8 bytes", "short header", "too long", "argv overrun", "argv_len huge",
        "path_len huge", "no reason", "loader argv index 0", "loader argv index past argv",
        "parent_path_len huge"])
def test_malformed_records_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw, 0)


def test_abi_mirror_is_packed_and_aligned() -> None:
    assert abi.RECORD_SIZE % 8 == 0
    offsets = sorted(abi.layout().values())
    for (off, size), (nxt, _) in itertools.pairwise(offsets):
        assert off + size == nxt, "implicit padding in the mirror"
    assert abi.ExecRecord.argv.offset == abi.HEADER_SIZE
