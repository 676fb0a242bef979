"""A grouped audit event -> ``ExecEvent`` (or ``None``, counted by reason).

Pure. The fast path looks at the SYSCALL record (and the names/devices of the PATH items) to
decide whether the exec could be fileless; only then are argv (EXECVE, possibly split over many
records), CWD and every PATH item decoded.

What audit shows for an exec (Linux 6.18, verified):
- SYSCALL: ``syscall=322`` (execveat) or ``59``; ``exe`` is the image, hex when it has spaces,
  so a memfd is hex of ``/memfd:NAME (deleted)``; ``comm`` is the new comm.
- PATH item 0: the name given to exec (``""`` for AT_EMPTY_PATH, ``/dev/fd/3``...) with the
  inode/dev of that file; a memfd lives on dev ``00:01`` here. For a shebang script item 0 is the
  script, item 1 the interpreter (named as in ``#!``, also argv[0]), then the ELF loader.
- EXECVE: ``argc`` and ``aN``; a long argument is ``aN_len=`` then ``aN[i]=`` chunks, across
  several EXECVE records; a hex-encoded argument's ``aN_len`` counts hex digits.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from auditwatch import trc105
from auditwatch.audit.grouper import AuditEvent
from auditwatch.audit.records import (
    AuditRecord,
    audit_id,
    number,
    text,
    untrusted,
    untrusted_bytes,
)
from auditwatch.events import AuditContext, ExecEvent, FdTarget, dev_from_audit
from auditwatch.text import decode_untrusted

# (arch, syscall number) -> name. arch as audit prints it (AUDIT_ARCH_*), lower-case hex.
EXEC_SYSCALLS: Final[dict[tuple[str, int], str]] = {
    ("c000003e", 59): "execve", ("c000003e", 322): "execveat",    # x86_64
    ("40000003", 11): "execve", ("40000003", 358): "execveat",    # i386
    ("c00000b7", 221): "execve", ("c00000b7", 281): "execveat",   # aarch64
}
MEMFD_CREATE_SYSCALLS: Final = frozenset({("c000003e", 319), ("40000003", 356),
                                           ("c00000b7", 279)})
# memfd fds seen created (pid, fd): lets audit alone tell that ``ld.so /proc/self/fd/N`` runs a
# memfd. Bounded; an fd closed and reused for a disk file stays listed (rare, and only the loader
# case reads it).
MAX_TRACKED_MEMFDS: Final = 4096
SHM_DIRS: Final = ("/dev/shm/", "/run/shm/")
SKIP_REASONS: Final = ("no_syscall", "not_exec", "failed", "not_fileless", "malformed")


@dataclass(frozen=True, slots=True)
class PathItem:
    item: int
    name: str | None           # None: (null)
    inode: int | None
    dev: int | None            # kernel dev_t
    nametype: str


def exec_syscall(syscall: AuditRecord) -> str | None:
    """``execve``/``execveat`` when the SYSCALL record is one, else ``None``."""
    arch = text(syscall.raw("arch"))
    num = number(syscall.raw("syscall"))
    if arch is None or num is None:
        return None
    return EXEC_SYSCALLS.get((arch.lower(), num))


def path_items(event: AuditEvent) -> list[PathItem]:
    items = []
    for r in event.all("PATH"):
        idx = number(r.raw("item"))
        if idx is None:
            continue
        dev_raw = text(r.raw("dev"))
        items.append(PathItem(
            item=idx,
            name=untrusted(r.raw("name")),
            inode=number(r.raw("inode")),
            dev=dev_from_audit(dev_raw) if dev_raw else None,
            nametype=text(r.raw("nametype")) or "",
        ))
    items.sort(key=lambda p: p.item)
    return items


def is_candidate(exe: str, items: list[PathItem], memfd_devs: Collection[int]) -> bool:
    """Could this exec be fileless? Cheap, and a superset of what ``trc105.detect`` fires on."""
    if exe.startswith("/memfd:") or exe.endswith(trc105.DELETED_SUFFIX):
        return True
    if exe.startswith(SHM_DIRS) or trc105.is_loader(exe):
        return True
    if items:
        name = items[0].name
        if not name or trc105.is_fd_path(name) or name.startswith(SHM_DIRS):
            return True
    return any(p.dev is not None and p.dev in memfd_devs for p in items)


def decode_argv(execve: list[AuditRecord]) -> tuple[tuple[str, ...], bool]:
    """argv from the EXECVE record(s); ``truncated`` when pieces are missing."""
    if not execve:
        return (), True
    argc: int | None = None
    whole: dict[int, bytes] = {}
    declared: dict[int, int] = {}
    hexed: dict[int, bool] = {}
    chunks: dict[int, dict[int, bytes]] = {}
    for rec in execve:
        for name, raw in rec.fields:
            if name == "argc":
                argc = number(raw)
            elif not name.startswith("a"):
                continue
            elif name.endswith("_len"):
                idx = number(name[1:-4].encode())
                length = number(raw)
                if idx is not None and length is not None:
                    declared[idx] = length
            elif name.endswith("]") and "[" in name:
                idx_s, _, part_s = name[1:-1].partition("[")
                idx, part = number(idx_s.encode()), number(part_s.encode())
                if idx is not None and part is not None:
                    value = untrusted_bytes(raw) or b""
                    hexed[idx] = not raw.startswith(b'"')
                    chunks.setdefault(idx, {})[part] = value
            else:
                idx = number(name[1:].encode())
                if idx is not None:
                    whole[idx] = untrusted_bytes(raw) or b""
    truncated = False
    for idx, parts in chunks.items():
        joined = b"".join(parts[i] for i in sorted(parts))
        if sorted(parts) != list(range(len(parts))):
            truncated = True
        want = declared.get(idx)
        if want is not None and len(joined) * (2 if hexed.get(idx) else 1) < want:
            truncated = True
        whole.setdefault(idx, joined)
    present = sorted(i for i in whole if i >= 0)
    complete = argc is not None and len(present) == argc and (
        argc == 0 or (present[0] == 0 and present[-1] == argc - 1))
    truncated = truncated or not complete
    args = tuple(decode_untrusted(whole[i]) for i in present if argc is None or i < argc)
    return args, truncated


def _is_script(exe: str, argv: tuple[str, ...], items: list[PathItem]) -> bool:
    """binfmt_script puts the interpreter named in ``#!`` in argv[0] and opens it as item 1."""
    if len(items) < 2 or not argv or items[1].name != argv[0]:
        return False
    return not trc105.is_loader(argv[0]) or trc105.is_loader(exe)


def _fd_path_of(exec_path: str, argv: tuple[str, ...]) -> str | None:
    if exec_path:
        return exec_path if trc105.is_fd_path(exec_path) else None
    # AT_EMPTY_PATH: the kernel names the script /dev/fd/N in the interpreter's argv.
    return next((a for a in argv[1:3] if trc105.is_fd_path(a)), None)


class ExecExtractor:
    """Keeps counters and the memfds it saw created. ``all_execs`` keeps execs the fast path
    would drop."""

    def __init__(self, memfd_devs: Collection[int] = (), all_execs: bool = False,
                 infer_loader: bool = True) -> None:
        self.memfd_devs = frozenset(memfd_devs)
        self.all_execs = all_execs
        # Inferring "ld.so got a memfd" from memfd_create is a guess (a closed memfd's fd number
        # may be reused for a disk file). Where the BPF sensor runs, it sees the real file and
        # is the one to say; audit then leaves the target unknown.
        self.infer_loader = infer_loader
        self.counters: dict[str, int] = {"execs_seen": 0, "exec_events": 0, "memfds_created": 0,
                                         **{f"skipped_{r}": 0 for r in SKIP_REASONS}}
        self._memfds: OrderedDict[tuple[int, int], None] = OrderedDict()

    def _note_memfd_create(self, syscall: AuditRecord) -> bool:
        arch = (text(syscall.raw("arch")) or "").lower()
        if (arch, number(syscall.raw("syscall"))) not in MEMFD_CREATE_SYSCALLS:
            return False
        pid, fd = number(syscall.raw("pid")), number(syscall.raw("exit"))
        if pid is not None and fd is not None and fd >= 0:
            self.counters["memfds_created"] += 1
            self._memfds[(pid, fd)] = None
            self._memfds.move_to_end((pid, fd))
            while len(self._memfds) > MAX_TRACKED_MEMFDS:
                self._memfds.popitem(last=False)
        return True

    def _loader_target(self, fd_path: str, pid: int, ppid: int | None) -> FdTarget:
        """The program handed to ld.so by fd: a memfd when this task (or its parent, before the
        fork) created a memfd with that fd number."""
        fd = int(posixpath.basename(fd_path))
        if (pid, fd) in self._memfds or (ppid is not None and (ppid, fd) in self._memfds):
            return FdTarget(path=fd_path, dev=min(self.memfd_devs, default=None), nlink=0)
        return FdTarget(path=fd_path)

    def _skip(self, reason: str) -> None:
        self.counters[f"skipped_{reason}"] += 1

    def extract(self, event: AuditEvent) -> ExecEvent | None:
        syscall = event.first("SYSCALL")
        if syscall is None:
            self._skip("no_syscall")
            return None
        name = exec_syscall(syscall)
        if name is None:
            if not self._note_memfd_create(syscall):
                self._skip("not_exec")
            return None
        self.counters["execs_seen"] += 1
        if text(syscall.raw("success")) != "yes":
            self._skip("failed")
            return None
        pid = number(syscall.raw("pid"))
        if pid is None:
            self._skip("malformed")
            return None
        exe = untrusted(syscall.raw("exe")) or ""
        items = path_items(event)
        if not self.all_execs and not is_candidate(exe, items, self.memfd_devs):
            self._skip("not_fileless")
            return None
        result = self._full(event, syscall, name, pid, exe, items)
        self.counters["exec_events"] += 1
        return result

    def _full(self, event: AuditEvent, syscall: AuditRecord, syscall_name: str, pid: int,
              exe: str, items: list[PathItem]) -> ExecEvent:
        argv, truncated = decode_argv(event.all("EXECVE"))
        cwd_rec = event.first("CWD")
        cwd = (untrusted(cwd_rec.raw("cwd")) if cwd_rec is not None else None) or ""
        item0 = items[0] if items and items[0].item == 0 else None
        exec_path = (item0.name or "") if item0 is not None else ""
        script = _is_script(exe, argv, items)
        image = items[1] if script else item0
        fd_target = None
        if script and item0 is not None:
            fd_path = _fd_path_of(exec_path, argv)
            if fd_path is not None:
                fd_target = FdTarget(path=fd_path, inode=item0.inode, dev=item0.dev)
        elif trc105.is_loader(exe):
            fd_path = next((a for a in argv[1:] if trc105.is_fd_path(a)), None)
            if fd_path is not None:
                fd_target = (self._loader_target(fd_path, pid, number(syscall.raw("ppid")))
                             if self.infer_loader else FdTarget(path=fd_path))
        memfd_name = trc105.memfd_name_of(exe) if exec_path != exe else None
        tty = text(syscall.raw("tty"))
        return ExecEvent(
            sensor="audit",
            timestamp_ns=event.timestamp_ns,
            pid=pid,
            tgid=pid,
            ppid=number(syscall.raw("ppid")),
            uid=audit_id(syscall.raw("uid")),
            euid=audit_id(syscall.raw("euid")),
            comm=untrusted(syscall.raw("comm")) or "",
            exe=exe,
            exec_path=exec_path,
            argv=argv,
            argv_truncated=truncated,
            inode=image.inode if image is not None else None,
            dev=image.dev if image is not None else None,
            memfd_name=memfd_name,
            fd_target=fd_target,
            audit=AuditContext(
                serial=event.serial,
                auid=audit_id(syscall.raw("auid")),
                ses=audit_id(syscall.raw("ses")),
                tty="" if tty in (None, "(none)", "?") else tty,
                syscall=syscall_name,
                cwd=cwd,
                key=untrusted(syscall.raw("key")) or "",
                success=True,
            ),
        )
