"""Real fileless (and look-alike benign) executions, performed on this kernel.

Shared by ``auditwatch selftest``, the kernel tests and the script that records audit fixtures.
Each scenario forks, executes ``/bin/true`` (or a tiny shell script) the way it is named for, waits
for the child and says what auditwatch must report for that pid. The argv carries a unique token
so a test can pick out its own exec among everything else the host runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from auditwatch.events import Technique
from auditwatch.procfs import read_stat

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


def _exec_via_fd(fd: int, how: str, argv: Sequence[str]) -> Callable[[], None]:
    """What the child does to run the file behind ``fd``: ``execveat(fd, "", AT_EMPTY_PATH)``
    or an exec of ``/proc/self/fd/N`` / ``/dev/fd/N``."""
    if how == "execveat":
        return lambda: _execveat(fd, b"", argv, AT_EMPTY_PATH)
    return lambda: os.execv(f"{how}/{fd}", list(argv))


def _run_and_close(name: str, fd: int, exec_in_child: Callable[[], None],
                   argv: Sequence[str], expected: Technique | None) -> ScenarioResult:
    """Fork and exec while ``fd`` is open, then close it; ``argv`` is what the kernel shows."""
    try:
        r = _run_child(exec_in_child)
    finally:
        os.close(fd)
    return _result(name, r, argv, expected)


def memfd_execveat(tag: str, memfd_name: str | bytes = "auditwatch-selftest",
                   extra_args: Sequence[str] = ()) -> ScenarioResult:
    fd = _memfd_with(_true_bytes(), memfd_name)
    argv = ["true", tag, *extra_args]
    return _run_and_close("memfd_execveat", fd, _exec_via_fd(fd, "execveat", argv), argv, "memfd")


def memfd_proc_self_fd(tag: str) -> ScenarioResult:
    fd = _memfd_with(_true_bytes())
    argv = ["true", tag]
    return _run_and_close("memfd_proc_self_fd", fd, _exec_via_fd(fd, "/proc/self/fd", argv),
                          argv, "memfd")


def memfd_dev_fd(tag: str) -> ScenarioResult:
    fd = _memfd_with(_true_bytes())
    argv = ["true", tag]
    return _run_and_close("memfd_dev_fd", fd, _exec_via_fd(fd, "/dev/fd", argv), argv, "memfd")


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
    return _run_and_close("unlinked_fd", fd, _exec_via_fd(fd, "execveat", argv), argv,
                          "unlinked")


def o_tmpfile(tag: str, directory: str = "/tmp") -> ScenarioResult:
    """An O_TMPFILE file never has a name: write /bin/true into it, exec via /proc/self/fd."""
    fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o755)
    os.write(fd, _true_bytes())
    os.fchmod(fd, 0o755)
    # The kernel refuses to exec a file still open for writing (ETXTBSY): reopen read-only.
    ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    os.close(fd)
    argv = ["tmpfile", tag]
    return _run_and_close("o_tmpfile", ro, _exec_via_fd(ro, "/proc/self/fd", argv), argv,
                          "unlinked")


def _run_file_then_remove(path: str, argv: list[str]) -> tuple[int, int]:
    """Fork and exec the file at ``path`` (still linked), then delete it."""
    try:
        return _run_child(lambda: os.execv(path, argv))
    finally:
        os.unlink(path)


def dev_shm_binary(tag: str) -> ScenarioResult:
    path = f"/dev/shm/{tag}"
    shutil.copyfile(TRUE_BINARY, path)
    os.chmod(path, 0o755)
    return _result("dev_shm_binary", _run_file_then_remove(path, [path, tag]), [path, tag],
                   "shm")


def memfd_script(tag: str) -> ScenarioResult:
    fd = _memfd_with(SCRIPT, "auditwatch-script")
    # The kernel rewrites argv for a shebang exec: interpreter, script path, then argv[1:].
    return _run_and_close("memfd_script", fd, _exec_via_fd(fd, "/dev/fd", ["script", tag]),
                          ("/bin/sh", f"/dev/fd/{fd}", tag), "memfd-script")


LOADER_PATH = "/lib64/ld-linux-x86-64.so.2"


def loader_memfd(tag: str) -> ScenarioResult:
    """The dynamic loader runs a program it is handed by fd: the image is ld.so, on disk."""
    fd = _memfd_with(_true_bytes(), "auditwatch-loader")
    argv = [LOADER_PATH, f"/proc/self/fd/{fd}", tag]
    return _run_and_close("loader_memfd", fd, lambda: os.execv(LOADER_PATH, argv), argv,
                          "loader")


# --- look-alikes that must NOT be reported -------------------------------------------------

def ordinary_exec(tag: str) -> ScenarioResult:
    argv = [TRUE_BINARY, tag]
    return _result("ordinary_exec", _run_child(lambda: os.execv(TRUE_BINARY, argv)), argv, None)


def linked_fd_exec(tag: str) -> ScenarioResult:
    """execveat(AT_EMPTY_PATH) of a file that still has links: not fileless."""
    fd = os.open(TRUE_BINARY, os.O_RDONLY)
    argv = ["true", tag]
    return _run_and_close("linked_fd_exec", fd, _exec_via_fd(fd, "execveat", argv), argv, None)


def linked_proc_fd_exec(tag: str) -> ScenarioResult:
    fd = os.open(TRUE_BINARY, os.O_RDONLY)
    argv = ["true", tag]
    return _run_and_close("linked_proc_fd_exec", fd, _exec_via_fd(fd, "/proc/self/fd", argv),
                          argv, None)


def tmp_script(tag: str) -> ScenarioResult:
    d = tempfile.mkdtemp(prefix="aw-script-")
    path = os.path.join(d, "run.sh")
    with open(path, "wb") as f:
        f.write(SCRIPT)
    os.chmod(path, 0o755)
    r = _run_file_then_remove(path, [path, tag])
    os.rmdir(d)
    return _result("tmp_script", r, ("/bin/sh", path, tag), None)


def memfd_create_only(tag: str) -> ScenarioResult:
    """memfd_create without exec; runs /bin/true from disk so there is a pid to look for."""
    fd = _memfd_with(_true_bytes(), tag)
    argv = [TRUE_BINARY, tag]
    return _run_and_close("memfd_create_only", fd, lambda: os.execv(TRUE_BINARY, argv), argv,
                          None)


def loader_list(tag: str) -> ScenarioResult:
    """``ld.so --list /bin/true``: the loader reading a file on disk."""
    argv = [LOADER_PATH, "--list", TRUE_BINARY]

    def quiet_exec() -> None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.execv(LOADER_PATH, argv)
    r = _run_child(quiet_exec)
    # ld.so --list takes no extra argument, so no token: tests match this one by pid alone.
    return _result("loader_list", r, argv, None)


def loader_disk(tag: str) -> ScenarioResult:
    """ld.so handed an on-disk binary by fd: not fileless."""
    disk_fd = os.open(TRUE_BINARY, os.O_RDONLY)
    # A high fd number: audit alone infers "memfd" from an earlier memfd_create that returned
    # the same number (it cannot see close); other scenarios in this process use low numbers.
    fd = fcntl.fcntl(disk_fd, fcntl.F_DUPFD, 200)
    os.close(disk_fd)
    os.set_inheritable(fd, True)  # the loader opens it after the exec
    argv = [LOADER_PATH, f"/proc/self/fd/{fd}", tag]
    return _run_and_close("loader_disk", fd, lambda: os.execv(LOADER_PATH, argv), argv, None)


POSITIVE: dict[str, Callable[[str], ScenarioResult]] = {
    "memfd_execveat": memfd_execveat,
    "memfd_proc_self_fd": memfd_proc_self_fd,
    "memfd_dev_fd": memfd_dev_fd,
    "unlinked_fd": unlinked_fd,
    "o_tmpfile": o_tmpfile,
    "dev_shm_binary": dev_shm_binary,
    "memfd_script": memfd_script,
    "loader_memfd": loader_memfd,
}
NEGATIVE: dict[str, Callable[[str], ScenarioResult]] = {
    "ordinary_exec": ordinary_exec,
    "linked_fd_exec": linked_fd_exec,
    "linked_proc_fd_exec": linked_proc_fd_exec,
    "tmp_script": tmp_script,
    "memfd_create_only": memfd_create_only,
    "loader_list": loader_list,
    "loader_disk": loader_disk,
}
ALL = {**POSITIVE, **NEGATIVE}


def run_all(names: Sequence[str] | None = None) -> list[ScenarioResult]:
    chosen = names if names is not None else list(ALL)
    return [ALL[n](token()) for n in chosen]


# --- long-running fileless processes (start-up sweep tests) ----------------------------------

class ScenarioUnavailable(Exception):
    """The host lacks a tool a scenario needs (e.g. ``unshare``)."""


def _has_cmdline(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return bool(f.read(1))
    except OSError:
        return False


def wait_exe(pid: int, want: Callable[[str], bool], timeout: float = 10.0) -> str:
    """Poll ``/proc/PID/exe`` until ``want(target)`` holds and the new image's argv is set up
    (the exe link changes a moment before ``/proc/PID/cmdline``); returns the target."""
    deadline = time.monotonic() + timeout
    exe = ""
    while time.monotonic() < deadline:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        if want(exe) and _has_cmdline(pid):
            return exe
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never reached the expected image (last: {exe!r})")


def children_of(ppid: int) -> list[int]:
    """Pids whose parent is ``ppid`` (from /proc/*/stat)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if read_stat(name).ppid == ppid:
                    out.append(int(name))
            except OSError:
                continue
    return out


class Sleepers:
    """Starts real ``sleep`` processes (fileless or not); ``close()`` kills every one of them."""

    def __init__(self, seconds: int = 30) -> None:
        self.seconds = seconds
        self.pids: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sleep = open(shutil.which("sleep") or "/bin/sleep", "rb").read()  # noqa: SIM115

    def memfd(self, name: str) -> tuple[int, os.stat_result]:
        """fork; the child execveat(AT_EMPTY_PATH)s a memfd copy of sleep."""
        fd = os.memfd_create(name, 0)
        os.write(fd, self.sleep)
        pid = os.fork()
        if pid == 0:
            try:
                _execveat(fd, b"", ["sleep", str(self.seconds)], AT_EMPTY_PATH)
            finally:
                os._exit(127)
        self.pids.append(pid)
        st = os.fstat(fd)
        os.close(fd)
        wait_exe(pid, lambda exe: exe == f"/memfd:{name} (deleted)")
        return pid, st

    def memfd_in_new_namespaces(self, name: str) -> int:
        """``unshare -fpm --mount-proc``: a memfd sleeper as pid 1 of new PID+mount namespaces.
        Returns its host pid. Raises ``ScenarioUnavailable`` when unshare cannot do it here."""
        if shutil.which("unshare") is None:
            raise ScenarioUnavailable("unshare(1) not installed")
        script = ("import os,sys; fd = os.memfd_create(sys.argv[1], 0); "
                  "os.write(fd, open('/bin/sleep', 'rb').read()); "
                  "os.execv(f'/proc/self/fd/{fd}', ['sleep', sys.argv[2]])")
        p = subprocess.Popen(["unshare", "-fpm", "--mount-proc", "--kill-child",
                              sys.executable, "-c", script, name, str(self.seconds)])
        self.procs.append(p)
        deadline = time.monotonic() + 10
        kids: list[int] = []
        while time.monotonic() < deadline and not (kids := children_of(p.pid)):
            if p.poll() is not None:
                raise ScenarioUnavailable(f"unshare -fpm failed (exit {p.returncode})")
            time.sleep(0.01)
        assert kids, "unshare started no child"
        self.pids.append(kids[0])
        wait_exe(kids[0], lambda exe: exe == f"/memfd:{name} (deleted)")
        return kids[0]

    def from_disk(self, path: str | os.PathLike[str]) -> int:
        with open(path, "wb") as f:
            f.write(self.sleep)
        os.chmod(path, 0o755)
        p = subprocess.Popen([os.fspath(path), str(self.seconds)])  # returns once exec'd
        self.procs.append(p)
        wait_exe(p.pid, lambda exe: exe == os.fspath(path))
        return p.pid

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs:
            p.wait(timeout=10)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):  # the one in the namespaces is not ours
                os.waitpid(pid, 0)
