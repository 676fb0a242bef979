"""Real fileless (and look-alike benign) executions, performed on this kernel.

Shared by ``auditwatch selftest``, the kernel tests and the script that records audit fixtures.
Each scenario forks, executes ``/bin/true`` (or a tiny shell script) the way it is named for, waits
for the child and says what auditwatch must report for that pid. The argv carries a unique token
so a test can pick out its own exec among everything else the host runs.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from auditwatch.events import Technique

AT_EMPTY_PATH = 0x1000
SYS_EXECVEAT = 322  # x86_64
TRUE_BINARY = "/bin/true"
SCRIPT = b"#!/bin/sh\nexit 0\n"


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    name: str
    pid: int
    argv: tuple[str, ...]
    expected: Technique | None
    exit_status: int


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _execveat(fd: int, path: bytes, argv: Sequence[str], flags: int) -> None:
    """execveat(2) directly: Python has no wrapper and glibc's fexecve may pick another route."""
    args = (ctypes.c_char_p * (len(argv) + 1))(*[a.encode("utf-8", "surrogateescape")
                                                 for a in argv], None)
    env = (ctypes.c_char_p * 2)(b"PATH=/usr/bin:/bin", None)
    _libc().syscall(SYS_EXECVEAT, fd, path, args, env, flags)


def _run_child(exec_in_child: Callable[[], None]) -> tuple[int, int]:
    """Fork; the child runs ``exec_in_child`` (which must exec). Returns (pid, exit status)."""
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        try:
            exec_in_child()
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    return pid, os.waitstatus_to_exitcode(status)


def _memfd_with(content: bytes, name: str | bytes = "auditwatch-selftest") -> int:
    if isinstance(name, bytes):
        fd = _libc().memfd_create(name, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "memfd_create")
    else:
        fd = os.memfd_create(name, 0)
    os.write(fd, content)
    return fd


def _true_bytes() -> bytes:
    with open(TRUE_BINARY, "rb") as f:
        return f.read()


def token() -> str:
    return "aw-" + uuid.uuid4().hex[:12]


def _result(name: str, pid_status: tuple[int, int], argv: Sequence[str],
            expected: Technique | None) -> ScenarioResult:
    return ScenarioResult(name, pid_status[0], tuple(argv), expected, pid_status[1])


def memfd_execveat(tag: str, memfd_name: str | bytes = "auditwatch-selftest",
                   extra_args: Sequence[str] = ()) -> ScenarioResult:
    fd = _memfd_with(_true_bytes(), memfd_name)
    argv = ["true", tag, *extra_args]
    try:
        r = _run_child(lambda: _execveat(fd, b"", argv, AT_EMPTY_PATH))
    finally:
        os.close(fd)
    return _result("memfd_execveat", r, argv, "memfd")


def memfd_proc_self_fd(tag: str) -> ScenarioResult:
    fd = _memfd_with(_true_bytes())
    argv = ["true", tag]
    try:
        r = _run_child(lambda: os.execv(f"/proc/self/fd/{fd}", argv))
    finally:
        os.close(fd)
    return _result("memfd_proc_self_fd", r, argv, "memfd")


def memfd_dev_fd(tag: str) -> ScenarioResult:
    fd = _memfd_with(_true_bytes())
    argv = ["true", tag]
    try:
        r = _run_child(lambda: os.execv(f"/dev/fd/{fd}", argv))
    finally:
        os.close(fd)
    return _result("memfd_dev_fd", r, argv, "memfd")


def unlinked_fd(tag: str) -> ScenarioResult:
    """Copy /bin/true to disk, open it, unlink it, exec it through its fd."""
    d = tempfile.mkdtemp(prefix="aw-unlinked-")
    path = os.path.join(d, "payload")
    shutil.copyfile(TRUE_BINARY, path)
    os.chmod(path, 0o755)
    fd = os.open(path, os.O_RDONLY)
    os.unlink(path)
    os.rmdir(d)
    argv = ["payload", tag]
    try:
        r = _run_child(lambda: _execveat(fd, b"", argv, AT_EMPTY_PATH))
    finally:
        os.close(fd)
    return _result("unlinked_fd", r, argv, "unlinked")


def o_tmpfile(tag: str, directory: str = "/tmp") -> ScenarioResult:
    """An O_TMPFILE file never has a name: write /bin/true into it, exec via /proc/self/fd."""
    fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o755)
    os.write(fd, _true_bytes())
    os.fchmod(fd, 0o755)
    # The kernel refuses to exec a file still open for writing (ETXTBSY): reopen read-only.
    ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    os.close(fd)
    argv = ["tmpfile", tag]
    try:
        r = _run_child(lambda: os.execv(f"/proc/self/fd/{ro}", argv))
    finally:
        os.close(ro)
    return _result("o_tmpfile", r, argv, "unlinked")


def dev_shm_binary(tag: str) -> ScenarioResult:
    path = f"/dev/shm/{tag}"
    shutil.copyfile(TRUE_BINARY, path)
    os.chmod(path, 0o755)
    argv = [path, tag]
    try:
        r = _run_child(lambda: os.execv(path, argv))
    finally:
        os.unlink(path)
    return _result("dev_shm_binary", r, argv, "shm")


def memfd_script(tag: str) -> ScenarioResult:
    fd = _memfd_with(SCRIPT, "auditwatch-script")
    argv = ["script", tag]
    try:
        r = _run_child(lambda: os.execv(f"/dev/fd/{fd}", argv))
    finally:
        os.close(fd)
    # The kernel rewrites argv for a shebang exec: interpreter, script path, then argv[1:].
    return _result("memfd_script", r, ("/bin/sh", f"/dev/fd/{fd}", tag), "memfd-script")


LOADER_PATH = "/lib64/ld-linux-x86-64.so.2"


def loader_memfd(tag: str) -> ScenarioResult:
    """The dynamic loader runs a program it is handed by fd: the image is ld.so, on disk."""
    fd = _memfd_with(_true_bytes(), "auditwatch-loader")
    argv = [LOADER_PATH, f"/proc/self/fd/{fd}", tag]
    try:
        r = _run_child(lambda: os.execv(LOADER_PATH, argv))
    finally:
        os.close(fd)
    return _result("loader_memfd", r, argv, "loader")


# --- look-alikes that must NOT be reported -------------------------------------------------

def ordinary_exec(tag: str) -> ScenarioResult:
    argv = [TRUE_BINARY, tag]
    return _result("ordinary_exec", _run_child(lambda: os.execv(TRUE_BINARY, argv)), argv, None)


def linked_fd_exec(tag: str) -> ScenarioResult:
    """execveat(AT_EMPTY_PATH) of a file that still has links: not fileless."""
    fd = os.open(TRUE_BINARY, os.O_RDONLY)
    argv = ["true", tag]
    try:
        r = _run_child(lambda: _execveat(fd, b"", argv, AT_EMPTY_PATH))
    finally:
        os.close(fd)
    return _result("linked_fd_exec", r, argv, None)


def linked_proc_fd_exec(tag: str) -> ScenarioResult:
    fd = os.open(TRUE_BINARY, os.O_RDONLY)
    argv = ["true", tag]
    try:
        r = _run_child(lambda: os.execv(f"/proc/self/fd/{fd}", argv))
    finally:
        os.close(fd)
    return _result("linked_proc_fd_exec", r, argv, None)


def tmp_script(tag: str) -> ScenarioResult:
    d = tempfile.mkdtemp(prefix="aw-script-")
    path = os.path.join(d, "run.sh")
    with open(path, "wb") as f:
        f.write(SCRIPT)
    os.chmod(path, 0o755)
    argv = [path, tag]
    try:
        r = _run_child(lambda: os.execv(path, argv))
    finally:
        os.unlink(path)
        os.rmdir(d)
    return _result("tmp_script", r, ("/bin/sh", path, tag), None)


def memfd_create_only(tag: str) -> ScenarioResult:
    """memfd_create without exec; runs /bin/true from disk so there is a pid to look for."""
    fd = _memfd_with(_true_bytes(), tag)
    try:
        argv = [TRUE_BINARY, tag]
        r = _run_child(lambda: os.execv(TRUE_BINARY, argv))
    finally:
        os.close(fd)
    return _result("memfd_create_only", r, argv, None)


def loader_list(tag: str) -> ScenarioResult:
    """``ld.so --list /bin/true``: the loader reading a file on disk."""
    argv = [LOADER_PATH, "--list", TRUE_BINARY]

    def quiet_exec() -> None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.execv(LOADER_PATH, argv)
    r = _run_child(quiet_exec)
    # No token in argv: the tests match this one by pid alone.
    return _result("loader_list", r, (*argv, tag), None)


def loader_disk(tag: str) -> ScenarioResult:
    """ld.so handed an on-disk binary by fd: not fileless."""
    fd = os.open(TRUE_BINARY, os.O_RDONLY)
    os.set_inheritable(fd, True)  # the loader opens it after the exec
    argv = [LOADER_PATH, f"/proc/self/fd/{fd}", tag]
    try:
        r = _run_child(lambda: os.execv(LOADER_PATH, argv))
    finally:
        os.close(fd)
    return _result("loader_disk", r, argv, None)


POSITIVE: dict[str, Callable[[str], ScenarioResult]] = {
    "memfd_execveat": memfd_execveat,
    "memfd_proc_self_fd": memfd_proc_self_fd,
    "memfd_dev_fd": memfd_dev_fd,
    "unlinked_fd": unlinked_fd,
    "o_tmpfile": o_tmpfile,
    "dev_shm_binary": dev_shm_binary,
    "memfd_script": memfd_script,
}
NEGATIVE: dict[str, Callable[[str], ScenarioResult]] = {
    "ordinary_exec": ordinary_exec,
    "linked_fd_exec": linked_fd_exec,
    "linked_proc_fd_exec": linked_proc_fd_exec,
    "tmp_script": tmp_script,
    "memfd_create_only": memfd_create_only,
}
ALL = {**POSITIVE, **NEGATIVE}


def run_all(names: Sequence[str] | None = None) -> list[ScenarioResult]:
    chosen = names if names is not None else list(ALL)
    return [ALL[n](token()) for n in chosen]
