"""The BPF exec sensor on the real kernel: real fileless execs in, ExecEvents out.

Every check that something did NOT happen is made deterministic with a marker: after the exec
under test, a memfd exec with a fresh token runs; ring-buffer records keep their order, so once
the marker's event is read, any event of the earlier exec would have been read too.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from auditwatch import hostinfo, scenarios, trc105
from auditwatch.errors import SensorError, SensorUnavailable
from auditwatch.events import ExecEvent
from auditwatch.sensors.bpf import build
from auditwatch.sensors.bpf.sensor import BpfExecSource

pytestmark = pytest.mark.kernel
TIMEOUT_S = 10.0
PARENT_EXE = os.readlink("/proc/self/exe")   # this python, as the kernel prints it


@pytest.fixture(scope="module", autouse=True)
def _object() -> None:
    build.ensure_built()


@pytest.fixture
def source(bpf_ready: None) -> Iterator[BpfExecSource]:
    src = BpfExecSource()
    src.load()
    yield src
    src.close()


def read_until(src: BpfExecSource, token: str) -> list[ExecEvent]:
    """Everything read up to and including the first event whose argv holds ``token``."""
    seen: list[ExecEvent] = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        select.select([src.fileno()], [], [], 0.1)
        batch = src.read()
        seen.extend(batch)
        if any(token in e.argv for e in batch):
            return seen
    raise AssertionError(f"no event with {token} within {TIMEOUT_S}s; counters {src.counters()}")


def with_marker(src: BpfExecSource) -> list[ExecEvent]:
    marker = scenarios.token()
    scenarios.memfd_execveat(marker)
    return read_until(src, marker)


@pytest.mark.parametrize("name", list(scenarios.POSITIVE))
def test_positive_scenario_gives_one_event(source: BpfExecSource, name: str) -> None:
    tag = scenarios.token()
    result = scenarios.POSITIVE[name](tag)
    mine = [e for e in with_marker(source) if e.pid == result.pid]
    assert len(mine) == 1, mine
    event = mine[0]
    assert trc105.detect(event) == result.expected
    assert tag in event.argv
    assert event.argv == result.argv
    assert event.tgid == result.pid
    assert event.ppid == os.getpid()
    assert event.parent_exe == PARENT_EXE
    assert event.uid == os.getuid() and event.euid == os.geteuid()
    assert event.sensor == "bpf"
    assert abs(event.timestamp_ns - time.time_ns()) < 60 * 10**9


@pytest.mark.parametrize("name", list(scenarios.NEGATIVE))
def test_negative_scenario_gives_no_event(source: BpfExecSource, name: str) -> None:
    result = scenarios.NEGATIVE[name](scenarios.token())
    assert result.exit_status == 0
    assert [e for e in with_marker(source) if e.pid == result.pid] == []


def test_loader_memfd_is_one_loader_event(source: BpfExecSource) -> None:
    tag = scenarios.token()
    result = scenarios.loader_memfd(tag)
    assert result.exit_status == 0
    mine = [e for e in with_marker(source) if e.pid == result.pid]
    assert len(mine) == 1, mine
    (event,) = mine
    assert trc105.detect(event) == "loader"
    assert trc105.is_loader(event.exe) and event.nlink == 1 and event.memfd_name is None
    assert event.exec_path == scenarios.LOADER_PATH
    assert event.argv == result.argv
    assert event.fd_target is not None
    assert event.fd_target.path == result.argv[1]
    assert event.fd_target.nlink == 0
    assert event.fd_target.dev == _memfd_dev()
    assert event.fd_target.inode


@pytest.mark.parametrize("name", ["loader_list", "loader_disk"])
def test_loader_of_disk_file_gives_no_event(source: BpfExecSource, name: str) -> None:
    result = getattr(scenarios, name)(scenarios.token())
    assert result.exit_status == 0
    assert [e for e in with_marker(source) if e.pid == result.pid] == []


def _memfd_dev() -> int:
    memfd = os.memfd_create("probe")
    try:
        st = os.fstat(memfd)
    finally:
        os.close(memfd)
    return os.major(st.st_dev) << 20 | os.minor(st.st_dev)


def _run_loader(args: list[str], program: str = "memfd") -> tuple[int, list[str], str]:
    """ld.so ARGS, where "{prog}" in ARGS is the fd path of a copy of /bin/true held in a memfd
    (or an unlinked file, or /bin/true itself). Returns (pid, argv, fd path)."""
    if program == "memfd":
        fd = os.memfd_create("aw-loader-test", 0)
        with open(scenarios.TRUE_BINARY, "rb") as f:
            os.write(fd, f.read())
    elif program == "unlinked":
        d = tempfile.mkdtemp(prefix="aw-loader-")
        path = os.path.join(d, "payload")
        with open(scenarios.TRUE_BINARY, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        fd = os.open(path, os.O_RDONLY)
        os.unlink(path)
        os.rmdir(d)
    else:
        fd = os.open(scenarios.TRUE_BINARY, os.O_RDONLY)
    os.set_inheritable(fd, True)
    argv = [scenarios.LOADER_PATH, *(a.format(fd=fd) for a in args)]
    fd_path = next((a for a in argv[1:] if trc105.is_fd_path(a)), "")
    try:
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                os.dup2(1, 2)
                os.execv(scenarios.LOADER_PATH, argv)
            finally:
                os._exit(127)
        os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return pid, argv, fd_path


_LONG = "/nonexistent/" + "x" * 300


@pytest.mark.parametrize(("args", "program", "argi"), [
    (["/dev/fd/{fd}", "TAG"], "memfd", 1),
    (["/proc/thread-self/fd/{fd}", "TAG"], "memfd", 1),
    (["/proc/self/fd/{fd}", "TAG"], "unlinked", 1),
    (["--inhibit-cache", "--library-path", _LONG, "--preload", "", "--argv0", "x",
      "/proc/self/fd/{fd}", "TAG"], "memfd", 8),
    (["--glibc-hwcaps-mask", "x", "--inhibit-rpath", "", "--audit", "",
      "--glibc-hwcaps-prepend", "y", "/dev/fd/{fd}", "TAG"], "memfd", 9),
    (["--list", "/proc/self/fd/{fd}", "TAG"], "memfd", 2),
    (["--verify", "/proc/self/fd/{fd}", "TAG"], "memfd", 2),
], ids=["dev-fd", "thread-self", "unlinked", "options", "more-options", "list-memfd",
        "verify-memfd"])
def test_loader_variants_are_reported(source: BpfExecSource, args: list[str], program: str,
                                      argi: int) -> None:
    tag = scenarios.token()
    pid, argv, fd_path = _run_loader([tag if a == "TAG" else a for a in args], program)
    (event,) = [e for e in with_marker(source) if e.pid == pid]
    assert trc105.detect(event) == "loader"
    assert event.argv == tuple(argv)
    assert event.fd_target is not None
    assert event.fd_target.path == fd_path == argv[argi]
    assert event.fd_target.nlink == 0


@pytest.mark.parametrize(("args", "program"), [
    (["/proc/self/fd/{fd}", "TAG"], "disk"),
    (["--argv0", "/proc/self/fd/{fd}", "/bin/true", "TAG"], "memfd"),    # an option's value
    (["--preload", "/dev/fd/{fd}", "/bin/true", "TAG"], "memfd"),
    (["--help", "/proc/self/fd/{fd}", "TAG"], "memfd"),                 # ld.so runs nothing
    (["--bogus", "/proc/self/fd/{fd}", "TAG"], "memfd"),
    (["--library-path=/lib", "/proc/self/fd/{fd}", "TAG"], "memfd"),
    (["/bin/true", "/proc/self/fd/{fd}", "TAG"], "memfd"),              # an argument of the program
    (["/proc/1/fd/{fd}", "TAG"], "memfd"),                              # not its own fd table
], ids=["disk-fd", "argv0-value", "preload-value", "help", "unknown-option", "joined-option",
        "program-arg", "other-pid"])
def test_loader_look_alikes_give_no_event(source: BpfExecSource, args: list[str],
                                          program: str) -> None:
    pid, _, _ = _run_loader([scenarios.token() if a == "TAG" else a for a in args], program)
    assert [e for e in with_marker(source) if e.pid == pid] == []


def test_memfd_event_details(source: BpfExecSource) -> None:
    tag = scenarios.token()
    result = scenarios.memfd_execveat(tag, memfd_name=b"evil\nname\"\xff")
    (event,) = [e for e in with_marker(source) if e.pid == result.pid]
    assert event.memfd_name == 'evil\nname"\\xff'
    assert event.exe == '/memfd:evil\nname"\\xff (deleted)'
    assert event.nlink == 0 and event.sb_magic == 0x01021994
    assert event.exec_path.startswith("/dev/fd/")
    memfd = os.memfd_create("probe")
    try:
        st = os.fstat(memfd)
    finally:
        os.close(memfd)
    assert event.dev == (os.major(st.st_dev) << 20 | os.minor(st.st_dev))
    # Linux >= 6.14 names an fd exec's task after the dentry (bprm->comm_from_dentry).
    assert event.comm in ("true", "memfd:evil\nname")
    assert event.mnt_ns == os.stat("/proc/self/ns/mnt").st_ino
    assert event.pid_ns == os.stat("/proc/self/ns/pid").st_ino


def test_long_argv_is_truncated(source: BpfExecSource) -> None:
    tag = scenarios.token()
    result = scenarios.memfd_execveat(tag, extra_args=["x" * 3000, "y" * 3000])
    (event,) = [e for e in read_until(source, tag) if e.pid == result.pid]
    assert event.argv_truncated
    assert event.argv[:2] == ("true", tag)


_NS_CHILD = """
import os, sys
fd = os.memfd_create("aw-ns", 0)
with open("/bin/true", "rb") as f:
    os.write(fd, f.read())
pid = os.fork()
if pid == 0:
    os.execv(f"/proc/self/fd/{fd}", ["true", sys.argv[1]])
os.waitpid(pid, 0)
"""


def test_namespaced_exec_reports_host_and_namespace_pids(source: BpfExecSource) -> None:
    tag = scenarios.token()
    proc = subprocess.run(["unshare", "-fpm", "--mount-proc", sys.executable, "-c", _NS_CHILD,
                           tag], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    (event,) = [e for e in read_until(source, tag) if tag in e.argv]
    assert trc105.detect(event) == "memfd"
    assert event.ns_pid == 2 and event.ns_ppid == 1
    assert event.pid > 2 and event.pid != event.ns_pid
    assert event.pid_ns != os.stat("/proc/self/ns/pid").st_ino
    assert event.mnt_ns != os.stat("/proc/self/ns/mnt").st_ino


def test_parent_exe_is_read_by_the_kernel(source: BpfExecSource) -> None:
    tag = scenarios.token()
    result = scenarios.memfd_execveat(tag)
    (event,) = [e for e in read_until(source, tag) if e.pid == result.pid]
    assert event.ppid == os.getpid()
    assert event.parent_exe == PARENT_EXE == os.path.realpath(sys.executable)


# A memfd copy of /bin/sh (the parent) runs a memfd copy of /bin/true (the child) by its fd
# path; "; :" keeps dash from exec'ing the last command in place of forking.
_MEMFD_PARENT = """
import os, sys
sh = os.memfd_create("aw-parent-sh")                # close-on-exec: only the exec needs it
with open("/bin/sh", "rb") as f:
    os.write(sh, f.read())
child = os.memfd_create("aw-child", 0)              # inherited by sh and its child
with open("/bin/true", "rb") as f:
    os.write(child, f.read())
os.execv(f"/proc/self/fd/{sh}", ["sh", "-c", f"/dev/fd/{child} {sys.argv[1]}; :"])
"""


def test_parent_exe_of_a_memfd_parent(source: BpfExecSource) -> None:
    tag = scenarios.token()
    proc = subprocess.Popen([sys.executable, "-c", _MEMFD_PARENT, tag], stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    (event,) = [e for e in read_until(source, tag) if tag in e.argv]
    assert event.ppid == proc.pid    # python became the memfd sh: same pid
    assert trc105.detect(event) == "memfd" and event.memfd_name == "aw-child"
    assert event.parent_exe == "/memfd:aw-parent-sh (deleted)"


# The parent forks a child that execs a memfd copy of /bin/sh; once the child runs (it writes to
# a pipe: its exec, and so the sensor's read, is over), the parent execs /usr/bin/sleep. Read
# from /proc/PPID/exe after the event, the parent would pass for sleep.
_RACING_PARENT = """
import os, sys
sh = os.memfd_create("aw-race")
with open("/bin/sh", "rb") as f:
    os.write(sh, f.read())
r, w = os.pipe()
if os.fork() == 0:
    os.dup2(w, 9)
    os.execv(f"/proc/self/fd/{sh}", ["sh", "-c", "echo ran >&9", sys.argv[1]])
os.close(w)
os.read(r, 16)
os.execv("/usr/bin/sleep", ["sleep", "30"])
"""


def test_parent_exe_is_the_image_at_exec_time(source: BpfExecSource) -> None:
    tag = scenarios.token()
    proc = subprocess.Popen([sys.executable, "-c", _RACING_PARENT, tag])
    try:
        (event,) = [e for e in read_until(source, tag) if tag in e.argv]
        assert event.ppid == proc.pid and trc105.detect(event) == "memfd"
        deadline = time.monotonic() + TIMEOUT_S
        while os.readlink(f"/proc/{proc.pid}/exe") != "/usr/bin/sleep":
            assert time.monotonic() < deadline, "the parent never exec'd sleep"
            time.sleep(0.01)
        assert hostinfo.parent_exe_of(event) == "/usr/bin/sleep"     # /proc, read too late
        assert event.parent_exe == PARENT_EXE                         # the kernel, at exec
        assert hostinfo.LiveFacts().enrich(event).parent_exe == PARENT_EXE
    finally:
        proc.kill()
        proc.wait()


def test_ordinary_execs_are_counted_not_sent(source: BpfExecSource) -> None:
    n = 20
    before = source.counters()
    pids = {scenarios.ordinary_exec(scenarios.token()).pid for _ in range(n)}
    events = with_marker(source)
    after = source.counters()
    assert after["execs_seen"] - before["execs_seen"] >= n + 1
    assert not [e for e in events if e.pid in pids]
    assert after["events_emitted"] > before["events_emitted"]
    assert after["rb_drops"] == 0


def test_bad_records_are_counted_not_raised(source: BpfExecSource) -> None:
    source._pending.append(b"\x00" * 10)     # what a corrupt ring-buffer record would look like
    assert source.read() == []
    assert source.counters()["decode_errors"] == 1
    assert source.last_decode_error


def test_reader_queue_overflow_is_reported(bpf_ready: None) -> None:
    src = BpfExecSource(max_pending=1)
    src.load()
    try:
        for _ in range(3):
            scenarios.memfd_execveat(scenarios.token())
        deadline = time.monotonic() + TIMEOUT_S
        while src.counters()["queue_drops"] < 2 and time.monotonic() < deadline:
            select.select([src.fileno()], [], [], 0.1)
            src.read()
        health = src.take_health()
        assert [h.kind for h in health] == ["bpf_events_lost"]
        assert health[0].count is not None and health[0].count >= 2
        assert src.take_health() == []
    finally:
        src.close()


def _tracefs() -> Iterator[None]:
    if os.path.isdir("/sys/kernel/tracing/events"):
        yield
        return
    rc = subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"]).returncode
    if rc != 0:
        pytest.fail("cannot mount tracefs for the classic-tracepoint mode")
    try:
        yield
    finally:
        subprocess.run(["umount", "/sys/kernel/tracing"], check=False)


@pytest.fixture
def tracefs(bpf_ready: None) -> Iterator[None]:
    yield from _tracefs()


@pytest.mark.parametrize(("exec_mode", "script_mode"), [
    ("tp_btf", "fdtable"), ("raw_tp", "fdtable"), ("tracepoint", "fdtable"),
    ("tp_btf", "tp_btf"), ("raw_tp", "raw_tp"), ("tracepoint", "tracepoint"),
])
def test_each_attach_mode_works(tracefs: None, exec_mode: str, script_mode: str) -> None:
    src = BpfExecSource(exec_modes=(exec_mode,), script_modes=(script_mode,))
    src.load()
    try:
        assert src.attachment is not None
        assert (src.attachment.exec_mode, src.attachment.script_mode) == (exec_mode, script_mode)
        before = src.counters()["scripts_stashed"]
        for scenario in (scenarios.memfd_execveat, scenarios.memfd_script, scenarios.tmp_script,
                         scenarios.linked_proc_fd_exec, scenarios.loader_memfd,
                         scenarios.loader_disk):
            tag = scenarios.token()
            result = scenario(tag)
            events = [e for e in with_marker(src) if e.pid == result.pid]
            assert [trc105.detect(e) for e in events] == (
                [result.expected] if result.expected else [])
        # the syscall-entry hook, when attached, is what found the script
        stashed = src.counters()["scripts_stashed"] - before
        assert stashed >= 1 if script_mode != "fdtable" else stashed == 0
    finally:
        src.close()


def _prog_exists(prog_id: int) -> bool:
    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)],
                          capture_output=True).returncode == 0


def _all_gone(prog_ids: tuple[int, ...] | list[int]) -> bool:
    """The kernel frees a detached program after an RCU grace period: poll, bounded."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if not any(_prog_exists(i) for i in prog_ids):
            return True
        time.sleep(0.05)
    return False


def test_close_detaches_everything_and_is_idempotent(bpf_ready: None) -> None:
    src = BpfExecSource()
    src.load()
    assert src.attached()
    assert src.attachment is not None
    ids = src.attachment.program_ids
    assert ids and all(_prog_exists(i) for i in ids)
    src.close()
    src.close()
    assert not src.attached()
    assert _all_gone(ids)
    listed = subprocess.run(["bpftool", "prog", "list"], capture_output=True, text=True).stdout
    assert not [line for line in listed.splitlines() for i in ids if line.startswith(f"{i}: ")]
    assert src.read() == []


def test_failed_attach_rolls_back(bpf_ready: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from auditwatch.sensors.bpf.libbpf import LibBpf

    lib = LibBpf.get()
    real_attach = lib.attach
    attached_ids: list[int] = []

    def failing_attach(prog: int, what: str) -> int:
        if "sys_enter" in what or "execve" in what:
            raise SensorError(f"attach {what}: injected failure")
        link = real_attach(prog, what)
        attached_ids.append(lib.link_info(lib.link_fd(link)).prog_id)
        return link

    monkeypatch.setattr(lib, "attach", failing_attach)
    src = BpfExecSource(script_modes=("tp_btf",), exec_modes=("tp_btf",))
    with pytest.raises(SensorError, match="injected failure"):
        src.load()
    assert attached_ids and _all_gone(attached_ids)
    assert not src.attached()
    src.close()


def test_missing_object_is_unavailable(bpf_ready: None, tmp_path: os.PathLike[str]) -> None:
    src = BpfExecSource(os.path.join(tmp_path, "nope.bpf.o"))
    with pytest.raises(SensorUnavailable, match="not found"):
        src.load()
    src.close()


def test_object_missing_at_run_time_is_built_privately(bpf_ready: None,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: os.PathLike[str]) -> None:
    monkeypatch.setattr(build, "OBJECT", build.Path(tmp_path) / "absent" / "exec.bpf.o")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    src = BpfExecSource()
    src.load()
    try:
        assert src.attached()
        assert not list(build.Path(tmp_path).glob("auditwatch-bpf-*")), "temp build left behind"
    finally:
        src.close()
